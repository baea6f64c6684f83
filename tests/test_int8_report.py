"""The quantize report's frontier table and verdicts (export/int8/report.py) and the
pipeline's INT8 section and frontier plot (benchmarks/int8_frontier.py)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.int8_frontier import summary_lines, write_int8_section
from export.int8.report import QuantizeReport, frontier_table


def _config(name: str, ap: float, ratio: float, chosen: bool = False) -> dict:
    return {"name": name, "fallback": [] if name == "full INT8" else [name], "methods": {},
            "ap": ap, "dap": ap - 40.0, "dap_se": 0.2, "latency_ms": 10 * ratio,
            "fp32_latency_ms": 10.0, "ratio": ratio, "quantized_nodes": 0, "chosen": chosen}


TRIED = [_config("full INT8", 39.0, 0.40), _config("a", 39.8, 0.55, chosen=True),
         _config("b", 39.5, 0.70), _config("c", 39.9, 0.90)]


def _report(**overrides: object) -> QuantizeReport:
    base: dict = {"source": "m.onnx", "output": "m.int8.onnx", "target": "cpu",
                  "method": "minmax", "num_calib_images": 32, "num_eval_images": 200,
                  "ground_truth": "annotations", "quantized_nodes": 60, "candidate_nodes": 64,
                  "fallback_blocks": ["a"], "fallback_nodes": [], "fp32_ap": 40.0,
                  "int8_ap": 39.8, "ap_budget": 0.5, "within_budget": True,
                  "eval_data": "val of data (200 images, annotated)", "decision_budget": 0.5,
                  "dap_se": 0.2, "pays": True, "latency_ms": {"fp32": 10.0, "int8": 5.5},
                  "frontier": TRIED}
    base.update(overrides)
    return QuantizeReport(**base)


def test_frontier_marks_pareto_configurations_and_the_written_one() -> None:
    rows = frontier_table(TRIED)
    body = {r.split("|")[2].strip(): r.split("|")[1].strip() for r in rows[2:]}
    # Fastest first; b is slower and less accurate than a: not on the frontier.
    assert [r.split("|")[2].strip() for r in rows[2:]] == ["full INT8", "a", "b", "c"]
    assert body == {"full INT8": "*", "a": ">*", "b": "", "c": "*"}


def test_report_says_what_decided_and_whether_int8_pays() -> None:
    text = _report().format()
    assert "decided on 200 held-out images of val of data" in text
    assert "by real COCO AP (annotations)" in text
    assert "dAP -0.20 +- 0.20" in text and "within the budget of 0.50" in text
    assert "0.55x FP32" in text and "does not pay" not in text
    slow = _report(pays=False, latency_ms={"fp32": 10.0, "int8": 9.8}).format()
    assert "INT8 does not pay on this model: 0.98x FP32" in slow
    pseudo = _report(ground_truth="FP32 top-10", decision_budget=21.6).format()
    assert "pseudo-ground-truth AP" in pseudo and "budget of 21.60 pseudo-GT points" in pseudo
    assert "mapped from 0.50 real AP points" in pseudo


def test_pipeline_int8_section_and_plot(tmp_path: Path) -> None:
    art, out = tmp_path / "art", tmp_path / "report"
    art.mkdir()
    out.mkdir()
    (out / "report.md").write_text("# detr-edge benchmark\n")
    (art / "model_int8_cpu.quant.json").write_text(json.dumps(_report().to_dict()))
    lines = write_int8_section(art, out)
    assert (out / "int8_frontier.png").stat().st_size > 0
    md = (out / "report.md").read_text()
    assert md.startswith("# detr-edge benchmark") and "## INT8: what quantize decided" in md
    line = summary_lines("model_int8_cpu", _report().to_dict())[0]
    assert line in lines and "60/64 nodes INT8" in line and "dAP -0.20 +- 0.20" in line
    assert "0.550x FP32" in line and "target <= 0.6: meets" in line
    over = summary_lines("m", _report(latency_ms={"fp32": 10.0, "int8": 9.5},
                                      pays=False).to_dict())
    assert "MISSES" in over[0] and "INT8 does not pay on this model" in over[1]


def test_speed_fallback_steps_are_in_the_report_and_the_section() -> None:
    step = {"kind": "speed", "group": "transformer", "blocks": ["encoder.layers.0"],
            "ratios": [0.95, 0.97, 0.96, 0.98, 0.97], "median_ratio": 0.97,
            "log_ratio": -0.031, "log_ratio_se": 0.006, "taken": True}
    rejected = {**step, "group": "backbone stem", "median_ratio": 1.17, "taken": False,
                "why": "not faster beyond noise"}
    rep = _report(steps=[{"kind": "accuracy", "taken": True}, step, rejected])
    text = rep.format()
    assert ("speed fallback: + FP32 transformer runs at 0.97x the time (range 0.95-0.98 over "
            "5 repeats, log-ratio -0.031 +- 0.006 SE): taken") in text
    assert "+ FP32 backbone stem runs at 1.17x" in text and "not faster beyond noise" in text
    lines = summary_lines("m", rep.to_dict())
    assert lines[1].startswith("  - speed fallback: + FP32 transformer") and len(lines) == 3
