"""``detr-edge check-onnx model.onnx [--trt-version 10|11] [--calib-data DIR]``."""

from __future__ import annotations

import argparse

from runtime import options as opt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model to check")
    parser.add_argument("--trt-version", type=int, choices=(10, 11), default=10,
                        help="TensorRT major version whose ONNX parser is targeted (default 10)")
    parser.add_argument("--calib-data", default=None, metavar="DIR",
                        help="images for the FP16 overflow scan: a dataset root (its train "
                        "split), a split folder or an image folder (default: random inputs)")
    parser.add_argument("--num-inputs", type=int, default=2,
                        help="how many inputs the overflow scan runs (default 2)")
    parser.add_argument("--no-overflow-scan", action="store_true",
                        help="skip the ONNX Runtime run (graph checks only)")


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, num_inputs=opt.int_range(1, 10_000))
    from export.check_onnx import CheckConfig, check_onnx

    config = CheckConfig(trt_version=args.trt_version, calib_data=args.calib_data,
                         num_inputs=args.num_inputs, overflow_scan=not args.no_overflow_scan)
    report = check_onnx(args.model, config)
    print(report.format())
    return 0 if report.ok else 1
