"""INT8 / FP32 latency of ONNX artifacts with its spread, and where the time goes.

``python -m benchmarks.int8_latency --fp32 model_fp32.onnx --int8 a.onnx b.onnx
--images DATA/val [--repeats 5] [--profile] [--floor]``

- Ratio: ``repeats`` independent :func:`benchmarks.timing.time_onnx_models` runs
  (the quantizer's own timing: blocks of runs per model, alternated), each giving
  one INT8 / FP32 median ratio; the median and the range over repeats are the
  figure and its spread on a shared machine. The 1-minute load average before
  and after is printed with them.
- Profile (``--profile``): ONNX Runtime's profiler, every node's *minimum* kernel
  time over the runs (robust to preemption by other processes), summed per op
  type: which ops stay FP32, what the Q/DQ borders cost, convolutions against
  the transformer's MatMul/Gemm.
- Floor (``--floor``): instead of the ratio alone, the ratio with the backbone
  floor of each INT8 model (``benchmarks.int8_floor``: the full models and their
  backbones timed together), the lowest ratio this CPU's INT8 kernels allow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.timing import time_onnx_models
from export.int8.calib_data import iter_feeds, list_images


@dataclass(frozen=True)
class RatioSpread:
    """INT8 / FP32 median-latency ratio over independent repeats."""

    name: str
    ratios: tuple[float, ...]  # one per repeat (each from one interleaved run)
    fp32_ms: float  # median over repeats of the FP32 median

    @property
    def median(self) -> float:
        return float(np.median(self.ratios))

    @property
    def int8_ms(self) -> float:
        """FP32 ms x the median ratio (so int8_ms / fp32_ms is the median ratio)."""
        return self.fp32_ms * self.median

    def line(self) -> str:
        return (f"{self.name}: {self.median:.2f}x FP32 (range {min(self.ratios):.2f}-"
                f"{max(self.ratios):.2f} over {len(self.ratios)} repeats; FP32 "
                f"{self.fp32_ms:.1f} ms)")


def one_feed(fp32: Path, images: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The batch-1 feed of the first image of ``images`` (with a mask if the model has one)."""
    from export.onnx_meta import load_onnx, read_meta

    return next(iter_feeds(list_images(images, 1), read_meta(load_onnx(fp32), fp32), 1))


def ratio_spread(fp32: Path, int8: Sequence[Path], feed: dict[str, np.ndarray], *,
                 repeats: int = 5, runs: int = 20, threads: int | None = None,
                 warmup: int = 3) -> list[RatioSpread]:
    """:class:`RatioSpread` of each INT8 model; the models take turns per repeat."""

    ratios: dict[Path, list[float]] = {p: [] for p in int8}
    fp32_ms: list[float] = []
    for _ in range(repeats):
        for path in int8:
            stats = time_onnx_models({"fp32": fp32, "int8": path}, feed, runs=runs,
                                     warmup=warmup, threads=threads)
            ratios[path].append(stats["int8"].median_ms / stats["fp32"].median_ms)
            fp32_ms.append(stats["fp32"].median_ms)
    return [RatioSpread(p.name, tuple(v), float(np.median(fp32_ms))) for p, v in ratios.items()]


def op_profile(path: Path, feed: dict[str, np.ndarray], *, runs: int = 20,
               threads: int | None = None) -> dict[str, tuple[float, int]]:
    """``{op type: (ms, nodes)}``: per-node minimum kernel time over ``runs``, summed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="detr-edge-prof.") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "prof")
        session = ort.InferenceSession(os.fspath(path), options,
                                       providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text("utf-8"))
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"]].append(e["dur"] / 1000.0)
            op_of[e["name"]] = e["args"]["op_name"]
    out: dict[str, tuple[float, int]] = {}
    for name, durs in per_node.items():
        ms, n = out.get(op_of[name], (0.0, 0))
        out[op_of[name]] = (ms + min(durs), n + 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1][0]))


def profile_lines(name: str, prof: dict[str, tuple[float, int]], top: int = 10) -> list[str]:
    total = sum(ms for ms, _ in prof.values())
    nodes = sum(n for _, n in prof.values())
    lines = [f"{name}: sum of per-node minimum kernel times {total:.2f} ms, {nodes} nodes"]
    lines += [f"  {op:24s} {ms:7.3f} ms {100 * ms / total:5.1f}%  x{n}"
              for op, (ms, n) in list(prof.items())[:top]]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True, help="FP32 ONNX")
    parser.add_argument("--int8", type=Path, nargs="+", required=True, help="INT8 ONNX files")
    parser.add_argument("--images", required=True, help="image folder / split (first image)")
    parser.add_argument("--repeats", type=int, default=5, help="independent timings (default 5)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model per repeat")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    parser.add_argument("--profile", action="store_true", help="per-op-type profile too")
    parser.add_argument("--floor", action="store_true",
                        help="ratio with the backbone floor: INT8 backbone + FP32 rest "
                        "(benchmarks.int8_floor)")
    args = parser.parse_args(argv)
    feed = one_feed(args.fp32, args.images)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    if args.floor:  # its timing includes the full models: the ratio comes with it
        from benchmarks.int8_floor import floor_spread

        for floor in floor_spread(args.fp32, args.int8, feed, repeats=args.repeats,
                                  runs=args.runs, threads=args.threads):
            print(floor.line())
    else:
        for spread in ratio_spread(args.fp32, args.int8, feed, repeats=args.repeats,
                                   runs=args.runs, threads=args.threads):
            print(spread.line())
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.profile:
        for path in (args.fp32, *args.int8):
            print("\n".join(profile_lines(path.name, op_profile(path, feed, runs=args.runs,
                                                                  threads=args.threads))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
