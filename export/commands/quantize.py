"""``detr-edge quantize --onnx model.onnx --calib-data DIR --out model.int8.onnx``:
INT8 explicit Q/DQ ONNX within an AP budget (see export/int8/quantize.py)."""

from __future__ import annotations

import argparse

from runtime import options as opt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", required=True, help="FP32 detr-edge ONNX model (export-onnx)")
    parser.add_argument("--calib-data", required=True, metavar="DIR",
                        help="dataset root (calibrates on its train split, decides on val with "
                        "its annotations), a split folder, or a plain image folder (a seeded "
                        "split gives calibration and held-out images)")
    parser.add_argument("--out", required=True, help="INT8 Q/DQ ONNX to write "
                        "(the report goes to <out>.quant.json)")
    parser.add_argument("--calib-images", type=int, default=256,
                        help="calibration images (default 256)")
    parser.add_argument("--method", choices=("minmax", "entropy", "percentile"),
                        default="minmax", help="activation range method (default minmax)")
    parser.add_argument("--percentile", type=float, default=99.999,
                        help="percentile for --method percentile (default 99.999)")
    parser.add_argument("--ap-budget", type=float, default=0.5,
                        help="max AP drop vs FP32 in COCO points 0..100 (default 0.5)")
    parser.add_argument("--eval-images", type=int, default=500,
                        help="held-out images that decide the AP budget (at most; default 500); "
                        "0 = every block INT8, no search")
    parser.add_argument("--eval-data", default=None, metavar="DIR",
                        help="take the held-out images from here (a dataset root gives its val "
                        "split, with annotations) instead of --calib-data's val split")
    parser.add_argument("--eval-ann", default=None, metavar="JSON",
                        help="COCO annotations of a plain image folder (a dataset's own are "
                        "found; without any, the FP32 model's detections are the ground truth "
                        "and the budget is scaled to that metric)")
    parser.add_argument("--pseudo-budget", type=float, default=None,
                        help="budget in pseudo-ground-truth AP points when no annotations "
                        "decide (default: mapped from --ap-budget, see the README's INT8 "
                        "section)")
    parser.add_argument("--pseudo-gt", action="store_true",
                        help="score INT8 against the FP32 model's top detections even when "
                        "annotations exist (AP = agreement with FP32)")
    parser.add_argument("--granularity", choices=("block", "layer"), default="block",
                        help="fallback unit (default block: backbone stage, encoder layer...)")
    parser.add_argument("--quantize-attention", action="store_true",
                        help="also quantize attention activation x activation MatMuls")
    parser.add_argument("--no-quantize-add", action="store_true",
                        help="no Q/DQ on residual Add outputs (Q/DQ on the Add inputs only, "
                        "the classic TensorRT ResNet layout); ONNX Runtime CPU then adds in FP32")
    parser.add_argument("--target", choices=("tensorrt", "cpu"), default="tensorrt",
                        help="Q/DQ format. tensorrt (default): symmetric int8, a TensorRT input "
                        "that also runs on ONNX Runtime. cpu: ONNX Runtime's uint8-activation "
                        "format, faster on CPUs (ReLUs fold into the zero point) but not a "
                        "TensorRT input")
    parser.add_argument("--weight-bits", type=int, choices=(7, 8), default=None,
                        help="weight bits of the cpu format (default 7: ONNX Runtime's int8 "
                        "kernels saturate with 8-bit weights on AVX2 CPUs without VNNI; 8 only "
                        "for VNNI/ARM deployments). TensorRT's format always uses 8")
    parser.add_argument("--no-speed-fallback", action="store_true",
                        help="keep every block that is within the AP budget in INT8, even where "
                        "ONNX Runtime CPU runs it faster in FP32 (e.g. a small transformer); "
                        "for TensorRT deployments that want TensorRT's own kernel choice")
    parser.add_argument("--seed", type=int, default=0, help="image selection seed (default 0)")
    parser.add_argument("--latency-runs", type=int, default=20,
                        help="timed ONNX Runtime CPU runs per model (default 20)")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: ORT's choice)")
    parser.add_argument("--cache-dir", default=None,
                        help="calibration cache folder (default: next to --out)")


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, calib_images=opt.count, percentile=opt.percentile,
        ap_budget=opt.number_range(0, 100), eval_images=opt.count_or_zero, seed=opt.seed,
        latency_runs=opt.count_or_zero, threads=opt.threads)

    import sys

    from export.int8.config import QuantizeConfig
    from export.int8.quantize import quantize_int8, report_path

    config = QuantizeConfig(
        out_path=args.out, calib_images=args.calib_images, method=args.method,
        percentile=args.percentile, ap_budget=args.ap_budget, eval_images=args.eval_images,
        eval_ann=args.eval_ann, eval_data=args.eval_data, pseudo_gt=args.pseudo_gt,
        pseudo_budget=args.pseudo_budget, seed=args.seed,
        quantize_attention=args.quantize_attention,
        quantize_add=not args.no_quantize_add, target=args.target,
        weight_bits=args.weight_bits,
        granularity=args.granularity, speed_fallback=not args.no_speed_fallback,
        latency_runs=args.latency_runs, threads=args.threads,
        cache_dir=args.cache_dir, progress=sys.stderr.isatty())
    _, report = quantize_int8(args.onnx, args.calib_data, config)
    print(report.format())
    print(f"report: {report_path(args.out)}")
    return 0 if report.within_budget is not False else 1
