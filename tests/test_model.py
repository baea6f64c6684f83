"""DETR model: presets, shapes, padding, gradients, frozen BN, parameter counts, official keys."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import detr
from detr.frozen_batchnorm import FrozenBatchNorm2d
from detr.position_encoding import PositionEmbeddingSine
from runtime.errors import ModelFormatError

torch.set_num_threads(1)


@pytest.mark.parametrize("preset", sorted(detr.PRESETS))
def test_every_preset_output_shapes(preset: str) -> None:
    torch.manual_seed(0)
    model = detr.build_model(preset, num_classes=7).eval()
    cfg = detr.PRESETS[preset]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    q = cfg.num_queries
    assert out["pred_logits"].shape == (2, q, 8) and out["pred_logits"].dtype == torch.float32
    assert out["pred_boxes"].shape == (2, q, 4) and out["pred_boxes"].dtype == torch.float32
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()  # sigmoid cxcywh
    assert len(out["aux_outputs"]) == cfg.dec_layers - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, q, 8) and aux["pred_boxes"].shape == (2, q, 4)


def test_dc5_doubles_feature_resolution() -> None:
    plain = detr.build_model("detr-r50", 2, enc_layers=1, dec_layers=1).eval()
    dc5 = detr.build_model("detr-r50-dc5", 2, enc_layers=1, dec_layers=1).eval()
    x = detr.NestedTensor(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    with torch.no_grad():
        assert plain.backbone(x)[0][0].tensors.shape[-2:] == (2, 2)  # stride 32
        assert dc5.backbone(x)[0][0].tensors.shape[-2:] == (4, 4)  # stride 16


def test_presets_follow_paper_and_tiny_spec() -> None:
    for name in ("detr-r50", "detr-r50-dc5", "detr-r101", "detr-r101-dc5"):
        c = detr.PRESETS[name]
        assert (c.hidden_dim, c.nheads, c.enc_layers, c.dec_layers, c.dim_feedforward) == (
            256,
            8,
            6,
            6,
            2048,
        )
        assert (c.dropout, c.num_queries, c.pre_norm, c.aux_loss, c.frozen_batchnorm) == (
            0.1,
            100,
            False,
            True,
            True,
        )
        assert c.dilation == name.endswith("dc5") and c.backbone == (
            "resnet101" if "101" in name else "resnet50"
        )
    t = detr.PRESETS["detr-tiny"]
    assert (
        t.backbone,
        t.hidden_dim,
        t.nheads,
        t.enc_layers,
        t.dec_layers,
        t.dim_feedforward,
        t.num_queries,
    ) == ("resnet18", 128, 8, 3, 3, 512, 50)
    assert not t.frozen_batchnorm and not t.freeze_stem


def test_bad_preset_and_override_raise_value_error() -> None:
    with pytest.raises(ValueError, match="unknown preset 'detr-r18'"):
        detr.build_model("detr-r18", 3)
    with pytest.raises(ValueError, match=r"unknown DETRConfig override\(s\) \['num_querys'\]"):
        detr.build_model("detr-tiny", 3, num_querys=10)
    with pytest.raises(ValueError, match="not divisible by nheads"):
        detr.build_model("detr-tiny", 3, nheads=7)
    with pytest.raises(ValueError, match="dilation"):
        detr.build_model("detr-tiny", 3, dilation=True)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        detr.build_model("detr-tiny", 0)


def test_pre_norm_option_adds_encoder_norm_and_runs() -> None:
    model = detr.build_model("detr-tiny", 3, pre_norm=True).eval()
    assert "transformer.encoder.norm.weight" in model.state_dict()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["pred_logits"].shape == (1, 50, 4)


def test_list_input_equals_manually_padded_batch_with_mask() -> None:
    torch.manual_seed(0)
    model = detr.build_model("detr-tiny", 3).eval()
    a, b = torch.randn(3, 64, 96), torch.randn(3, 96, 64)
    images = torch.zeros(2, 3, 96, 96)
    mask = torch.ones(2, 96, 96, dtype=torch.bool)
    images[0, :, :64, :96], mask[0, :64, :96] = a, False
    images[1, :, :96, :64], mask[1, :96, :64] = b, False
    with torch.no_grad():
        from_list = model([a, b])
        from_tensor = model(images, mask)
        from_nested = model(detr.NestedTensor(images, mask))
    for out in (from_tensor, from_nested):
        torch.testing.assert_close(out["pred_logits"], from_list["pred_logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["pred_boxes"], from_list["pred_boxes"], atol=1e-5, rtol=0)


def test_transformer_ignores_padded_positions() -> None:
    """The encoder/decoder see padding only through the key-padding mask, and the sine
    encoding is normalised by the valid extent, so features padded with garbage give
    the same decoder output as the unpadded features (within 1e-5).

    The whole model is NOT padding-invariant: ResNet receptive fields cross into the
    padded pixels (as in official DETR), so the test isolates the transformer."""
    torch.manual_seed(0)
    model = detr.build_model("detr-tiny", 3).eval()
    d = model.transformer.d_model
    pos_enc = PositionEmbeddingSine(d // 2, normalize=True)
    src = torch.randn(1, d, 3, 4)
    padded = torch.randn(1, d, 5, 7) * 10  # garbage in padding
    padded[:, :, :3, :4] = src
    mask = torch.ones(1, 5, 7, dtype=torch.bool)
    mask[:, :3, :4] = False
    no_mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    q = model.query_embed.weight
    with torch.no_grad():
        hs_alone, mem_alone = model.transformer(src, no_mask, q, pos_enc(no_mask))
        hs_pad, mem_pad = model.transformer(padded, mask, q, pos_enc(mask))
    torch.testing.assert_close(hs_pad, hs_alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(mem_pad[:, :, :3, :4], mem_alone, atol=1e-5, rtol=0)


def _position_reference(mask: torch.Tensor, f: int) -> torch.Tensor:
    """The paper's formula with torch.cumsum, for comparison."""
    not_mask = ~mask
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(f, dtype=torch.float32) // 2) / f)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


def test_position_encoding_matmul_cumsum_matches_cumsum_formula() -> None:
    torch.manual_seed(0)
    mask = torch.ones(3, 9, 13, dtype=torch.bool)
    for i, (h, w) in enumerate([(9, 13), (4, 7), (9, 2)]):
        mask[i, :h, :w] = False
    pos = PositionEmbeddingSine(32, normalize=True)(mask)
    assert pos.shape == (3, 64, 9, 13) and pos.dtype == torch.float32
    torch.testing.assert_close(pos, _position_reference(mask, 32), atol=1e-6, rtol=0)


def test_gradients_reach_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    model = detr.build_model("detr-tiny", 3).train()
    out = model(torch.randn(2, 3, 64, 64))
    loss = out["pred_logits"].square().mean() + out["pred_boxes"].mean()
    for aux in out["aux_outputs"]:
        loss = loss + aux["pred_logits"].square().mean() + aux["pred_boxes"].mean()
    loss.backward()
    no_grad = {
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    }
    # Structural in DETR (official too): the decoder input tgt is zero, so the first
    # decoder self-attention has values = in_proj_bias (zero at init) -> in_proj_weight
    # never gets a gradient, out_proj.weight and norm1.weight none at init.
    assert no_grad == {
        "transformer.decoder.layers.0.self_attn.in_proj_weight",
        "transformer.decoder.layers.0.self_attn.out_proj.weight",
        "transformer.decoder.layers.0.norm1.weight",
    }


def test_frozen_batchnorm_and_stem_stay_frozen_after_a_train_step() -> None:
    torch.manual_seed(0)
    model = detr.build_model("detr-tiny", 3, frozen_batchnorm=True, freeze_stem=True).train()
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(len(list(m.parameters())) == 0 for m in frozen)
    before = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(("backbone.0.body.conv1", "backbone.0.body.layer1", "backbone.0.body.bn1"))
        or "bn" in k
        or "downsample.1" in k
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1)
    out = model(torch.randn(2, 3, 64, 64))
    (out["pred_logits"].square().mean() + out["pred_boxes"].mean()).backward()
    opt.step()
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert changed == []
    assert not model.backbone[0].body.conv1.weight.requires_grad
    assert model.backbone[0].body.layer2[0].conv1.weight.requires_grad


def test_frozen_batchnorm_ignores_num_batches_tracked_and_uses_eps() -> None:
    bn = FrozenBatchNorm2d(4)
    state = {
        "weight": torch.rand(4) + 0.5,
        "bias": torch.randn(4),
        "running_mean": torch.randn(4),
        "running_var": torch.rand(4) + 0.1,
        "num_batches_tracked": torch.tensor(7),
    }
    bn.load_state_dict(state, strict=True)
    ref = torch.nn.BatchNorm2d(4, eps=1e-5).eval()
    ref.load_state_dict(state)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(bn(x), ref(x), atol=1e-6, rtol=1e-6)


def test_r50_parameter_counts() -> None:
    model = detr.build_model("detr-r50", 91)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    in_all = sum(v.numel() for v in model.state_dict().values())  # params + frozen BN buffers
    assert trainable == 41_302_368
    assert in_all == 41_631_008


def _official_r50_keys() -> set[str]:
    """Key names of the official DETR-R50 (models/detr.py, transformer.py, backbone.py)."""
    keys: set[str] = set()
    bn = ("weight", "bias", "running_mean", "running_var")
    body = "backbone.0.body."
    keys.add(body + "conv1.weight")
    keys.update(f"{body}bn1.{b}" for b in bn)
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for i in range(blocks):
            p = f"{body}layer{layer}.{i}."
            for j in (1, 2, 3):
                keys.add(f"{p}conv{j}.weight")
                keys.update(f"{p}bn{j}.{b}" for b in bn)
            if i == 0:
                keys.add(f"{p}downsample.0.weight")
                keys.update(f"{p}downsample.1.{b}" for b in bn)
    attn = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    wb = ("weight", "bias")
    for i in range(6):
        p = f"transformer.encoder.layers.{i}."
        keys.update(f"{p}self_attn.{a}" for a in attn)
        keys.update(f"{p}{m}.{x}" for m in ("linear1", "linear2", "norm1", "norm2") for x in wb)
        p = f"transformer.decoder.layers.{i}."
        keys.update(f"{p}{s}.{a}" for s in ("self_attn", "multihead_attn") for a in attn)
        keys.update(
            f"{p}{m}.{x}" for m in ("linear1", "linear2", "norm1", "norm2", "norm3") for x in wb
        )
    keys.update(f"transformer.decoder.norm.{x}" for x in wb)
    keys.update(
        f"{m}.{x}"
        for m in (
            "class_embed",
            "input_proj",
            "bbox_embed.layers.0",
            "bbox_embed.layers.1",
            "bbox_embed.layers.2",
        )
        for x in wb
    )
    keys.add("query_embed.weight")
    return keys


def test_r50_state_dict_keys_are_the_official_ones() -> None:
    state = detr.build_model("detr-r50", 91).state_dict()
    expected = _official_r50_keys()
    assert set(state) - expected == set()
    assert expected - set(state) == set()
    assert state["class_embed.weight"].shape == (92, 256)
    assert state["input_proj.weight"].shape == (256, 2048, 1, 1)
    assert state["transformer.encoder.layers.0.self_attn.in_proj_weight"].shape == (768, 256)
    assert state["bbox_embed.layers.2.weight"].shape == (4, 256)


def test_bad_inputs_raise_value_error() -> None:
    model = detr.build_model("detr-tiny", 3).eval()
    with pytest.raises(ValueError, match=r"images must be float \[B, 3, H, W\]"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="mask must be bool"):
        model(torch.randn(1, 3, 64, 64), torch.zeros(1, 32, 64, dtype=torch.bool))


def test_backbone_weights_load_from_a_local_torchvision_state_dict(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(3)
    resnet = torchvision.models.resnet18(weights=None)  # fc.* is present and ignored
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    model = detr.build_model("detr-tiny", 3, backbone_weights=str(tmp_path / "r18.pth"))
    body = model.backbone[0].body
    assert torch.equal(body.conv1.weight, resnet.conv1.weight)
    assert torch.equal(body.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ModelFormatError, match=r"r34\.pth: not a matching ResNet"):
        detr.build_model("detr-tiny", 3, backbone_weights=str(tmp_path / "r34.pth"))
    with pytest.raises(ModelFormatError, match="does not exist"):
        detr.build_model("detr-tiny", 3, backbone_weights=str(tmp_path / "missing.pth"))


def test_import_detr_is_lazy_and_exports_resolve() -> None:
    import subprocess
    import sys

    code = (
        "import sys, detr; assert 'torch' not in sys.modules, 'import detr pulled in torch'; "
        "detr.build_model; detr.load_checkpoint; detr.PRESETS; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_position_encoding_exports_without_cumsum(tmp_path: Path) -> None:
    """TensorRT 10.8-10.11 computes ONNX CumSum wrongly (onnx-tensorrt#1034): the
    exported encoding must use MatMul instead and still match PyTorch."""
    onnx = pytest.importorskip("onnx", reason="onnx not installed (export extra)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    import warnings

    encoder = PositionEmbeddingSine(16, normalize=True).eval()
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    mask[1, 2:, :] = True
    mask[1, :, 3:] = True
    path = tmp_path / "pos.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation notice
        torch.onnx.export(encoder, (mask,), str(path), opset_version=17, dynamo=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "CumSum" not in ops and "Trilu" not in ops and "MatMul" in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = torch.zeros(2, 3, 5, dtype=torch.bool)
    other[0, :, 4:] = True  # a different mask from the one traced
    got = session.run(None, {session.get_inputs()[0].name: other.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), encoder(other), atol=1e-5, rtol=0)
