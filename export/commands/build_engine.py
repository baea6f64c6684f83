"""``detr-edge build-engine --onnx model.onnx --out model.engine``: compile a
TensorRT engine (see export/engine_plan.py and export/engine_builder.py).

``build-engine --bundle BUNDLE`` builds one engine per TensorRT-ready ONNX of a
``detr-edge bundle`` (``BUNDLE/artifacts/<name>.engine``, next to its ONNX, where
``benchmark --bundle`` finds it), calibrating and golden-checking on the bundle's
calibration images."""

from __future__ import annotations

import argparse
import sys

from runtime import options as opt
from runtime.errors import DetrEdgeError, InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", default=None,
                        help="detr-edge ONNX (fp32, fp16 or int8 Q/DQ; precision is read from it)")
    parser.add_argument("--out", default=None, help="engine file to write")
    parser.add_argument("--bundle", default=None, metavar="BUNDLE",
                        help="build an engine for every TensorRT-ready ONNX of a `detr-edge "
                        "bundle` folder (instead of --onnx/--out)")
    parser.add_argument("--min-batch", type=int, default=None,
                        help="optimization profile min batch (default: fixed batch, or 1)")
    parser.add_argument("--opt-batch", type=int, default=None,
                        help="profile opt batch (default: fixed batch, or 4)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="profile max batch (default: fixed batch, or 8)")
    parser.add_argument("--workspace-mb", type=int, default=None,
                        help="builder workspace limit in MiB (default: TensorRT's)")
    parser.add_argument("--timing-cache", default=None, metavar="FILE",
                        help="timing cache read before and updated after the build")
    parser.add_argument("--dla-core", type=int, default=None,
                        help="build for DLA core N (Jetson)")
    parser.add_argument("--gpu-fallback", action="store_true",
                        help="with --dla-core: run layers DLA cannot on the GPU")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                        help="default: the ONNX's own precision (strongly typed). fp16/int8 on "
                        "an FP32 ONNX use TensorRT 10 builder flags (not in TensorRT 11)")
    parser.add_argument("--calib-data", default=None, metavar="DIR",
                        help="images for TensorRT 10 INT8 calibration (--precision int8): a "
                        "dataset root (its train split), a split folder or an image folder")
    parser.add_argument("--calib-images", type=int, default=256,
                        help="calibration images (default 256)")
    parser.add_argument("--calib-batch", type=int, default=None,
                        help="images per calibration batch (default: the profile's opt batch)")
    parser.add_argument("--calib-cache", default=None,
                        help="calibration cache (default <out>.calib-<ONNX hash>.cache)")
    parser.add_argument("--verify", choices=("fail", "warn", "off"), default="fail",
                        help="golden check of the new engine against ONNX Runtime on the "
                        "source ONNX: fail the build beyond the precision's tolerance "
                        "(default), only warn, or skip")
    parser.add_argument("--verify-data", default=None, metavar="DIR",
                        help="images for the golden check (default: --calib-data, else "
                        "random normalised inputs)")
    parser.add_argument("--verify-images", type=int, default=8,
                        help="inputs the golden check runs (default 8)")
    parser.add_argument("--plan", default=None, metavar="FILE",
                        help="also write the bare serialized plan (no detr-edge header) for "
                        "trtexec --loadEngine, DeepStream or Triton")
    parser.add_argument("--builder-opt-level", type=int, default=None, choices=range(6),
                        metavar="0..5", help="TensorRT builder optimization level (default 3; "
                        "higher builds longer, may run faster)")
    parser.add_argument("--version-compatible", action="store_true",
                        help="engine runs on later TensorRT versions too (same major, or "
                        "10 -> 11); may be slower")


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, min_batch=opt.batch, opt_batch=opt.batch, max_batch=opt.batch,
        workspace_mb=opt.int_range(1, 10 ** 7), dla_core=opt.int_range(0, 15), calib_images=opt.count)

    if args.bundle is not None:
        if args.onnx is not None or args.out is not None:
            raise InputError("--bundle", "builds every ONNX of the bundle: not with --onnx/--out")
        return _build_bundle(args)
    if args.onnx is None or args.out is None:
        raise InputError("--onnx/--out", "give --onnx and --out (or --bundle)")
    _build_one(args, args.onnx, args.out, args.calib_data, args.verify_data)
    return 0


def _build_one(args: argparse.Namespace, onnx: str, out: str, calib_data: str | None,
               verify_data: str | None) -> None:
    from export.engine_builder import build_engine
    from export.engine_plan import EngineBuildConfig

    config = EngineBuildConfig(
        onnx_path=onnx, out_path=out, min_batch=args.min_batch,
        opt_batch=args.opt_batch, max_batch=args.max_batch, workspace_mb=args.workspace_mb,
        timing_cache=args.timing_cache, dla_core=args.dla_core, gpu_fallback=args.gpu_fallback,
        precision=args.precision, calib_data=calib_data, calib_images=args.calib_images,
        calib_batch=args.calib_batch, calib_cache=args.calib_cache,
        version_compatible=args.version_compatible, verify=args.verify,
        verify_data=verify_data, verify_images=args.verify_images, plan_path=args.plan,
        builder_opt_level=args.builder_opt_level)
    result = build_engine(config)
    if result.golden is not None:
        print(result.golden.format())
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"engine written: {result.path} ({result.precision}); per-layer report: "
          f"{result.path}.layers.json")
    if args.plan:
        print(f"bare plan written: {args.plan}")


def _build_bundle(args: argparse.Namespace) -> int:
    """One engine per TensorRT-ready ONNX of the bundle; every one is tried, then the
    failures are reported together (one line)."""
    from benchmarks.artifacts import find_artifacts
    from benchmarks.bundle import read_bundle

    if args.plan or args.calib_cache or args.timing_cache:
        raise InputError("--bundle", "--plan, --calib-cache and --timing-cache name one "
                         "engine's files: build single engines with --onnx/--out for them")
    bundle = read_bundle(args.bundle)
    calib = args.calib_data or (str(bundle.calib) if bundle.calib else None)
    onnx = {precision: path for (backend, precision), path in
            find_artifacts(str(bundle.artifacts)).items() if backend == "onnxruntime"}
    failed: list[str] = []
    for precision, path in sorted(onnx.items()):
        if precision == "int8-cpu":
            print(f"no engine for {path.name}: the cpu Q/DQ format is not a TensorRT input")
            continue
        print(f"== {path.name} -> {path.with_suffix('.engine').name}")
        try:
            _build_one(args, str(path), str(path.with_suffix(".engine")), calib,
                       args.verify_data or calib)
        except DetrEdgeError as exc:
            print(f"engine for {path.name} failed: {exc}", file=sys.stderr)
            failed.append(f"{path.name} ({str(exc)[:120]})")
    if failed:
        raise InputError(args.bundle, f"{len(failed)} engine(s) failed: {'; '.join(failed)}")
    return 0
