"""Box conversions, IoU and generalized IoU (detr/box_ops.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detr.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
)
from runtime.errors import InputError

coord = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)
size = st.floats(min_value=1e-2, max_value=1e3, allow_nan=False)


def _xyxy(x0: float, y0: float, w: float, h: float) -> list[float]:
    return [x0, y0, x0 + w, y0 + h]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(coord, coord, size, size), min_size=1, max_size=8))
def test_cxcywh_xyxy_round_trip(raw: list[tuple[float, float, float, float]]) -> None:
    cxcywh = torch.tensor(raw, dtype=torch.float64)
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    assert torch.all(xyxy[:, 2:] >= xyxy[:, :2])
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy,
                               rtol=1e-9, atol=1e-9)


def test_conversion_keeps_leading_dims() -> None:
    boxes = torch.rand(2, 5, 4)
    assert box_cxcywh_to_xyxy(boxes).shape == (2, 5, 4)
    torch.testing.assert_close(box_cxcywh_to_xyxy(boxes)[1, 3], box_cxcywh_to_xyxy(boxes[1, 3]))


def test_conversion_hand_computed() -> None:
    xyxy = box_cxcywh_to_xyxy(torch.tensor([[0.5, 0.4, 0.2, 0.6]]))
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.1, 0.6, 0.7]]))
    assert box_area(xyxy).item() == pytest.approx(0.2 * 0.6)


def test_iou_and_giou_hand_computed() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([
        [1.0, 1.0, 3.0, 3.0],  # overlap 1, union 7, enclosing 9
        [0.0, 0.0, 2.0, 2.0],  # identical
        [3.0, 0.0, 4.0, 2.0],  # disjoint: union 6, enclosing 8
        [0.5, 0.5, 1.5, 1.5],  # inside a: IoU 1/4, enclosing = a
    ])
    iou, union = box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0, 0.0, 0.25]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 4.0, 6.0, 4.0]]))
    giou = generalized_box_iou(a, b)
    expected = torch.tensor([[1 / 7 - 2 / 9, 1.0, 0.0 - 2 / 8, 0.25]])
    torch.testing.assert_close(giou, expected)


def test_giou_tends_to_minus_one_for_far_apart_boxes() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1e4, 1e4, 1e4 + 1.0, 1e4 + 1.0]])
    assert generalized_box_iou(a, b).item() == pytest.approx(-1.0, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(coord, coord, size, size), min_size=1, max_size=6),
       st.lists(st.tuples(coord, coord, size, size), min_size=1, max_size=6))
def test_giou_range_and_symmetry(raw1: list, raw2: list) -> None:
    boxes1 = torch.tensor([_xyxy(*r) for r in raw1], dtype=torch.float64)
    boxes2 = torch.tensor([_xyxy(*r) for r in raw2], dtype=torch.float64)
    giou = generalized_box_iou(boxes1, boxes2)
    iou, _ = box_iou(boxes1, boxes2)
    assert giou.shape == (len(raw1), len(raw2))
    assert torch.all(giou >= -1 - 1e-9) and torch.all(giou <= 1 + 1e-9)
    assert torch.all(giou <= iou + 1e-9)  # the enclosing-box penalty is never negative
    torch.testing.assert_close(generalized_box_iou(boxes2, boxes1), giou.T)
    torch.testing.assert_close(torch.diag(generalized_box_iou(boxes1, boxes1)),
                               torch.ones(len(raw1), dtype=torch.float64))


def test_giou_empty_inputs() -> None:
    assert generalized_box_iou(torch.zeros(0, 4), torch.rand(3, 4) + torch.tensor(
        [0, 0, 1, 1])).shape == (0, 3)


@pytest.mark.parametrize("bad", [[0.5, 0.0, 0.4, 1.0], [0.0, 0.5, 1.0, 0.4]])
def test_giou_rejects_degenerate_boxes(bad: list[float]) -> None:
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(InputError, match="degenerate boxes"):
        generalized_box_iou(torch.tensor([bad]), good)
    with pytest.raises(InputError, match="boxes2: degenerate boxes"):
        generalized_box_iou(good, torch.tensor([bad]))


def test_giou_rejects_wrong_shape() -> None:
    with pytest.raises(InputError, match=r"shape \[N, 4\]"):
        generalized_box_iou(torch.zeros(2, 3), torch.zeros(1, 4))


def test_giou_gradient_flows() -> None:
    a = torch.tensor([[0.1, 0.1, 0.6, 0.5]], requires_grad=True)
    b = torch.tensor([[0.3, 0.2, 0.9, 0.8]])
    (1 - generalized_box_iou(a, b)).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
