"""``QuantizeConfig``: the options of ``detr-edge quantize`` (``export.int8.quantize``)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import InputError
from runtime.metadata import INT8_FORMATS

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantizeConfig:
    out_path: str | None = None  # INT8 ONNX to write (report: <out>.quant.json); None = no files
    calib_images: int = 256  # calibration images drawn (seeded) from the calibration data
    method: str = "minmax"  # activation ranges: minmax | entropy | percentile
    percentile: float = 99.999  # for method=percentile
    ap_budget: float = 0.5  # max AP drop vs FP32, COCO points (0..100 scale)
    eval_images: int = 500  # held-out images (val split) that decide; 0 = no search
    eval_ann: str | None = None  # COCO annotations of a plain image folder; None = the
    #                              dataset's own, else FP32 pseudo ground truth
    eval_data: str | None = None  # held-out images from here (a dataset root: its val split);
    #                               None = the val split of --calib-data's dataset, if any
    pseudo_gt: bool = False  # ignore annotations: score INT8 against FP32 pseudo ground truth
    pseudo_top_k: int = 10  # detections per image kept as pseudo ground truth
    pseudo_budget: float | None = None  # budget in pseudo-GT points; None = mapped from
    #                                     ap_budget (export.int8.objective.pseudo_budget)
    second_best: bool = True  # AP with the official PostProcess; False drops no-object slots
    method_blocks: int = 4  # most sensitive blocks whose calibration method is searched
    candidates: int = 3  # FP32-fallback candidates measured per search step
    seed: int = 0  # image selection / split
    quantize_attention: bool = False  # also quantize activation x activation MatMuls
    quantize_add: bool = True  # Q/DQ on residual Add outputs too: ORT CPU runs QLinearAdd
    target: str = "tensorrt"  # Q/DQ format: tensorrt (symmetric int8) | cpu (ORT uint8)
    # Weight bits of the cpu format: 7 never saturates ORT's u8 x s8 kernels on AVX2 CPUs
    # without VNNI (runtime.cpu_features); 8 is for VNNI/ARM-only deployments. TensorRT: 8.
    weight_bits: int | None = None  # None = 7 for target cpu, 8 for tensorrt
    granularity: str = "block"  # fallback unit: block (backbone stage, encoder layer..) | layer
    speed_fallback: bool = True  # blocks ORT CPU runs faster in FP32 go back to FP32
    #                               (export.int8.speed_fallback)
    latency_runs: int = 20  # timed ORT runs per model (median), per verdict repeat too
    warmup_runs: int = 3  # untimed runs first (search; the verdict: the benchmark's)
    threads: int | None = None  # ORT intra-op threads; None = ORT default
    cache_dir: str | None = None  # calibration cache folder; None = next to out_path / temp
    progress: bool = True  # tqdm bars

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError("--method", f"unknown method {self.method!r} ({'|'.join(METHODS)})")
        if self.ap_budget < 0:
            raise InputError("--ap-budget", f"must be >= 0 AP points, got {self.ap_budget}")
        if 0 < self.ap_budget < 1e-3 or self.ap_budget > 100:
            raise InputError("--ap-budget", f"{self.ap_budget} is in COCO points (0..100), "
                             "e.g. 0.5 for half an AP point")
        if self.target not in INT8_FORMATS:
            raise InputError("--target", f"unknown target {self.target!r} "
                             f"({'|'.join(INT8_FORMATS)})")
        if self.weight_bits not in (None, 7, 8) or (self.weight_bits == 7
                                                     and self.target == "tensorrt"):
            raise InputError("--weight-bits", f"7 or 8 (7 only for --target cpu), got "
                             f"{self.weight_bits}")
        if self.granularity not in ("block", "layer"):
            raise InputError("--granularity", f"unknown {self.granularity!r} (block|layer)")
        if self.calib_images <= 0 or self.eval_images < 0 or self.latency_runs < 0:
            raise InputError("--calib-images/--eval-images", "must be positive")


def weight_bits(config: QuantizeConfig) -> int:
    """The weight bits ``config`` quantizes with (see ``QuantizeConfig.weight_bits``)."""
    return config.weight_bits or (7 if config.target == "cpu" else 8)
