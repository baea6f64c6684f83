"""Set decoding against the official DETR PostProcess (computed here with torch)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.decode import box_cxcywh_to_xyxy, decode, decode_images, softmax, target_sizes
from runtime.errors import InputError
from runtime.metadata import ModelMeta
from runtime.preprocess import Batch

torch = pytest.importorskip("torch")


def _official_postprocess(logits: np.ndarray, boxes: np.ndarray, sizes: np.ndarray):
    """The official DETR PostProcess (models/detr.py), written out with torch."""
    out_logits, out_bbox = torch.from_numpy(logits), torch.from_numpy(boxes)
    prob = torch.nn.functional.softmax(out_logits, -1)
    scores, labels = prob[..., :-1].max(-1)
    cx, cy, w, h = out_bbox.unbind(-1)
    xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
    img_h, img_w = torch.from_numpy(sizes).unbind(1)
    scale = torch.stack([img_w, img_h, img_w, img_h], 1).to(xyxy.dtype)
    return prob, scores, labels, xyxy * scale[:, None, :]


def _random_outputs(seed: int, B: int = 3, Q: int = 20, K: int = 5):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((B, Q, K + 1)) * 3).astype(np.float32)
    boxes = rng.uniform(0.05, 0.95, size=(B, Q, 4)).astype(np.float32)
    sizes = rng.integers(20, 900, size=(B, 2))
    return logits, boxes, sizes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_second_best_equals_official_postprocess(seed: int) -> None:
    logits, boxes, sizes = _random_outputs(seed)
    _, scores, labels, xyxy = _official_postprocess(logits, boxes, sizes)
    dets = decode(logits, boxes, sizes, second_best=True)
    for b, det in enumerate(dets):
        order = torch.argsort(-scores[b], stable=True).numpy()
        assert len(det) == logits.shape[1]  # every slot kept
        np.testing.assert_allclose(det.scores, scores[b].numpy()[order], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(det.labels, labels[b].numpy()[order])
        np.testing.assert_allclose(det.boxes, xyxy[b].numpy()[order], rtol=1e-5, atol=1e-3)
        assert det.labels.dtype == np.int64 and det.scores.dtype == np.float32


@pytest.mark.parametrize("seed", [3, 4])
def test_default_drops_no_object_slots(seed: int) -> None:
    logits, boxes, sizes = _random_outputs(seed)
    prob, scores, labels, xyxy = _official_postprocess(logits, boxes, sizes)
    keep = prob.argmax(-1) != logits.shape[2] - 1  # paper: top class is a real object
    dets = decode(logits, boxes, sizes)
    assert sum(len(d) for d in dets) < logits.shape[0] * logits.shape[1]  # something dropped
    for b, det in enumerate(dets):
        kept = torch.nonzero(keep[b]).flatten()
        order = kept[torch.argsort(-scores[b, kept], stable=True)].numpy()
        np.testing.assert_array_equal(det.labels, labels[b].numpy()[order])
        np.testing.assert_allclose(det.scores, scores[b].numpy()[order], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(det.boxes, xyxy[b].numpy()[order], rtol=1e-5, atol=1e-3)


def test_hand_computed_single_slot() -> None:
    logits = np.log(np.array([[[0.2, 0.7, 0.1]]]))  # K=2: class 1 wins with p=0.7
    boxes = np.array([[[0.5, 0.5, 0.5, 0.25]]])
    det = decode(logits, boxes, np.array([[100, 200]]))[0]
    np.testing.assert_allclose(det.scores, [0.7], rtol=1e-6)
    assert det.labels.tolist() == [1]
    np.testing.assert_allclose(det.boxes, [[50, 37.5, 150, 62.5]], rtol=1e-6)
    assert box_cxcywh_to_xyxy(np.array([0.5, 0.5, 1.0, 1.0])).tolist() == [0, 0, 1, 1]


def test_threshold_top_k_and_empty() -> None:
    logits, boxes, sizes = _random_outputs(5)
    full = decode(logits, boxes, sizes, second_best=True)
    cut = decode(logits, boxes, sizes, second_best=True, score_threshold=0.5, top_k=3)
    for f, c in zip(full, cut):
        expected = f.scores[f.scores >= 0.5][:3]
        np.testing.assert_array_equal(c.scores, expected)
    empty = decode(logits, boxes, sizes, score_threshold=1.1)
    assert all(len(d) == 0 and d.boxes.shape == (0, 4) for d in empty)
    assert decode(np.zeros((0, 4, 3)), np.zeros((0, 4, 4)), np.zeros((0, 2))) == []
    with pytest.raises(InputError, match="boxes"):
        decode(logits, boxes[:, :-1], sizes)
    with pytest.raises(InputError, match="top_k"):
        decode(logits, boxes, sizes, top_k=-1)


@settings(max_examples=60, deadline=None)
@given(logits=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(0, 12),
                                                 st.integers(2, 6)),
                         elements=st.sampled_from([-1e4, -50.0, 0.0, 1.0, 50.0, 1e4])),
       second_best=st.booleans(), thr=st.floats(0.0, 1.0), top_k=st.none() | st.integers(0, 5))
def test_decode_property(logits, second_best, thr, top_k) -> None:
    B, Q, _ = logits.shape
    boxes = np.full((B, Q, 4), 0.5, dtype=np.float32)
    dets = decode(logits, boxes, np.full((B, 2), 64), second_best=second_best,
                  score_threshold=thr, top_k=top_k)
    assert len(dets) == B
    prob = softmax(logits)
    for b, d in enumerate(dets):
        assert np.isfinite(d.scores).all() and np.isfinite(d.boxes).all()
        assert (d.scores >= thr).all() and (d.scores <= 1.0).all()
        assert (np.diff(d.scores) <= 0).all()  # sorted
        if top_k is not None:
            assert len(d) <= top_k
        assert len(d) <= Q and d.boxes.shape == (len(d), 4)
        real = prob[b, :, :-1].max(-1)
        eligible = real >= thr
        if not second_best:  # paper mode: only slots whose top class is a real class
            eligible &= prob[b, :, -1] <= real
        expected = int(eligible.sum()) if top_k is None else min(top_k, int(eligible.sum()))
        assert len(d) == expected


def _batch(images_hw: tuple[int, int], valid: list[tuple[int, int]],
           orig: list[tuple[int, int]]) -> Batch:
    B = len(valid)
    return Batch(images=np.zeros((B, 3, *images_hw), np.float32),
                 mask=np.zeros((B, *images_hw), bool), scales=np.ones((B,)),
                 valid_sizes=np.array(valid, np.int64), orig_sizes=np.array(orig, np.int64))


def test_target_sizes_by_hand() -> None:
    """Mask: the original size. No mask: the 64x96 canvas in original pixels, per axis
    (40x60 resized from 100x150 -> 160x240); the canvas comes from the metadata, not from
    the batch's images (a fused model's batch holds raw frames of another size)."""
    meta = ModelMeta(preset="detr-tiny", input_height=64, input_width=96, class_names=["a"],
                     label_map=[1])
    batch = _batch((100, 150), valid=[(40, 60)], orig=[(100, 150)])  # raw-frame-sized images
    np.testing.assert_allclose(target_sizes(batch, meta), [[160.0, 240.0]])
    with_mask = meta.replace(with_mask=True)
    np.testing.assert_allclose(target_sizes(batch, with_mask), [[100.0, 150.0]])


def test_decode_images_scales_and_clips_to_each_image() -> None:
    """One slot whose box (cx 0.9, w 0.4) runs past the right edge: scaled by the original
    size (mask model), then clipped to it."""
    meta = ModelMeta(preset="detr-tiny", input_height=64, input_width=64, class_names=["a"],
                     label_map=[1], with_mask=True)
    batch = _batch((64, 64), valid=[(32, 64)], orig=[(50, 100)])
    logits = np.array([[[5.0, 0.0]]], np.float32)  # [1, 1, K+1]
    boxes = np.array([[[0.9, 0.5, 0.4, 0.2]]], np.float32)  # cxcywh
    (det,) = decode_images(logits, boxes, batch, meta)
    np.testing.assert_allclose(det.boxes, [[70.0, 20.0, 100.0, 30.0]], rtol=1e-6)
