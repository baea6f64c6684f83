"""``detr-edge eval``: COCO AP of a checkpoint on a dataset split (thin wrapper
over detr.evaluate.evaluate_checkpoint)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="own, official or HF DETR checkpoint")
    parser.add_argument("--data", required=True, help="dataset root ({split}/ + annotations/)")
    parser.add_argument("--split", default="val", help="split to evaluate (default val)")
    parser.add_argument("--out", default=None,
                        help="folder for detections.json and metrics.json (default: not written)")
    parser.add_argument("--second-best", action="store_true",
                        help="keep no-object slots with their best real class (paper, ~+2 AP)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input canvas; default: the checkpoint's training size, else 800 1333")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def run(args: argparse.Namespace) -> int:
    from detr.evaluate import METRIC_KEYS, EvalConfig, default_eval_size, evaluate_checkpoint

    size = tuple(args.size) if args.size else None
    if size is None:
        from detr.checkpoint import load_checkpoint

        size = default_eval_size(load_checkpoint(args.checkpoint).raw)
    config = EvalConfig(data=args.data, split=args.split, size=size,  # type: ignore[arg-type]
                        second_best=args.second_best, batch_size=args.batch_size,
                        max_images=args.max_images, device=args.device)
    result = evaluate_checkpoint(args.checkpoint, config, out=args.out)
    print(f"{result.num_images} images, canvas {size[0]}x{size[1]}"
          f"{', second-best decoding' if args.second_best else ''}")
    for key in METRIC_KEYS:
        print(f"{key:>5}: {result.metrics[key]:.4f}")
    for name, path in result.files.items():
        print(f"wrote {name}: {path}")
    return 0
