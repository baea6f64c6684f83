"""The INT8 section of the pipeline's report: what ``quantize`` decided for each
INT8 artifact (metric, images, dAP with its noise, latency ratio against the
targets) and a plot of the AP / latency frontier of the configurations it tried.

Reads the ``<model>.quant.json`` reports next to the artifacts
(``export.int8.report.QuantizeReport``); appends a section to ``report.md`` and
writes ``int8_frontier.png``. Given images, the benchmark re-times every INT8
artifact against the FP32 one with the quantizer's own blocks
(``benchmarks.int8_floor.floor_spread``: ``time_interleaved`` in blocks, as
``time_onnx_models``), so the ratio the quantizer decided on and the one the
benchmark reports are one measurement method, taken twice; the same timing
gives the backbone floor, the lowest ratio this CPU's INT8 kernels allow, and
the line says when a target lies below it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.int8_floor import FloorSpread, floor_spread
from export.int8.calib_data import iter_feeds
from export.int8.report import speed_lines
from runtime.atomic import atomic_write, atomic_write_text
from runtime.cpu_features import int8_dot_product_safe

# INT8 / FP32 latency on ONNX Runtime CPU the default quantize must reach, per Q/DQ format.
RATIO_TARGETS = {"cpu": 0.6, "tensorrt": 0.7}


def load_reports(artifacts: Path) -> dict[str, dict[str, Any]]:
    """``{artifact name: quant report dict}`` for every ``*.quant.json`` in ``artifacts``."""
    out = {}
    for path in sorted(artifacts.glob("*.quant.json")):
        try:
            out[path.name.removesuffix(".quant.json")] = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue  # a report from an interrupted run: nothing to show
    return out


def summary_lines(name: str, rep: dict[str, Any]) -> list[str]:
    """Markdown bullet lines for one quantize report."""
    lat = rep.get("latency_ms") or {}
    ratio = lat["int8"] / lat["fp32"] if lat.get("fp32") else math.nan
    target = RATIO_TARGETS.get(rep.get("target", ""), math.nan)
    meets = "meets" if ratio <= target else "MISSES"
    line = (f"- `{name}` ({rep.get('target')} format): {rep.get('quantized_nodes')}/"
            f"{rep.get('candidate_nodes')} nodes INT8")
    if rep.get("fp32_ap") is not None and rep.get("int8_ap") is not None:
        budget = rep.get("decision_budget") or rep.get("ap_budget")
        line += (f", dAP {rep['int8_ap'] - rep['fp32_ap']:+.2f} +- {rep.get('dap_se') or 0:.2f} "
                 f"(paired bootstrap SE) on {rep.get('num_eval_images')} images of "
                 f"{rep.get('eval_data')} by {_metric(rep)}, budget {budget:.2f}: "
                 f"{'within' if rep.get('within_budget') else 'OVER'}")
    if not math.isnan(ratio):
        line += (f"; latency {ratio:.3f}x FP32 (ORT CPU, blocks alternated with FP32; target "
                 f"<= {target:.1f}: {meets})")
    lines = [line] + ["  - " + s.strip() for s in speed_lines(rep.get("steps") or [])]
    if rep.get("pays") is False:
        lines.append(f"  - **INT8 does not pay on this model**: {ratio:.2f}x FP32 latency")
    return lines


def _metric(rep: dict[str, Any]) -> str:
    return "real AP" if rep.get("ground_truth") == "annotations" else \
        f"pseudo-GT AP ({rep.get('ground_truth')})"


def write_frontier_plot(reports: dict[str, dict[str, Any]], path: Path) -> bool:
    """Latency ratio vs dAP (+- SE) of every configuration tried, one series per
    artifact, the written one circled. False when no report has a frontier."""
    series = {n: r["frontier"] for n, r in reports.items() if r.get("frontier")}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, tried), marker in zip(series.items(), "o^sv"):
        xs = [c["ratio"] for c in tried]
        ys = [c["dap"] for c in tried]
        ax.errorbar(xs, ys, yerr=[c["dap_se"] for c in tried], fmt=marker, capsize=2,
                    label=f"{name} ({reports[name].get('target')})")
        for c in tried:
            if c.get("chosen"):
                ax.scatter([c["ratio"]], [c["dap"]], s=160, facecolors="none", edgecolors="k")
    budgets = {float(b) for r in reports.values()
               if (b := r.get("decision_budget") or r.get("ap_budget")) is not None}
    for b in budgets:
        ax.axhline(-b, color="grey", linestyle="--", linewidth=0.8)
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("latency / FP32 latency (ONNX Runtime CPU, batch 1, interleaved medians)")
    ax.set_ylabel("dAP vs FP32 (held-out images, +- paired bootstrap SE)")
    ax.set_title("INT8 configurations tried by quantize (circled: written; dashed: budget)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return True


def retime(artifacts: Path, names: Sequence[str], images: Sequence[Path],
           repeats: int = 3) -> dict[str, FloorSpread]:
    """``{name: benchmarks.int8_floor.FloorSpread}``: each ``<name>.onnx`` timed
    against ``model_fp32.onnx`` with its backbone floor (batch 1, first of ``images``)."""
    from export.onnx_meta import load_onnx, read_meta

    fp32 = artifacts / "model_fp32.onnx"
    if not fp32.is_file() or not images:
        return {}
    feed = next(iter_feeds(list(images[:1]), read_meta(load_onnx(fp32), fp32), 1))
    spreads = floor_spread(fp32, [artifacts / f"{n}.onnx" for n in names], feed,
                           repeats=repeats)
    return dict(zip(names, spreads, strict=True))


def floor_line(spread: FloorSpread, target: float) -> str:
    """The benchmark's re-timing line of one artifact, against its format's target."""
    line = f"- benchmark re-timing (quantize's blocks, `benchmarks.int8_floor`) of {spread.line()}"
    if min(spread.floors) > target:
        line += (f"; the {target:.1f} target is below this CPU's backbone floor in every "
                 f"repeat: out of reach for ONNX Runtime's INT8 kernels here")
    if not int8_dot_product_safe():
        line += " (this CPU has no int8 dot-product instruction: no VNNI / ARM dot product)"
    return line


def write_int8_section(artifacts: Path, report_dir: Path,
                       images: Sequence[Path] = ()) -> list[str]:
    """Append the INT8 section to ``report_dir/report.md``, write the frontier plot;
    returns the section's lines (the pipeline prints them). With ``images``, every
    INT8 artifact is re-timed against FP32 (:func:`retime`)."""
    reports = load_reports(artifacts)
    if not reports:
        return []
    lines = ["", "## INT8: what quantize decided", ""]
    for name, rep in reports.items():
        lines += summary_lines(name, rep)
    for name, spread in retime(artifacts, list(reports), images).items():
        lines.append(floor_line(spread, RATIO_TARGETS.get(reports[name].get("target", ""),
                                                          math.inf)))
    if write_frontier_plot(reports, report_dir / "int8_frontier.png"):
        lines += ["", "Configurations tried: `int8_frontier.png` (and each `.quant.json`)."]
    md = report_dir / "report.md"
    if md.is_file():
        atomic_write_text(md, md.read_text("utf-8").rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    return lines
