"""DETR set criterion (detr/criterion.py) and distributed helpers (detr/distributed.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from detr import distributed as dist_utils
from detr.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from detr.criterion import SetCriterion, build_criterion
from detr.matcher import HungarianMatcher
from runtime.errors import InputError

K = 3  # real classes


def _value(loss: torch.Tensor) -> float:
    return float(loss.detach())


def _random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    """[n, 4] normalised cxcywh boxes inside the image."""
    wh = torch.rand(n, 2, generator=gen) * 0.4 + 0.05
    centre = wh / 2 + torch.rand(n, 2, generator=gen) * (1 - wh)
    return torch.cat([centre, wh], dim=1)


def _head(B: int, Q: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"pred_logits": (torch.randn(B, Q, K + 1, generator=gen)).requires_grad_(),
            "pred_boxes": torch.stack([_random_boxes(Q, gen) for _ in range(B)]).requires_grad_()}


def _outputs(B: int, Q: int, num_aux: int, gen: torch.Generator) -> dict:
    outputs: dict = _head(B, Q, gen)
    outputs["aux_outputs"] = [_head(B, Q, gen) for _ in range(num_aux)]
    return outputs


def _targets(counts: list[int], gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    return [{"labels": torch.randint(0, K, (n,), generator=gen), "boxes": _random_boxes(n, gen)}
            for n in counts]


@pytest.mark.parametrize("dec_layers", [6, 3])
def test_loss_keys_and_weight_dict(dec_layers: int) -> None:
    gen = torch.Generator().manual_seed(0)
    criterion = build_criterion(K, dec_layers=dec_layers)
    suffixes = [""] + [f"_{i}" for i in range(dec_layers - 1)]
    assert set(criterion.weight_dict) == {f"{k}{s}" for k in ("loss_ce", "loss_bbox", "loss_giou")
                                          for s in suffixes}
    assert criterion.weight_dict["loss_ce_0"] == 1
    assert criterion.weight_dict[f"loss_bbox_{dec_layers - 2}"] == 5
    assert criterion.weight_dict["loss_giou"] == 2
    losses = criterion(_outputs(2, 6, dec_layers - 1, gen), _targets([2, 3], gen))
    expected = {f"{k}{s}" for k in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")
                for s in suffixes} | {"class_error"}
    assert set(losses) == expected
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())


def test_without_aux_loss_only_last_layer_terms() -> None:
    gen = torch.Generator().manual_seed(1)
    criterion = build_criterion(K, aux_loss=False)
    assert set(criterion.weight_dict) == {"loss_ce", "loss_bbox", "loss_giou"}
    outputs = _head(2, 5, gen)  # no aux_outputs key at all
    assert set(criterion(outputs, _targets([1, 2], gen))) == {
        "loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"}


def test_aux_terms_are_matched_per_layer() -> None:
    # An aux layer equal to the last layer must give exactly the same terms.
    gen = torch.Generator().manual_seed(2)
    outputs = _head(2, 6, gen)
    outputs["aux_outputs"] = [{k: v.detach().clone() for k, v in outputs.items()}]
    losses = build_criterion(K, dec_layers=2)(outputs, _targets([3, 1], gen))
    for key in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"):
        torch.testing.assert_close(losses[f"{key}_0"], losses[key])


def test_labels_loss_matches_weighted_cross_entropy_by_hand() -> None:
    gen = torch.Generator().manual_seed(3)
    B, Q = 2, 5
    outputs = _head(B, Q, gen)
    targets = _targets([2, 3], gen)
    criterion = build_criterion(K, aux_loss=False, eos_coef=0.1)
    indices = criterion.matcher(outputs, targets)
    log_prob = outputs["pred_logits"].detach().log_softmax(-1)
    total, weight_sum = 0.0, 0.0
    for b in range(B):
        matched = dict(zip(indices[b][0].tolist(), indices[b][1].tolist()))
        for q in range(Q):
            cls = int(targets[b]["labels"][matched[q]]) if q in matched else K
            w = 1.0 if q in matched else 0.1
            total += -w * float(log_prob[b, q, cls])
            weight_sum += w
    losses = criterion(outputs, targets)
    assert _value(losses["loss_ce"]) == pytest.approx(total / weight_sum, rel=1e-5)


def test_box_losses_are_normalised_by_num_boxes() -> None:
    gen = torch.Generator().manual_seed(4)
    outputs = _head(3, 6, gen)
    targets = _targets([2, 0, 4], gen)
    criterion = build_criterion(K, aux_loss=False)
    indices = criterion.matcher(outputs, targets)
    l1_sum, giou_sum = 0.0, 0.0
    for b, (src, tgt) in enumerate(indices):
        pred = outputs["pred_boxes"][b, src].detach()
        true = targets[b]["boxes"][tgt]
        l1_sum += float((pred - true).abs().sum())
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(true))
        giou_sum += float((1 - torch.diag(giou)).sum())
    losses = criterion(outputs, targets)
    assert _value(losses["loss_bbox"]) == pytest.approx(l1_sum / 6, rel=1e-5)
    assert _value(losses["loss_giou"]) == pytest.approx(giou_sum / 6, rel=1e-5)
    assert criterion.num_boxes(targets, torch.device("cpu")) == 6.0


def test_duplicated_batch_keeps_the_loss_scale() -> None:
    gen = torch.Generator().manual_seed(5)
    outputs = _head(2, 5, gen)
    targets = _targets([3, 1], gen)
    doubled = {k: torch.cat([v, v]) for k, v in outputs.items()}
    criterion = build_criterion(K, aux_loss=False)
    single, double = criterion(outputs, targets), criterion(doubled, targets + targets)
    for key in ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"):
        torch.testing.assert_close(double[key], single[key])


def test_empty_targets_give_only_no_object_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(6)
    outputs = _outputs(2, 5, 2, gen)
    criterion = build_criterion(K, dec_layers=3)
    losses = criterion(outputs, _targets([0, 0], gen))
    assert all(torch.isfinite(v) for v in losses.values())
    for s in ("", "_0", "_1"):
        assert _value(losses[f"loss_bbox{s}"]) == 0.0
        assert _value(losses[f"loss_giou{s}"]) == 0.0
    # Every slot targets no-object with the same weight, so the weighted mean is a plain mean.
    expected = -outputs["pred_logits"].detach().log_softmax(-1)[..., K].mean()
    assert _value(losses["loss_ce"]) == pytest.approx(float(expected), rel=1e-5)
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    total.backward()
    assert outputs["pred_logits"].grad is not None
    assert outputs["pred_logits"].grad.abs().sum() > 0


def test_perfect_predictions_give_zero_box_losses() -> None:
    gen = torch.Generator().manual_seed(7)
    B, Q = 2, 6
    targets = _targets([3, 4], gen)
    logits = torch.full((B, Q, K + 1), -10.0)
    logits[..., K] = 10.0  # unmatched slots: confident no-object
    boxes = torch.stack([_random_boxes(Q, gen) for _ in range(B)])
    for b, target in enumerate(targets):
        slots = torch.randperm(Q, generator=gen)[: len(target["labels"])]
        boxes[b, slots] = target["boxes"]
        logits[b, slots, K] = -10.0
        logits[b, slots, target["labels"]] = 10.0
    losses = build_criterion(K, aux_loss=False)({"pred_logits": logits, "pred_boxes": boxes},
                                                targets)
    assert _value(losses["loss_bbox"]) == pytest.approx(0.0, abs=1e-6)
    assert _value(losses["loss_giou"]) == pytest.approx(0.0, abs=1e-6)
    assert _value(losses["loss_ce"]) < 1e-6
    assert _value(losses["class_error"]) == 0.0
    assert _value(losses["cardinality_error"]) == 0.0


def test_cardinality_error_counts_object_slots() -> None:
    logits = torch.zeros(1, 5, K + 1)
    logits[0, :, K] = 5.0  # all no-object ...
    logits[0, :2, 0] = 9.0  # ... except two slots
    targets = [{"labels": torch.tensor([0, 1, 2, 0]), "boxes": torch.full((4, 4), 0.2)}]
    boxes = torch.full((1, 5, 4), 0.3)
    criterion = SetCriterion(K, HungarianMatcher(), {"loss_ce": 1}, losses=("cardinality",))
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert set(losses) == {"cardinality_error"}
    assert _value(losses["cardinality_error"]) == 2.0  # |2 - 4|


def test_gradients_flow_to_logits_and_boxes_of_every_layer() -> None:
    gen = torch.Generator().manual_seed(8)
    outputs = _outputs(2, 5, 2, gen)
    criterion = build_criterion(K, dec_layers=3)
    losses = criterion(outputs, _targets([2, 1], gen))
    assert not losses["class_error"].requires_grad
    assert not losses["cardinality_error"].requires_grad
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    total.backward()
    for head in [outputs, *outputs["aux_outputs"]]:
        for key in ("pred_logits", "pred_boxes"):
            grad = head[key].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_empty_weight_is_a_buffer() -> None:
    criterion = build_criterion(K, eos_coef=0.25)
    torch.testing.assert_close(criterion.state_dict()["empty_weight"],
                               torch.tensor([1.0, 1.0, 1.0, 0.25]))


def test_invalid_arguments_are_input_errors() -> None:
    gen = torch.Generator().manual_seed(9)
    with pytest.raises(InputError, match="unknown loss"):
        SetCriterion(K, HungarianMatcher(), {}, losses=("labels", "masks"))
    with pytest.raises(InputError, match="num_classes"):
        build_criterion(0)
    with pytest.raises(InputError, match="num_classes \\+ 1 = 6"):
        build_criterion(5)(_head(1, 4, gen), _targets([1], gen))


# --- distributed: two gloo processes on CPU ---------------------------------------------------

def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}",
                                         rank=rank, world_size=world_size)
    try:
        gen = torch.Generator().manual_seed(rank)
        counts = [[3, 2], [0, 1]][rank]  # 6 targets in all -> 3 per process
        criterion = build_criterion(K, aux_loss=False)
        result = {
            "num_boxes": criterion.num_boxes(_targets(counts, gen), torch.device("cpu")),
            "world_size": dist_utils.get_world_size(),
            "rank": dist_utils.get_rank(),
            "main": dist_utils.is_main_process(),
            "sum": dist_utils.all_reduce_sum(torch.tensor([rank + 1.0])),
            "reduced": dist_utils.reduce_dict({"b": torch.tensor(10.0 * rank),
                                               "a": torch.tensor(float(rank))}),
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_num_boxes_and_reductions_across_two_processes(tmp_path: Path) -> None:
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
             join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["num_boxes"] == 3.0
        assert result["world_size"] == 2 and result["rank"] == rank
        assert result["main"] == (rank == 0)
        torch.testing.assert_close(result["sum"], torch.tensor([3.0]))
        assert {k: float(v) for k, v in result["reduced"].items()} == {"a": 0.5, "b": 5.0}


def test_single_process_helpers() -> None:
    assert not dist_utils.is_dist_avail_and_initialized()
    assert dist_utils.get_world_size() == 1 and dist_utils.get_rank() == 0
    assert dist_utils.is_main_process()
    x = torch.tensor([2.0, 4.0])
    a = x[0]
    assert dist_utils.reduce_dict({"a": a})["a"] is a
    assert build_criterion(K).num_boxes([{"labels": torch.zeros(0)}], torch.device("cpu")) == 1.0
    assert math.isclose(build_criterion(K).num_boxes(
        [{"labels": torch.zeros(2)}, {"labels": torch.zeros(3)}], torch.device("cpu")), 5.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_losses_equal_cpu_losses() -> None:
    gen = torch.Generator().manual_seed(10)
    outputs = _outputs(2, 6, 2, gen)
    targets = _targets([3, 0], gen)
    criterion = build_criterion(K, dec_layers=3)
    cpu = criterion(outputs, targets)
    cuda_outputs = {"pred_logits": outputs["pred_logits"].cuda(),
                    "pred_boxes": outputs["pred_boxes"].cuda(),
                    "aux_outputs": [{k: v.cuda() for k, v in a.items()}
                                    for a in outputs["aux_outputs"]]}
    cuda_targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    gpu = criterion.cuda()(cuda_outputs, cuda_targets)
    assert set(gpu) == set(cpu)
    for key, value in cpu.items():
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), value, rtol=1e-4, atol=1e-5)
