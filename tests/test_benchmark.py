"""The benchmark suite on a tiny random-weight DETR: every number in the report must
come from a run (parity tiny but nonzero, latencies > 0, skipped rows with reasons)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tiny_checkpoint import SQUARE_64, dataset_categories, save_tiny_checkpoint

from benchmarks.rows import ROW_KEYS, STATUS_OK, STATUS_SKIPPED
from benchmarks.timing import round_robin, stats_from_samples, time_call
from runtime.compare import box_iou_xyxy, match_detections
from runtime.decode import Detections
from runtime.errors import InputError

SIZE = 64  # canvas and image side (multiple of 32 for the exporter), as in SQUARE_64


def make_tiny_setup(root: Path, int8: bool = True) -> dict[str, Path]:
    """Synthetic data, a random detr-tiny checkpoint, and its FP32/FP16(/INT8) ONNX."""
    from detr.data.synthetic import ShapesConfig, make_shapes_dataset
    from export.onnx_export import ExportConfig, export_onnx

    data = root / "data"
    make_shapes_dataset(data, ShapesConfig(num_train=3, num_val=3, image_size=SIZE,
                                           max_objects=3), progress=False)
    # Recorded as trained at 64 px on square images: the reference eval stays small and fast.
    ckpt = save_tiny_checkpoint(root / "tiny.pth", dataset_categories(data), {"num_queries": 10},
                                extra=SQUARE_64)
    art = root / "artifacts"
    for precision in ("fp32", "fp16"):
        export_onnx(ExportConfig(checkpoint=str(ckpt), out=str(art / f"m_{precision}.onnx"),
                                 height=SIZE, width=SIZE, precision=precision))
    if int8:
        from export.int8.config import QuantizeConfig
        from export.int8.quantize import quantize_int8

        for target, name in (("tensorrt", "m_int8.onnx"), ("cpu", "m_int8_cpu.onnx")):
            quantize_int8(art / "m_fp32.onnx", str(data / "train"), QuantizeConfig(
                out_path=str(art / name), calib_images=3, eval_images=0, latency_runs=0,
                progress=False, target=target))
    return {"data": data, "checkpoint": ckpt, "artifacts": art}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    from benchmarks.suite import BenchmarkConfig, run_benchmark

    root = tmp_path_factory.mktemp("bench")
    paths = make_tiny_setup(root)
    config = BenchmarkConfig(checkpoint=str(paths["checkpoint"]), data=str(paths["data"]),
                             artifacts=str(paths["artifacts"]), batch_sizes=(1, 2), runs=2,
                             warmup=1, max_images=3, out=str(root / "out"), progress=False,
                             save_reference=str(root / "reference.npz"))
    rep = run_benchmark(config, log=lambda _: None)
    return rep, root / "out", paths


def test_report_files_exist(report) -> None:
    _rep, out, _ = report
    assert (out / "report.md").read_text().startswith("# detr-edge benchmark")
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "report.json").read_text())
    assert [[r["backend"], r["precision"], r["device"]] for r in doc["rows"]] == \
        [list(k) for k in ROW_KEYS]
    assert doc["env"]["cpu_cores"] >= 1 and doc["env"]["libraries"]["onnxruntime"]
    assert doc["settings"]["eval_images"] == 3


def test_row_set_complete_with_reasons(report) -> None:
    rep, _, _ = report
    by_key = {(r.backend, r.precision): r for r in rep.rows}
    for key in [("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                ("onnxruntime", "int8"), ("onnxruntime", "int8-cpu")]:
        assert by_key[key].status == STATUS_OK, (key, by_key[key].reason)
    for r in rep.rows:
        if r.status != STATUS_OK:
            assert r.status == STATUS_SKIPPED and r.reason, r.name
    if not torch.cuda.is_available():
        assert by_key[("pytorch", "fp16")].reason == "no CUDA GPU"
    for p in ("fp32", "fp16", "int8"):
        row = by_key[("tensorrt", p)]
        assert row.status == STATUS_OK or "TensorRT" in row.reason or "GPU" in row.reason


def test_parity_is_measured_not_assumed(report) -> None:
    rep, _, _ = report
    fp32, fp16 = rep.row("onnxruntime", "fp32").parity, rep.row("onnxruntime", "fp16").parity
    # ORT and PyTorch use different kernels: a tiny, nonzero difference.
    assert 0 < fp32["logits_max_abs"] < 1e-3 and 0 <= fp32["boxes_max_abs"] < 1e-3
    assert fp16["logits_max_abs"] > fp32["logits_max_abs"]
    assert rep.row("onnxruntime", "int8").parity["logits_max_abs"] > fp32["logits_max_abs"]
    assert rep.row("onnxruntime", "int8-cpu").parity["logits_max_abs"] > fp32["logits_max_abs"]
    # Paper decoding keeps the random model's detections (all 30 slots of the 3 images
    # here); FP32 ORT and PyTorch agree on each one (same class, IoU >= 0.9).
    assert fp32["reference_detections"] == fp32["candidate_detections"] > 0
    assert fp32["matched_fraction"] == 1.0
    torch_ap = rep.row("pytorch", "fp32").accuracy
    assert rep.row("onnxruntime", "fp32").accuracy == pytest.approx(torch_ap, abs=1e-6)
    for r in rep.rows:
        if r.status == STATUS_OK:
            # 64 px images hold no large object (> 96x96 px): AP_L is COCO's -1, no other.
            assert set(r.accuracy) == set(torch_ap) and r.accuracy["AP_L"] == -1.0, r.name
            assert all(0 <= v <= 1 for k, v in r.accuracy.items() if k != "AP_L"), r.name
            assert r.eval_images == 3


def test_latencies_are_measured(report) -> None:
    rep, _, _paths = report
    for r in rep.rows:
        if r.status != STATUS_OK:
            continue
        assert r.peak_rss_mb is not None and r.peak_rss_mb > 10, r.name
        assert r.artifact_bytes == Path(r.artifact).stat().st_size
        sp = r.speed_at(1)
        m, e = sp.model, sp.end_to_end
        assert 0 < m["median_ms"] <= m["p90_ms"] <= m["p99_ms"], r.name
        assert e["median_ms"] > 0 and e["runs"] == 2 and e["warmup"] == 1
        assert sp.pre_ms > 0 and sp.post_ms > 0 and 0 < sp.pre_post_fraction < 1
    # The ONNX graphs were exported with a fixed batch of 1: batch 2 says so.
    assert "fixed batch 1" in rep.row("onnxruntime", "fp32").speed_at(2).skipped_reason
    torch2 = rep.row("pytorch", "fp32").speed_at(2)
    assert torch2.model["batch_size"] == 2 and torch2.model["median_ms"] > 0
    assert rep.figures["ort_fp32_e2e_over_torch_fp32_e2e (batch 1)"] > 0


def test_stats_from_samples_hand_computed() -> None:
    s = stats_from_samples([5.0, 1.0, 3.0, 2.0, 4.0], warmup=1, batch_size=4)
    assert (s.median_ms, s.min_ms, s.mean_ms) == (3.0, 1.0, 3.0)
    assert s.p90_ms == pytest.approx(4.6) and s.p99_ms == pytest.approx(4.96)
    assert s.images_per_s == pytest.approx(4 * 1000 / 3.0)
    with pytest.raises(InputError, match="runs"):
        time_call(lambda: None, runs=0)


def test_round_robin_order_warmup_settle_block() -> None:
    """2 warm-up rounds (a, b), then rounds of 1 settle + up to 2 recorded calls each
    until 3 are recorded: the call log and what is kept, written out by hand."""
    log: list[str] = []

    def call(name: str):
        def run() -> str:
            log.append(name)
            return f"{name}{len(log)}"
        return run

    kept = round_robin({"a": call("a"), "b": call("b")}, runs=3, warmup=2, settle=1, block=2)
    assert log == ["a", "b", "a", "b",  # warm-up rounds
                   "a", "a", "a", "b", "b", "b",  # settle + block of 2
                   "a", "a", "b", "b"]  # settle + the last one
    assert kept == {"a": ["a6", "a7", "a12"], "b": ["b9", "b10", "b14"]}
    with pytest.raises(InputError, match="runs"):
        round_robin({"a": call("a")}, runs=1, block=0)


def _dets(boxes, labels, scores) -> Detections:
    return Detections(scores=np.asarray(scores, np.float32), labels=np.asarray(labels, np.int64),
                      boxes=np.asarray(boxes, np.float32).reshape(-1, 4))


def test_match_detections_iou_and_class() -> None:
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 2, 3], [0.9, 0.8, 0.7])
    # same box + class; box shifted 0.2 px (IoU 0.96); right box, wrong class
    other = _dets([[0, 0, 10, 10], [20.2, 20, 30.2, 30], [40, 40, 50, 50]], [1, 2, 0],
                  [0.9, 0.8, 0.7])
    assert box_iou_xyxy(ref.boxes[1:2], other.boxes[1:2])[0, 0] == pytest.approx(0.98 / 1.02)
    assert match_detections(ref, other) == 2
    shifted = _dets([[0, 0, 10, 10]], [1], [0.5])
    shifted.boxes[:, [0, 2]] += 5  # IoU 1/3
    assert match_detections(_dets([[0, 0, 10, 10]], [1], [0.5]), shifted) == 0


def test_bad_config_errors(tmp_path: Path) -> None:
    from benchmarks.suite import BenchmarkConfig, run_benchmark

    with pytest.raises(InputError, match="batch-sizes"):
        run_benchmark(BenchmarkConfig(checkpoint="x", data=str(tmp_path), batch_sizes=(0,)))
    with pytest.raises(InputError, match="not a dataset: no annotations/instances_val.json"):
        run_benchmark(BenchmarkConfig(checkpoint="x", data=str(tmp_path)))


def test_benchmark_command(report, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main

    _, _, paths = report
    out = tmp_path / "cli"
    code = main(["benchmark", "--checkpoint", str(paths["checkpoint"]), "--data",
                 str(paths["data"]), "--artifacts", str(paths["artifacts"]), "--runs", "1",
                 "--warmup", "0", "--max-images", "2", "--no-memory", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["settings"]["eval_images"] == 2 and doc["settings"]["runs"] == 1
    assert "| onnxruntime FP32 (cpu) | ok |" in capsys.readouterr().out
    # A user error is one line and exit code 2, no traceback.
    assert main(["benchmark", "--checkpoint", "x", "--data", str(tmp_path / "none")]) == 2
    assert f"{tmp_path / 'none'}: no such folder" in capsys.readouterr().err


def test_reference_is_the_model_as_trained(report) -> None:
    """The reference is ``eval``'s figure (official protocol); every row shows its delta
    against it and against PyTorch FP32 on the artifacts' canvas."""
    from detr.evaluate import EvalConfig, evaluate_checkpoint

    rep, out, paths = report
    ref = evaluate_checkpoint(paths["checkpoint"], EvalConfig(data=str(paths["data"]),
                                                              max_images=3, progress=False))
    assert rep.reference["accuracy"] == ref.metrics and rep.reference["eval_images"] == 3
    assert rep.reference["protocol"]["decoding"].startswith("official PostProcess")
    assert rep.settings["decoding"].startswith("official PostProcess")
    # Square 64 px images of a model trained at 64 without padding: the artifacts'
    # canvas and form are the trained ones, so the PyTorch rows agree exactly.
    torch_row = rep.row("pytorch", "fp32")
    assert torch_row.delta_vs_trained["AP"] == pytest.approx(0.0, abs=1e-9)
    for row in rep.rows:
        if row.status == STATUS_OK:
            assert row.delta_vs_trained is not None and row.delta_vs_canvas is not None
    text = (out / "report.md").read_text()
    assert "Reference = PyTorch FP32 (cpu) as trained" in text and "dAP canvas" in text
    assert json.loads((out / "report.json").read_text())["reference"]["accuracy"] == ref.metrics


def test_saved_reference_on_a_device_without_torch(report, tmp_path: Path) -> None:
    """``--save-reference`` on the workstation, ``--reference`` with torch blocked: the
    device report shows the same reference, the PyTorch FP32 row from the file, and
    every row's deltas and parity against PyTorch as on the workstation."""
    from no_torch import run_without_torch

    rep, out, paths = report
    ref = out.parent / "reference.npz"
    common = ["--data", str(paths["data"]), "--artifacts", str(paths["artifacts"]),
              "--reference", str(ref), "--runs", "1", "--warmup", "0", "--no-memory"]
    proc = run_without_torch(f"""
        import sys
        from runtime.cli import main
        common = {common!r}
        assert main(["benchmark", *common, "--max-images", "3", "--out",
                     {str(tmp_path / "dev")!r}]) == 0
        loaded = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        assert not loaded, loaded
        print("OTHER", main(["benchmark", *common, "--max-images", "2", "--out",
                             {str(tmp_path / "dev2")!r}]))
    """)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "OTHER 2" in proc.stdout and "reference was made on other images" in proc.stderr
    doc = json.loads((tmp_path / "dev" / "report.json").read_text())
    assert doc["reference"]["source"] == "file"
    assert doc["reference"]["accuracy"] == rep.reference["accuracy"]
    rows = {(r["backend"], r["precision"]): r for r in doc["rows"]}
    assert rows[("pytorch", "fp32")]["accuracy"] == rep.row("pytorch", "fp32").accuracy
    assert "from reference file" in rows[("pytorch", "fp32")]["reason"]
    for key in [("onnxruntime", p) for p in ("fp32", "fp16", "int8", "int8-cpu")]:
        dev, ws = rows[key], rep.row(*key)
        assert dev["status"] == STATUS_OK
        assert dev["delta_vs_trained"] == pytest.approx(ws.delta_vs_trained, abs=1e-9)
        assert dev["delta_vs_canvas"] == pytest.approx(ws.delta_vs_canvas, abs=1e-9)
        assert dev["parity"]["logits_max_abs"] == pytest.approx(
            ws.parity["logits_max_abs"], rel=0.05, abs=1e-6)
    assert "dAP canvas" in (tmp_path / "dev" / "report.md").read_text()


def test_report_files_replace_the_previous_run_together(report, tmp_path, monkeypatch) -> None:
    """A run that fails while writing its plot leaves the previous report.md,
    report.json and plot.png as they were, with no staging folder left behind."""
    import benchmarks.report as report_mod

    rep, _, _ = report
    out = tmp_path / "bench"
    report_mod.write_report(rep, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["plot.png", "report.json", "report.md"]

    def broken_plot(_report, _path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_mod, "write_plot", broken_plot)
    monkeypatch.setattr(rep, "settings", {**rep.settings, "eval_images": 999})
    with pytest.raises(OSError):
        report_mod.write_report(rep, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
