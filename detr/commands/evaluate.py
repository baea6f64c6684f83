"""``detr-edge eval``: COCO AP of a checkpoint on a dataset split (thin wrapper
over detr.evaluate.evaluate_checkpoint)."""

from __future__ import annotations

import argparse

from runtime import options as opt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="own, official or HF DETR checkpoint")
    parser.add_argument("--data", required=True, help="dataset root ({split}/ + annotations/)")
    parser.add_argument("--split", default="val", help="split to evaluate (default val)")
    parser.add_argument("--out", default=None,
                        help="folder for detections.json and metrics.json (default: not written)")
    opt.add_decoding_arguments(parser)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--resize", type=int, nargs=2, metavar=("SHORTER", "MAX"), default=None,
                       help="resize rule per image (shorter side, longer-side cap); default: "
                       "the checkpoint's training rule, else the paper's 800 1333")
    sizes.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="fit every image into a fixed H x W canvas instead (as an export)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, size=opt.image_side, resize=opt.image_side, batch_size=opt.batch,
        max_images=opt.count)
    from detr.coco_eval import AP_KEYS
    from detr.evaluate import EvalConfig, evaluate_checkpoint

    config = EvalConfig(data=args.data, split=args.split,
                        size=tuple(args.size) if args.size else None,  # type: ignore[arg-type]
                        resize=tuple(args.resize) if args.resize else None,  # type: ignore[arg-type]
                        second_best=not args.drop_no_object, batch_size=args.batch_size,
                        max_images=args.max_images, device=args.device)
    result = evaluate_checkpoint(args.checkpoint, config, out=args.out)
    print(f"{result.num_images} images; resize: {result.protocol['resize']}; "
          f"decoding: {result.protocol['decoding']}")
    for key in AP_KEYS:
        print(f"{key:>5}: {result.metrics[key]:.4f}")
    for name, path in result.files.items():
        print(f"wrote {name}: {path}")
    return 0
