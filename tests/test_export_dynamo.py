"""The dynamo exporter (``export-onnx --exporter dynamo``) end to end on one export of
DETR-tiny with the mask input and a dynamic batch: parity with PyTorch on a padded
batch of a size neither exported nor in the parity report, check-onnx, and the FP16
and INT8 variants built from that graph. One export serves every test: it takes
~5x the TorchScript export (docs/ARCHITECTURE.md), so the module is slow.
The maskless dynamic-batch graph runs the shared tests in test_export_onnx.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from detr import build_model
from export.check_onnx import CheckConfig, check_onnx
from export.fp16 import convert_to_fp16
from export.int8.config import QuantizeConfig
from export.int8.nodes import group_blocks, quantizable_nodes
from export.int8.ort_fusion_layout import ort_optimized_graph, unfused_weight_ops
from export.int8.quantize import quantize_int8
from export.onnx_export import ExportConfig, export_detr
from export.onnx_meta import read_meta
from runtime.metadata import ModelMeta

pytest.importorskip("onnxscript", reason="onnxscript not installed (export extra)")
pytestmark = pytest.mark.slow

TOL = 1e-4  # FP32 max abs error on logits and boxes, as for the TorchScript export
FP16_LOGITS_TOL, FP16_BOXES_TOL = 0.05, 0.01  # as tests/test_fp16.py
H, W = 64, 96


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dynamo")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(60, 90), (48, 96), (64, 40), (50, 70), (64, 96), (30, 60)]):
        small = rng.integers(0, 255, (h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(images / f"im{i}.png")
    torch.manual_seed(0)
    model = build_model("detr-tiny", 3).eval()
    meta = ModelMeta(preset="detr-tiny", input_height=1, input_width=1,
                     class_names=["a", "b", "c"], label_map=[1, 4, 9])
    config = ExportConfig(checkpoint="-", out=str(root / "tiny.onnx"), height=H, width=W,
                          dynamic_batch=True, with_mask=True, exporter="dynamo",
                          calib_data=str(images), calib_images=6)
    return model, config, export_detr(model, meta, config), images


def _padded_batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch 3 (exported at 2, parity cases 1 and 4) with three valid regions."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((3, 3, H, W), dtype=np.float32)
    mask = np.zeros((3, H, W), dtype=bool)
    for i, (h, w) in enumerate([(64, 48), (32, 96), (40, 70)]):
        mask[i, h:, :] = True
        mask[i, :, w:] = True
    images[mask[:, None].repeat(3, axis=1)] = 0.0
    return images, mask


def _torch(model, images: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(images), torch.from_numpy(mask))
    return [out["pred_logits"].numpy(), out["pred_boxes"].numpy()]


def _ort(model: str | onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(
        ["logits", "boxes"], feed)


def test_parity_on_another_batch_size(exported) -> None:
    model, config, result, _ = exported
    assert result.parity.passed, result.format()
    assert [c.batch_size for c in result.parity.cases] == [1, 4]
    images, mask = _padded_batch(1)
    ref = _torch(model, images, mask)
    got = _ort(config.out, {"images": images, "mask": mask})
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        assert np.abs(r - g).max() <= TOL
    # The mask matters at this size (else the padded case would test nothing).
    with torch.no_grad():
        unmasked = model(torch.from_numpy(images))["pred_boxes"].numpy()
    assert np.abs(unmasked - got[1]).max() > 1e-3


def test_graph_checks_and_metadata(exported) -> None:
    _, config, _, _ = exported
    graph = onnx.load(config.out)
    ops = {n.op_type for n in graph.graph.node}
    assert "CumSum" not in ops and "LayerNormalization" in ops
    assert not ops & {"ReduceMean", "Pow"}
    assert [o.version for o in graph.opset_import if o.domain == ""] == [18]
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.graph.input) + list(graph.graph.output)]
    assert dims == [["batch", 3, H, W], ["batch", H, W], ["batch", 50, 4], ["batch", 50, 4]]
    meta = read_meta(graph)
    assert meta.with_mask and meta.batch_size is None and meta.label_map == [1, 4, 9]
    assert meta.extra["opset"] == 18 and meta.extra["exporter"].startswith("torch.onnx dynamo")
    for trt in (10, 11):
        report = check_onnx(config.out, CheckConfig(trt_version=trt, num_inputs=1))
        assert report.ok, report.format()


def test_fp16_variant(exported) -> None:
    """What ``--precision fp16`` does after the export, on the dynamo graph."""
    model, config, _, _ = exported
    images, mask = _padded_batch(2)
    calib = [{"images": images[:2], "mask": mask[:2]}]
    fp16, report = convert_to_fp16(onnx.load(config.out), calib)
    kept = {k.op_type for k in report.kept}
    assert {"LayerNormalization", "Softmax", "Sigmoid"} <= kept
    assert report.num_fp16_nodes > report.num_fp32_nodes > 0
    logits, boxes = _ort(fp16, {"images": images, "mask": mask})
    ref_logits, ref_boxes = _torch(model, images, mask)
    assert np.abs(logits - ref_logits).max() <= FP16_LOGITS_TOL
    assert np.abs(boxes - ref_boxes).max() <= FP16_BOXES_TOL


def test_int8_quantize(exported, tmp_path: Path) -> None:
    _, config, _, images_dir = exported
    out = tmp_path / "tiny.int8.onnx"
    int8, report = quantize_int8(config.out, str(images_dir), QuantizeConfig(
        out_path=str(out), calib_images=6, eval_images=0, latency_runs=0, threads=1,
        progress=False, cache_dir=str(tmp_path / "cache")))
    assert report.quantized_nodes == report.candidate_nodes > 21  # 20 body convs + input_proj...
    # Nodes carry their module path, so the FP32 fallback finds DETR's blocks.
    graph = onnx.load(config.out)
    blocks = group_blocks(graph, quantizable_nodes(graph))
    assert set(blocks) == {"backbone.stem", "input_proj", "class_embed", "bbox_embed",
                           *(f"backbone.layer{i}" for i in range(1, 5)),
                           *(f"{part}.layers.{i}" for part in ("encoder", "decoder")
                             for i in range(3))}
    # The position encoding's cumulative-sum MatMuls (mask x constant 0/1 triangle) stay float.
    producer = {out: n.op_type for n in int8.graph.node for out in n.output}
    cumsums = [n for n in int8.graph.node
               if n.op_type == "MatMul" and n.name.startswith("/position_embedding/")]
    assert len(cumsums) == 2
    assert all(producer.get(i) != "DequantizeLinear" for n in cumsums for i in n.input)
    assert unfused_weight_ops(ort_optimized_graph(int8)) == []  # integer kernels in ORT
    assert check_onnx(str(out), CheckConfig(trt_version=10, num_inputs=1)).ok
    images, mask = _padded_batch(3)
    fp32 = _ort(config.out, {"images": images, "mask": mask})
    got = _ort(str(out), {"images": images, "mask": mask})
    assert np.isfinite(got[0]).all() and np.abs(got[1] - fp32[1]).max() < 0.2
