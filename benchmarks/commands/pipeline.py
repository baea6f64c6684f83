"""``detr-edge pipeline [--out DIR] [--train-minutes M] [--max-images N]``: the main job."""

from __future__ import annotations

import argparse

from runtime import options as opt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo",
                        help="output folder; artifacts already there are reused (default runs/demo)")
    parser.add_argument("--train-minutes", type=float, default=0.0,
                        help="train detr-tiny afresh for about M minutes instead of starting "
                        "from the committed demo checkpoint (default 0)")
    parser.add_argument("--checkpoint", default=None,
                        help="start from this checkpoint instead of the demo one")
    parser.add_argument("--max-images", type=int, default=200,
                        help="validation images evaluated per backend (default 200 = all)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per latency (default 20)")
    parser.add_argument("--no-engines", action="store_true", help="do not build TensorRT engines")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the per-row peak-RSS subprocess")


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, train_minutes=opt.non_negative, max_images=opt.count, runs=opt.count)
    from benchmarks.pipeline import PipelineConfig, run_pipeline

    config = PipelineConfig(out=args.out, train_minutes=args.train_minutes,
                            checkpoint=args.checkpoint, max_images=args.max_images,
                            runs=args.runs, build_engines=not args.no_engines,
                            measure_memory=not args.no_memory)
    run_pipeline(config)
    return 0
