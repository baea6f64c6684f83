"""The flags of ``detr-edge train``: one table, field of ``TrainConfig`` <-> flag.

Both directions are derived from :data:`TRAIN_FLAGS`: the parser and
:func:`config_from_args` (flags -> ``TrainConfig``) and :func:`resume_command`
(``TrainConfig`` -> the command line that continues a run). The argparse type and
default of each flag come from the dataclass field, so a new field needs one row
here; a field without a row (or a row without a field) fails at import.

Torch-free: the CLI module ``detr.commands.train`` imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing
from dataclasses import dataclass
from typing import Any, Literal

from detr.train.config import TrainConfig
from runtime import options as opt
from runtime.errors import InputError

# How a field is spelled on the command line:
#   value:    --flag VALUE (argparse type from the field's annotation)
#   list:     --flag V1 V2 ... (nargs="+"; a tuple in the config)
#   switch:   --flag sets True (store_true)
#   toggle:   --flag / --no-flag (BooleanOptionalAction)
#   negated:  --no-flag sets the field False; never part of the resume command
#   key_values: --flag KEY=VALUE, repeatable; a typed dict in the config
Kind = Literal["value", "list", "switch", "toggle", "negated", "key_values"]


@dataclass(frozen=True)
class Flag:
    """One row of the table: a ``TrainConfig`` field and its command-line flag."""

    field: str  # TrainConfig field name
    help: str | None = None  # argparse help (None: the flag is listed without one)
    kind: Kind = "value"
    check: opt.Check | None = None  # runtime.options validator of the parsed value
    flag: str | None = None  # the option as typed; None = "--" + field with "-"
    metavar: str | None = None  # argparse metavar; None = argparse's own
    resumes: bool = True  # False: left out of the resume command (--resume is added last)

    @property
    def option(self) -> str:
        return self.flag or opt.option_name(self.field)

    @property
    def dest(self) -> str:
        """The argparse attribute holding the parsed value."""
        return self.option[2:].replace("-", "_")


# Parser (and --help) order. Field order of TrainConfig is the resume command's order.
TRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("data", "dataset root ({split}/ + annotations/)"),
    Flag("out", "run directory (checkpoint.pth, log.jsonl)"),
    Flag("preset", "model preset (default detr-tiny)"),
    Flag("epochs", check=opt.count),
    Flag("resume", "continue OUT/checkpoint.pth", kind="switch", resumes=False),
    Flag("batch_size", "images per step per process", check=opt.batch),
    Flag("lr", check=opt.non_negative),
    Flag("lr_backbone", "backbone lr (use ~--lr when training the backbone from scratch)",
         check=opt.non_negative),
    Flag("lr_drop", "epoch of the 10x lr drop", check=opt.count),
    Flag("weight_decay", check=opt.non_negative),
    Flag("clip_max_norm", "0 disables clipping", check=opt.non_negative),
    Flag("num_workers", check=opt.int_range(0, 256)),
    Flag("amp", "mixed precision (bf16 autocast on CPU, fp16 on CUDA)", kind="switch"),
    Flag("seed", check=opt.seed),
    Flag("eval_every", "epochs between evals; 0 = never", check=opt.count_or_zero),
    Flag("init", "fine-tune from official/HF/own weights; class_embed re-initialised",
         metavar="CHECKPOINT"),
    Flag("scales", "shorter-side sizes of the random resize (default: paper's 480..800)",
         kind="list", check=opt.image_side),
    Flag("max_size", "longest side (default 1333)", check=opt.image_side),
    Flag("crop", "paper's random-crop branch of the augmentation", kind="toggle"),
    Flag("eval_size", "square eval canvas side (default: largest scale)", check=opt.image_side),
    Flag("train_split"),
    Flag("val_split"),
    Flag("max_steps", "steps per epoch cap (tests)", check=opt.count),
    Flag("device", "auto | cpu | cuda | cuda:N"),
    Flag("model_overrides", "DETRConfig override, e.g. num_queries=20 (repeatable)",
         kind="key_values", flag="--model-opt", metavar="KEY=VALUE"),
    Flag("eos_coef", "no-object CE weight", check=opt.non_negative),
    Flag("progress", "no progress bars", kind="negated", flag="--no-progress", resumes=False),
)

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def check_table(rows: tuple[Flag, ...]) -> None:
    """Raise ``RuntimeError`` unless ``rows`` name every ``TrainConfig`` field exactly once."""
    named = [row.field for row in rows]
    unflagged = sorted(set(_FIELDS) - set(named))
    unknown = sorted(set(named) - set(_FIELDS))
    twice = sorted({name for name in named if named.count(name) > 1})
    if unflagged or unknown or twice:
        raise RuntimeError(f"TRAIN_FLAGS and TrainConfig disagree: fields without a flag "
                           f"{unflagged}, flags without a field {unknown}, listed twice {twice}")


check_table(TRAIN_FLAGS)  # at import: a new TrainConfig field cannot miss its flag
_BY_FIELD = {row.field: row for row in TRAIN_FLAGS}


def _scalar_type(field: str) -> type | None:
    """int/float of an ``int``, ``float | None`` or ``tuple[int, ...]`` field; None for str."""
    hint = typing.get_type_hints(TrainConfig)[field]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    inner = args[0]
    if typing.get_origin(inner) is tuple:
        inner = typing.get_args(inner)[0]
    return inner if inner in (int, float) else None


def _required(field: str) -> bool:
    """A field without a default (``data``, ``out``): a required flag, always resumed."""
    f = _FIELDS[field]
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(field: str) -> Any:
    f = _FIELDS[field]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every flag of :data:`TRAIN_FLAGS` (defaults from ``TrainConfig``)."""
    for row in TRAIN_FLAGS:
        kwargs: dict[str, Any] = {"help": row.help}
        if row.metavar is not None:
            kwargs["metavar"] = row.metavar
        if row.kind in ("switch", "negated"):
            kwargs["action"] = "store_true"
        elif row.kind == "toggle":
            kwargs.update(action=argparse.BooleanOptionalAction, default=_default(row.field))
        elif row.kind == "key_values":
            kwargs.update(action="append", default=[])
        elif _required(row.field):
            kwargs["required"] = True
        else:
            kwargs["default"] = _default(row.field)
        if row.kind in ("value", "list") and _scalar_type(row.field) is not None:
            kwargs["type"] = _scalar_type(row.field)
        if row.kind == "list":
            kwargs["nargs"] = "+"
        parser.add_argument(row.option, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Check the parsed flags (``InputError`` naming the first bad one) -> ``TrainConfig``."""
    opt.check_options(args, **{row.dest: row.check for row in TRAIN_FLAGS if row.check})
    values: dict[str, Any] = {}
    for row in TRAIN_FLAGS:
        parsed = getattr(args, row.dest)
        if row.kind == "list":
            values[row.field] = tuple(parsed) if parsed else None
        elif row.kind == "negated":
            values[row.field] = not parsed
        elif row.kind == "key_values":
            values[row.field] = parse_model_opts(parsed)
        else:
            values[row.field] = parsed
    return TrainConfig(**values)


def resume_command(config: TrainConfig) -> str:
    """The ``detr-edge train`` command line that continues this run: every flag whose
    value differs from its default (``--data`` and ``--out`` always), then ``--resume``."""
    parts = ["detr-edge", "train"]
    for field in _FIELDS:  # TrainConfig's field order
        row = _BY_FIELD[field]
        value = getattr(config, field)
        if row.resumes and (_required(field) or value != _default(field)):
            parts += _spell(row, value)
    parts.append("--resume")
    return shlex.join(parts)


def _spell(row: Flag, value: Any) -> list[str]:
    """The command-line words that set ``row.field`` to ``value`` (a non-default one)."""
    if row.kind == "key_values":
        return [word for key, val in value.items() for word in (row.option, f"{key}={val}")]
    if row.kind == "toggle":
        return [row.option if value else "--no-" + row.option[2:]]
    if row.kind == "switch":
        return [row.option]
    if row.kind == "list":
        return [row.option, *map(str, value)]
    return [row.option, str(value)]


def parse_model_opts(items: list[str]) -> dict[str, Any]:
    """``["num_queries=20", "dropout=0.0", "pre_norm=true"]`` -> typed dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError("--model-opt", f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = _typed(text)
    return out


def _typed(text: str) -> Any:
    """``true``/``false`` -> bool, ``none`` -> None, else int, float or the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
