"""Hungarian matcher (detr/matcher.py): optimality, batching, empty targets."""

from __future__ import annotations

import itertools

import pytest
import torch

from detr.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from detr.matcher import HungarianMatcher
from runtime.errors import InputError


def _random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    """[n, 4] normalised cxcywh boxes inside the image."""
    wh = torch.rand(n, 2, generator=gen) * 0.4 + 0.05
    centre = wh / 2 + torch.rand(n, 2, generator=gen) * (1 - wh)
    return torch.cat([centre, wh], dim=1)


def _outputs(B: int, Q: int, K: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"pred_logits": torch.randn(B, Q, K + 1, generator=gen) * 2,
            "pred_boxes": torch.stack([_random_boxes(Q, gen) for _ in range(B)])}


def _targets(counts: list[int], K: int, gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    return [{"labels": torch.randint(0, K, (n,), generator=gen), "boxes": _random_boxes(n, gen)}
            for n in counts]


def _pair_cost(logits: torch.Tensor, box: torch.Tensor, label: int, tgt_box: torch.Tensor,
               weights: tuple[float, float, float]) -> float:
    """Cost of one (prediction, target) pair written out from the paper's definition."""
    w_class, w_bbox, w_giou = weights
    prob = logits.softmax(-1)[label]
    l1 = (box - tgt_box).abs().sum()
    giou = generalized_box_iou(box_cxcywh_to_xyxy(box[None]), box_cxcywh_to_xyxy(tgt_box[None]))
    return float(-w_class * prob + w_bbox * l1 - w_giou * giou[0, 0])


def _brute_force_min(logits: torch.Tensor, boxes: torch.Tensor, target: dict,
                     weights: tuple[float, float, float]) -> float:
    """Minimum total cost over every injective assignment (queries >= targets)."""
    Q, N = logits.shape[0], len(target["labels"])
    cost = [[_pair_cost(logits[q], boxes[q], int(target["labels"][j]), target["boxes"][j],
                        weights) for j in range(N)] for q in range(Q)]
    return min(sum(cost[q][j] for j, q in enumerate(perm))
               for perm in itertools.permutations(range(Q), N))


def _assignment_cost(indices: tuple[torch.Tensor, torch.Tensor], logits: torch.Tensor,
                     boxes: torch.Tensor, target: dict,
                     weights: tuple[float, float, float]) -> float:
    return sum(_pair_cost(logits[q], boxes[q], int(target["labels"][j]), target["boxes"][j],
                          weights) for q, j in zip(indices[0].tolist(), indices[1].tolist()))


@pytest.mark.parametrize("weights", [(1.0, 5.0, 2.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                                     (0.0, 0.0, 1.0), (2.0, 1.0, 3.0)])
@pytest.mark.parametrize("seed", range(4))
def test_matching_is_optimal_against_brute_force(weights: tuple[float, float, float],
                                                 seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    Q, K = 4, 3  # queries, classes
    outputs = _outputs(2, Q, K, gen)
    targets = _targets([3, 2], K, gen)
    matcher = HungarianMatcher(*weights)
    indices = matcher(outputs, targets)
    for b, target in enumerate(targets):
        src, tgt = indices[b]
        assert src.dtype == torch.int64 and tgt.dtype == torch.int64
        assert len(src) == len(tgt) == len(target["labels"])
        assert len(set(src.tolist())) == len(src)  # one-to-one
        assert sorted(tgt.tolist()) == list(range(len(target["labels"])))
        got = _assignment_cost(indices[b], outputs["pred_logits"][b], outputs["pred_boxes"][b],
                               target, weights)
        best = _brute_force_min(outputs["pred_logits"][b], outputs["pred_boxes"][b], target,
                                weights)
        assert got == pytest.approx(best, abs=1e-5)


def test_batched_matching_equals_per_image_matching() -> None:
    gen = torch.Generator().manual_seed(7)
    counts = [3, 0, 5, 1]
    outputs = _outputs(len(counts), 10, 5, gen)
    targets = _targets(counts, 5, gen)
    matcher = HungarianMatcher()
    batched = matcher(outputs, targets)
    for b, target in enumerate(targets):
        single = matcher({k: v[b:b + 1] for k, v in outputs.items()}, [target])[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])


def test_perfect_predictions_match_themselves() -> None:
    gen = torch.Generator().manual_seed(3)
    target = _targets([4], 3, gen)[0]
    perm = torch.tensor([2, 0, 5, 3])  # target j sits in query perm[j]
    boxes = _random_boxes(6, gen)
    boxes[perm] = target["boxes"]
    logits = torch.zeros(6, 4)
    logits[perm, target["labels"]] = 10.0
    src, tgt = HungarianMatcher()({"pred_logits": logits[None], "pred_boxes": boxes[None]},
                                  [target])[0]
    assert torch.equal(perm[tgt], src)


def test_images_without_targets_give_empty_indices() -> None:
    gen = torch.Generator().manual_seed(1)
    outputs = _outputs(3, 5, 2, gen)
    for counts in ([0, 0, 0], [0, 2, 0]):
        indices = HungarianMatcher()(outputs, _targets(counts, 2, gen))
        assert len(indices) == 3
        for (src, tgt), n in zip(indices, counts):
            assert src.shape == tgt.shape == (n,)
            assert src.dtype == tgt.dtype == torch.int64


def test_more_targets_than_queries_matches_every_query() -> None:
    gen = torch.Generator().manual_seed(2)
    src, tgt = HungarianMatcher()(_outputs(1, 3, 2, gen), _targets([5], 2, gen))[0]
    assert sorted(src.tolist()) == [0, 1, 2]
    assert len(set(tgt.tolist())) == 3


def test_non_finite_predictions_do_not_crash_matching() -> None:
    # A diverged model must reach the loss (NaN) so the training loop can stop
    # all ranks together, instead of failing inside scipy on one rank.
    gen = torch.Generator().manual_seed(4)
    outputs = _outputs(1, 4, 2, gen)
    outputs["pred_boxes"][0, 1] = float("nan")
    outputs["pred_logits"][0, 2] = float("inf")
    src, tgt = HungarianMatcher()(outputs, _targets([2], 2, gen))[0]
    assert len(src) == len(tgt) == 2


def test_batch_size_mismatch_is_an_input_error() -> None:
    gen = torch.Generator().manual_seed(5)
    with pytest.raises(InputError, match="2 target dicts for a batch of 3"):
        HungarianMatcher()(_outputs(3, 4, 2, gen), _targets([1, 1], 2, gen))


def test_all_zero_costs_are_rejected() -> None:
    with pytest.raises(InputError, match="all matching costs are 0"):
        HungarianMatcher(0, 0, 0)
