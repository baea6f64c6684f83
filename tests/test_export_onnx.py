"""export-onnx: parity with PyTorch (FP32 max abs error <= 1e-4 on logits and boxes),
dynamic batch at batches other than the traced one, the mask input on padded
batches, metadata round trip, no CumSum, LayerNormalization kept whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from detr import build_model
from export.check_onnx import CheckConfig, check_onnx
from export.onnx_export import ExportConfig, export_detr
from export.onnx_meta import read_meta
from runtime.errors import InputError
from runtime.metadata import ModelMeta

TOL = 1e-4  # FP32 acceptance: max abs error on logits and boxes
CLASSES = ["circle", "square", "triangle"]
LABEL_MAP = [2, 5, 7]


def _meta(preset: str) -> ModelMeta:
    return ModelMeta(preset=preset, input_height=1, input_width=1, class_names=CLASSES,
                     label_map=LABEL_MAP)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("detr-tiny", len(CLASSES)).eval()


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real image files of different sizes (smooth random colour fields)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(120, 160), (90, 90), (160, 100), (100, 140), (80, 120)]):
        small = rng.integers(0, 255, (h // 10, w // 10, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(root / f"img{i}.png")
    return root


# The dynamo exporter takes ~5x longer than TorchScript (docs/ARCHITECTURE.md): slow.
EXPORTERS = ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=EXPORTERS)
def dynamic_export(request, tiny, tmp_path_factory, images_dir):
    out = tmp_path_factory.mktemp("dyn")
    config = ExportConfig(checkpoint="-", out=str(out / "tiny.onnx"), height=96, width=128,
                          dynamic_batch=True, calib_data=str(images_dir), calib_images=5,
                          report=str(out / "report.json"), exporter=request.param)
    return config, export_detr(tiny, _meta("detr-tiny"), config)


def _ort(path: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["logits", "boxes"], feed)


def _torch(model, images: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(images), None if mask is None else torch.from_numpy(mask))
    return [out["pred_logits"].numpy(), out["pred_boxes"].numpy()]


def test_dynamic_batch_parity(tiny, dynamic_export) -> None:
    config, result = dynamic_export
    assert result.parity.passed, result.format()
    names = [c.name for c in result.parity.cases]
    assert names == ["batch 1 (dynamic)", "batch 4 (dynamic)"]
    assert all(c.source.startswith("images from") for c in result.parity.cases)
    assert all(c.matched_fraction in (None, 1.0) for c in result.parity.cases)
    # Batch 3: neither the traced batch (2) nor a parity batch.
    images = np.random.default_rng(1).standard_normal((3, 3, 96, 128), dtype=np.float32)
    for ref, got in zip(_torch(tiny, images), _ort(config.out, {"images": images})):
        assert ref.shape == got.shape
        assert np.abs(ref - got).max() <= TOL
    report = json.loads(Path(config.report).read_text())
    assert report["parity"]["passed"] is True
    assert report["parity"]["cases"][1]["max_abs"]["logits"] <= TOL


def test_graph_structure(dynamic_export) -> None:
    config, _ = dynamic_export
    graph = onnx.load(config.out)
    ops = {n.op_type for n in graph.graph.node}
    assert "CumSum" not in ops
    assert "LayerNormalization" in ops  # opset 17: one node, not a ReduceMean/Pow chain
    assert not ops & {"ReduceMean", "Pow"}
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.graph.input) + list(graph.graph.output)]
    assert dims == [["batch", 3, 96, 128], ["batch", 50, 4], ["batch", 50, 4]]
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["logits", "boxes"]
    report = check_onnx(config.out, CheckConfig(trt_version=10, num_inputs=1))
    assert report.ok, report.format()


def test_metadata_round_trip(dynamic_export) -> None:
    config, _ = dynamic_export
    meta = read_meta(onnx.load(config.out), config.out)
    assert meta.class_names == CLASSES and meta.label_map == LABEL_MAP
    assert (meta.input_height, meta.input_width) == (96, 128)
    assert meta.batch_size is None and meta.with_mask is False
    assert meta.precision == "fp32" and meta.preset == "detr-tiny"
    assert meta.exporter_version
    assert meta.extra["opset"] == {"torchscript": 17, "dynamo": 18}[config.exporter]
    assert meta.extra["exporter"].startswith(f"torch.onnx {config.exporter}".replace(
        "torchscript", "TorchScript"))
    opset = next(o.version for o in onnx.load(config.out).opset_import if o.domain == "")
    assert opset == meta.extra["opset"]


def test_fixed_batch_other_size(tiny, tmp_path) -> None:
    config = ExportConfig(checkpoint="-", out=str(tmp_path / "b2.onnx"), height=64, width=64,
                          batch_size=2)
    result = export_detr(tiny, _meta("detr-tiny"), config)
    assert result.parity.passed, result.format()
    assert [c.name for c in result.parity.cases] == ["batch 2"]
    graph = onnx.load(config.out)
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert read_meta(graph).batch_size == 2


def test_mask_input_padded_batch(tiny, tmp_path, images_dir) -> None:
    config = ExportConfig(checkpoint="-", out=str(tmp_path / "mask.onnx"), height=96, width=128,
                          dynamic_batch=True, with_mask=True, calib_data=str(images_dir))
    result = export_detr(tiny, _meta("detr-tiny"), config)
    assert result.parity.passed, result.format()
    graph = onnx.load(config.out)
    assert "CumSum" not in {n.op_type for n in graph.graph.node}  # matmul cumsum in the model
    assert [i.name for i in graph.graph.input] == ["images", "mask"]
    assert read_meta(graph).with_mask is True
    # A padded batch of 3 with different valid sizes, checked directly.
    rng = np.random.default_rng(2)
    images = rng.standard_normal((3, 3, 96, 128), dtype=np.float32)
    mask = np.zeros((3, 96, 128), dtype=bool)
    for i, (h, w) in enumerate([(96, 64), (64, 128), (80, 100)]):
        mask[i, h:, :] = True
        mask[i, :, w:] = True
        images[i][:, mask[i]] = 0.0
    ref = _torch(tiny, images, mask)
    got = _ort(config.out, {"images": images, "mask": mask})
    for r, g in zip(ref, got):
        assert np.abs(r - g).max() <= TOL
    # The mask really changes the result (boxes are relative to the valid region).
    unmasked = _torch(tiny, images)
    assert np.abs(unmasked[1] - got[1]).max() > 1e-3


def test_opset_below_17_rejected(tiny, tmp_path) -> None:
    with pytest.raises(InputError, match="TensorRT#2781"):
        ExportConfig(checkpoint="-", out=str(tmp_path / "x.onnx"), height=64, width=64,
                     opset=16).validate()
    with pytest.raises(InputError, match="--exporter: must be one of torchscript, dynamo"):
        ExportConfig(checkpoint="-", out=str(tmp_path / "x.onnx"), height=64, width=64,
                     exporter="jit").validate()
    # Dynamo writes opset >= 18 only: refused before any export work starts.
    with pytest.raises(InputError, match="--opset: 17 < 18: the dynamo exporter"):
        export_detr(tiny, _meta("detr-tiny"), ExportConfig(
            checkpoint="-", out=str(tmp_path / "x.onnx"), height=64, width=64, opset=17,
            exporter="dynamo"))
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(InputError, match="multiples of 32"):
        ExportConfig(checkpoint="-", out=str(tmp_path / "x.onnx"), height=70, width=64).validate()


def test_cli_from_checkpoint(tiny, tmp_path) -> None:
    from detr.checkpoint import save_checkpoint
    from runtime.cli import main

    ckpt = tmp_path / "tiny.pth"
    save_checkpoint(ckpt, tiny, tiny.config, CLASSES, LABEL_MAP)
    out = tmp_path / "cli.onnx"
    code = main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(out), "--height", "64",
                 "--width", "64", "--report", str(tmp_path / "r.json")])
    assert code == 0
    meta = read_meta(onnx.load(out))
    assert meta.label_map == LABEL_MAP and meta.preset == "detr-tiny"
    assert main(["export-onnx", "--checkpoint", str(tmp_path / "missing.pth"), "--out",
                 str(out), "--height", "64", "--width", "64"]) == 2
    # The dynamo exporter refuses opset 17 up front: one line, exit 2, file untouched.
    before = out.read_bytes()
    assert main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(out), "--height", "64",
                 "--width", "64", "--exporter", "dynamo", "--opset", "17"]) == 2
    assert out.read_bytes() == before


@pytest.mark.slow
def test_r50_small_input(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("detr-r50", len(CLASSES)).eval()
    config = ExportConfig(checkpoint="-", out=str(tmp_path / "r50.onnx"), height=128, width=128)
    result = export_detr(model, _meta("detr-r50"), config)
    assert result.parity.passed, result.format()
    # Encoder 2 per layer, decoder 3 per layer (+ shared final norm); onnxslim may fold
    # the first decoder norm (its input is constant: tgt starts at zero).
    assert result.graph_ops.get("LayerNormalization", 0) >= 6 * 2 + 6 * 3 - 1
    assert not {"CumSum", "ReduceMean", "Pow"} & set(result.graph_ops)
