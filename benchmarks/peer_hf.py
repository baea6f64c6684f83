"""detr-edge next to Hugging Face ``transformers``' DETR, same config, one run.

``python -m benchmarks.peer_hf [--configs tiny r50] [--rounds N] [--threads T] [--json]``

For each config, one ``DetrForObjectDetection`` is built with random weights
(``use_pretrained_backbone=False``, transformers' own ResNet: nothing is
downloaded) and its weights are loaded into detr-edge's model through
``detr.hf_convert`` with ``strict=True``, so both run the same network; the
eager outputs are compared to prove it. Then, timed round-robin
(``benchmarks.timing.time_interleaved``, so load on a shared machine hits both
alike):

- training step, images/s: forward, Hungarian matching, set loss with aux
  losses, backward, gradient clipping (0.1), AdamW step. detr-edge runs
  ``detr.train.epoch.train_one_epoch`` on one batch with ``detr.build_criterion``;
  HF runs ``model(pixel_values, pixel_mask, labels)`` (its own matcher and loss)
  and the same backward / clip / AdamW (``detr.train.optim.build_optimizer``:
  both models name their backbone parameters ``...backbone...``).
- inference latency, batch 1: eager PyTorch (each library as shipped: detr-edge's
  eval mode folds BatchNorm into the convs, ``detr.bn_fold``), and ONNX Runtime FP32 of each
  model's ONNX export (detr-edge: ``export.onnx_export.trace_to_onnx``; HF:
  ``torch.onnx.export`` of logits and boxes, then the same onnxslim pass). A
  failing HF export is reported with its reason.

Every figure is a median over ``runs`` calls per round; ``rounds`` rounds give
the spread. Ratio = detr-edge speed / HF speed (HF time / detr-edge time; the
target is >= 1.0). HF's DETR always freezes BatchNorm and the ResNet stem, so
the tiny config does too (detr-edge's ``detr-tiny`` preset trains them). Both
train the same parameters (ResNet layer2-4 and everything after it; checked).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from benchmarks.timing import session_call, time_interleaved
from runtime.atomic import atomic_write_text


@dataclass(frozen=True)
class PeerConfig:
    """One architecture measured on both implementations."""

    name: str  # label in the report
    backbone: str = "resnet18"  # resnet18 (basic blocks) | resnet50 (bottlenecks)
    hidden_dim: int = 128  # d
    nheads: int = 8
    enc_layers: int = 3
    dec_layers: int = 3
    dim_feedforward: int = 512
    num_queries: int = 50
    num_classes: int = 6  # K real classes
    height: int = 256  # input canvas (pixels)
    width: int = 256
    train_batch: int = 2  # images per training step
    rounds: int = 5  # timing rounds (the spread is over these)
    runs: int = 3  # timed calls per round and path (their median is the round's figure)
    warmup: int = 2  # untimed calls per path first
    onnx: bool = True  # also export both and time ONNX Runtime FP32


CONFIGS = {
    # detr-edge's detr-tiny architecture (ResNet-18, d 128, 3+3 layers, 50 queries).
    "tiny": PeerConfig(name="detr-tiny-sized, 256x256"),
    # The paper's DETR-R50 at a modest input, so that it finishes in minutes on 2 cores.
    "r50": PeerConfig(name="DETR-R50, 320x320", backbone="resnet50", hidden_dim=256,
                      enc_layers=6, dec_layers=6, dim_feedforward=2048, num_queries=100,
                      num_classes=91, height=320, width=320, rounds=5, runs=1, warmup=1),
}


@dataclass
class Comparison:
    """detr-edge vs HF on one measurement: per-round medians (ms) and speed ratios."""

    what: str  # "train step (batch 2)", "eager (batch 1)", "onnxruntime fp32 (batch 1)"
    ours_ms: list[float] = field(default_factory=list)  # per round
    hf_ms: list[float] = field(default_factory=list)
    batch: int = 1
    skipped: str | None = None  # why there is no figure

    @property
    def ratios(self) -> list[float]:
        """detr-edge speed / HF speed per round (> 1: detr-edge faster)."""
        return [h / o for o, h in zip(self.ours_ms, self.hf_ms)]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"what": self.what, "batch": self.batch, "skipped": self.skipped}
        if self.ratios:
            out.update(ours_ms=float(np.median(self.ours_ms)), hf_ms=float(np.median(self.hf_ms)),
                       ratio=float(np.median(self.ratios)), ratio_min=min(self.ratios),
                       ratio_max=max(self.ratios), rounds=len(self.ratios),
                       ours_ms_rounds=self.ours_ms, hf_ms_rounds=self.hf_ms)
        return out


def hf_config(config: PeerConfig) -> Any:
    """The transformers ``DetrConfig`` of ``config`` (official DETR dropouts: 0.1 in
    attention and FFN too; aux losses on)."""
    import transformers

    extra: dict[str, Any] = {}
    if config.backbone == "resnet18":
        extra["backbone_config"] = transformers.ResNetConfig(
            layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
            out_features=["stage4"])  # type: ignore[call-arg]  # PretrainedConfig kwargs
    elif config.backbone != "resnet50":
        raise ValueError(f"backbone must be resnet18 or resnet50, got {config.backbone!r}")
    return transformers.DetrConfig(  # type: ignore[call-arg]  # PretrainedConfig kwargs
        use_timm_backbone=False, use_pretrained_backbone=False, num_labels=config.num_classes,
        d_model=config.hidden_dim, encoder_layers=config.enc_layers,
        decoder_layers=config.dec_layers, encoder_attention_heads=config.nheads,
        decoder_attention_heads=config.nheads, encoder_ffn_dim=config.dim_feedforward,
        decoder_ffn_dim=config.dim_feedforward, num_queries=config.num_queries,
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, auxiliary_loss=True,
        **extra)


def build_pair(config: PeerConfig, seed: int = 0) -> tuple[Any, Any, float]:
    """(detr-edge DETR, HF DetrForObjectDetection, max |logit difference| in eval).

    The HF weights are loaded into detr-edge's model with ``strict=True``.
    """
    import torch
    import transformers

    import detr
    from detr.hf_convert import hf_to_official

    torch.manual_seed(seed)
    hf = transformers.DetrForObjectDetection(hf_config(config))
    preset = "detr-r50" if config.backbone == "resnet50" else "detr-tiny"
    ours = detr.build_model(
        preset, config.num_classes, hidden_dim=config.hidden_dim, nheads=config.nheads,
        enc_layers=config.enc_layers, dec_layers=config.dec_layers,
        dim_feedforward=config.dim_feedforward, num_queries=config.num_queries,
        frozen_batchnorm=True, freeze_stem=True)
    ours.load_state_dict(hf_to_official(hf.state_dict()), strict=True)
    # transformers 5.x means to train stages 1-3 (layer2-4) of its own ResNet, but it
    # matches the names "stage.1".."stage.3", which its parameters ("stages.1...") never
    # contain: the whole backbone stays frozen and HF's backward would skip it. Train
    # layer2-4 on both, as official DETR and HF's timm path do.
    for name, param in hf.named_parameters():
        if "backbone" in name:
            param.requires_grad_(re.search(r"\.stages\.[123]\.", name) is not None)
    trained = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (ours, hf)]
    if trained[0] != trained[1]:
        raise RuntimeError(f"trainable parameters differ: detr-edge {trained[0]}, HF {trained[1]}")
    images = torch.randn(1, 3, config.height, config.width)
    with torch.no_grad():
        diff = (ours.eval()(images)["pred_logits"] - hf.eval()(pixel_values=images).logits)
    return ours, hf, float(diff.abs().max())


def _targets(config: PeerConfig, seed: int) -> list[dict[str, Any]]:
    """1-4 random normalised cxcywh boxes per image (as benchmarks.train_throughput)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(config.train_batch):
        n = int(torch.randint(1, 5, (), generator=gen))
        centre = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, config.num_classes, (n,), generator=gen),
                        "boxes": torch.cat([centre, wh], dim=1)})
    return targets


def train_steps(config: PeerConfig, ours: Any, hf: Any) -> dict[str, Callable[[], None]]:
    """One full training step of each model on the same batch and targets."""
    import torch

    import detr
    from detr.nested_tensor import NestedTensor
    from detr.train.epoch import train_one_epoch
    from detr.train.optim import build_optimizer

    B, H, W = config.train_batch, config.height, config.width  # batch, canvas
    images = torch.randn(B, 3, H, W)
    mask = torch.zeros(B, H, W, dtype=torch.bool)
    targets = _targets(config, seed=1)
    criterion = detr.build_criterion(config.num_classes, dec_layers=config.dec_layers)
    opt_ours = build_optimizer(ours, lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4)
    opt_hf = build_optimizer(hf, lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4)
    batch = [(NestedTensor(images, mask), targets)]
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    pixel_mask = (~mask).long()  # HF: 1 = valid pixel

    def ours_step() -> None:
        train_one_epoch(ours, criterion, batch, opt_ours, torch.device("cpu"), 0,
                        progress=False)

    def hf_step() -> None:
        hf.train()
        loss = hf(pixel_values=images, pixel_mask=pixel_mask, labels=hf_labels).loss
        opt_hf.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 0.1)  # as train_one_epoch's default
        opt_hf.step()

    return {"ours": ours_step, "hf": hf_step}


def eager_calls(config: PeerConfig, ours: Any, hf: Any) -> dict[str, Callable[[], None]]:
    import torch

    images = torch.randn(1, 3, config.height, config.width)
    ours.eval()
    hf.eval()

    def ours_call() -> None:
        with torch.no_grad():
            ours(images)

    def hf_call() -> None:
        with torch.no_grad():
            hf(pixel_values=images)

    return {"ours": ours_call, "hf": hf_call}


class _HFExportWrapper:
    """Builds a module returning (logits [B,Q,K+1], boxes [B,Q,4]) from HF's output
    object, which the exporter cannot return as is."""

    @staticmethod
    def wrap(hf: Any) -> Any:
        import torch

        class HFLogitsBoxes(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.hf = hf

            def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                out = self.hf(pixel_values=images)
                return out.logits, out.pred_boxes

        return HFLogitsBoxes().eval()


def export_both(config: PeerConfig, ours: Any, hf: Any) -> tuple[bytes, bytes | str]:
    """(detr-edge ONNX, HF ONNX or the reason its export failed), batch 1, opset 17."""
    import warnings

    import onnx
    import onnxslim
    import torch

    from export.onnx_export import trace_to_onnx

    ours_graph = trace_to_onnx(ours.eval(), config.height, config.width, batch_size=1,
                               with_mask=False)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Tracer warnings about HF's Python-side shape checks; the deprecation
            # notice of the TorchScript exporter (detr-edge's path uses it too).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(_HFExportWrapper.wrap(hf.eval()),
                              (torch.randn(1, 3, config.height, config.width),),
                              buffer,  # type: ignore[arg-type]  # a file-like object is fine
                              input_names=["images"], output_names=["logits", "boxes"],
                              opset_version=17, dynamo=False)
        hf_graph = onnxslim.slim(onnx.load_from_string(buffer.getvalue()))
    except (RuntimeError, ValueError, TypeError, AttributeError, NotImplementedError) as exc:
        # A failing third-party export is a result to report, not a crash.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ours_graph.SerializeToString(), f"{type(exc).__name__}: {first[:200]}"
    return ours_graph.SerializeToString(), hf_graph.SerializeToString()


def ort_calls(config: PeerConfig, ours_onnx: bytes, hf_onnx: bytes,
              threads: int) -> dict[str, Callable[[], None]]:
    """ONNX Runtime CPU sessions with the same options for both graphs. Spinning
    is off so one session's idle threads do not steal the other's cores."""
    import onnxruntime as ort

    feed = {"images": np.random.default_rng(0).standard_normal(
        (1, 3, config.height, config.width), dtype=np.float32)}
    calls = {}
    for name, graph in (("ours", ours_onnx), ("hf", hf_onnx)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        calls[name] = session_call(session, feed)
    return calls


def time_rounds(what: str, calls: dict[str, Callable[[], Any]], config: PeerConfig,
                batch: int = 1) -> Comparison:
    """``rounds`` x ``runs`` round-robin calls after ``warmup``; per-round medians."""

    comparison = Comparison(what, batch=batch)
    for i in range(config.rounds):
        stats = time_interleaved(calls, runs=config.runs, warmup=config.warmup if i == 0 else 0)
        comparison.ours_ms.append(stats["ours"].median_ms)
        comparison.hf_ms.append(stats["hf"].median_ms)
    return comparison


def run_peer(config: PeerConfig, threads: int | None = None) -> dict[str, Any]:
    """Measure one config; returns settings, the eager max |logit difference| and
    one summary per comparison (``Comparison.summary``)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    ours, hf, diff = build_pair(config)
    results = [time_rounds(f"train step (batch {config.train_batch})",
                           train_steps(config, ours, hf), config, batch=config.train_batch),
               time_rounds("eager PyTorch (batch 1)", eager_calls(config, ours, hf), config)]
    if config.onnx:
        ours_onnx, hf_onnx = export_both(config, ours, hf)
        if isinstance(hf_onnx, str):
            results.append(Comparison("onnxruntime FP32 (batch 1)",
                                      skipped=f"HF ONNX export failed: {hf_onnx}"))
        else:
            results.append(time_rounds("onnxruntime FP32 (batch 1)",
                                       ort_calls(config, ours_onnx, hf_onnx, threads), config))
    return {"config": asdict(config), "threads": threads, "torch": torch.__version__,
            "transformers": _version("transformers"), "max_logit_diff": diff,
            "comparisons": [c.summary() for c in results]}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def format_result(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [(f"{config['name']}: {config['backbone']}, d {config['hidden_dim']}, "
              f"{config['enc_layers']}+{config['dec_layers']} layers, {config['num_queries']} "
              f"queries, {config['height']}x{config['width']}, {result['threads']} threads; "
              f"torch {result['torch']}, transformers {result['transformers']}"),
             f"  same network: max |logit difference| in eval {result['max_logit_diff']:.2g}",
             "  | measurement | detr-edge ms | HF ms | ratio (median) | ratio min-max |",
             "  |---|---|---|---|---|"]
    for c in result["comparisons"]:
        if c["skipped"]:
            lines.append(f"  | {c['what']} | - | - | skipped: {c['skipped']} | |")
            continue
        lines.append(f"  | {c['what']} | {c['ours_ms']:.1f} | {c['hf_ms']:.1f} | "
                     f"{c['ratio']:.2f}x | {c['ratio_min']:.2f}-{c['ratio_max']:.2f} "
                     f"({c['rounds']} rounds) |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_hf",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["tiny", "r50"])
    parser.add_argument("--rounds", type=int, default=None, help="override rounds per config")
    parser.add_argument("--threads", type=int, default=None, help="torch and ORT threads")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write JSON here")
    args = parser.parse_args(argv)

    results = []
    for key in args.configs:
        config = CONFIGS[key]
        if args.rounds:
            config = dataclasses.replace(config, rounds=args.rounds)
        if args.no_onnx:
            config = dataclasses.replace(config, onnx=False)
        results.append(run_peer(config, args.threads))
        print(format_result(results[-1]), flush=True)
    print("ratio = detr-edge speed / HF speed (HF ms / detr-edge ms), per round; "
          "target >= 1.0")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
