"""The ``detr-edge train`` flag table (detr/train/flags.py): both directions agree."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from detr.train.config import TrainConfig
from detr.train.flags import TRAIN_FLAGS, Flag, check_table, config_from_args, resume_command
from runtime.cli import build_parser
from runtime.errors import InputError

# A value different from the default for every field the resume command carries.
CHANGED: dict[str, object] = {
    "data": "data dir", "out": "run's out", "preset": "detr-r50", "epochs": 7, "batch_size": 3,
    "lr": 2e-4, "lr_backbone": 0.0, "weight_decay": 0.5, "lr_drop": 5, "clip_max_norm": 0.0,
    "num_workers": 0, "amp": True, "seed": 1, "eval_every": 0, "init": "w.pth",
    "train_split": "tr", "val_split": "va", "scales": (64, 56), "max_size": 99, "crop": False,
    "eval_size": 80, "max_steps": 3, "device": "cpu",
    "model_overrides": {"num_queries": 20, "pre_norm": True}, "eos_coef": 0.2}
NOT_RESUMED = {"resume", "progress"}  # --resume is appended; progress bars are per run


def _parse(argv: list[str]) -> TrainConfig:
    return config_from_args(build_parser().parse_args(argv))


def test_every_field_survives_the_resume_command() -> None:
    """Changing any field shows in the resume command and parses back to that value:
    a field added to TrainConfig without its flag (or spelled wrong) fails here."""
    assert set(CHANGED) | NOT_RESUMED == {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**CHANGED)
    argv = shlex.split(resume_command(config))
    assert argv[:2] == ["detr-edge", "train"] and argv[-1] == "--resume"
    assert _parse(argv[1:]) == dataclasses.replace(config, resume=True)
    for name, value in CHANGED.items():
        if name not in ("data", "out"):
            alone = TrainConfig(data="d", out="o", **{name: value})
            assert _parse(shlex.split(resume_command(alone))[1:]) == \
                dataclasses.replace(alone, resume=True), name


def test_defaults_come_from_the_dataclass() -> None:
    assert _parse(["train", "--data", "d", "--out", "o"]) == TrainConfig(data="d", out="o")
    assert resume_command(TrainConfig(data="d", out="o")) == \
        "detr-edge train --data d --out o --resume"
    no_bars = _parse(["train", "--data", "d", "--out", "o", "--no-progress", "--resume"])
    assert not no_bars.progress and no_bars.resume


def test_table_and_dataclass_must_agree() -> None:
    check_table(TRAIN_FLAGS)
    with pytest.raises(RuntimeError, match=r"without a flag \['progress'\]"):
        check_table(TRAIN_FLAGS[:-1])
    with pytest.raises(RuntimeError, match=r"without a field \['bogus'\]"):
        check_table((*TRAIN_FLAGS, Flag("bogus")))
    with pytest.raises(RuntimeError, match=r"twice \['lr'\]"):
        check_table((*TRAIN_FLAGS, Flag("lr")))


@pytest.mark.parametrize(("argv", "message"), [
    (["--epochs", "0"], "--epochs: must be an integer in"),
    (["--lr", "nan"], "--lr: must be a finite number"),
    (["--scales", "64", "0"], "--scales: must be an integer in"),
    (["--model-opt", "novalue"], "--model-opt: expected KEY=VALUE"),
])
def test_bad_values_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        _parse(["train", "--data", "d", "--out", "o", *argv])
