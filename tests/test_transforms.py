"""The paper's transforms keep image and boxes consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from detr.data import transforms as T
from runtime.errors import InputError
from runtime.metadata import IMAGENET_MEAN, IMAGENET_STD


def _sample(w: int = 60, h: int = 40) -> tuple[Image.Image, dict]:
    arr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    boxes = torch.tensor([[10.0, 5.0, 30.0, 15.0], [0.0, 20.0, 60.0, 40.0], [45.0, 0.0, 50.0, 8.0]])
    target = {"boxes": boxes, "labels": torch.tensor([0, 1, 2]),
              "area": torch.tensor([200.0, 1200.0, 40.0]), "iscrowd": torch.zeros(3, dtype=torch.int64),
              "size": torch.tensor([h, w]), "orig_size": torch.tensor([h, w])}
    return Image.fromarray(arr), target


def test_hflip_boxes_and_pixels() -> None:
    image, target = _sample()
    flipped, ft = T.hflip(image, target)
    torch.testing.assert_close(ft["boxes"][0], torch.tensor([30.0, 5.0, 50.0, 15.0]))
    a, b = np.asarray(image), np.asarray(flipped)
    np.testing.assert_array_equal(b[:, 0], a[:, 59])
    again, tt = T.hflip(flipped, ft)
    np.testing.assert_array_equal(np.asarray(again), a)
    torch.testing.assert_close(tt["boxes"], target["boxes"])
    torch.testing.assert_close(tt["area"], target["area"])


def test_resize_scales_boxes_area_size() -> None:
    image, target = _sample(60, 40)
    out, t = T.resize(image, target, 20)
    assert out.size == (30, 20)
    torch.testing.assert_close(t["boxes"], target["boxes"] / 2)
    torch.testing.assert_close(t["area"], target["area"] / 4)
    assert t["size"].tolist() == [20, 30] and t["orig_size"].tolist() == [40, 60]


def test_resize_respects_max_size() -> None:
    image, target = _sample(100, 50)
    out, t = T.resize(image, target, 80, max_size=120)
    # Shorter side 80 would make the longer 160 > 120, so shorter = 120 * 50 / 100 = 60.
    assert out.size == (120, 60) and t["size"].tolist() == [60, 120]
    out2, _ = T.resize(image, target, 40, max_size=120)
    assert out2.size == (80, 40)


def test_crop_shifts_clips_and_drops() -> None:
    image, target = _sample(60, 40)
    out, t = T.crop(image, target, top=10, left=20, height=20, width=35)
    assert out.size == (35, 20) and t["size"].tolist() == [20, 35]
    # box 0 (10,5,30,15) -> (0,0,10,5); box 1 (0,20,60,40) -> (0,10,35,20); box 2 (y<8) dropped.
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 10.0, 35.0, 20.0]]))
    assert t["labels"].tolist() == [0, 1]
    torch.testing.assert_close(t["area"], torch.tensor([50.0, 350.0]))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image)[10:30, 20:55])


@settings(max_examples=150, deadline=None)
@given(w=st.integers(8, 90), h=st.integers(8, 90), data=st.data())
def test_crop_keeps_boxes_inside(w: int, h: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 6))
    raw = data.draw(st.lists(st.tuples(st.floats(0, w), st.floats(0, h), st.floats(0, w), st.floats(0, h)),
                             min_size=n, max_size=n))
    boxes = torch.tensor([[min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
                          for x0, y0, x1, y1 in raw], dtype=torch.float32).reshape(-1, 4)
    target = {"boxes": boxes, "labels": torch.arange(n), "area": torch.ones(n),
              "iscrowd": torch.zeros(n, dtype=torch.int64)}
    torch.manual_seed(data.draw(st.integers(0, 2 ** 31)))
    out, t = T.RandomSizeCrop(data.draw(st.integers(1, 50)), data.draw(st.integers(50, 100)))(
        Image.new("RGB", (w, h)), target)
    cw, ch = out.size
    b = t["boxes"]
    assert t["size"].tolist() == [ch, cw]
    assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= cw) & (b[:, 3] <= ch)).all()
    assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    assert len(t["labels"]) == len(b) == len(t["area"]) == len(t["iscrowd"])
    # A kept box is its original clipped to the crop window: same size or smaller.
    orig = boxes[t["labels"]]
    assert ((b[:, 2] - b[:, 0]) <= (orig[:, 2] - orig[:, 0]) + 1e-4).all()


def test_random_size_crop_small_image_kept_whole() -> None:
    image, target = _sample(60, 40)
    out, t = T.RandomSizeCrop(384, 600)(image, target)
    assert out.size == (60, 40)
    torch.testing.assert_close(t["boxes"], target["boxes"])


def test_normalize_image_and_boxes() -> None:
    image, target = _sample(60, 40)
    tensor, t = T.Compose([T.ToTensor(), T.Normalize()])(image, target)
    assert tensor.shape == (3, 40, 60)
    px = np.asarray(image)[3, 7] / 255.0
    expected = (px - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(tensor[:, 3, 7].numpy(), expected, rtol=1e-5, atol=1e-5)
    # (10,5,30,15) -> cx 20/60, cy 10/40, w 20/60, h 10/40.
    torch.testing.assert_close(t["boxes"][0], torch.tensor([1 / 3, 0.25, 1 / 3, 0.25]))
    assert (t["boxes"] >= 0).all() and (t["boxes"] <= 1).all()


def test_train_pipeline_reproducible_with_torch_seed() -> None:
    tf = T.make_coco_transforms("train", scales=[32, 48, 64], max_size=100,
                                crop_sizes=(40, 50), crop_range=(24, 40))
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs = [tf(*_sample()) for _ in range(8)]
        outs.append(runs)
    for (i0, t0), (i1, t1) in zip(outs[0], outs[1]):
        torch.testing.assert_close(i0, i1)
        torch.testing.assert_close(t0["boxes"], t1["boxes"])
    shapes = lambda runs: [tuple(i.shape) for i, _ in runs]
    assert shapes(outs[0]) != shapes(outs[2]) or any(
        not torch.equal(a[0], b[0]) for a, b in zip(outs[0], outs[2]))


def test_train_pipeline_outputs_valid_targets() -> None:
    tf = T.make_coco_transforms("train", scales=[32, 48, 64], max_size=100,
                                crop_sizes=(40, 50), crop_range=(24, 40))
    torch.manual_seed(3)
    seen_sizes = set()
    for _ in range(30):
        image, t = tf(*_sample())
        h, w = image.shape[-2:]
        seen_sizes.add(min(h, w))
        assert t["size"].tolist() == [h, w]
        assert min(h, w) in (32, 48, 64) or max(h, w) <= 100
        b = t["boxes"]
        assert ((b >= 0) & (b <= 1)).all() and (b[:, 2:] > 0).all()
        assert len(t["labels"]) == len(b)
    assert len(seen_sizes) > 1  # multi-scale


def test_val_pipeline_deterministic_resize() -> None:
    tf = T.make_coco_transforms("val", scales=[48, 64], max_size=200)
    image, t = tf(*_sample(60, 40))
    assert image.shape == (3, 64, 96)
    assert t["labels"].tolist() == [0, 1, 2]


def test_masks_follow_geometry() -> None:
    image, target = _sample(60, 40)
    masks = torch.zeros(3, 40, 60, dtype=torch.bool)
    masks[0, 5:15, 10:30] = True
    target["masks"] = masks
    _, ft = T.hflip(image, target)
    assert ft["masks"][0, 10, 45] and not ft["masks"][0, 10, 15]
    _, rt = T.resize(image, target, 20)
    assert rt["masks"].shape == (3, 20, 30) and rt["masks"][0, 5, 10]
    _, ct = T.crop(image, target, 10, 20, 20, 35)
    assert ct["masks"].shape == (2, 20, 35)


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="unknown split 'tarin'"):
        T.make_coco_transforms("tarin")
    with pytest.raises(InputError, match="scales: need at least one positive size"):
        T.RandomResize([])
