"""The one-command pipeline on tiny settings: every stage runs, the report is written,
and a second run reuses the artifacts whose inputs did not change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from benchmarks.pipeline import PipelineConfig, StageCache, run_pipeline, trained_input_size
from runtime.errors import InputError


def _tiny_checkpoint(path: Path, extra: dict | None = None) -> Path:
    """A random detr-tiny for the 6 default shape classes (category ids 2..17)."""
    import detr
    from detr.data.synthetic import DEFAULT_CATEGORIES

    torch.manual_seed(1)
    config = detr.get_config("detr-tiny", num_queries=10)
    model = detr.build_model_from_config(config, len(DEFAULT_CATEGORIES))
    detr.save_checkpoint(path, model, config, [n for _, n in DEFAULT_CATEGORIES],
                         [i for i, _ in DEFAULT_CATEGORIES],
                         extra={"training_resize": {"shorter": 64, "max_size": 64, "padded": False},
                                **(extra or {})})
    return path


def test_pipeline_runs_then_resumes(tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pth")
    config = PipelineConfig(out=str(tmp_path / "run"), checkpoint=str(ckpt), image_size=64,
                            num_val=3, max_objects=3, max_images=3, calib_images=3,
                            quant_eval_images=0, runs=2, warmup=1, measure_memory=False,
                            progress=False)
    lines: list[str] = []
    first = run_pipeline(config, log=lines.append)
    assert (first.report_dir / "report.md").is_file() and (first.report_dir / "plot.png").is_file()
    for name in ("dataset", "model", "onnx-fp32", "onnx-fp16", "int8", "benchmark"):
        assert first.stage_status[name] == "ran", (name, first.stage_status[name])
        assert first.stage_seconds[name] > 0
    assert first.stage_status["engines"].startswith(("ran", "skipped: "))
    assert any("stage times:" in line for line in lines)
    doc = json.loads((first.report_dir / "report.json").read_text())
    ok = {(r["backend"], r["precision"]) for r in doc["rows"] if r["status"] == "ok"}
    assert {("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
            ("onnxruntime", "int8")} <= ok
    assert all(r["reason"] for r in doc["rows"] if r["status"] != "ok")

    onnx_mtime = (first.artifacts / "model_fp32.onnx").stat().st_mtime_ns
    second = run_pipeline(config, log=lambda _: None)
    for name in ("dataset", "model", "onnx-fp32", "onnx-fp16", "int8"):
        assert second.stage_status[name].startswith("reused"), name
    assert (second.artifacts / "model_fp32.onnx").stat().st_mtime_ns == onnx_mtime
    assert second.stage_status["benchmark"] == "ran"  # timings are always re-measured


def test_stage_cache_sees_changed_inputs(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    out = tmp_path / "x.onnx"
    out.write_bytes(b"1")
    assert not cache.is_fresh("onnx-fp32", {"checkpoint": "a"}, [out])
    cache.mark("onnx-fp32", {"checkpoint": "a"})
    assert cache.is_fresh("onnx-fp32", {"checkpoint": "a"}, [out])
    assert not cache.is_fresh("onnx-fp32", {"checkpoint": "b"}, [out])
    out.unlink()  # an output that disappeared is rebuilt
    assert not cache.is_fresh("onnx-fp32", {"checkpoint": "a"}, [out])


def test_pipeline_bad_options(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="image_size"):
        run_pipeline(PipelineConfig(out=str(tmp_path), image_size=100))
    with pytest.raises(InputError, match="checkpoint not found"):
        run_pipeline(PipelineConfig(out=str(tmp_path / "r"), checkpoint=str(tmp_path / "no.pth"),
                                    image_size=64, num_val=1, calib_images=1,
                                    quant_eval_images=0, progress=False), log=lambda _: None)


def test_model_input_is_the_size_the_checkpoint_was_trained_at(tmp_path: Path) -> None:
    assert trained_input_size(_tiny_checkpoint(tmp_path / "a.pth"), default=192) == 192
    trained = {"scales": [96, 128], "eval_size": None}
    assert trained_input_size(_tiny_checkpoint(tmp_path / "b.pth", {"train_config": trained}),
                              default=192) == 128
    odd = {"scales": [100], "eval_size": None}  # rounded up to the backbone stride
    assert trained_input_size(_tiny_checkpoint(tmp_path / "c.pth", {"train_config": odd}),
                              default=192) == 128
    evals = {"scales": [128], "eval_size": 64}
    assert trained_input_size(_tiny_checkpoint(tmp_path / "d.pth", {"train_config": evals}),
                              default=192) == 64
