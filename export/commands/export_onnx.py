"""``detr-edge export-onnx --checkpoint C --out model.onnx --height H --width W ...``."""

from __future__ import annotations

import argparse

from runtime import options as opt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="DETR checkpoint (.pth)")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--height", type=int, required=True, help="input canvas height (px)")
    parser.add_argument("--width", type=int, required=True, help="input canvas width (px)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="symbolic batch axis")
    mask = parser.add_mutually_exclusive_group()
    mask.add_argument("--with-mask", dest="with_mask", action="store_const", const=True,
                      default=None, help="add the 'mask' input [B,H,W] bool (True = padding); "
                      "default: as the checkpoint was trained (mask if its batches were padded)")
    mask.add_argument("--no-mask", dest="with_mask", action="store_const", const=False,
                      help="no mask input: each image is fitted to the whole canvas")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                        help="torch.onnx exporter: torchscript (default; fast, opset 17) or "
                        "dynamo (torch.export + onnxscript, opset >= 18); see "
                        "docs/ARCHITECTURE.md")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default: 17 for torchscript, 18 for dynamo)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--calib-data", default=None, metavar="DIR",
                        help="images for the parity report and FP16 ranges: a dataset root (its "
                        "train split), a split folder or an image folder (default: random inputs)")
    parser.add_argument("--calib-images", type=int, default=8, metavar="N",
                        help="images used from --calib-data (default 8)")
    parser.add_argument("--report", default=None, metavar="FILE", help="write a JSON report")
    parser.add_argument("--fused-preprocess", default=None, metavar="HxW", type=_size,
                        nargs="?", const="canvas",
                        help="resize, normalisation and padding inside the graph: input uint8 "
                        "[B, H, W, 3] RGB frames of source size HxW (e.g. 720x1280; without a "
                        "value, frames of the canvas size: normalisation only)")


def _size(text: str) -> tuple[int, int] | str:
    if text == "canvas":
        return text
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}") from None
    return h, w


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, height=opt.image_side, width=opt.image_side, batch=opt.batch,
        opset=opt.int_range(17, 20), calib_images=opt.count)

    from export.onnx_export import ExportConfig, export_onnx

    config = ExportConfig(checkpoint=args.checkpoint, out=args.out, height=args.height,
                          width=args.width, batch_size=args.batch,
                          dynamic_batch=args.dynamic_batch, with_mask=args.with_mask,
                          opset=args.opset, exporter=args.exporter,
                          precision=args.precision,
                          calib_data=args.calib_data, calib_images=args.calib_images,
                          report=args.report,
                          fused_source=(args.height, args.width)
                          if args.fused_preprocess == "canvas" else args.fused_preprocess)
    result = export_onnx(config)
    print(result.format())
    if result.fp32_parity is not None and not result.fp32_parity.passed:
        return 1
    if result.fused is not None and not result.fused.passed:
        return 1
    return 0 if result.parity.passed else 1
