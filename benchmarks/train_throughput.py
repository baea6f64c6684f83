"""Training throughput: images/s of full training steps for a preset.

One step is exactly what ``detr.train.epoch.train_one_epoch`` does per batch
(forward, set loss with Hungarian matching and aux losses, NaN check,
backward, grad clipping, AdamW step), timed after warm-up steps. The batch is
synthetic and fixed (random normalised images, 1-4 random boxes per image), so
data loading and augmentation are NOT included: this is the model's training
cost. Run::

    python -m benchmarks.train_throughput --preset detr-tiny --size 256 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.timing import time_call
from runtime.errors import DetrEdgeError, InputError


@dataclass
class TrainThroughputConfig:
    """What to measure."""

    preset: str = "detr-tiny"  # detr.config preset
    size: int = 256  # square input side (pixels)
    batch_size: int = 4  # images per step
    steps: int = 10  # timed steps
    warmup: int = 2  # untimed steps first (allocator growth, lazy init)
    num_classes: int = 6  # K (the synthetic shapes dataset has 6)
    amp: bool = False  # bf16 autocast on CPU, fp16 + GradScaler on CUDA
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads; None = torch's default
    seed: int = 0  # model init and synthetic batch


def run_train_throughput(config: TrainThroughputConfig) -> dict[str, Any]:
    """Measure; returns settings + ``LatencyStats`` fields + ``images_per_s``."""
    import torch

    import detr
    from detr.nested_tensor import NestedTensor
    from detr.train.ddp import resolve_device
    from detr.train.epoch import train_one_epoch
    from detr.train.optim import build_optimizer

    if config.size < 32 or config.batch_size < 1 or config.steps < 1 or config.warmup < 0:
        raise InputError("train_throughput", "need size >= 32, batch-size >= 1, steps >= 1, "
                         "warmup >= 0")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = detr.build_model(config.preset, num_classes=config.num_classes).to(device)
    criterion = detr.build_criterion(config.num_classes, dec_layers=model.config.dec_layers,
                                     aux_loss=model.config.aux_loss).to(device)
    optimizer = build_optimizer(model, lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" else None

    B, S = config.batch_size, config.size  # batch, side
    images = torch.randn(B, 3, S, S)
    samples = NestedTensor(images, torch.zeros(B, S, S, dtype=torch.bool))
    targets = []
    for _ in range(B):
        n = int(torch.randint(1, 5, ()).item())
        centre = torch.rand(n, 2) * 0.6 + 0.2
        wh = torch.rand(n, 2) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, config.num_classes, (n,)),
                        "boxes": torch.cat([centre, wh], dim=1)})  # normalised cxcywh
    batch = [(samples, targets)]

    def step() -> None:
        train_one_epoch(model, criterion, batch, optimizer, device, 0, amp=config.amp,
                        scaler=scaler, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()

    stats = time_call(step, runs=config.steps, warmup=config.warmup, batch_size=B)
    return {**asdict(config), "device": str(device), "torch_threads": torch.get_num_threads(),
            **stats.to_dict()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput",
                                     description=__doc__.split("\n\n")[0])
    defaults = TrainThroughputConfig()
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--size", type=int, default=defaults.size)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--num-classes", type=int, default=defaults.num_classes)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    config = TrainThroughputConfig(
        preset=args.preset, size=args.size, batch_size=args.batch_size, steps=args.steps,
        warmup=args.warmup, num_classes=args.num_classes, amp=args.amp, device=args.device,
        threads=args.threads)

    try:
        result = run_train_throughput(config)
    except DetrEdgeError as exc:
        print(f"train_throughput: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"{result['preset']} {result['size']}x{result['size']} batch {result['batch_size']} "
          f"on {result['device']} ({result['torch_threads']} threads"
          f"{', amp' if result['amp'] else ''}): {result['warmup']} warm-up + "
          f"{result['runs']} timed steps")
    print(f"  step median {result['median_ms']:.1f} ms  p90 {result['p90_ms']:.1f} ms  "
          f"min {result['min_ms']:.1f} ms")
    print(f"  throughput  {result['images_per_s']:.2f} images/s (at the median step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
