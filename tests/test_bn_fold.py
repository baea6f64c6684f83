"""The eval-mode inference fast path (BatchNorm folded into the ResNet convolutions,
detr.bn_fold) gives the plain modules' outputs, never goes stale, and stays out of
training, autograd, tracing and the state dict."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tiny_checkpoint import SMALL as TINY_SMALL

import detr
from detr.frozen_batchnorm import FrozenBatchNorm2d

torch.set_num_threads(1)

SMALL = dict(TINY_SMALL, num_queries=7)


def _model(preset: str, seed: int = 0) -> detr.DETR:
    """A small model whose every norm has random affine parameters and statistics,
    so a wrong fold (scale, shift or eps) shows."""
    torch.manual_seed(seed)
    model = detr.build_model(preset, 4, **SMALL)
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["pred_logits"]


def _plain(model: torch.nn.Module, images: torch.Tensor) -> dict:
    """Eval outputs through the unfolded modules (autograd on disables the fast path)."""
    with torch.enable_grad():
        out = model(images)
    return {k: out[k].detach() for k in ("pred_logits", "pred_boxes")}


def _fast(model: torch.nn.Module, images: torch.Tensor) -> dict:
    with torch.no_grad():
        out = model(images)
    assert model.backbone[0].folded._cache, "the fast path did not run"
    return out


@pytest.mark.parametrize("preset", ["detr-r50", "detr-tiny"])  # FrozenBN / BatchNorm2d
def test_fast_path_equals_plain_modules(preset: str) -> None:
    model = _model(preset)
    images = torch.randn(2, 3, 96, 64)
    plain, fast = _plain(model, images), _fast(model, images)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-4, atol=1e-5)
    assert len(fast["aux_outputs"]) == SMALL["dec_layers"] - 1


def test_fast_path_follows_new_weights_and_devices() -> None:
    model = _model("detr-r50", seed=0)
    images = torch.randn(1, 3, 64, 64)
    _fast(model, images)  # fills the cache
    other = _model("detr-r50", seed=1)
    model.load_state_dict(other.state_dict())  # in-place copies: version counters move
    torch.testing.assert_close(_fast(model, images)["pred_logits"],
                               _plain(other, images)["pred_logits"], rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # an in-place edit of one statistic alone
        model.backbone[0].body.layer4[0].bn1.running_var.mul_(3.0)
    torch.testing.assert_close(_fast(model, images)["pred_logits"],
                               _plain(model, images)["pred_logits"], rtol=1e-4, atol=1e-5)
    double = copy.deepcopy(model).double()  # dtype change: new tensors, new cache entries
    out = _fast(double, images.double())["pred_logits"]
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _plain(double, images.double())["pred_logits"])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_fast_path_stays_out_of_training_grad_tracing_and_state() -> None:
    model = _model("detr-r50")
    keys = set(model.state_dict())
    images = torch.randn(1, 3, 64, 64)
    folded = model.backbone[0].folded
    model.train()
    with torch.no_grad():
        model(images)  # training mode: plain modules
    model.eval()
    _plain(model, images)  # autograd on: plain modules, gradients reach the convs
    with torch.no_grad():
        torch.jit.trace(_Logits(model), images, check_trace=False)
    assert not folded._cache
    _fast(model, images)
    assert set(model.state_dict()) == keys  # no new keys: checkpoints load as before
    assert not copy.deepcopy(model).backbone[0].folded._cache
    assert not pickle.loads(pickle.dumps(model)).backbone[0].folded._cache


def test_train_mode_batchnorm_is_not_folded() -> None:
    """A BatchNorm2d left in training mode inside an eval backbone uses batch
    statistics: it cannot be folded, so the plain modules run."""
    model = _model("detr-tiny")
    model.backbone[0].body.layer2[0].bn1.train()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert not model.backbone[0].folded._cache
