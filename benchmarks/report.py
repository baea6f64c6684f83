"""Benchmark report: dataclass, Markdown table, report.json, plot.png.

The plot is latency (model alone, batch 1, median) against AP, one point per
backend x precision that ran; it is drawn with matplotlib's Agg backend so it
works without a display.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.figures import FIGURE_TARGETS
from benchmarks.rows import STATUS_OK, Row
from detr.coco_eval import AP_KEYS
from runtime.atomic import atomic_write, atomic_write_text
from runtime.staging import StagedOutputs


@dataclass
class Report:
    """The result of one benchmark run (all numbers measured in that run)."""

    rows: list[Row]
    env: dict[str, Any]  # benchmarks.env_info.EnvInfo.to_dict()
    settings: dict[str, Any]  # input size, batch sizes, runs, warm-up, images, dataset...
    memory_method: str  # how peak_rss_mb was measured
    figures: dict[str, Any] = field(default_factory=dict)  # headline ratios, see suite
    paths: dict[str, str] = field(default_factory=dict)  # report.md / .json / plot.png
    # The model as trained: name, accuracy (AP_KEYS), eval_images, protocol, training_resize.
    reference: dict[str, Any] = field(default_factory=dict)

    def row(self, backend: str, precision: str) -> Row:
        return next(r for r in self.rows if r.backend == backend and r.precision == precision)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows], "env": self.env,
                "settings": self.settings, "memory_method": self.memory_method,
                "figures": self.figures, "reference": self.reference}


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "-"
    if value == -1.0 and scale == 100 and not signed:
        return "n/a"  # COCO's -1: no ground truth in this area range
    return f"{value * scale:+.{digits}f}" if signed else f"{value * scale:.{digits}f}"


def _accuracy_lines(report: Report) -> list[str]:
    """The accuracy table: the reference (model as trained) first, then every row with
    its AP delta vs the reference and vs PyTorch FP32 on the same canvas."""
    ref, s = report.reference, report.settings
    protocol = ref.get("protocol", {})
    form = f"{s.get('height')}x{s.get('width')} canvas, {'mask' if s.get('with_mask') else 'no mask'}"
    if s.get("resize"):
        form += f", resize rule {s['resize'][0]}/{s['resize'][1]}"
    lines = ["## Accuracy (COCO AP x100)\n",
             (f"Reference = {ref.get('name', 'PyTorch FP32')}: {protocol.get('resize', '-')}; "
              f"{protocol.get('decoding', '-')}; {ref.get('eval_images', '-')} images. "
              f"Rows: {form}; decoding {s.get('decoding', '-')}. " + (
                  "dAP = row - reference (all that deployment costs); dAP canvas = row - "
                  "PyTorch FP32 on the rows' canvas (precision loss alone).\n"
                  if not ref.get("note") else
                  f"dAP = row - reference; no dAP canvas. **{ref['note']}.**\n")),
             "| backend | status | " + " | ".join(AP_KEYS) + " | dAP | dAP50 | dAP canvas"
             " | logits max/mean err | boxes max/mean err | matched@IoU0.9 |",
             "|---|---|" + "---|" * (len(AP_KEYS) + 6)]
    if ref.get("accuracy"):
        acc = ref["accuracy"]
        lines.append(f"| {ref.get('name')} | reference | "
                     + " | ".join(_fmt(acc.get(k), 100) for k in AP_KEYS) + " | | | | | | |")
    for r in report.rows:
        acc, d, dc, p = r.accuracy or {}, r.delta_vs_trained or {}, r.delta_vs_canvas or {}, \
            r.parity or {}
        logits_digits = 2 if (p.get("logits_max_abs") or 0) > 0.01 else 6
        matched = p.get("matched_fraction")
        lines.append(
            f"| {r.name} | {r.status} | " + " | ".join(_fmt(acc.get(k), 100) for k in AP_KEYS)
            + f" | {_fmt(d.get('AP'), 100, 2, True)} | {_fmt(d.get('AP50'), 100, 2, True)}"
            f" | {_fmt(dc.get('AP'), 100, 2, True)}"
            f" | {_fmt(p.get('logits_max_abs'), 1, logits_digits)}"
            f"/{_fmt(p.get('logits_mean_abs'), 1, 6)}"
            f" | {_fmt(p.get('boxes_max_abs'), 1, 6)}/{_fmt(p.get('boxes_mean_abs'), 1, 6)}"
            f" | {_fmt(matched, 100, 1)}{'%' if matched is not None else ''} |")
    return lines


def to_markdown(report: Report) -> str:
    """Markdown: accuracy table, speed table, status table, environment, figures."""
    s = report.settings
    lines = ["# detr-edge benchmark\n",
             (f"Model `{s.get('checkpoint') or s.get('artifacts')}` ({s.get('preset')}), input {s.get('height')}x"
             f"{s.get('width')}, {s.get('eval_images')} eval images from `{s.get('data')}`; "
             f"latency = median of {s.get('runs')} runs after {s.get('warmup')} warm-up.\n"),
             *_accuracy_lines(report)]
    lines += ["", "## Speed (ms per call; model alone and end to end incl. pre/post)\n",
              ("| backend | batch | model p50 | p90 | p99 | e2e p50 | p90 | p99 | pre | post"
              " | pre+post % | images/s (e2e) | size MB | peak RSS MB |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.rows:
        if r.status != STATUS_OK:
            continue
        size = _fmt(r.artifact_bytes / 1e6, 1, 2) if r.artifact_bytes else "-"
        for sp in r.speed:
            if sp.skipped_reason:
                lines.append(f"| {r.name} | {sp.batch_size} | skipped: {sp.skipped_reason} "
                             "| | | | | | | | | | | |")
                continue
            m, e = sp.model or {}, sp.end_to_end or {}
            lines.append(
                f"| {r.name} | {sp.batch_size} | {_fmt(m.get('median_ms'))} | "
                f"{_fmt(m.get('p90_ms'))} | {_fmt(m.get('p99_ms'))} | {_fmt(e.get('median_ms'))} | "
                f"{_fmt(e.get('p90_ms'))} | {_fmt(e.get('p99_ms'))} | {_fmt(sp.pre_ms, 1, 2)} | "
                f"{_fmt(sp.post_ms, 1, 2)} | {_fmt(sp.pre_post_fraction, 100, 2)} | "
                f"{_fmt(e.get('images_per_s'), 1, 2)} | {size} | {_fmt(r.peak_rss_mb, 1, 0)} |")
    lines += ["", "## Status\n", "| backend | status | reason |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {r.reason or '-'} |" for r in report.rows]
    if report.figures:
        lines += ["", "## Figures\n"]
        for k, v in report.figures.items():
            target = FIGURE_TARGETS.get(k)
            verdict = ""
            if target is not None and v is not None:
                kind, bound = target
                ok = (abs(v) if kind == "abs" else v) <= bound
                verdict = (f" (target {'|x|' if kind == 'abs' else 'x'} <= {bound}: "
                           f"{'meets' if ok else 'MISSES'})")
            lines.append(f"- {k}: {'not measured' if v is None else v}{verdict}")
        lines.append("- DETR-R50 speed targets (ORT FP32/PyTorch <= 0.45, INT8/FP32 <= 0.35, "
                     "pre+post <= 3% of end to end, at 800x1066): "
                     "`python -m benchmarks.r50_speed`")
    env = report.env
    libs = ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items() if v)
    missing = ", ".join(k for k, v in env.get("libraries", {}).items() if not v)
    lines += ["", "## Environment\n",
              (f"- CPU: {env.get('cpu_model')}, {env.get('cpu_cores')} cores "
              f"(OMP_NUM_THREADS={env.get('omp_num_threads')}, torch threads {env.get('torch_threads')})"),
              f"- GPU: {env.get('gpu') or 'none (no CUDA GPU)'}",
              f"- Python {env.get('python')} on {env.get('platform')}",
              f"- Libraries: {libs}; not installed: {missing or '-'}",
              f"- ONNX Runtime providers: {', '.join(env.get('onnxruntime_providers', []))}",
              f"- Peak memory: {report.memory_method}"]
    return "\n".join(lines) + "\n"


def write_plot(report: Report, path: Path) -> None:
    """Latency (model alone, smallest batch, median) vs AP, one point per ok row."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report.rows:
        sp = next((s for s in r.speed if s.model), None)
        if r.status != STATUS_OK or sp is None or r.accuracy is None or sp.model is None:
            continue
        x, y = sp.model["median_ms"], r.accuracy["AP"] * 100
        # A legend, not annotations: rows with equal AP would print labels on top of each other.
        ax.scatter([x], [y], s=50, label=f"{r.name}: {x:.1f} ms, AP {y:.2f}",
                   marker={"fp32": "o", "fp16": "s", "int8": "^", "int8-cpu": "v"}.get(r.precision, "o"))
    if ax.collections:
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("latency, model alone, batch 1 (ms, median)")
    ax.set_ylabel("COCO AP (x100)")
    ref = report.reference.get("name", "")
    ax.set_title("detr-edge: latency vs AP per backend x precision"
                 + (f"\nreference: {ref}" if ref else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


REPORT_FILES = ("report.md", "report.json", "plot.png")


def write_report(report: Report, out_dir: Path) -> dict[str, str]:
    """Write report.md, report.json and plot.png into ``out_dir``; returns their paths.

    The three are staged and swapped in together (``runtime.staging``): a run
    that fails while writing (disk full, the plot) leaves the previous run's
    report whole, never a Markdown table of one run beside the JSON of another.
    The plot needs matplotlib (the ``bench`` extra); a device install without it
    gets the Markdown and JSON, and the report says the plot was not drawn (a
    previous run's plot.png is removed with the swap: it would belong to another run)."""
    import importlib.util

    paths = {"markdown": str(out_dir / "report.md"), "json": str(out_dir / "report.json")}
    if importlib.util.find_spec("matplotlib") is not None:
        paths["plot"] = str(out_dir / "plot.png")
    report.paths = paths
    with StagedOutputs(out_dir, REPORT_FILES) as staged:
        atomic_write_text(staged.path / "report.md", to_markdown(report))
        atomic_write_text(staged.path / "report.json",
                          json.dumps(report.to_dict(), indent=2, default=str))
        if "plot" in paths:
            write_plot(report, staged.path / "plot.png")
        staged.commit()
    return paths
