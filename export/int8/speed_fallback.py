"""Step 5 of the INT8 search: blocks that run *slower* in INT8 go back to FP32.

INT8 pays where the integer kernels outweigh the Q/DQ borders they bring.
ONNX Runtime's CPU provider runs a quantized Gemm/MatMul as
``QuantizeLinear -> QGemm -> DequantizeLinear`` plus layout transposes; on a
small transformer (the demo models: 16-25 tokens, d_model 64-128) a QGemm is no
faster than the FP32 Gemm, so the quantized transformer is pure overhead: on
the demo and the non-square model, the cpu-format INT8 model with its encoder
and decoder in FP32 ran at 0.60-0.61x FP32 against 0.65-0.67x fully quantized
(medians of 5 interleaved repeats, ranges 0.55-0.69), the TensorRT format
0.66-0.70x against 0.67-0.75x. On DETR-R50 at 800x1066 (850 tokens, d_model 256)
the balance may differ, so it is measured, not assumed.

Each round: the candidate groups (transformer, encoder, decoder, backbone stem;
those with INT8 blocks left) are built with the current configuration and each
timed against it ``SCREEN_REPEATS`` times (``benchmarks.int8_latency.ratio_spread``,
the benchmark's INT8 / FP32 estimator, with the current configuration as the
reference); the fastest is then
re-timed against the current configuration alone ``CONFIRM_REPEATS`` times
(fresh runs: the screening's winner is biased towards a lucky draw). It is taken
when the mean log time ratio is below zero by more than ``NOISE_Z`` standard
errors over the repeats *and* its AP (held-out images) stays within the budget
(if the configuration was over budget already: does not drop).
Falling back a block moves the model towards FP32, so AP rarely suffers; it is
measured anyway. Latency is ONNX Runtime CPU latency of the target format (the
only runtime this machine has): for the TensorRT format that is a proxy for the
GPU, and ``--no-speed-fallback`` keeps every block INT8 for TensorRT's own
kernel choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.int8_latency import ratio_spread
from export.int8.objective import NOISE_Z, Build, Candidate, Objective, within

SCREEN_REPEATS = 3  # round-robin timings of the current configuration and every candidate
CONFIRM_REPEATS = 5  # fresh timings of the screening's winner against the current one
# Fallback groups tried for speed: name -> block-name prefixes.
SPEED_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("transformer", ("encoder.", "decoder.")),
    ("encoder", ("encoder.",)),
    ("decoder", ("decoder.",)),
    ("backbone stem", ("backbone.stem",)),
)


@dataclass(frozen=True)
class SpeedTrial:
    """Time of a candidate over the current configuration's, one ratio per repeat."""

    group: str
    blocks: tuple[str, ...]  # blocks the candidate adds to the FP32 fallback
    ratios: tuple[float, ...]  # candidate ms / current ms, each from one round-robin run

    @property
    def median(self) -> float:
        return float(np.median(self.ratios))

    @property
    def log_mean_se(self) -> tuple[float, float]:
        """Mean of log ratios and its standard error over the repeats (SE inf for 1)."""
        logs = np.log(np.asarray(self.ratios))
        se = float(np.std(logs, ddof=1) / np.sqrt(len(logs))) if len(logs) > 1 else np.inf
        return float(np.mean(logs)), se

    def faster_beyond_noise(self) -> bool:
        mean, se = self.log_mean_se
        return mean < 0 and -mean > NOISE_Z * se

    def to_dict(self) -> dict[str, Any]:
        mean, se = self.log_mean_se
        return {"group": self.group, "blocks": list(self.blocks), "ratios": list(self.ratios),
                "median_ratio": self.median, "log_ratio": mean, "log_ratio_se": se}


def speed_groups(blocks: Sequence[str], fallback: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``(group, INT8 blocks it would move to FP32)`` for each group with any left."""
    out: list[tuple[str, list[str]]] = []
    for name, prefixes in SPEED_GROUPS:
        members = [b for b in blocks if b.startswith(prefixes) and b not in fallback]
        if members and not any(members == m for _, m in out):
            out.append((name, members))
    return out


def relative_times(objective: Objective, current: Path, models: dict[str, Path],
                   repeats: int) -> dict[str, tuple[float, ...]]:
    """``{name: (model ms / current ms per repeat)}``: the benchmark's estimator
    (``benchmarks.int8_latency.ratio_spread``) with ``current`` as the reference."""
    spreads = ratio_spread(current, list(models.values()), objective.feed, repeats=repeats,
                           runs=objective.latency_runs, threads=objective.threads,
                           warmup=objective.warmup_runs)
    return {name: spread.ratios for name, spread in zip(models, spreads)}


def speed_fallback(blocks: Sequence[str], build: Build, objective: Objective, budget: float,
                   current: Candidate, tried: list[Candidate],
                   steps: list[dict[str, Any]], progress: bool = True) -> Candidate:
    """Rounds of the module doc until no group is faster beyond noise; returns the
    configuration to write. Appends each round to ``steps`` (``kind`` "speed") and
    each configuration whose AP it measured to ``tried``."""
    with tqdm(desc="speed fallback", unit="round", disable=not progress, leave=False) as bar:
        while groups := speed_groups(blocks, current.fallback):
            step, taken = _round(groups, build, objective, budget, current, tried)
            steps.append(step)
            bar.update(1)
            if taken is None:
                break
            current = taken
    return current


def _round(groups: list[tuple[str, list[str]]], build: Build, objective: Objective,
           budget: float, current: Candidate, tried: list[Candidate]
           ) -> tuple[dict[str, Any], Candidate | None]:
    """One round: screen every group, confirm the fastest, measure its AP. Returns
    the step's record and the new configuration (None: not taken)."""
    here = build(list(current.fallback), current.methods)
    models = {name: build([*current.fallback, *members], _methods_without(current, members))
              for name, members in groups}
    screen = relative_times(objective, here, models, SCREEN_REPEATS)
    best = min(screen, key=lambda name: float(np.median(screen[name])))
    members = dict(groups)[best]
    trial = SpeedTrial(best, tuple(members), relative_times(
        objective, here, {best: models[best]}, CONFIRM_REPEATS)[best])
    step: dict[str, Any] = {"kind": "speed", **trial.to_dict(), "taken": False, "screening": {
        name: float(np.median(r)) for name, r in screen.items()}}
    if not trial.faster_beyond_noise():
        step["why"] = "not faster beyond noise"
        return step, None
    candidate = objective.measure(f"+ FP32 {best} (speed)", models[best],
                                  [*current.fallback, *members],
                                  _methods_without(current, members))
    tried.append(candidate)
    if not keeps_accuracy(candidate, current, budget):
        step["why"] = f"AP {candidate.dap:+.2f} is over the budget"
        return step, None
    step["taken"] = True
    return step, candidate


def keeps_accuracy(candidate: Candidate, current: Candidate, budget: float) -> bool:
    """Within the budget; or, when ``current`` was over it already (the accuracy steps
    stopped at noise), no lower AP than ``current``."""
    return within(candidate, budget) or (not within(current, budget)
                                         and candidate.ap >= current.ap)


def _methods_without(current: Candidate, members: Sequence[str]) -> dict[str, str]:
    return {b: m for b, m in current.methods.items() if b not in members}

