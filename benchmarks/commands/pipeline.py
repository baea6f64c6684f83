"""``detr-edge pipeline [--data DIR] [--out DIR] [--checkpoint C | --train-minutes M]``:
the main job, from a dataset to the benchmark report (the demo without ``--data``)."""

from __future__ import annotations

import argparse

from runtime import options as opt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="a COCO-layout dataset root (annotations/instances_<split>.json + "
                        "<split>/ folders; COCO 2017 works with --val-split val2017). "
                        "Default: generate the synthetic demo dataset")
    parser.add_argument("--train-split", default="train",
                        help="split for training and INT8 calibration (default train)")
    parser.add_argument("--val-split", default="val",
                        help="split for the INT8 AP budget and the benchmark (default val)")
    parser.add_argument("--out", default="runs/demo",
                        help="output folder; artifacts already there are reused (default runs/demo)")
    parser.add_argument("--train-minutes", type=float, default=0.0,
                        help="train a model afresh for about M minutes instead of starting "
                        "from --checkpoint or the committed demo checkpoint (default 0)")
    parser.add_argument("--checkpoint", default=None,
                        help="start from this checkpoint (needed with --data unless training)")
    parser.add_argument("--preset", default="detr-tiny",
                        help="model preset trained by --train-minutes (default detr-tiny)")
    parser.add_argument("--canvas", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="exported input size (default: the smallest that holds every "
                        "image of the dataset at the model's training resize)")
    parser.add_argument("--max-images", type=int, default=200,
                        help="validation images evaluated per backend (default 200)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per latency (default 20)")
    parser.add_argument("--no-engines", action="store_true", help="do not build TensorRT engines")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the per-row peak-RSS subprocess")


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, train_minutes=opt.non_negative, max_images=opt.count, runs=opt.count)
    from benchmarks.workflow.pipeline import PipelineConfig, run_pipeline

    config = PipelineConfig(out=args.out, data=args.data, train_split=args.train_split,
                            val_split=args.val_split, train_minutes=args.train_minutes,
                            checkpoint=args.checkpoint, preset=args.preset,
                            canvas=tuple(args.canvas) if args.canvas else None,
                            max_images=args.max_images, runs=args.runs,
                            build_engines=not args.no_engines, measure_memory=not args.no_memory)
    run_pipeline(config)
    return 0
