"""``detr-edge bundle --artifacts DIR --data DATA --out BUNDLE [--images N]``: gather
what the device needs (ONNX variants, calibration and eval images, annotations of the
eval subset, the PyTorch reference) into one folder with a manifest."""

from __future__ import annotations

import argparse

from runtime import options as opt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", required=True, metavar="DIR",
                        help="folder with the ONNX variants (e.g. pipeline's OUT/artifacts)")
    parser.add_argument("--data", required=True,
                        help="dataset root (eval split + train split for calibration)")
    parser.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint for the PyTorch reference (needs torch; without it "
                        "the bundle has no reference and the device compares with ONNX "
                        "Runtime FP32)")
    parser.add_argument("--split", default="val", help="eval split (default val)")
    parser.add_argument("--calib-split", default="train",
                        help="split the calibration images come from (default train)")
    parser.add_argument("--images", type=int, default=50,
                        help="eval images (default 50; 0 = the whole split)")
    parser.add_argument("--seed", type=int, default=None,
                        help="choose the eval images at random with this seed (default: "
                        "the first N in annotation order)")
    parser.add_argument("--calib-images", type=int, default=32,
                        help="calibration images to copy (default 32; 0 = none)")
    opt.add_decoding_arguments(parser, compatibility_flag=False)


def run(args: argparse.Namespace) -> int:
    opt.check_options(args, images=opt.count_or_zero, calib_images=opt.count_or_zero,
                      seed=opt.seed)

    from benchmarks.bundle import BundleConfig, make_bundle

    make_bundle(BundleConfig(
        artifacts=args.artifacts, data=args.data, out=args.out, checkpoint=args.checkpoint,
        split=args.split, calib_split=args.calib_split, images=args.images or None,
        seed=args.seed, calib_images=args.calib_images,
        second_best=not args.drop_no_object))
    return 0
