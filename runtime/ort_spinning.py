"""Whether ONNX Runtime's intra-op worker threads busy-wait for work by default.

ORT's default (``session.intra_op.allow_spinning`` = 1) keeps idle workers
spinning between parallel sections, which saves the wake-up on a machine whose
cores the session has to itself. On a machine with two CPUs or fewer, the pool
(ORT's default: one thread per physical core) covers every core, so a spinning
worker holds the only other core against everything else that runs: the
application's own pre/post-processing and other processes. Measured on this
project's 2-core EPYC with other jobs running (load average 4.5-7; FP32 and
INT8 timed in alternating blocks by ``benchmarks.timing``, each option set in its
own run, 6 repeats): the hard-data DETR-tiny's FP32 median 126 ms with spinning,
72 ms without; the cpu-format INT8 / FP32 ratio 0.60 (0.57-0.66) with spinning,
0.52 (0.51-0.56) without; the demo model 0.66 (0.64-0.73) against 0.57
(0.52-0.66), FP32 96 vs 56 ms. The INT8 graph loses more to spinning: it has
more, shorter nodes, so more of its time is hand-over between threads. With one
other busy process (load 1.3-1.8, 6 repeats, alternating): demo cpu format 0.77
(0.65-0.89) with spinning, 0.65 (0.59-0.68) without; hard 0.98 (0.70-1.21) against
0.64 (0.59-0.69). On the idle machine (load ~1: only the measurement), the demo
model's session alone as ``predict`` runs it (60 runs, median; 6 alternating
repeats): FP32 13.9 ms (12.3-14.8) with spinning, 15.0 (13.5-16.7) without, the
INT8 formats 10.8 / 9.4 ms against 11.1 / 9.7: spinning saves ~7%, within the
ranges. With the three sessions of a benchmark alive at once (interleaved blocks,
8 repeats) spinning costs again: FP32 21.5 ms (20.4-25.0) against 15.6
(14.6-20.9). So off: a large gain whenever anything else runs, a cost within
noise when nothing does. Machines with more CPUs keep ORT's default (not
measured here).

ORT 1.32's bounded spin (``session.intra_op.spin_duration_us``: workers spin that
long after their last task, then block) was measured as the middle way and not
taken. Demo model, FP32 and both INT8 formats in one process per setting, 4
alternating repeats of 40 runs in blocks (2026-11-30). Idle: FP32 medians 14.9 ms
off, 13.8 / 14.0 / 13.3 ms at 50 / 200 / 1000 us, ranges overlapping (13.2-19.4);
cpu-format INT8 10.2 against 9.0-10.0. One busy process beside it: FP32 19.3 ms
off against 24.6-25.5 ms bounded, INT8 11.5 against 13.9-14.3: 20-28% slower.
Unbounded spinning with three sessions alive was the worst in both (23.9 / 29.1 ms).
"""

from __future__ import annotations

import os


def default_spinning(cpu_count: int | None = None) -> bool:
    """ORT intra-op spinning for a session that does not choose: off on <= 2 CPUs."""
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return cpus > 2
