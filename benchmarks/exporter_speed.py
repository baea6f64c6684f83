"""The two ONNX exporters side by side: export time and ONNX Runtime latency.

``python -m benchmarks.exporter_speed [--preset detr-tiny] [--size 256] [--runs 20]``

Each exporter (``export.onnx_export.trace_to_onnx`` with ``exporter=torchscript``
and ``dynamo``) exports the same random-weight model at a dynamic batch, with and
without the mask input; the export time includes onnxslim and the graph checks.
Then ONNX Runtime (CPU, same options) runs every graph at batch 1, round-robin
(``benchmarks.timing.time_interleaved``) so load on a shared machine hits all
alike. The first dynamo export (without mask) also pays torch's one-time set-up
of the dynamo exporter in the process (~15 s of a trivial export here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.timing import session_call, time_interleaved

EXPORTERS = ("torchscript", "dynamo")


def run_exporter_speed(preset: str = "detr-tiny", size: int = 256, runs: int = 20,
                       threads: int = 2) -> dict[str, Any]:
    """-> {"export_s": {exporter/mask: s}, "ort_ms": {...: median ms}, "nodes": {...}}."""
    import onnxruntime as ort
    import torch

    import detr
    from export.onnx_export import trace_to_onnx

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = detr.build_model(preset, 91).eval()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    mask = np.zeros((1, size, size), dtype=bool)
    mask[:, :, size * 3 // 4:] = True  # a padded right quarter
    export_s: dict[str, float] = {}
    nodes: dict[str, int] = {}
    calls = {}
    for with_mask in (False, True):
        for exporter in EXPORTERS:
            key = f"{exporter}{' + mask' if with_mask else ''}"
            t0 = time.perf_counter()
            graph = trace_to_onnx(model, size, size, None, with_mask, exporter=exporter)
            export_s[key] = time.perf_counter() - t0
            nodes[key] = len(graph.graph.node)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(graph.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
            feed = {"images": images, **({"mask": mask} if with_mask else {})}
            calls[key] = session_call(session, feed)
    stats = time_interleaved(calls, runs=runs, warmup=3)
    return {"preset": preset, "size": size, "threads": threads, "runs": runs,
            "torch": torch.__version__, "export_s": export_s, "nodes": nodes,
            "ort_ms": {k: v.median_ms for k, v in stats.items()},
            "ort_p90_ms": {k: v.p90_ms for k, v in stats.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exporter_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="detr-tiny")
    parser.add_argument("--size", type=int, default=256, help="square canvas (multiple of 32)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    result = run_exporter_speed(args.preset, args.size, args.runs, args.threads)
    print(f"{result['preset']} {args.size}x{args.size}, dynamic batch, ORT at batch 1, "
          f"{args.threads} threads, {args.runs} round-robin runs, torch {result['torch']}")
    print("| graph | export s | nodes | ORT median ms | ORT p90 ms |\n|---|---|---|---|---|")
    for key in result["export_s"]:
        print(f"| {key} | {result['export_s'][key]:.1f} | {result['nodes'][key]} | "
              f"{result['ort_ms'][key]:.1f} | {result['ort_p90_ms'][key]:.1f} |")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
