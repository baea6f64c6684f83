"""Hungarian matching between DETR's Q predictions and each image's targets.

DETR (Carion et al. 2020, Sec. 3.1) predicts a fixed-size set; the loss first
finds the one-to-one assignment of predictions to ground-truth objects with
the lowest total cost

    C = cost_class * (-p(target class)) + cost_bbox * L1(boxes)
        + cost_giou * (-GIoU(boxes)),

solved exactly by the Hungarian algorithm (scipy ``linear_sum_assignment``).
Unmatched predictions are trained towards "no object". The probability (not
the log-probability) is used in the class cost so it is commensurable with
the box costs (paper, Sec. 3.1).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from detr.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from runtime.errors import InputError

# Stand-in for non-finite costs (a diverged model): the assignment still runs,
# the loss itself becomes NaN and the training loop stops all ranks together.
_BIG_COST = 1e8


class HungarianMatcher(nn.Module):
    """Optimal bipartite matching of predictions to targets, per image.

    Weights follow the paper / official defaults (class 1, L1 5, GIoU 2).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0,
                 cost_giou: float = 2.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise InputError("HungarianMatcher", "all matching costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor],
                targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Match each image's predictions to its targets.

        outputs: ``pred_logits`` [B, Q, K+1] (last = no-object), ``pred_boxes``
        [B, Q, 4] normalised cxcywh. targets: B dicts with ``labels`` int64 [N_b]
        (0..K-1) and ``boxes`` [N_b, 4] normalised cxcywh.

        Returns B pairs ``(index_i, index_j)`` of int64 tensors of length
        ``min(Q, N_b)`` (on CPU): prediction ``index_i[k]`` is matched to target
        ``index_j[k]``; empty tensors for an image with no targets.
        """
        pred_logits = outputs["pred_logits"]
        pred_boxes = outputs["pred_boxes"]
        B, Q = pred_logits.shape[:2]  # batch, queries
        if len(targets) != B:
            raise InputError("targets", f"{len(targets)} target dicts for a batch of {B}")
        sizes = [int(t["boxes"].shape[0]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty.clone()) for _ in range(B)]

        # All images at once: costs of every prediction in the batch against every
        # target in the batch, then the per-image blocks are cut out below.
        prob = pred_logits.flatten(0, 1).softmax(-1)  # [B*Q, K+1]
        out_bbox = pred_boxes.flatten(0, 1)  # [B*Q, 4]
        tgt_ids = torch.cat([t["labels"] for t in targets]).long()  # [T]
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).to(out_bbox.dtype)  # [T, 4]

        # -p(class): the constant 1 of 1 - p does not change the assignment.
        cost_class = -prob[:, tgt_ids]  # [B*Q, T]
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)  # [B*Q, T]
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox),
                                         box_cxcywh_to_xyxy(tgt_bbox))  # [B*Q, T]
        cost = (self.cost_bbox * cost_bbox + self.cost_class * cost_class
                + self.cost_giou * cost_giou)
        cost = torch.nan_to_num(cost, nan=_BIG_COST, posinf=_BIG_COST, neginf=-_BIG_COST)
        cost = cost.view(B, Q, -1).cpu()  # [B, Q, T]

        indices = []
        for b, block in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(block[b].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64),
                            torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
                f"cost_giou={self.cost_giou}")
