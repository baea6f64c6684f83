"""``train(config)``: the whole training run.

Per epoch: train (``epoch.train_one_epoch``), step the StepLR schedule,
evaluate on val every ``eval_every`` epochs (rank 0), then write
``out/checkpoint.pth`` atomically (model, optimizer, scheduler, epoch, RNG
states of every process, train config, class names and label map) and append
one JSON line to ``out/log.jsonl``. ``--resume`` restores all of it, so a run
stopped after epoch k and resumed ends with the same weights as a run that was
never stopped (same seed, same number of processes).

Ctrl-C stops cleanly (the checkpoint on disk is the last finished epoch) and
prints the command that resumes. A NaN/inf loss raises
``TrainingDivergedError`` before the bad update; the checkpoint of the last
good epoch stays on disk.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detr.checkpoint_schema import restoring
from detr.config import DETRConfig
from detr.train.config import TrainConfig
from detr.train.ddp import DistInfo, barrier, cleanup_distributed, init_distributed
from detr.train.flags import resume_command
from detr.training_resize import CHECKPOINT_KEY as TRAINING_RESIZE_KEY
from detr.training_resize import TrainingResize, from_train_config
from runtime.atomic import atomic_write_text
from runtime.errors import InputError, ModelFormatError, TrainingDivergedError

CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "log.jsonl"


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run produced."""

    checkpoint: Path  # out/checkpoint.pth
    epochs_completed: int  # number of epochs in the checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)  # the log.jsonl entries


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.preset`` on ``config.data`` and return where the checkpoint is.

    Raises ``InputError``/``DataError`` for bad options or data,
    ``ModelFormatError`` for an unusable --resume/--init checkpoint,
    ``TrainingDivergedError`` when the loss stops being finite.
    Under torchrun, every process calls this; only rank 0 writes and prints.
    """
    config.validate()
    info = init_distributed(config.device)
    try:
        return _train(config, info)
    finally:
        cleanup_distributed(info)


@dataclass
class _Parts:
    """What a run trains and steps, built once per run (and restored on --resume)."""

    model: nn.Module  # what the step calls: DistributedDataParallel(model) under torchrun
    model_without_ddp: nn.Module  # the DETR itself: what checkpoints hold
    model_config: DETRConfig
    criterion: nn.Module  # the set loss
    optimizer: torch.optim.Optimizer  # AdamW, backbone at its own lr
    lr_scheduler: torch.optim.lr_scheduler.StepLR
    scaler: torch.amp.GradScaler | None  # fp16 loss scaling: only --amp on CUDA


@dataclass
class _Run:
    """One run's fixed context plus its log, passed between the steps of ``_train``."""

    config: TrainConfig
    info: DistInfo
    ckpt_path: Path  # out/checkpoint.pth
    parts: _Parts
    train_set: Any  # CocoDetection: class_names, label_map, annotations
    val_root: Path  # dataset root evaluated every eval_every epochs
    resize_rule: TrainingResize  # how this run resizes and pads (stored in checkpoints)
    history: list[dict[str, Any]]  # log.jsonl entries so far


def _train(config: TrainConfig, info: DistInfo) -> TrainResult:
    """Build (or restore) the run, then train, evaluate and checkpoint epoch by epoch.

    Keep the steps in this order: seeding, building the model (random init) and
    restoring the RNG state fix the random streams, so that a run's weights and a
    resumed run's replay of them stay the same."""
    from detr.train.data import build_train_loader, load_train_val
    from detr.train.state import seed_everything

    ckpt_path = Path(config.out) / CHECKPOINT_NAME
    resumed = _read_resumed(config, ckpt_path)
    seed_everything(config.seed + info.rank)
    train_set, val_root = load_train_val(config)
    parts = _build_parts(config, info, len(train_set.label_map), init=resumed is None)
    start_epoch = 0
    history: list[dict[str, Any]] = []
    if resumed is not None:
        start_epoch, history = _restore(parts, resumed, config, info, ckpt_path,
                                        train_set.label_map)
    loader, sampler = build_train_loader(train_set, config, info)
    # How this run resizes and pads, stored in every checkpoint so eval and export follow it.
    resize_rule = from_train_config(config.to_dict(), image_sizes(train_set))
    run = _Run(config, info, ckpt_path, parts, train_set, val_root, resize_rule, history)
    completed = epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            entry = _train_epoch(run, loader, epoch, completed)
            _evaluate_epoch(run, entry, epoch)
            _save_epoch(run, entry, epoch)
            completed = epoch + 1
            barrier(info)
    except KeyboardInterrupt:
        if info.is_main:
            where = (f"{ckpt_path} holds epoch {completed - 1}" if completed > 0
                     else "no epoch finished, nothing saved")
            print(f"\ninterrupted during epoch {epoch}; {where}. Resume with:\n  "
                  f"{resume_command(config)}", file=sys.stderr)
        raise
    return TrainResult(checkpoint=ckpt_path, epochs_completed=completed, history=history)


def _read_resumed(config: TrainConfig, ckpt_path: Path) -> dict[str, Any] | None:
    """The checkpoint to resume (``--resume``), else None; refuses to overwrite a run."""
    from detr.train.state import read_training_checkpoint

    if config.resume:
        resumed = read_training_checkpoint(ckpt_path)
        _check_resume_compatible(config, resumed, ckpt_path)
        return resumed
    if ckpt_path.exists():
        raise InputError(ckpt_path.parent, f"already holds {CHECKPOINT_NAME}; pass --resume to "
                         "continue that run or choose another --out")
    return None


def _build_parts(config: TrainConfig, info: DistInfo, num_classes: int, init: bool) -> _Parts:
    """Model (``--init`` weights when ``init``), loss, optimiser, schedule, scaler."""
    import detr
    from detr.config import get_config
    from detr.train.optim import build_lr_scheduler, build_optimizer

    try:
        model_config = get_config(config.preset, **config.model_overrides)
    except ValueError as exc:
        raise InputError("--preset/--model-opt", str(exc)) from exc
    model = detr.build_model(config.preset, num_classes=num_classes, **config.model_overrides)
    if config.init and init:
        _load_init_weights(model, config.init, info)
    model.to(info.device)
    wrapped: nn.Module = model
    if info.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    criterion = detr.build_criterion(num_classes, dec_layers=model_config.dec_layers,
                                     aux_loss=model_config.aux_loss, eos_coef=config.eos_coef)
    criterion.to(info.device)
    optimizer = build_optimizer(model, lr=config.lr, lr_backbone=config.lr_backbone,
                                weight_decay=config.weight_decay)
    lr_scheduler = build_lr_scheduler(optimizer, config.lr_drop)
    use_scaler = config.amp and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    return _Parts(wrapped, model, model_config, criterion, optimizer, lr_scheduler, scaler)


def _restore(parts: _Parts, resumed: dict[str, Any], config: TrainConfig, info: DistInfo,
             ckpt_path: Path, label_map: list[int]) -> tuple[int, list[dict[str, Any]]]:
    """Load weights, optimiser, schedule, scaler and RNG state from ``resumed``;
    returns (first epoch to train, log entries of the epochs already done)."""
    from detr.train.state import set_rng_state

    _check_resume_classes(resumed, label_map, ckpt_path)
    with restoring(ckpt_path, "model weights"):
        parts.model_without_ddp.load_state_dict(resumed["model"])
    with restoring(ckpt_path, "optimizer state"):
        parts.optimizer.load_state_dict(resumed["optimizer"])
        parts.lr_scheduler.load_state_dict(resumed["lr_scheduler"])
    if parts.lr_scheduler.step_size != config.lr_drop:
        _override_lr_drop(parts.lr_scheduler, config.lr_drop)
        _say(info, f"--lr-drop {config.lr_drop} replaces the checkpoint's schedule; lr now "
             f"{parts.optimizer.param_groups[0]['lr']:.3g}")
    if parts.scaler is not None and "grad_scaler" in resumed:
        parts.scaler.load_state_dict(resumed["grad_scaler"])
    start_epoch = int(resumed["epoch"]) + 1
    states = resumed["rng_state"]
    # One state per process; a different world size cannot replay exactly.
    with restoring(ckpt_path, "random number generator state"):
        set_rng_state(states[info.rank] if info.rank < len(states) else states[0])
    history = [e for e in _read_log(Path(config.out) / LOG_NAME)
               if e.get("epoch", -1) < start_epoch]
    _say(info, f"resuming {ckpt_path} after epoch {start_epoch - 1} (to {config.epochs} epochs)")
    return start_epoch, history


def _train_epoch(run: _Run, loader: Any, epoch: int, completed: int) -> dict[str, Any]:
    """One pass over the data, then the schedule step; returns the epoch's log entry."""
    from detr.train.epoch import train_one_epoch

    config, parts, info = run.config, run.parts, run.info
    try:
        stats = train_one_epoch(
            parts.model, parts.criterion, loader, parts.optimizer, info.device, epoch,
            clip_max_norm=config.clip_max_norm, amp=config.amp, scaler=parts.scaler,
            max_steps=config.max_steps, progress=config.progress)
    except TrainingDivergedError as exc:
        kept = (f"{run.ckpt_path} (epoch {completed - 1}) is kept" if completed > 0
                else "no checkpoint was written yet")
        raise TrainingDivergedError(f"{exc}; {kept}") from exc
    lr_used = parts.optimizer.param_groups[0]["lr"]  # the lr of this epoch, logged
    parts.lr_scheduler.step()
    images = stats.images * info.world_size
    return {
        "epoch": epoch,
        **{f"train_{k}": v for k, v in stats.means().items()},
        "lr": lr_used,
        "images": images,
        "seconds": round(stats.seconds, 2),
        "images_per_s": round(images / max(stats.seconds, 1e-9), 2),
    }


def _evaluate_epoch(run: _Run, entry: dict[str, Any], epoch: int) -> None:
    """Every ``eval_every`` epochs and after the last: val AP into ``entry`` (rank 0)."""
    config, info = run.config, run.info
    if not config.eval_every or not ((epoch + 1) % config.eval_every == 0
                                     or epoch + 1 == config.epochs):
        return
    if info.is_main:
        try:
            metrics = _evaluate(run.parts.model_without_ddp, run.val_root, config, run.resize_rule)
            entry.update({f"val_{k}": v for k, v in metrics.items()})
        except ImportError as exc:  # evaluation extras missing: say so, go on
            entry["val_skipped"] = f"evaluation unavailable: {exc}"
            _say(info, f"epoch {epoch}: {entry['val_skipped']}")
    barrier(info)


def _save_epoch(run: _Run, entry: dict[str, Any], epoch: int) -> None:
    """Write out/checkpoint.pth (everything --resume needs) and out/log.jsonl (rank 0)."""
    import detr
    from detr.train.state import get_rng_state

    # Every rank takes part in gathering; RNG states are taken after eval so a resumed
    # run replays the same stream.
    rng_states = _gather_rng(run.info, get_rng_state())
    if not run.info.is_main:
        return
    parts = run.parts
    extra = {
        "optimizer": parts.optimizer.state_dict(),
        "lr_scheduler": parts.lr_scheduler.state_dict(),
        "epoch": epoch,
        "rng_state": rng_states,
        "train_config": run.config.to_dict(),
        TRAINING_RESIZE_KEY: run.resize_rule.to_dict(),
    }
    if parts.scaler is not None:
        extra["grad_scaler"] = parts.scaler.state_dict()
    detr.save_checkpoint(run.ckpt_path, parts.model_without_ddp, parts.model_config,
                         run.train_set.class_names, run.train_set.label_map, extra)
    run.history.append(entry)
    atomic_write_text(run.ckpt_path.parent / LOG_NAME,
                      "".join(json.dumps(e, sort_keys=True) + "\n" for e in run.history))
    _say(run.info, _format_entry(entry))


def _override_lr_drop(scheduler: torch.optim.lr_scheduler.StepLR, lr_drop: int) -> None:
    """Resume with a different ``--lr-drop`` (official DETR's ``--override_resumed_lr_drop``):
    StepLR keeps its step size in its state and updates lr recursively, so set both
    the step size and each group's lr in closed form for the epochs already done."""
    scheduler.step_size = lr_drop
    done = scheduler.last_epoch  # number of scheduler steps = finished epochs
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * scheduler.gamma ** (done // lr_drop)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]  # what get_last_lr shows


def _check_resume_compatible(config: TrainConfig, raw: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint of another architecture (weights would not load)."""
    old = raw.get("train_config", {})
    for key in ("preset", "model_overrides"):
        if key in old and old[key] != getattr(config, key):
            raise ModelFormatError(path, f"was trained with {key}={old[key]!r}, "
                                   f"not {getattr(config, key)!r}; resume with the same options")
    if int(raw["epoch"]) + 1 >= config.epochs:
        raise InputError("--epochs", f"{path} already holds epoch {raw['epoch']} "
                         f"(0-based) of {config.epochs}; raise --epochs to train longer")


def _check_resume_classes(raw: dict[str, Any], label_map: list[int], path: Path) -> None:
    """The dataset must have the classes the checkpoint was trained on: the class head
    has one output per class, and the label map says which category each one is."""
    stored = raw.get("label_map")
    if isinstance(stored, list) and list(stored) != list(label_map):
        raise ModelFormatError(path, f"was trained on {len(stored)} classes (category ids "
                               f"{_ids(stored)}), but --data has {len(label_map)} "
                               f"({_ids(label_map)}); resume on the same dataset, or start a "
                               "new run with --init")


def _ids(ids: list[Any]) -> str:
    shown = ", ".join(str(i) for i in ids[:6])
    return shown + (", ..." if len(ids) > 6 else "")


def _load_init_weights(model: nn.Module, path: str, info: DistInfo) -> None:
    """Fine-tune start: copy every parameter whose name and shape match, except the
    class head (``class_embed``), whose size depends on the dataset's classes."""
    import detr

    source = detr.load_checkpoint(path).model.state_dict()
    own = model.state_dict()
    take = {k: v for k, v in source.items()
            if not k.startswith("class_embed.") and k in own and own[k].shape == v.shape}
    if not take:
        raise ModelFormatError(path, "no parameter matches this model's names and shapes "
                               "(different architecture?)")
    skipped = sorted(k for k in source if k not in take and not k.startswith("class_embed."))
    model.load_state_dict(take, strict=False)
    _say(info, f"--init {path}: loaded {len(take)} of {len(own)} tensors "
         f"(class_embed re-initialised{f', {len(skipped)} mismatched skipped' if skipped else ''})")


def _evaluate(model: nn.Module, val_root: Path, config: TrainConfig,
              rule: TrainingResize) -> dict[str, float]:
    """Val AP under the official protocol: the run's own resize rule per image, the
    padding mask, the official PostProcess (what ``detr-edge eval`` reports)."""
    from detr.evaluate import EvalConfig, evaluate

    result = evaluate(model, EvalConfig(data=str(val_root), split=config.val_split,
                                        resize=(rule.shorter, rule.max_size), progress=False))
    return result.metrics


def image_sizes(dataset: Any) -> list[tuple[int, int]] | None:
    """(h, w) of every image of a ``CocoDetection`` from its annotations; None when
    the annotations do not give every size (COCO's width/height are optional here)."""
    coco: Any = getattr(dataset, "coco", None)
    try:
        return [(int(im["height"]), int(im["width"])) for im in coco.imgs.values()]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _gather_rng(info: DistInfo, state: dict[str, Any]) -> list[dict[str, Any]]:
    """RNG states of all processes, indexed by rank (rank 0 stores them)."""
    if not info.distributed:
        return [state]
    import torch.distributed as dist

    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _format_entry(entry: dict[str, Any]) -> str:
    keys = ("train_loss", "train_loss_ce", "train_loss_bbox", "train_loss_giou", "val_AP",
            "val_AP50", "images_per_s")
    shown = " ".join(f"{k}={entry[k]:.4g}" for k in keys if k in entry)
    return f"epoch {entry['epoch']}: {shown} ({entry['seconds']:.0f}s)"


def _say(info: DistInfo, message: str) -> None:
    if info.is_main:
        print(message, flush=True)

