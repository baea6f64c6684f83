"""Detector end to end on tiny ONNX models with the detr-edge contract (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_onnx import BOXES, make_tiny_onnx, tiny_meta

from runtime.backends.tensorrt_backend import tensorrt_available
from runtime.decode import box_cxcywh_to_xyxy
from runtime.detector import Detector
from runtime.engine_file import write_engine_file
from runtime.errors import BackendUnavailableError, InputError, ModelFormatError
from runtime.metadata import DecodingDefaults
from runtime.preprocess import preprocess


@pytest.mark.parametrize("with_mask", [False, True])
def test_boxes_map_to_original_pixels(tmp_path, with_mask: bool) -> None:
    # Zero weights: outputs are exactly the biases, so boxes are known in advance.
    meta = tiny_meta(64, 64, with_mask=with_mask)
    det = Detector(make_tiny_onnx(tmp_path / "m.onnx", meta, weight_scale=0.0))
    image = np.full((50, 200, 3), 120, dtype=np.uint8)  # h=50, w=200 -> scale 0.32, 16x64
    result = det.detect(image)[0]
    assert result.labels.tolist() == [0, 1, 2]  # slots 0..2 are objects, sorted by score
    assert result.class_names == ["circle", "square", "triangle"]
    assert result.category_ids.tolist() == [3, 7, 11]
    if with_mask:  # boxes relative to the valid region = the whole original image
        ref_h, ref_w = 50, 200
    else:  # boxes relative to the whole 64x64 canvas = 200x200 original pixels
        ref_h, ref_w = 64 / 0.32, 64 / 0.32
    expected = box_cxcywh_to_xyxy(BOXES[:3]) * np.array([ref_w, ref_h, ref_w, ref_h])
    expected[:, 0::2] = expected[:, 0::2].clip(0, 200)
    expected[:, 1::2] = expected[:, 1::2].clip(0, 50)
    np.testing.assert_allclose(result.boxes, expected, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("batch_size", [2, None])
def test_batching_matches_single_images(tmp_path, batch_size: int | None) -> None:
    meta = tiny_meta(48, 64, batch_size=batch_size, with_mask=True)
    det = Detector(make_tiny_onnx(tmp_path / "m.onnx", meta, weight_scale=0.5),
                   batch_size=None if batch_size else 2)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(rng.integers(10, 90), rng.integers(10, 90), 3),
                           dtype=np.uint8) for _ in range(5)]
    together = det.detect(images, second_best=True)
    assert len(together) == 5
    for image, res in zip(images, together):
        alone = det.detect([image], second_best=True)[0]
        np.testing.assert_allclose(res.scores, alone.scores, rtol=1e-5)
        np.testing.assert_allclose(res.boxes, alone.boxes, rtol=1e-5, atol=1e-3)
        assert (res.boxes[:, 2] <= image.shape[1]).all() and (res.boxes[:, 3] <= image.shape[0]).all()
        assert len(res) == 6  # second_best keeps every query


def test_decoding_defaults_and_overrides(tmp_path) -> None:
    meta = tiny_meta(decoding=DecodingDefaults(score_threshold=0.0, top_k=2))
    det = Detector(make_tiny_onnx(tmp_path / "m.onnx", meta))
    img = Image.new("L", (40, 30), 99)
    assert len(det.detect(img)[0]) == 2  # meta top_k
    assert len(det.detect(img, top_k=10)[0]) == 3  # paper mode: 3 object slots
    assert len(det.detect(img, top_k=10, second_best=True)[0]) == 6
    assert len(det.detect(img, score_threshold=1.0)[0]) == 0


def test_preprocessed_inputs_and_infer(tmp_path) -> None:
    meta = tiny_meta(32, 48, batch_size=1)
    det = Detector(make_tiny_onnx(tmp_path / "m.onnx", meta))
    batch = preprocess([np.zeros((20, 20, 3), np.uint8)], meta)
    logits, boxes = det.infer(batch.images)
    assert logits.shape == (1, 6, 4) and boxes.shape == (1, 6, 4)
    assert len(det.detect(batch)[0]) == 3
    assert len(det.detect(batch.images)[0]) == 3  # already-preprocessed array
    with pytest.raises(InputError, match=r"preprocessed array has shape \(1, 3, 64, 64\)"):
        det.detect(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match=r"model expects \[B, 3, 32, 48\]"):
        det.infer(np.zeros((1, 3, 48, 32), np.float32))
    with pytest.raises(InputError, match="fixed batch size of 1"):
        det.infer(np.zeros((2, 3, 32, 48), np.float32))
    with pytest.raises(InputError, match="fixed batch size of 1"):
        Detector(tmp_path / "m.onnx", batch_size=4)


def test_bad_model_files(tmp_path) -> None:
    good = make_tiny_onnx(tmp_path / "m.onnx", tiny_meta())
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelFormatError, match="truncated.onnx"):
        Detector(truncated)
    text = tmp_path / "notes.onnx"
    text.write_text("hello")
    with pytest.raises(ModelFormatError, match="notes.onnx"):
        Detector(text)
    with pytest.raises(InputError, match="not found"):
        Detector(tmp_path / "missing.onnx")
    import onnx

    model = onnx.load(str(good))
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    with pytest.raises(ModelFormatError, match="plain.onnx.*no 'detr_edge' metadata"):
        Detector(plain)
    with pytest.raises(InputError, match="unknown backend"):
        Detector(good, backend="openvino")
    with pytest.raises(InputError, match="needs a detr-edge engine file"):
        Detector(good, backend="tensorrt")


def test_resolve_providers_order_and_aliases() -> None:
    from runtime.backends.onnxruntime_backend import resolve_providers

    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("auto", gpu_build[::-1]) == gpu_build  # fastest first, CPU last
    assert resolve_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert resolve_providers(["cuda", ("cpu", {})], gpu_build) == [
        "CUDAExecutionProvider", ("CPUExecutionProvider", {})]
    assert resolve_providers("trt", gpu_build) == ["TensorrtExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="TensorrtExecutionProvider is not available"):
        resolve_providers(["tensorrt"], ["CPUExecutionProvider"])
    with pytest.raises(InputError, match="empty provider list"):
        resolve_providers([], gpu_build)


def test_unavailable_providers_and_tensorrt(tmp_path) -> None:
    import onnxruntime

    good = make_tiny_onnx(tmp_path / "m.onnx", tiny_meta())
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider is not available"):
            Detector(good, providers=["cuda"])
    assert Detector(good, providers=["cpu"]).backend.name == "onnxruntime[CPUExecutionProvider]"
    engine = tmp_path / "m.engine"
    write_engine_file(engine, tiny_meta(), b"not a real plan", tensorrt_version="10.13.0.35",
                      gpu_name="none", compute_capability="0.0")
    if tensorrt_available() is None:
        pytest.skip("TensorRT is installed here: the missing-TensorRT path cannot be tested")
    with pytest.raises(BackendUnavailableError, match="TensorRT not installed"):
        Detector(engine)  # auto -> native TensorRT for an engine file
    with pytest.raises(InputError, match="use backend 'tensorrt'"):
        Detector(engine, backend="onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("with_mask", [False, True])
def test_exported_tiny_detr_matches_torch(tmp_path, with_mask: bool) -> None:
    """A random-init detr-tiny exported by export/onnx_export.py: Detector.detect equals
    runtime preprocessing -> PyTorch model -> runtime decoding (+ clipping)."""
    torch = pytest.importorskip("torch")
    from detr import build_model
    from export.onnx_export import ExportConfig, export_detr
    from runtime.decode import decode
    from runtime.metadata import ModelMeta

    torch.manual_seed(0)
    model = build_model("detr-tiny", num_classes=3).eval()
    meta = ModelMeta(preset="detr-tiny", input_height=64, input_width=96,
                     class_names=["circle", "square", "triangle"], label_map=[3, 7, 11])
    out = tmp_path / "tiny.onnx"
    export_detr(model, meta, ExportConfig(checkpoint="<memory>", out=str(out), height=64,
                                          width=96, dynamic_batch=True, with_mask=with_mask,
                                          calib_images=1))
    det = Detector(out, batch_size=2)
    assert det.meta.with_mask == with_mask and det.backend.batch_size is None
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=s, dtype=np.uint8)
              for s in [(50, 120, 3), (200, 100, 3), (64, 96)]]
    got = det.detect(images, second_best=True, top_k=10)
    batch = preprocess(images, det.meta)
    with torch.no_grad():
        x = torch.from_numpy(batch.images)
        outputs = model(x, mask=torch.from_numpy(batch.mask)) if with_mask else model(x)
    if with_mask:
        target = batch.orig_sizes.astype(np.float64)
    else:
        target = np.array([[64, 96]]) / batch.scales[:, None]
    ref = decode(outputs["pred_logits"].numpy(), outputs["pred_boxes"].numpy(), target,
                 second_best=True, top_k=10)
    for g, r, (h, w) in zip(got, ref, batch.orig_sizes):
        np.testing.assert_allclose(g.scores, r.scores, rtol=1e-3, atol=1e-4)
        np.testing.assert_array_equal(g.labels, r.labels)
        r.boxes[:, 0::2] = r.boxes[:, 0::2].clip(0, w)
        r.boxes[:, 1::2] = r.boxes[:, 1::2].clip(0, h)
        # ONNX vs torch FP32 differences: boxes agree within 0.05% of the image size.
        np.testing.assert_allclose(g.boxes, r.boxes, atol=5e-4 * max(h, w))


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_native_tensorrt_matches_onnxruntime(tmp_path, cuda_graph: bool) -> None:
    """Engine built from the tiny contract ONNX: native TensorRT == ONNX Runtime CPU."""
    reason = tensorrt_available()
    if reason is not None:
        pytest.skip(f"needs TensorRT + cuda-python + a GPU: {reason}")
    from export.engine_builder import EngineBuildConfig, build_engine

    onnx_path = make_tiny_onnx(tmp_path / "m.onnx", tiny_meta(64, 96, with_mask=True),
                               weight_scale=0.5)
    # min batch 2: the last of the 5 images runs alone, padded up to the profile minimum.
    engine = build_engine(EngineBuildConfig(onnx_path=str(onnx_path),
                                            out_path=str(tmp_path / "m.engine"),
                                            min_batch=2, opt_batch=2, max_batch=4)).path
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(rng.integers(20, 200), rng.integers(20, 200), 3),
                           dtype=np.uint8) for _ in range(5)]
    ref = Detector(onnx_path, providers=["cpu"]).detect(images, second_best=True)
    with Detector(engine, backend_options={"cuda_graph": cuda_graph}) as trt_det:
        assert trt_det.backend.max_batch_size == 4 and trt_det.batch_size == 4
        for _ in range(2):  # second round replays the captured graphs
            got = trt_det.detect(images, second_best=True)
            for g, r in zip(got, ref):
                np.testing.assert_allclose(g.scores, r.scores, rtol=1e-3, atol=1e-4)
                np.testing.assert_allclose(g.boxes, r.boxes, atol=0.05)
