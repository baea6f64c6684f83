"""``train(config)``: the whole training run.

Per epoch: train (``engine.train_one_epoch``), step the StepLR schedule,
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
import shlex
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detr.checkpoint_schema import restoring
from detr.train.config import TrainConfig
from detr.train.ddp import DistInfo, barrier, cleanup_distributed, init_distributed
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


def _train(config: TrainConfig, info: DistInfo) -> TrainResult:
    from detr.train.data import build_train_loader, load_train_val
    from detr.train.engine import train_one_epoch
    from detr.train.optim import build_lr_scheduler, build_optimizer
    from detr.train.state import (
        get_rng_state,
        read_training_checkpoint,
        save_training_checkpoint,
        seed_everything,
        set_rng_state,
    )

    out = Path(config.out)
    ckpt_path = out / CHECKPOINT_NAME
    resumed: dict[str, Any] | None = None
    if config.resume:
        resumed = read_training_checkpoint(ckpt_path)
        _check_resume_compatible(config, resumed, ckpt_path)
    elif ckpt_path.exists():
        raise InputError(out, f"already holds {CHECKPOINT_NAME}; pass --resume to continue "
                         "that run or choose another --out")

    seed_everything(config.seed + info.rank)
    train_set, val_root = load_train_val(config)
    num_classes = len(train_set.label_map)

    import detr
    from detr.config import get_config

    try:
        model_config = get_config(config.preset, **config.model_overrides)
    except ValueError as exc:
        raise InputError("--preset/--model-opt", str(exc)) from exc
    model = detr.build_model(config.preset, num_classes=num_classes, **config.model_overrides)
    if config.init and resumed is None:
        _load_init_weights(model, config.init, info)
    model.to(info.device)
    model_without_ddp = model
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    criterion = detr.build_criterion(num_classes, dec_layers=model_config.dec_layers,
                                     aux_loss=model_config.aux_loss, eos_coef=config.eos_coef)
    criterion.to(info.device)
    optimizer = build_optimizer(model_without_ddp, lr=config.lr, lr_backbone=config.lr_backbone,
                                weight_decay=config.weight_decay)
    lr_scheduler = build_lr_scheduler(optimizer, config.lr_drop)
    use_scaler = config.amp and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    start_epoch = 0
    history: list[dict[str, Any]] = []
    if resumed is not None:
        _check_resume_classes(resumed, train_set.label_map, ckpt_path)
        with restoring(ckpt_path, "model weights"):
            model_without_ddp.load_state_dict(resumed["model"])
        with restoring(ckpt_path, "optimizer state"):
            optimizer.load_state_dict(resumed["optimizer"])
            lr_scheduler.load_state_dict(resumed["lr_scheduler"])
        if lr_scheduler.step_size != config.lr_drop:
            _override_lr_drop(lr_scheduler, config.lr_drop)
            _say(info, f"--lr-drop {config.lr_drop} replaces the checkpoint's schedule; lr now "
                 f"{optimizer.param_groups[0]['lr']:.3g}")
        if scaler is not None and "grad_scaler" in resumed:
            scaler.load_state_dict(resumed["grad_scaler"])
        start_epoch = int(resumed["epoch"]) + 1
        states = resumed["rng_state"]
        # One state per process; a different world size cannot replay exactly.
        with restoring(ckpt_path, "random number generator state"):
            set_rng_state(states[info.rank] if info.rank < len(states) else states[0])
        history = [e for e in _read_log(out / LOG_NAME) if e.get("epoch", -1) < start_epoch]
        _say(info, f"resuming {ckpt_path} after epoch {start_epoch - 1} "
             f"(to {config.epochs} epochs)")

    loader, sampler = build_train_loader(train_set, config, info)
    # How this run resizes and pads, stored in every checkpoint so eval and export follow it.
    resize_rule = from_train_config(config.to_dict(), image_sizes(train_set))
    completed = start_epoch
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            try:
                stats = train_one_epoch(
                    model, criterion, loader, optimizer, info.device, epoch,
                    clip_max_norm=config.clip_max_norm, amp=config.amp, scaler=scaler,
                    max_steps=config.max_steps, progress=config.progress)
            except TrainingDivergedError as exc:
                kept = (f"{ckpt_path} (epoch {completed - 1}) is kept" if completed > 0
                        else "no checkpoint was written yet")
                raise TrainingDivergedError(f"{exc}; {kept}") from exc
            lr_used = optimizer.param_groups[0]["lr"]  # the lr of this epoch, logged
            lr_scheduler.step()
            entry: dict[str, Any] = {
                "epoch": epoch,
                **{f"train_{k}": v for k, v in stats.means().items()},
                "lr": lr_used,
                "images": stats.images * info.world_size,
                "seconds": round(stats.seconds, 2),
                "images_per_s": round(stats.images * info.world_size / max(stats.seconds, 1e-9), 2),
            }
            if config.eval_every and ((epoch + 1) % config.eval_every == 0
                                      or epoch + 1 == config.epochs):
                if info.is_main:
                    try:
                        entry.update({f"val_{k}": v for k, v in
                                      _evaluate(model_without_ddp, val_root, config,
                                                resize_rule).items()})
                    except ImportError as exc:  # evaluation extras missing: say so, go on
                        entry["val_skipped"] = f"evaluation unavailable: {exc}"
                        _say(info, f"epoch {epoch}: {entry['val_skipped']}")
                barrier(info)
            # RNG states are taken after eval so a resumed run replays the same stream.
            rng_states = _gather_rng(info, get_rng_state())
            if info.is_main:
                extra = {
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_scheduler.state_dict(),
                    "epoch": epoch,
                    "rng_state": rng_states,
                    "train_config": config.to_dict(),
                    TRAINING_RESIZE_KEY: resize_rule.to_dict(),
                }
                if scaler is not None:
                    extra["grad_scaler"] = scaler.state_dict()
                save_training_checkpoint(ckpt_path, model_without_ddp, model_config,
                                         train_set.class_names, train_set.label_map, extra)
                history.append(entry)
                atomic_write_text(out / LOG_NAME,
                                  "".join(json.dumps(e, sort_keys=True) + "\n" for e in history))
                _say(info, _format_entry(entry))
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


def resume_command(config: TrainConfig) -> str:
    """The ``detr-edge train`` command line that continues this run."""
    defaults = TrainConfig(data="", out="")
    parts = ["detr-edge", "train", "--data", config.data, "--out", config.out]
    for f in fields(TrainConfig):
        name, value = f.name, getattr(config, f.name)
        if name in ("data", "out", "resume", "progress") or value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-")
        if name == "model_overrides":
            for key, val in value.items():
                parts += ["--model-opt", f"{key}={val}"]
        elif name == "crop":
            parts.append("--crop" if value else "--no-crop")
        elif isinstance(value, bool):
            parts.append(flag)
        elif isinstance(value, (tuple, list)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    parts.append("--resume")
    return shlex.join(parts)


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
    coco = getattr(dataset, "coco", None)
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

