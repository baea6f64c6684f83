"""What build-engine writes besides the engine: the per-layer summary of TensorRT's
engine inspector, the bare plan, and the argument checks made before TensorRT."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.engine_output import precision_warning, summarize_layers, write_plan_file
from runtime.errors import InputError

# Shaped like IEngineInspector.get_engine_information(LayerInformationFormat.JSON) at
# ProfilingVerbosity.DETAILED (the "Format/Datatype" strings are TensorRT's own).
INSPECTOR = {
    "Layers": [
        {"Name": "conv1 + relu1", "LayerType": "CaskConvolution",
         "Outputs": [{"Name": "x1", "Format/Datatype": "Channel major FP16 format where "
                      "channel % 8 == 0"}]},
        {"Name": "{ForeignNode[transformer...]}", "LayerType": "Myelin",
         "Outputs": [{"Name": "x2", "Format/Datatype": "Half"}]},
        {"Name": "logits_cast", "LayerType": "Reformat",
         "Outputs": [{"Name": "logits", "Format/Datatype": "Row major linear FP32"}]},
        {"Name": "q", "LayerType": "Scale",
         "Outputs": [{"Name": "q", "Format/Datatype": "Row major Int8 format"}]},
    ],
    "Bindings": ["images", "logits"],
}


def test_layer_summary_counts_precisions_and_types() -> None:
    summary = summarize_layers(INSPECTOR)
    assert summary["layers"] == 4
    assert summary["by_output_precision"] == {"fp16": 2, "fp32": 1, "int8": 1}
    assert summary["by_type"]["Myelin"] == 1 and summary["by_type"]["CaskConvolution"] == 1
    assert precision_warning(summary, "fp16") is None


def test_fp16_engine_without_fp16_layers_is_flagged() -> None:
    fp32_only = {"Layers": [{"Name": "a", "LayerType": "Myelin",
                             "Outputs": [{"Format/Datatype": "Row major linear FP32"}]}]}
    warning = precision_warning(summarize_layers(fp32_only), "fp16")
    assert warning is not None and "labelled fp16 but no layer outputs fp16" in warning
    assert precision_warning(summarize_layers(fp32_only), "fp32") is None
    with pytest.raises(ValueError, match="ProfilingVerbosity.DETAILED"):
        summarize_layers({"Layers": ["conv1", "relu1"]})  # names only: not detailed


def test_bare_plan_file(tmp_path: Path) -> None:
    write_plan_file(str(tmp_path / "m.plan"), b"\x01plan")
    assert (tmp_path / "m.plan").read_bytes() == b"\x01plan"
    with pytest.raises(InputError, match="empty plan"):
        write_plan_file(str(tmp_path / "e.plan"), b"")


def _onnx(tmp_path: Path, precision: str = "fp32", batch_size: int | None = None) -> str:
    pytest.importorskip("onnx")
    from tiny_onnx import make_tiny_onnx, tiny_meta

    meta = tiny_meta(32, 48, batch_size=batch_size, precision=precision)
    return str(make_tiny_onnx(tmp_path / f"m_{precision}.onnx", meta))


def test_arguments_refused_before_tensorrt(tmp_path: Path) -> None:
    from export.engine_plan import EngineBuildConfig, plan_build

    out = str(tmp_path / "m.engine")
    fp16 = _onnx(tmp_path, "fp16")
    with pytest.raises(InputError, match="already fp16 .* cannot become fp32"):
        plan_build(EngineBuildConfig(fp16, out, precision="fp32"))
    assert plan_build(EngineBuildConfig(fp16, out)).precision == "fp16"
    fp32 = _onnx(tmp_path)
    with pytest.raises(InputError, match="--builder-opt-level: must be 0..5"):
        plan_build(EngineBuildConfig(fp32, out, builder_opt_level=6))
    with pytest.raises(InputError, match=r"--verify: must be one of fail\|warn\|off"):
        plan_build(EngineBuildConfig(fp32, out, verify="maybe"))
    with pytest.raises(InputError, match="--calib-batch: only used when"):
        plan_build(EngineBuildConfig(fp32, out, calib_batch=4))
    with pytest.raises(InputError, match="DLA runs FP16 or INT8 only"):
        plan_build(EngineBuildConfig(fp32, out, dla_core=0, min_batch=1, max_batch=1))
    int8 = plan_build(EngineBuildConfig(fp32, out, precision="int8", opt_batch=2,
                                        calib_data=str(tmp_path)))
    assert int8.mode == "builder_flags" and int8.calib_batch == 2
    assert int8.calib_cache == f"{out}.calib-{int8.onnx_sha256[:16]}.cache"
