"""The one-command pipeline on tiny settings: every stage runs, the report is written,
and a second run reuses the artifacts whose inputs did not change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tiny_checkpoint import SQUARE_64, save_tiny_checkpoint

from benchmarks.workflow.dataset_check import checkpoint_rule, choose_canvas, training_rule
from benchmarks.workflow.pipeline import PipelineConfig, run_pipeline
from benchmarks.workflow.pipeline_stages import StageCache
from runtime.errors import DataError, InputError


def _tiny_checkpoint(path: Path, extra: dict | None = None, categories: tuple | None = None
                     ) -> Path:
    """A random detr-tiny for ``categories`` (default: the 6 shape classes, ids 2..17),
    recorded as trained at 64 px on square images unless ``extra`` says otherwise."""
    from detr.data.synthetic import DEFAULT_CATEGORIES

    return save_tiny_checkpoint(path, categories or DEFAULT_CATEGORIES, {"num_queries": 10},
                                seed=1, extra={**SQUARE_64, **(extra or {})})


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


def test_canvas_holds_every_image_at_the_training_resize() -> None:
    # Landscape 120x160 and portrait 160x120 at shorter side 128, longer <= 160:
    # both stay 120x160 / 160x120, so the canvas must be 160 high and 160 wide.
    assert choose_canvas([(120, 160), (160, 120)], 128, 160) == (160, 160)
    assert choose_canvas([(120, 160), (150, 200)], 128, 160) == (128, 160)  # landscape only
    assert choose_canvas([(192, 192)], 128, 128) == (128, 128)  # the demo model's square
    assert choose_canvas([(100, 100)], 100, 100) == (128, 128)  # rounded up to stride 32
    assert choose_canvas([(480, 640), (640, 427)], 800, 1333) == (1216, 1088)  # COCO-like


def test_checkpoint_and_training_rules() -> None:
    assert checkpoint_rule({"train_config": {"scales": [96, 128], "max_size": 160}}) == (128, 160)
    assert checkpoint_rule({"training_resize": {"shorter": 64, "max_size": 96, "padded": True},
                            "train_config": {"scales": [128]}}) == (64, 96)  # the record wins
    assert checkpoint_rule({"model": {}}) == (800, 1333)  # official weights: the paper's rule
    assert training_rule([(120, 160), (160, 120), (96, 176)], default=192) == (128, 214)
    assert training_rule([], default=192) == (192, 320)


HARD_CATEGORIES = ((3, "circle"), (8, "square"), (21, "triangle"), (34, "star"), (55, "cross"))


@pytest.mark.slow
def test_pipeline_on_a_users_dataset(tmp_path: Path) -> None:
    """``pipeline --data`` on the hard kind of dataset: sub-folders, odd names, grayscale
    files, portrait and landscape sizes; calibration on train, INT8 budget on val."""
    from runtime.cli import main

    data = tmp_path / "my data"
    assert main(["make-dataset", "shapes-hard", "--out", str(data), "--num-train", "6",
                 "--num-val", "4", "--sizes", "64x96", "96x64", "--seed", "2"]) == 0
    ckpt = _tiny_checkpoint(tmp_path / "hard.pth", {"training_resize": {
        "shorter": 64, "max_size": 96, "padded": True}}, HARD_CATEGORIES)
    config = PipelineConfig(out=str(tmp_path / "run"), data=str(data), checkpoint=str(ckpt),
                            max_images=4, calib_images=3, quant_eval_images=2, runs=2, warmup=1,
                            measure_memory=False, build_engines=False, progress=False)
    lines: list[str] = []
    result = run_pipeline(config, log=lines.append)
    assert result.canvas == (96, 96)  # portrait and landscape at 64 / 96 both fit
    assert result.stage_status["dataset"] == "checked"
    described = json.loads((result.out / "dataset.json").read_text())
    assert described["splits"] == {"train": {"images": 6, "annotations": described["splits"]
                                             ["train"]["annotations"]},
                                   "val": {"images": 4, "annotations": described["splits"]
                                           ["val"]["annotations"]}}
    assert set(described["categories"]) == {"3", "8", "21", "34", "55"}
    assert described["orientation"]["square"] == 0
    quant = json.loads((result.artifacts / "model_int8.quant.json").read_text())
    assert quant["ground_truth"] == "annotations" and quant["num_eval_images"] == 2
    doc = json.loads((result.report_dir / "report.json").read_text())
    ok = {(r["backend"], r["precision"]) for r in doc["rows"] if r["status"] == "ok"}
    assert {("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")} <= ok
    assert any("canvas 96x96" in line for line in lines)

    # A checkpoint for other classes is refused before any export.
    other = _tiny_checkpoint(tmp_path / "other.pth")
    with pytest.raises(DataError, match="checkpoint's classes"):
        run_pipeline(PipelineConfig(out=str(tmp_path / "r2"), data=str(data),
                                    checkpoint=str(other), progress=False), log=lambda _: None)


def test_pipeline_data_needs_a_model(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--checkpoint .* or --train-minutes"):
        run_pipeline(PipelineConfig(out=str(tmp_path), data=str(tmp_path)))
    with pytest.raises(InputError, match="--canvas"):
        run_pipeline(PipelineConfig(out=str(tmp_path), canvas=(100, 128)))
