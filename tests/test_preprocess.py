"""Preprocessing: keep-ratio resize, top-left placement, normalisation, padding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from runtime.errors import DataError
from runtime.metadata import ModelMeta
from runtime.preprocess import fit_size, normalize, preprocess, resize_to_fit


def _meta(h: int = 64, w: int = 96) -> ModelMeta:
    return ModelMeta(preset="detr-tiny", input_height=h, input_width=w,
                     class_names=["a", "b"], label_map=[1, 3])


def test_fit_size_hand_computed() -> None:
    # 200x100 into 64x96: height limits, scale 0.32 -> 64 x 32.
    assert fit_size(200, 100, 64, 96) == (64, 32, pytest.approx(0.32))
    # 10x30 into 64x96: width limits, scale 3.2 -> 32 x 96 (upscaling allowed).
    assert fit_size(10, 30, 64, 96) == (32, 96, pytest.approx(3.2))
    assert fit_size(1, 2000, 64, 96)[:2] == (1, 96)  # never 0 pixels


def test_normalize_matches_formula() -> None:
    img = np.array([[[0, 128, 255]]], dtype=np.uint8)  # [1,1,3]
    out = normalize(img, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    expected = (np.array([0, 128, 255]) / 255.0 - 0.5) / np.array([0.25, 0.5, 1.0])
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-5, atol=1e-6)


def test_preprocess_layout_and_values() -> None:
    meta = _meta(64, 96)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(100, 50, 3), dtype=np.uint8)
    batch = preprocess([arr, Image.fromarray(arr).convert("L")], meta)
    assert batch.images.shape == (2, 3, 64, 96) and batch.images.dtype == np.float32
    assert batch.mask.shape == (2, 64, 96) and batch.mask.dtype == bool
    assert batch.valid_sizes.tolist() == [[64, 32], [64, 32]]
    assert batch.orig_sizes.tolist() == [[100, 50], [100, 50]]
    np.testing.assert_allclose(batch.scales, [0.64, 0.64])
    resized, _ = resize_to_fit(Image.fromarray(arr), 64, 96)
    np.testing.assert_allclose(batch.images[0, :, :64, :32],
                               normalize(resized, meta.mean, meta.std))
    assert not batch.mask[0, :, :32].any() and batch.mask[0, :, 32:].all()
    assert (batch.images[:, :, :, 32:] == 0).all()
    # grayscale: the three channels hold the same pixel values before normalisation
    g = batch.images[1] * np.array(meta.std, dtype=np.float32)[:, None, None] \
        + np.array(meta.mean, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(g[0, :, :32], g[1, :, :32], atol=1e-5)


def test_preprocess_single_path(tmp_path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGBA", (30, 20), (255, 0, 0, 255)).save(path)
    batch = preprocess(path, _meta())
    assert len(batch) == 1 and batch.orig_sizes.tolist() == [[20, 30]]


def test_preprocess_bad_file_names_it(tmp_path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        preprocess([bad], _meta())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 2000), w=st.integers(1, 2000),
       mode=st.sampled_from(["RGB", "L", "RGBA", "I;16", "P", "u8 HxW", "u16 HxWx3",
                             "float HxWx4"]),
       canvas=st.tuples(st.integers(8, 48), st.integers(8, 48)))
def test_preprocess_property(h: int, w: int, mode: str, canvas: tuple[int, int]) -> None:
    """Any size 1..2000 px per side, PIL modes and numpy layouts/dtypes."""
    meta = _meta(*canvas)
    if mode == "u8 HxW":
        img = np.full((h, w), 77, dtype=np.uint8)
    elif mode == "u16 HxWx3":
        img = np.full((h, w, 3), 40000, dtype=np.uint16)
    elif mode == "float HxWx4":
        img = np.full((h, w, 4), 0.5, dtype=np.float32)
    else:
        img = Image.new(mode, (w, h), 200 if mode != "RGB" else (200, 10, 90))
    batch = preprocess([img], meta)
    H, W = canvas
    assert batch.images.shape == (1, 3, H, W) and batch.mask.shape == (1, H, W)
    vh, vw = batch.valid_sizes[0]
    assert 1 <= vh <= H and 1 <= vw <= W
    assert vh == H or vw == W  # fits the canvas on at least one side
    s = min(H / h, W / w)  # ratio kept: each side is the scaled side rounded (>= 1 px)
    assert abs(vh - h * s) <= 0.5 + 1e-9 or vh == 1
    assert abs(vw - w * s) <= 0.5 + 1e-9 or vw == 1
    assert batch.orig_sizes[0].tolist() == [h, w]
    assert not batch.mask[0, :vh, :vw].any()
    assert batch.mask[0].sum() == H * W - vh * vw
    assert (batch.images[0][:, batch.mask[0]] == 0).all()
    assert np.isfinite(batch.images).all()


def test_normalize_lookup_table_equals_float_path() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    fast = normalize(img, mean, std)  # uint8: lookup table
    slow = normalize(img.astype(np.float64), mean, std)  # float: formula
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)
    target = np.full((3, 10, 10), 7.0, dtype=np.float32)
    normalize(img, mean, std, out=target[:, :7, :5])
    np.testing.assert_array_equal(target[:, :7, :5], fast)
    assert (target[:, 7:, :] == 7.0).all()  # nothing written outside the view


def test_round_up_to_stride_is_the_smallest_multiple_of_32_not_below():
    from runtime.preprocess import BACKBONE_STRIDE, round_up_to_stride

    assert BACKBONE_STRIDE == 32
    assert [round_up_to_stride(n) for n in (1, 31, 32, 33, 1066, 1333)] == [32, 32, 32, 64, 1088, 1344]
