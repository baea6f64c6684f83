"""Typed configuration of one training run (``detr-edge train``).

Defaults follow the DETR paper / official ``main.py`` where they make sense
(AdamW lr 1e-4, backbone 1e-5, weight decay 1e-4, grad clip 0.1, aux loss);
the resolution options exist because the demo model trains on 2 CPU cores at
~200 px instead of the paper's 800 px.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import InputError


@dataclass
class TrainConfig:
    """Everything ``train(config)`` needs; stored in every checkpoint (``train_config``)."""

    data: str  # dataset root: {split}/ images + annotations/instances_{split}.json
    out: str  # run directory: checkpoint.pth, log.jsonl, eval/
    preset: str = "detr-tiny"  # detr.config preset name
    epochs: int = 50  # total epochs (a resumed run continues up to this number)
    batch_size: int = 4  # images per step per process
    lr: float = 1e-4  # AdamW lr of transformer + heads (paper)
    lr_backbone: float = 1e-5  # AdamW lr of the backbone (paper; raise it for from-scratch)
    weight_decay: float = 1e-4  # AdamW weight decay (paper)
    lr_drop: int = 200  # epoch after which StepLR divides lr by 10 (paper: 200 of 300)
    clip_max_norm: float = 0.1  # gradient clipping max norm; 0 disables (paper: 0.1)
    num_workers: int = 2  # DataLoader workers; 0 = load in the main process
    amp: bool = False  # mixed precision autocast (bf16 on CPU, fp16 + GradScaler on CUDA)
    seed: int = 42  # seeds python, numpy and torch (offset by rank under DDP)
    eval_every: int = 1  # run COCO eval on val every N epochs; 0 = never
    resume: bool = False  # continue from out/checkpoint.pth (model, optimizer, RNG ...)
    init: str | None = None  # fine-tune from a checkpoint: all matching keys but class_embed
    train_split: str = "train"  # folder / annotation name of the training split
    val_split: str = "val"  # split evaluated every eval_every epochs
    scales: tuple[int, ...] | None = None  # shorter-side sizes of RandomResize; None = paper's
    max_size: int | None = None  # longest side after resize; None = paper's 1333
    crop: bool = True  # paper's RandomSelect(resize | resize+RandomSizeCrop) augmentation
    eval_size: int | None = None  # shorter side at eval; None = max(scales)
    max_steps: int | None = None  # stop each epoch after this many steps (tests, smoke runs)
    device: str = "auto"  # "auto" = cuda if available else cpu
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"num_queries": 20}
    eos_coef: float = 0.1  # relative weight of the no-object class in the CE loss (paper)
    progress: bool = True  # tqdm bars (disabled automatically when not a TTY)

    def validate(self) -> None:
        """Raise ``InputError`` naming the bad option."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr_drop": self.lr_drop}
        for name, value in positive.items():
            if value <= 0:
                raise InputError(f"--{name.replace('_', '-')}", f"must be > 0, got {value}")
        for name in ("lr", "lr_backbone", "weight_decay", "clip_max_norm", "eos_coef"):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                raise InputError(f"--{name.replace('_', '-')}", f"must be >= 0, got {value}")
        if self.num_workers < 0:
            raise InputError("--num-workers", f"must be >= 0, got {self.num_workers}")
        if self.eval_every < 0:
            raise InputError("--eval-every", f"must be >= 0, got {self.eval_every}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise InputError("--max-steps", f"must be > 0, got {self.max_steps}")
        if self.scales is not None and (not self.scales or min(self.scales) <= 0):
            raise InputError("--scales", f"must be positive sizes, got {self.scales}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/pickle-safe: lists, not tuples) for checkpoints and logs."""
        raw = dataclasses.asdict(self)
        if raw["scales"] is not None:
            raw["scales"] = list(raw["scales"])
        return raw
