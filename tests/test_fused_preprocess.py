"""In-graph preprocessing (``export/fused_preprocess.py``) against ``runtime.preprocess``."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from tiny_onnx import make_tiny_onnx, tiny_meta

from export.fused_preprocess import (
    check_fused,
    fuse_preprocess,
    preprocess_graph,
    resize_matrices,
)
from runtime.detector import Detector
from runtime.errors import InputError
from runtime.fused import fused_source_size, stack_frames
from runtime.preprocess import preprocess


@pytest.mark.parametrize(("src", "dst"), [((60, 90), (20, 30)), ((7, 5), (14, 10)),
                                          ((33, 47), (33, 47))])
def test_resize_matrices_are_pil_bilinear(src, dst) -> None:
    """Ry @ image @ Rx^T equals PIL's float ('F') bilinear resize, antialiasing included."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, size=src).astype(np.float32)
    ry, rxt = resize_matrices(src[0], src[1], dst[0], dst[1])
    assert ry.shape == (dst[0], src[0]) and rxt.shape == (src[1], dst[1])
    want = np.asarray(Image.fromarray(image, mode="F").resize((dst[1], dst[0]),
                                                              Image.Resampling.BILINEAR))
    np.testing.assert_allclose(ry @ image @ rxt, want, atol=2e-3)
    np.testing.assert_allclose(ry.sum(1), 1.0, atol=1e-5)  # rows are weights: constants stay


@pytest.mark.parametrize(("source", "canvas"), [((180, 320), (64, 64)), ((50, 30), (64, 96)),
                                                ((64, 64), (64, 64))])
def test_graph_canvas_matches_numpy_preprocess(source, canvas) -> None:
    """Downscale with padding, upscale, and same size: the graph's canvas is the numpy
    one within PIL's uint8 rounding between its two passes (< 1 grey level)."""
    meta = tiny_meta(*canvas)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(2, *source, 3), dtype=np.uint8)
    session = ort.InferenceSession(preprocess_graph(meta, *source).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(["canvas"], {"images": frames})
    want = preprocess(list(frames), meta).images
    one_level = 1.0 / (255 * min(meta.std))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= one_level
    assert np.abs(got - want).mean() < 0.3 * one_level  # rounding: uniform, <= 0.5 level


def test_fused_tiny_model_detects_like_plain(tmp_path) -> None:
    meta = tiny_meta(64, 64)
    plain_path = make_tiny_onnx(tmp_path / "plain.onnx", meta, weight_scale=0.05)
    fused, fused_meta = fuse_preprocess(onnx.load(plain_path), meta, 120, 200)
    from export.onnx_meta import check_graph_matches_meta, write_meta

    write_meta(fused, fused_meta)
    check_graph_matches_meta(fused, fused_meta)
    onnx.save(fused, tmp_path / "fused.onnx")
    rng = np.random.default_rng(2)
    frames = list(rng.integers(0, 256, size=(3, 120, 200, 3), dtype=np.uint8))
    with Detector(plain_path) as plain, Detector(tmp_path / "fused.onnx") as fast:
        assert fast.fused_source == (120, 200) and plain.fused_source is None
        want = plain.detect(frames, score_threshold=0.0)
        got = fast.detect(frames, score_threshold=0.0)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)


def test_fused_model_refuses_other_frame_sizes(tmp_path) -> None:
    meta = tiny_meta(64, 64)
    _, fused_meta = fuse_preprocess(onnx.load(make_tiny_onnx(tmp_path / "p.onnx", meta)),
                                    meta, 48, 80)
    assert fused_source_size(fused_meta) == (48, 80)
    with pytest.raises(InputError, match="fused-preprocess for uint8 frames of 48x80x3"):
        stack_frames([np.zeros((50, 80, 3), np.uint8)], fused_meta)


def test_mask_model_gets_its_mask_in_the_graph(tmp_path) -> None:
    """A with-mask model: the fused graph builds the constant mask of the source size
    (valid [:h, :w]) and detects like the plain graph fed runtime.preprocess's mask; the
    mask matters here (a wrong one moves the tiny model's logits)."""
    from export.onnx_meta import check_graph_matches_meta, write_meta

    meta = tiny_meta(64, 64, with_mask=True)
    plain_path = make_tiny_onnx(tmp_path / "m.onnx", meta, weight_scale=0.5)
    fused, fused_meta = fuse_preprocess(onnx.load(plain_path), meta, 48, 80)
    assert [i.name for i in fused.graph.input] == ["images"]
    write_meta(fused, fused_meta)
    check_graph_matches_meta(fused, fused_meta)
    onnx.save(fused, tmp_path / "fused.onnx")
    frames = list(np.random.default_rng(3).integers(0, 256, size=(2, 48, 80, 3),
                                                    dtype=np.uint8))
    with Detector(plain_path) as plain, Detector(tmp_path / "fused.onnx") as fast:
        batch = fast.prepare(frames)
        assert not batch.mask[:, :38, :].any() and batch.mask[:, 38:, :].all()
        logits, _ = fast.infer_batch(batch)
        ref, _ = plain.infer_batch(preprocess(frames, meta))
        no_mask = plain.backend.infer(preprocess(frames, meta).images,
                                      np.zeros((2, 64, 64), bool))[0]
        want = plain.detect(frames, score_threshold=0.0)
        got = fast.detect(frames, score_threshold=0.0)
    np.testing.assert_allclose(logits, ref, atol=1e-3)
    assert np.abs(no_mask - ref).max() > 1e-2  # the mask is not ignored by the model
    parity = check_fused(onnx.load(plain_path), fused, meta, frames, "random frames")
    assert parity.passed and parity.detections_ref > 0
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)


def test_cli_option_parses_sizes() -> None:
    import argparse

    from export.commands.export_onnx import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--checkpoint", "c.pth", "--out", "m.onnx", "--height", "128", "--width", "128"]
    assert parser.parse_args(base).fused_preprocess is None
    assert parser.parse_args([*base, "--fused-preprocess", "720x1280"]).fused_preprocess == \
        (720, 1280)
    assert parser.parse_args([*base, "--fused-preprocess"]).fused_preprocess == "canvas"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--fused-preprocess", "720-1280"])
