"""DETR's set prediction loss (Carion et al. 2020, Sec. 3.1 and appendix A.2).

For every decoder output (the last one and, with auxiliary decoding losses,
each earlier layer) the predictions are Hungarian-matched to the targets, then:

- ``loss_ce``: cross-entropy over K+1 classes for all Q slots; unmatched slots
  target "no object" (index K), whose weight is ``eos_coef`` (0.1 in the
  paper) to offset the class imbalance.
- ``loss_bbox``: L1 between matched normalised cxcywh boxes, / num_boxes.
- ``loss_giou``: 1 - GIoU of matched boxes, / num_boxes.
- ``class_error`` (logging): top-1 error in % of the matched slots.
- ``cardinality_error`` (logging, no gradient): L1 between the number of
  slots predicting an object and the number of targets.

num_boxes is the number of targets in the whole (distributed) batch averaged
over processes, so every rank's loss has the same normalisation.
Earlier-layer terms get the suffix ``_0``..``_{L-2}`` (layer 0 first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr import distributed as dist_utils
from detr.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from detr.matcher import HungarianMatcher
from runtime.errors import InputError

Indices = list[tuple[Tensor, Tensor]]
KNOWN_LOSSES = ("labels", "boxes", "cardinality")


def _src_permutation_idx(indices: Indices) -> tuple[Tensor, Tensor]:
    """(batch index [M], query index [M]) of all matched predictions."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


class SetCriterion(nn.Module):
    """Hungarian-matched set loss of DETR.

    num_classes: K real classes (the logits have K+1 columns, the last is
    no-object). ``weight_dict`` maps loss names to weights for the training
    loop's weighted sum; the criterion itself returns unweighted terms.
    """

    empty_weight: Tensor

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict[str, float],
                 eos_coef: float = 0.1,
                 losses: Sequence[str] = ("labels", "boxes", "cardinality")) -> None:
        super().__init__()
        if num_classes < 1:
            raise InputError("num_classes", f"must be >= 1, got {num_classes}")
        unknown = [name for name in losses if name not in KNOWN_LOSSES]
        if unknown:
            raise InputError("losses", f"unknown loss {unknown}; known: {list(KNOWN_LOSSES)}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        # Class weights for the CE: 1 for real classes, eos_coef for no-object.
        # A buffer so that .to(device) moves it and state_dict carries it.
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                    indices: Indices, num_boxes: float, log: bool = True) -> dict[str, Tensor]:
        """``loss_ce`` (and ``class_error`` when ``log``) from ``pred_logits`` [B, Q, K+1]."""
        src_logits = outputs["pred_logits"]
        B, Q, _ = src_logits.shape  # batch, queries, K+1
        idx = _src_permutation_idx(indices)
        target_classes_o = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(src_logits.device).long()
        target_classes = torch.full((B, Q), self.num_classes, dtype=torch.int64,
                                    device=src_logits.device)  # [B, Q], default no-object
        target_classes[idx] = target_classes_o
        # cross_entropy wants the class dimension second: [B, K+1, Q].
        loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes,
                                  weight=self.empty_weight.to(src_logits.dtype))
        result = {"loss_ce": loss_ce}
        if log:
            result["class_error"] = self._class_error(src_logits[idx], target_classes_o)
        return result

    @staticmethod
    @torch.no_grad()
    def _class_error(logits: Tensor, labels: Tensor) -> Tensor:
        """Top-1 error in % of matched logits [M, K+1] vs labels [M].

        Like the official ``accuracy``, no matched slot counts as 100 % error.
        """
        if labels.numel() == 0:
            return torch.tensor(100.0, device=logits.device)
        correct = (logits.argmax(-1) == labels).float().mean()
        return 100.0 - 100.0 * correct

    @torch.no_grad()
    def loss_cardinality(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                         indices: Indices, num_boxes: float) -> dict[str, Tensor]:
        """``cardinality_error``: mean |#slots not predicting no-object - #targets|.

        Logging only (no gradient): it shows whether the model predicts about
        the right number of objects.
        """
        logits = outputs["pred_logits"]
        tgt_lengths = torch.as_tensor([len(t["labels"]) for t in targets],
                                      dtype=torch.float32, device=logits.device)  # [B]
        card_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()  # [B]
        return {"cardinality_error": F.l1_loss(card_pred, tgt_lengths)}

    def loss_boxes(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                   indices: Indices, num_boxes: float) -> dict[str, Tensor]:
        """``loss_bbox`` (L1) and ``loss_giou`` of matched boxes, both / num_boxes.

        ``pred_boxes`` [B, Q, 4] and target ``boxes`` [N_b, 4] normalised cxcywh.
        """
        idx = _src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]  # [M, 4]
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]
                                 ).to(src_boxes)  # [M, 4]
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")  # [M, 4]
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes),
                                              box_cxcywh_to_xyxy(target_boxes)))  # [M]
        return {"loss_bbox": loss_bbox.sum() / num_boxes,
                "loss_giou": (1 - giou).sum() / num_boxes}

    def _get_loss(self, name: str) -> Callable[..., dict[str, Tensor]]:
        return {"labels": self.loss_labels, "boxes": self.loss_boxes,
                "cardinality": self.loss_cardinality}[name]

    def num_boxes(self, targets: list[dict[str, Tensor]], device: torch.device) -> float:
        """Targets per process: the global target count / world size, at least 1.

        Averaging over processes keeps each rank's loss on the same scale as a
        single-process run on the whole batch; the floor of 1 avoids 0/0 on
        batches without objects.
        """
        count = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))],
                                dtype=torch.float32, device=device)
        count = dist_utils.all_reduce_sum(count)
        return float(torch.clamp(count / dist_utils.get_world_size(), min=1).item())

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """All loss terms for the model outputs and the batch targets.

        outputs: ``pred_logits`` [B, Q, K+1], ``pred_boxes`` [B, Q, 4] normalised
        cxcywh, optional ``aux_outputs`` list of such dicts (decoder layers
        0..L-2). targets: B dicts with ``labels`` int64 [N_b] in 0..K-1 and
        ``boxes`` [N_b, 4] normalised cxcywh. Returns unweighted 0-d tensors.
        """
        if outputs["pred_logits"].shape[-1] != self.num_classes + 1:
            raise InputError("pred_logits", f"last dimension {outputs['pred_logits'].shape[-1]}"
                             f" != num_classes + 1 = {self.num_classes + 1}")
        main_outputs = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        indices = self.matcher(main_outputs, targets)
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)

        losses: dict[str, Tensor] = {}
        for name in self.losses:
            losses.update(self._get_loss(name)(main_outputs, targets, indices, num_boxes))

        # Auxiliary decoding losses: each layer is matched on its own (the
        # assignment may differ from the last layer's).
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            aux_indices = self.matcher(aux_outputs, targets)
            for name in self.losses:
                kwargs = {"log": False} if name == "labels" else {}  # class_error: last layer only
                terms = self._get_loss(name)(aux_outputs, targets, aux_indices, num_boxes,
                                             **kwargs)
                losses.update({f"{k}_{i}": v for k, v in terms.items()})
        return losses


def build_criterion(num_classes: int, *, dec_layers: int = 6, aux_loss: bool = True,
                    set_cost_class: float = 1, set_cost_bbox: float = 5,
                    set_cost_giou: float = 2, bbox_loss_coef: float = 5,
                    giou_loss_coef: float = 2, eos_coef: float = 0.1) -> SetCriterion:
    """The paper's criterion: matcher costs (1, 5, 2), loss weights CE 1, L1 5,
    GIoU 2, no-object weight 0.1; with ``aux_loss`` the same weights for the
    suffixed terms of decoder layers 0..dec_layers-2."""
    matcher = HungarianMatcher(cost_class=set_cost_class, cost_bbox=set_cost_bbox,
                               cost_giou=set_cost_giou)
    base: dict[str, float] = {"loss_ce": 1, "loss_bbox": bbox_loss_coef,
                              "loss_giou": giou_loss_coef}
    weight_dict = dict(base)
    if aux_loss:
        for i in range(dec_layers - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    return SetCriterion(num_classes, matcher, weight_dict, eos_coef=eos_coef)
