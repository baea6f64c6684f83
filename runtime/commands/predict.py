"""``detr-edge predict``: detect objects in images with an ONNX model or engine file."""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime import options as opt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path,
                        help="ONNX model exported by detr-edge, or a detr-edge engine file")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--images", nargs="+", type=Path, metavar="PATH",
                        help="image files and/or folders (searched recursively); a dataset "
                        "root (annotations/instances_<split>.json) gives its --split images, "
                        "and a single one gives predictions.json its annotation image ids")
    inputs.add_argument("--source", metavar="SRC",
                        help="video file, rtsp/http URL, /dev/videoN camera, image folder or "
                        "glob: per-frame JSON Lines, annotated video, summary (pipelined)")
    parser.add_argument("--split", default=None,
                        help="split of a dataset root given in --images (default val)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="output folder: predictions.json (COCO results), annotated/")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="minimum score to keep (default 0.5; use 0 for COCO AP)")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"],
                        help="auto = native TensorRT for engine files, ONNX Runtime otherwise")
    parser.add_argument("--providers", nargs="+", default=None, metavar="NAME",
                        help="ONNX Runtime providers, e.g. cuda cpu (default: best available)")
    parser.add_argument("--top-k", type=int, default=None, help="at most K detections per image")
    parser.add_argument("--second-best", action="store_true",
                        help="keep slots whose top class is no-object with their best real "
                        "class (official DETR PostProcess; higher AP)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per call for dynamic-batch models (default 8)")
    parser.add_argument("--no-draw", action="store_true", help="skip the annotated images")
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help="refuse images of more than N pixels (default 64000000, or "
                        "$DETR_EDGE_MAX_PIXELS)")
    from runtime.stream.options import add_stream_arguments

    add_stream_arguments(parser)


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, threshold=opt.probability, top_k=opt.count_or_zero, batch_size=opt.batch,
        max_pixels=opt.pixels)
    if args.source is not None:
        from runtime.stream.options import stream_config
        from runtime.stream.pipeline import run_stream

        print(run_stream(stream_config(args)).format())
        return 0
    from runtime.predict import PredictConfig, predict

    config = PredictConfig(model=args.model, images=list(args.images), out_dir=args.out,
                           threshold=args.threshold, backend=args.backend,
                           providers=args.providers, top_k=args.top_k,
                           second_best=args.second_best, batch_size=args.batch_size,
                           draw=not args.no_draw, max_pixels=args.max_pixels,
                           split=args.split)
    summary = predict(config)
    print(f"{summary.num_detections} detections in {summary.num_images} images -> "
          f"{summary.results_path}")
    return 0
