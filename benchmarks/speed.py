"""Speed and memory steps of the benchmark suite (see ``benchmarks.suite``).

Latency: warm-up, then ``runs`` timed calls per batch size of the model alone
(preprocessed batch in memory) and end to end (image files -> detections), with
the preprocess and decode costs timed separately; the four are timed
round-robin so load from other processes hits them alike. Memory: the
high-water RSS of a fresh subprocess that loads the artifact and runs two
batch-1 inferences.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.rows import SpeedResult
from benchmarks.timing import time_interleaved
from runtime.decode import decode_images
from runtime.preprocess import preprocess

MEMORY_METHOD = ("peak RSS (VmHWM from /proc/self/status) of a fresh Python subprocess that loads the "
                 "artifact and runs 2 batch-1 inferences; includes the interpreter and "
                 "library imports (torch for PyTorch rows)")


def infer_all(backend: Any, images: np.ndarray, mask: np.ndarray, batch: int,
               progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Outputs for every preprocessed image, ``batch`` at a time -> [N, Q, K+1], [N, Q, 4]."""
    logits, boxes = [], []
    for start in tqdm(range(0, len(images), batch), desc=desc, disable=not progress,
                      leave=False, dynamic_ncols=True):
        lo, bo = backend.infer(images[start:start + batch], mask[start:start + batch])
        logits.append(lo)
        boxes.append(bo)
    return np.concatenate(logits), np.concatenate(boxes)


def measure_speed(backend: Any, meta: Any, paths: list[Path], batch_size: int,
                   fixed_batch: int | None, runs: int, warmup: int) -> SpeedResult:
    """Model-alone and end-to-end latency at ``batch_size`` (see module docstring)."""
    if fixed_batch is not None and fixed_batch != batch_size:
        return SpeedResult(batch_size, skipped_reason=f"graph exported with fixed batch {fixed_batch}")
    chosen = [paths[i % len(paths)] for i in range(batch_size)]
    pre = preprocess(chosen, meta)
    logits, boxes = backend.infer(pre.images, pre.mask)

    def end_to_end() -> None:
        b = preprocess(chosen, meta)
        lo, bo = backend.infer(b.images, b.mask)
        decode_images(lo, bo, b, meta, second_best=True)

    stats = time_interleaved({
        "model": lambda: backend.infer(pre.images, pre.mask),
        "e2e": end_to_end,
        "pre": lambda: preprocess(chosen, meta),
        "post": lambda: decode_images(logits, boxes, pre, meta, second_best=True),
    }, runs=runs, warmup=warmup, batch_size=batch_size)
    model, e2e, pre_t, post_t = stats["model"], stats["e2e"], stats["pre"], stats["post"]
    return SpeedResult(batch_size, model=model.to_dict(), end_to_end=e2e.to_dict(),
                       pre_ms=pre_t.median_ms, post_ms=post_t.median_ms)


_PROBE = """
import sys, numpy as np
kind, path, h, w, mask = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1'
x = np.zeros((1, 3, h, w), np.float32); m = np.zeros((1, h, w), bool)
if kind == 'onnxruntime':
    from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    b = OnnxRuntimeBackend(path, providers='cpu')
else:
    import detr
    from benchmarks.torch_reference import TorchReference
    b = TorchReference(detr.load_checkpoint(path).model, use_mask=mask)
for _ in range(2):
    b.infer(x, m)
# VmHWM, not ru_maxrss: Linux keeps the parent's ru_maxrss across fork+exec.
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))
"""


def peak_rss_mb(backend: str, path: Path, height: int, width: int, use_mask: bool) -> float:
    """High-water RSS (MB) of a subprocess that loads ``path`` and runs 2 inferences."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, backend, str(path), str(height), str(width),
         "1" if use_mask else "0"],
        capture_output=True, text=True, check=False, env=dict(os.environ),
        cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"memory probe failed: {tail[0][:200]}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1024.0  # VmHWM is in KiB


