"""The README's headline figures of one benchmark run, and their targets."""

from __future__ import annotations

from typing import Any

from benchmarks.rows import STATUS_OK, Row

# Targets of the README's headline figures: (figure key, "<=" bound, "abs" = |value| bound).
# The speed targets (ORT/PyTorch <= 0.45, INT8/FP32 <= 0.35, pre+post <= 3% of end to end)
# are stated for DETR-R50 at 800x1066 and are checked by ``python -m benchmarks.r50_speed``,
# not on this model (a small model's pre/post share is larger by nature).
FIGURE_TARGETS: dict[str, tuple[str, float]] = {
    "ort_fp16_AP_delta_vs_torch_fp32 (AP points)": ("abs", 0.1),
    "ort_int8_AP_delta_vs_torch_fp32 (AP points)": ("abs", 0.5),
    "ort_int8-cpu_AP_delta_vs_torch_fp32 (AP points)": ("abs", 0.5),
    # The deployed FP32 graph against the model as trained (issue 16's acceptance bound).
    "ort_fp32_AP_delta_vs_trained (AP points)": ("abs", 0.5),
}


def headline_figures(rows: list[Row], reference_source: str = "pytorch") -> dict[str, Any]:
    """The ratios the README promises, from this run's rows (None when a row did not run).

    ``reference_source`` (``benchmarks.reference``): with ONNX Runtime FP32 as the
    reference there is no model as trained to compare with, so that figure is None."""
    def get(backend: str, precision: str) -> Row | None:
        r = next(r for r in rows if r.backend == backend and r.precision == precision)
        return r if r.status == STATUS_OK else None

    def e2e(r: Row | None) -> float | None:
        sp = r.speed_at(1) if r else None
        return sp.end_to_end["median_ms"] if sp and sp.end_to_end else None

    def model(r: Row | None) -> float | None:
        sp = r.speed_at(1) if r else None
        return sp.model["median_ms"] if sp and sp.model else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    torch32, ort32, ort16, ort8 = (get("pytorch", "fp32"), get("onnxruntime", "fp32"),
                                   get("onnxruntime", "fp16"), get("onnxruntime", "int8"))
    ort8cpu = get("onnxruntime", "int8-cpu")
    sp = ort32.speed_at(1) if ort32 else None
    figs: dict[str, Any] = {
        "ort_fp32_e2e_over_torch_fp32_e2e (batch 1)": ratio(e2e(ort32), e2e(torch32)),
        "ort_int8_model_over_ort_fp32_model (batch 1)": ratio(model(ort8), model(ort32)),
        "ort_int8_e2e_over_ort_fp32_e2e (batch 1)": ratio(e2e(ort8), e2e(ort32)),
        "ort_int8-cpu_model_over_ort_fp32_model (batch 1)": ratio(model(ort8cpu), model(ort32)),
        "ort_int8-cpu_e2e_over_ort_fp32_e2e (batch 1)": ratio(e2e(ort8cpu), e2e(ort32)),
        "pre_post_fraction_of_e2e (ORT FP32, batch 1)":
            round(sp.pre_post_fraction, 4) if sp and sp.pre_post_fraction is not None else None,
    }
    # Precision loss: against PyTorch FP32 on the same canvas and input form.
    for name, r in (("fp16", ort16), ("int8", ort8), ("int8-cpu", ort8cpu)):
        d = r.delta_vs_canvas if r else None
        figs[f"ort_{name}_AP_delta_vs_torch_fp32 (AP points)"] = (
            round(d["AP"] * 100, 3) if d else None)
    if ort32 and ort32.delta_vs_canvas:
        figs["ort_fp32_AP_delta_vs_torch_fp32 (AP points)"] = round(
            ort32.delta_vs_canvas["AP"] * 100, 3)
    # Everything deployment costs: against the model as trained (official protocol).
    trained = ort32.delta_vs_trained if ort32 and reference_source != "onnxruntime" else None
    figs["ort_fp32_AP_delta_vs_trained (AP points)"] = (
        round(trained["AP"] * 100, 3) if trained else None)
    return figs
