"""``detr-edge benchmark --checkpoint C --data DIR [--artifacts DIR] ...``: accuracy and
speed of every backend x precision against the model as trained (PyTorch FP32, official
evaluation protocol) and against PyTorch FP32 on the artifacts' canvas.

On a device without torch: ``benchmark --bundle BUNDLE`` (or ``--data`` + ``--artifacts``
+ ``--reference FILE``) measures the rows against the PyTorch reference written on the
workstation, else against ONNX Runtime FP32 (``benchmarks.reference``)."""

from __future__ import annotations

import argparse
import sys

from runtime import options as opt


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,4; got {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="PyTorch checkpoint (the reference; needs torch)")
    parser.add_argument("--data", default=None,
                        help="dataset root: {split}/ images + annotations/instances_{split}.json")
    parser.add_argument("--bundle", default=None, metavar="BUNDLE",
                        help="a `detr-edge bundle` folder: its data, artifacts (and engines "
                        "built there) and PyTorch reference")
    parser.add_argument("--reference", default=None, metavar="FILE",
                        help="PyTorch reference file from the workstation (used when torch "
                        "or --checkpoint is not available here)")
    parser.add_argument("--save-reference", default=None, metavar="FILE",
                        help="also write this run's PyTorch reference (for the device)")
    parser.add_argument("--split", default=None, help="split to evaluate (default val)")
    parser.add_argument("--artifacts", default=None, metavar="DIR",
                        help="folder with the exported *.onnx / *.engine files")
    parser.add_argument("--height", type=int, default=None,
                        help="canvas height (default: from the artifacts' metadata)")
    parser.add_argument("--width", type=int, default=None, help="canvas width")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=(1,),
                        help="comma-separated batch sizes for throughput (default 1)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up runs (default 2)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="evaluate the first N images (default 50, with --bundle all "
                        "of them; 0 = all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every backend (default: torch's setting)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the per-row peak-RSS subprocess")
    opt.add_decoding_arguments(parser)
    parser.add_argument("--out", default="runs/benchmark", help="report folder")


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, height=opt.image_side, width=opt.image_side, batch_sizes=opt.batch, runs=opt.count,
        warmup=opt.count_or_zero, max_images=opt.count_or_zero, threads=opt.threads)

    from benchmarks.suite import BenchmarkConfig, run_benchmark

    data, split, artifacts, reference, max_images = _inputs(args)
    config = BenchmarkConfig(
        checkpoint=args.checkpoint, data=data, artifacts=artifacts, reference=reference,
        save_reference=args.save_reference, height=args.height, width=args.width,
        batch_sizes=args.batch_sizes, runs=args.runs, warmup=args.warmup,
        max_images=max_images, split=split, out=args.out, measure_memory=not args.no_memory,
        threads=args.threads, second_best=not args.drop_no_object)
    try:
        run_benchmark(config)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (runtime.cli turns it into exit 130/143)
        # The report is written only after every row ran; nothing to resume from.
        print(f"\nbenchmark interrupted; the report in {args.out} is written only at the "
              "end, each file whole or not at all: rerun the same command to measure again",
              file=sys.stderr)
        raise
    return 0


def _inputs(args: argparse.Namespace) -> tuple[str, str, str | None, str | None, int | None]:
    """(data, split, artifacts, reference, max_images) from the options or the bundle."""
    from runtime.errors import InputError

    max_images = 50 if args.max_images is None else (args.max_images or None)
    if args.bundle is None:
        if args.data is None:
            raise InputError("--data", "give --data (or --bundle)")
        return args.data, args.split or "val", args.artifacts, args.reference, max_images
    for name in ("data", "artifacts", "split"):
        if getattr(args, name) is not None:
            raise InputError(f"--{name}", "comes from the bundle; not with --bundle")
    from benchmarks.bundle import read_bundle

    bundle = read_bundle(args.bundle)
    reference = args.reference or (str(bundle.reference) if bundle.reference else None)
    if reference is None and not args.checkpoint:
        print(f"bundle {args.bundle} has no PyTorch reference "
              f"({bundle.manifest.get('reference_missing') or 'not made'})")
    return (str(bundle.data), bundle.split, str(bundle.artifacts), reference,
            args.max_images or None)
