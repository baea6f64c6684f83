"""``detr-edge train``: train DETR with the set loss (thin wrapper over detr.train.train)."""

from __future__ import annotations

import argparse
from typing import Any

from runtime import options as opt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root ({split}/ + annotations/)")
    parser.add_argument("--out", required=True, help="run directory (checkpoint.pth, log.jsonl)")
    parser.add_argument("--preset", default="detr-tiny", help="model preset (default detr-tiny)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pth")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step per process")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-backbone", type=float, default=1e-5,
                        help="backbone lr (use ~--lr when training the backbone from scratch)")
    parser.add_argument("--lr-drop", type=int, default=200, help="epoch of the 10x lr drop")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--clip-max-norm", type=float, default=0.1, help="0 disables clipping")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision (bf16 autocast on CPU, fp16 on CUDA)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-every", type=int, default=1, help="epochs between evals; 0 = never")
    parser.add_argument("--init", default=None, metavar="CHECKPOINT",
                        help="fine-tune from official/HF/own weights; class_embed re-initialised")
    parser.add_argument("--scales", type=int, nargs="+", default=None,
                        help="shorter-side sizes of the random resize (default: paper's 480..800)")
    parser.add_argument("--max-size", type=int, default=None, help="longest side (default 1333)")
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True,
                        help="paper's random-crop branch of the augmentation")
    parser.add_argument("--eval-size", type=int, default=None,
                        help="square eval canvas side (default: largest scale)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per epoch cap (tests)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="DETRConfig override, e.g. num_queries=20 (repeatable)")
    parser.add_argument("--eos-coef", type=float, default=0.1, help="no-object CE weight")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_model_opts(items: list[str]) -> dict[str, Any]:
    """``["num_queries=20", "dropout=0.0", "pre_norm=true"]`` -> typed dict."""
    from runtime.errors import InputError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError("--model-opt", f"expected KEY=VALUE, got {item!r}")
        value: Any
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        elif text.lower() == "none":
            value = None
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        out[key.strip()] = value
    return out


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, epochs=opt.count, batch_size=opt.batch, lr=opt.non_negative, lr_backbone=opt.non_negative,
        weight_decay=opt.non_negative, clip_max_norm=opt.non_negative, eos_coef=opt.non_negative,
        lr_drop=opt.count, num_workers=opt.int_range(0, 256), seed=opt.seed,
        eval_every=opt.count_or_zero, scales=opt.image_side, max_size=opt.image_side,
        eval_size=opt.image_side, max_steps=opt.count)

    import os

    from detr.train import TrainConfig, train

    config = TrainConfig(
        data=args.data, out=args.out, preset=args.preset, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, lr_backbone=args.lr_backbone,
        weight_decay=args.weight_decay, lr_drop=args.lr_drop, clip_max_norm=args.clip_max_norm,
        num_workers=args.num_workers, amp=args.amp, seed=args.seed, eval_every=args.eval_every,
        resume=args.resume, init=args.init, train_split=args.train_split,
        val_split=args.val_split, scales=tuple(args.scales) if args.scales else None,
        max_size=args.max_size, crop=args.crop, eval_size=args.eval_size,
        max_steps=args.max_steps, device=args.device,
        model_overrides=parse_model_opts(args.model_opt), eos_coef=args.eos_coef,
        progress=not args.no_progress,
    )
    result = train(config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 prints
        print(f"trained {result.epochs_completed} epochs; checkpoint: {result.checkpoint}")
    return 0
