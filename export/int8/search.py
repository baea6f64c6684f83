"""The INT8 configuration search: full INT8 first, better scales next, FP32
fallback last, each step measured (``export.int8.objective``).

1. **Full INT8** with the default calibration method. Within the AP budget: done
   (the fastest configuration there is).
2. **Sensitivity**: a model with only block b in INT8, for each block; its output
   error against FP32 ranks the blocks (``export.int8.sensitivity``).
3. **Better scales before fallback**: for the ``method_blocks`` most sensitive
   blocks, each calibration method (min-max, entropy, percentile) in turn for
   that block's activations only (``export.int8.calib_methods``); the method with the
   smallest output error is kept per block. The mixed model is then measured and
   kept if its AP is higher.
4. **Fallback by AP per millisecond**: while over budget, the next
   ``candidates`` most sensitive INT8 blocks are each tried in FP32 (and the top
   two together); the one with
   the most AP recovered per ms lost is taken, if its gain over the current
   configuration is beyond ``NOISE_Z`` paired bootstrap standard errors. A gain
   within noise stops the search: falling back more would buy latency loss, not
   measurable accuracy.
5. **Fallback for speed** (``export.int8.speed_fallback``): groups of blocks that
   run faster in FP32 than in INT8 (on small transformers, the Q/DQ borders cost
   more than the integer Gemms save) go back to FP32 when the speed-up is beyond
   the timing noise and AP stays within the budget.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from export.int8.objective import NOISE_Z, Build, Candidate, Objective, within
from export.int8.paired_bootstrap import PairedDifference
from export.int8.sensitivity import BlockSensitivity, output_error, rank_blocks
from export.int8.speed_fallback import speed_fallback

RANKING_IMAGES = 64  # held-out images whose output error ranks blocks and methods


@dataclass(frozen=True)
class SearchSettings:
    budget: float  # allowed AP drop in the metric's points (pseudo-GT budget already scaled)
    default_method: str = "minmax"  # calibration method of every block not chosen otherwise
    methods: tuple[str, ...] = ("minmax", "entropy", "percentile")
    method_blocks: int = 4  # most sensitive blocks whose calibration method is searched
    candidates: int = 3  # fallback candidates measured per step (most sensitive first)
    speed_fallback: bool = True  # step 5: blocks faster in FP32 go back to FP32
    progress: bool = True


@dataclass
class SearchResult:
    final: Candidate
    tried: list[Candidate] = field(default_factory=list)  # every measured configuration
    sensitivity: list[BlockSensitivity] = field(default_factory=list)
    method_trials: list[dict[str, Any]] = field(default_factory=list)  # block, method, error
    steps: list[dict[str, Any]] = field(default_factory=list)  # fallback decisions
    stop_reason: str = ""


def search(blocks: dict[str, list[str]], build: Build, objective: Objective,
           settings: SearchSettings) -> SearchResult:
    """Run the search (module doc); every configuration measured is in ``tried``."""
    result = SearchResult(final=_measure(objective, build, "full INT8", [], {}))
    result.tried.append(result.final)
    _accuracy_steps(blocks, build, objective, settings, result)
    if settings.speed_fallback and objective.latency_runs:
        result.final = speed_fallback(list(blocks), build, objective, settings.budget,
                                      result.final, result.tried, result.steps,
                                      settings.progress)
    return result


def _accuracy_steps(blocks: dict[str, list[str]], build: Build, objective: Objective,
                    settings: SearchSettings, result: SearchResult) -> None:
    """Steps 1-4 of the module doc: ``result.final`` within the budget if possible."""
    if within(result.final, settings.budget):
        result.stop_reason = "full INT8 is within the budget"
        return
    if -result.final.dap <= NOISE_Z * result.final.dap_se:
        # No step can recover more than the whole loss: none could be told from noise.
        result.stop_reason = (f"full INT8's loss ({result.final.dap:+.2f} AP) is within noise "
                              f"(<= {NOISE_Z:g} SE = {NOISE_Z * result.final.dap_se:.2f}): no "
                              "fallback step could be told from noise")
        return
    result.sensitivity = _sensitivity(blocks, build, objective, settings)
    order = [s.block for s in result.sensitivity]
    current = result.final
    mixed = _choose_methods(order[:settings.method_blocks], build, objective, settings,
                            result.method_trials)
    if mixed:
        scaled = _measure(objective, build, "best scales per block", [], mixed)
        result.tried.append(scaled)
        if scaled.ap > current.ap:
            current = scaled
    result.final = _fallback(order, build, objective, settings, current, result)


def _measure(objective: Objective, build: Build, name: str, fallback: list[str],
             methods: dict[str, str]) -> Candidate:
    return objective.measure(name, build(fallback, methods), fallback, methods)


def _sensitivity(blocks: dict[str, list[str]], build: Build, objective: Objective,
                 settings: SearchSettings) -> list[BlockSensitivity]:
    bar = tqdm(total=len(blocks), desc="sensitivity", disable=not settings.progress, leave=False)

    def measure(nodes: list[str]) -> float:
        block = next(b for b, n in blocks.items() if n == nodes)
        bar.update(1)
        model = build([b for b in blocks if b != block], {})
        return _error(objective, model)

    ranked = rank_blocks(blocks, measure)
    bar.close()
    return ranked


def _error(objective: Objective, model: Path) -> float:
    """Output error against FP32 on the first ``RANKING_IMAGES`` held-out images:
    it only ranks blocks and methods (AP decides), so a subset is enough."""
    test = objective.evaluator.outputs(model, RANKING_IMAGES)
    return output_error(objective.evaluator.reference[:len(test)], test)


def _choose_methods(order: list[str], build: Build, objective: Objective,
                    settings: SearchSettings, trials: list[dict[str, Any]]) -> dict[str, str]:
    """Per block (most sensitive first), the calibration method with the smallest
    output error, the blocks chosen before keeping theirs."""
    chosen: dict[str, str] = {}
    for block in order:
        errors = {}
        for method in settings.methods:
            methods = dict(chosen)
            if method != settings.default_method:
                methods[block] = method
            errors[method] = _error(objective, build([], methods))
        best = min(errors, key=lambda m: (errors[m], m != settings.default_method))
        trials += [{"block": block, "method": m, "output_error": e, "kept": m == best}
                   for m, e in errors.items()]
        if best != settings.default_method:
            chosen[block] = best
    return chosen


def _fallback(order: list[str], build: Build, objective: Objective, settings: SearchSettings,
              current: Candidate, result: SearchResult) -> Candidate:
    bar = tqdm(desc="fallback search", unit="model", disable=not settings.progress, leave=False)
    while not within(current, settings.budget):
        remaining = [b for b in order if b not in current.fallback][:settings.candidates]
        if not remaining:
            result.stop_reason = "every block is in FP32"
            break
        # Each block alone, and the two most sensitive together: one-at-a-time
        # sensitivity misses blocks that only matter jointly (an outlier channel
        # read by two layers must leave INT8 in both before AP moves).
        groups = [[b] for b in remaining] + ([remaining[:2]] if len(remaining) > 1 else [])
        trials = []
        for group in groups:
            trials.append(_measure(objective, build, f"+ FP32 {', '.join(group)}",
                                   [*current.fallback, *group],
                                   {b: m for b, m in current.methods.items() if b not in group}))
            bar.update(1)
        result.tried += trials
        timed = [c.fp32_latency_ms for c in result.tried if not np.isnan(c.fp32_latency_ms)]
        ref_ms = float(np.median(timed)) if timed else float("nan")
        best, score = pick_step(current, trials, ref_ms)
        gain = objective.paired(best.name, current.name)
        step = {"kind": "accuracy", "blocks": best.fallback[len(current.fallback):],
                "ap_gain": gain.diff, "gain_se": gain.se,
                "ms_lost": (best.ratio - current.ratio) * ref_ms, "ap_per_ms": score,
                "candidates": [c.name for c in trials]}
        if not beyond_noise(gain):
            step["taken"] = False
            result.steps.append(step)
            result.stop_reason = (f"the best step ({best.name}) gains {gain.diff:+.2f} AP, within "
                                  f"noise (<= {NOISE_Z:g} SE = {NOISE_Z * gain.se:.2f})")
            break
        step["taken"] = True
        result.steps.append(step)
        current = best
    else:
        result.stop_reason = "within the budget"
    bar.close()
    return current


def pick_step(current: Candidate, trials: list[Candidate],
              ref_ms: float) -> tuple[Candidate, float]:
    """The trial with the most AP recovered per ms lost, and that rate."""
    score, best = max(((_per_ms(c, current, ref_ms), c) for c in trials), key=lambda sc: sc[0])
    return best, score


def beyond_noise(gain: PairedDifference) -> bool:
    """A gain counts when it exceeds ``NOISE_Z`` paired bootstrap standard errors."""
    return gain.diff > NOISE_Z * gain.se


def _per_ms(candidate: Candidate, current: Candidate, ref_ms: float) -> float:
    """AP recovered per ms of latency lost (ratios from interleaved runs, times the
    FP32 median, so that runs under different machine load compare). A step that
    costs nothing measurable (or gains speed) counts as costing 1% of FP32."""
    gain = candidate.ap - current.ap
    if np.isnan(candidate.ratio) or np.isnan(current.ratio):
        return gain  # not timed: AP alone decides
    lost = max((candidate.ratio - current.ratio) * ref_ms, 0.01 * ref_ms)
    return gain / lost


def to_dicts(result: SearchResult) -> dict[str, Any]:
    """JSON-ready parts of the result for the report."""
    return {"tried": [{**dataclasses.asdict(c), "ratio": c.ratio} for c in result.tried],
            "sensitivity": [dataclasses.asdict(s) for s in result.sensitivity],
            "method_trials": result.method_trials, "steps": result.steps,
            "stop_reason": result.stop_reason}
