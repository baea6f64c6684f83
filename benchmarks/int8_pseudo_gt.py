"""How many pseudo-ground-truth AP points one real AP point is worth for INT8.

Without annotations ``quantize`` scores INT8 against the FP32 model's own top
detections; FP32 scores 100 there by construction, and INT8 loses many more
points on that scale than in real AP. This script measures the correspondence
on an annotated dataset: for a spread of INT8 configurations (both Q/DQ
formats, each calibration method, clipping percentiles, few calibration images)
it computes, from the *same* detections on the same val images, the real AP
drop and the pseudo-GT AP drop, and fits pseudo = offset + slope * real (least
squares): ``export.int8.objective.PSEUDO_GT_OFFSET`` / ``PSEUDO_GT_SLOPE``. A
pseudo-GT score has a floor: INT8 that loses no real AP still loses points
against FP32's own low-score detections, hence the offset.

    python -m benchmarks.int8_pseudo_gt --onnx model_fp32.onnx --data data/shapes
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from detr.coco_eval import coco_metrics
from export.int8.calib_data import quant_images
from runtime.atomic import atomic_write_text
from runtime.coco_results import coco_results

# (target, method, percentile, calibration images): from mild to harsh INT8.
CONFIGS = [("tensorrt", "minmax", 99.999, 32), ("tensorrt", "entropy", 99.999, 32),
           ("tensorrt", "percentile", 99.9, 32), ("tensorrt", "percentile", 99.0, 32),
           ("tensorrt", "minmax", 99.999, 2), ("cpu", "minmax", 99.999, 32),
           ("cpu", "entropy", 99.999, 32), ("cpu", "percentile", 99.0, 32)]


def _ap(evaluator: Any, dets: list[Any]) -> float:
    results = coco_results(evaluator.image_ids, dets, list(evaluator.meta.label_map))
    return 100.0 * max(float(coco_metrics(evaluator._ground_truth(), results)["AP"]), 0.0)


def measure(onnx_path: Path, data: Path, num_eval: int = 200) -> dict[str, Any]:
    """Real and pseudo-GT AP drop of each configuration of :data:`CONFIGS`, and k."""
    from export.int8.config import QuantizeConfig
    from export.int8.quantize import quantize_int8
    from export.int8.sensitivity import HeldOutEvaluator

    images = quant_images(data, 32, num_eval)
    real = HeldOutEvaluator(onnx_path, images.held_out, images.annotations,
                            image_ids=images.image_ids)
    pseudo = HeldOutEvaluator(onnx_path, images.held_out, None)
    fp32 = real.detections(onnx_path)
    base = {"real": _ap(real, fp32), "pseudo": _ap(pseudo, fp32)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target, method, pct, n in CONFIGS:
            out = Path(tmp) / f"{target}_{method}_{pct}_{n}.onnx"
            quantize_int8(onnx_path, str(data), QuantizeConfig(
                out_path=str(out), calib_images=n, method=method, percentile=pct,
                eval_images=0, latency_runs=0, target=target, progress=False,
                cache_dir=tmp))
            dets = real.detections(out)
            rows.append({"target": target, "method": method, "percentile": pct,
                         "calib_images": n, "real_drop": base["real"] - _ap(real, dets),
                         "pseudo_drop": base["pseudo"] - _ap(pseudo, dets)})
    r = np.array([row["real_drop"] for row in rows])
    p = np.array([row["pseudo_drop"] for row in rows])
    slope, offset = (float(v) for v in np.polyfit(r, p, 1)) if len(set(r)) > 1 \
        else (float("nan"), float("nan"))
    residual = float(np.sqrt(np.mean((p - offset - slope * r) ** 2)))
    return {"onnx": str(onnx_path), "data": str(data), "images": len(images.held_out),
            "fp32": base, "rows": rows, "offset": offset, "slope": slope, "residual": residual,
            "ratios": [float(b / a) if abs(a) > 0.05 else None for a, b in zip(r, p)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True, type=Path, help="FP32 detr-edge ONNX")
    parser.add_argument("--data", required=True, type=Path, help="dataset root (train + val)")
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args(argv)
    res = measure(args.onnx, args.data, args.eval_images)
    print(f"{res['images']} val images; FP32 real AP {res['fp32']['real']:.2f}")
    print("| target | method | pct | calib | real drop | pseudo drop |\n|---|---|---|---|---|---|")
    for row in res["rows"]:
        print(f"| {row['target']} | {row['method']} | {row['percentile']} | "
              f"{row['calib_images']} | {row['real_drop']:.2f} | {row['pseudo_drop']:.2f} |")
    print(f"pseudo = {res['offset']:.1f} + {res['slope']:.1f} x real (least squares; rms "
          f"residual {res['residual']:.1f} pseudo points)")
    if args.out:

        atomic_write_text(args.out, json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
