"""Inference fast path of the ResNet trunk: BatchNorm folded into the convolutions.

In eval mode a (Frozen)BatchNorm2d is a per-channel affine map, ``y = x * s + t``
with ``s = weight / sqrt(running_var + eps)`` and ``t = bias - running_mean * s``,
so ``bn(conv(x)) = conv'(x)`` with ``conv'`` weights ``W * s`` (per output channel)
and bias ``t``. Running the folded convolutions removes two full passes over every
activation per BatchNorm (53 of them in ResNet-50): about 8% of DETR-R50's eager
CPU time at 320x320, and fewer parallel regions, which matters most on a loaded
machine. The result equals the unfolded trunk up to float rounding (a few 1e-7
relative; ``tests/test_bn_fold.py``).

Nothing here changes the model's parameters or state-dict keys: the folded tensors
live in a cache outside the module tree, keyed by the identity and version counter
of every source tensor, so ``load_state_dict``, an optimiser step or ``.to()``
invalidates them. The fast path runs only in eager eval mode without autograd;
training, gradients, tracing and ONNX export see the plain modules.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from detr.frozen_batchnorm import FrozenBatchNorm2d

Folded = tuple[Tensor, Tensor]  # (conv weight [O, I, kh, kw] * scale, bias [O])


def fold_conv_bn(conv: nn.Conv2d, norm: nn.Module) -> Folded:
    """(weight, bias) of the convolution equal to ``norm(conv(x))`` in eval mode.

    ``norm``: FrozenBatchNorm2d or nn.BatchNorm2d with running stats.
    """
    weight, bias, mean, var = _norm_tensors(norm)
    scale = weight * (var + float(cast(Any, norm).eps)).rsqrt()  # [O]
    shift = bias - mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), shift


def _norm_tensors(norm: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(weight, bias, running_mean, running_var), each [O], of a BatchNorm."""
    n = cast(Any, norm)
    return n.weight, n.bias, n.running_mean, n.running_var


def _sources(conv: nn.Conv2d, norm: nn.Module) -> list[Tensor]:
    tensors = [conv.weight, *_norm_tensors(norm)]
    return tensors + ([conv.bias] if conv.bias is not None else [])


def _key(tensors: list[Tensor]) -> tuple[Any, ...]:
    # _version grows with every in-place write (load_state_dict's copy_, optimiser
    # steps); data_ptr changes when .to() or load_state_dict(assign=True) replaces it.
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


def _foldable(norm: nn.Module) -> bool:
    if not isinstance(norm, nn.BatchNorm2d):
        return True  # FrozenBatchNorm2d: always its stored statistics
    return (not norm.training and norm.affine
            and norm.running_mean is not None and norm.running_var is not None)


def fast_path_allowed(module: nn.Module) -> bool:
    """True in eager eval mode with autograd off (no tracing, export or compile)."""
    return (not module.training and not torch.is_grad_enabled()
            and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
            and not torch.compiler.is_compiling() and not torch.compiler.is_exporting())


class FoldedTrunk:
    """Runs a torchvision ResNet trunk (``conv1`` ... ``layer4`` of an
    ``IntermediateLayerGetter``) with cached folded conv+BN pairs."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[tuple[Any, ...], Folded]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"_cache": {}}  # derived tensors: never pickled or deep-copied

    def supports(self, body: nn.Module) -> bool:
        """``body`` is a torchvision ResNet trunk whose every norm can be folded."""
        blocks = [m for name in ("layer1", "layer2", "layer3", "layer4")
                  for m in getattr(body, name, ())]
        norms = [m for m in body.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]
        return (len(blocks) > 0 and all(isinstance(b, (BasicBlock, Bottleneck)) for b in blocks)
                and all(_foldable(n) for n in norms))

    def _conv(self, x: Tensor, conv: nn.Conv2d, norm: nn.Module) -> Tensor:
        """``norm(conv(x))`` as one convolution."""
        sources = _sources(conv, norm)
        key = _key(sources)
        cached = self._cache.get(id(conv))
        if cached is None or cached[0] != key:
            cached = (key, fold_conv_bn(conv, norm))
            self._cache[id(conv)] = cached
        weight, bias = cached[1]
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def _block(self, x: Tensor, module: nn.Module) -> Tensor:
        """torchvision's BasicBlock / Bottleneck forward with folded norms."""
        block = cast(Any, module)  # torchvision types its submodules as nn.Module
        out = F.relu(self._conv(x, block.conv1, block.bn1), inplace=True)
        if isinstance(module, Bottleneck):
            out = F.relu(self._conv(out, block.conv2, block.bn2), inplace=True)
            out = self._conv(out, block.conv3, block.bn3)
        else:
            out = self._conv(out, block.conv2, block.bn2)
        identity = x
        if block.downsample is not None:
            identity = self._conv(x, block.downsample[0], block.downsample[1])
        return F.relu(out.add_(identity), inplace=True)

    def __call__(self, trunk: nn.Module, x: Tensor) -> Tensor:
        """images [B, 3, H, W] -> layer4 features [B, C, H/32, W/32] (H/16 with DC5)."""
        body = cast(Any, trunk)
        x = F.relu(self._conv(x, body.conv1, body.bn1), inplace=True)
        x = body.maxpool(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            for block in getattr(body, name):
                x = self._block(x, block)
        return x
