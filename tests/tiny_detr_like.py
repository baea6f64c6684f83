"""A small DETR-shaped network exported to ONNX, and synthetic images, for the
INT8 quantization tests: backbone stages, input_proj, encoder/decoder layers,
LayerNorm, class_embed and a 3-layer bbox_embed MLP, exported with the same
TorchScript ONNX exporter as export-onnx, random init, 64 px inputs. The
"outlier" variant gives encoder layer 0 one output channel ~1000x the others,
which per-tensor INT8 activations of encoder layer 1 cannot represent.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.onnx_meta import write_meta
from runtime.metadata import ModelMeta

SIZE = 64  # input canvas (pixels)


class _Layer(nn.Module):
    def __init__(self, d: int, residual: bool = True) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d, d)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.linear1(x))
        return x + y if self.residual else y


class _Stack(nn.Module):
    def __init__(self, layers: list[nn.Module], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        if extra is not None:
            x = x + extra
        for layer in self.layers:
            x = layer(x)
        return self.norm(x) if self.norm is not None else x


class TinyDETRLike(nn.Module):
    """images [B,3,64,64] -> logits [B,Q,K+1], boxes [B,Q,4] sigmoid cxcywh."""

    def __init__(self, num_classes: int = 3, num_queries: int = 8, d: int = 16,
                 outlier: bool = False) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict({
            "layer1": nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU()),
            "layer2": nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())})
        self.input_proj = nn.Conv2d(16, d, 1)
        self.encoder = _Stack([_Layer(d), _Layer(d, residual=False)])
        self.decoder = _Stack([_Layer(d)], nn.LayerNorm(d))
        self.query_embed = nn.Embedding(num_queries, d)
        self.class_embed = nn.Linear(d, num_classes + 1)
        self.bbox_embed = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(),
                                        nn.Linear(d, 4))
        if outlier:
            with torch.no_grad():
                self.encoder.layers[0].linear1.bias[0] = 2000.0  # one huge channel
                self.encoder.layers[1].linear1.weight[:, 0] = 1e-4  # ...that layer 1 ignores

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.backbone["layer2"](self.backbone["layer1"](images))
        x = self.input_proj(x).flatten(2).transpose(1, 2)  # [B, HW, d]
        x = self.encoder(x)
        q = self.query_embed.weight.unsqueeze(0).expand(x.shape[0], -1, -1)  # [B, Q, d]
        attn = torch.softmax(q @ x.transpose(1, 2) / 4.0, dim=-1)  # [B, Q, HW]
        h = self.decoder(q, attn @ x)
        return self.class_embed(h), self.bbox_embed(h).sigmoid()


def export_tiny_detr_like(path: Path, outlier: bool = False, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = TinyDETRLike(outlier=outlier).eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), buffer,
                          input_names=["images"], output_names=["logits", "boxes"],
                          opset_version=17, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    write_meta(graph, ModelMeta(preset="tiny-test", input_height=SIZE, input_width=SIZE,
                                class_names=["a", "b", "c"], label_map=[1, 3, 7]))
    onnx.save(graph, str(path))
    return path


def export_detr_tiny(path: Path, seed: int = 0) -> Path:
    """The real DETR-tiny graph (ResNet-18 body, random init) from export-onnx's
    tracer at SIZE x SIZE, with detr-edge metadata."""
    from detr.model import build_model
    from export.onnx_export import trace_to_onnx

    torch.manual_seed(seed)
    model = build_model("detr-tiny", 3, num_queries=10).eval()
    graph = trace_to_onnx(model, SIZE, SIZE, batch_size=1, with_mask=False)
    write_meta(graph, ModelMeta(preset="detr-tiny", input_height=SIZE, input_width=SIZE,
                                class_names=["a", "b", "c"], label_map=[1, 3, 7]))
    onnx.save(graph, str(path))
    return path


def write_images(folder: Path, count: int = 24, seed: int = 0) -> Path:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        img = Image.new("RGB", (SIZE + 8 * (i % 3), SIZE), colour)  # mixed sizes: padding
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = (int(v) for v in rng.integers(0, 40, 2))
            w, h = (int(v) for v in rng.integers(8, 24, 2))
            draw.rectangle([x0, y0, x0 + w, y0 + h],
                           fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img.save(folder / f"img{i:03d}.png")
    return folder
