"""Parity with an independent implementation: transformers' DetrForObjectDetection
(random init, no download) converted with detr.hf_convert and loaded into our model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import detr
from detr.hf_convert import hf_to_official
from runtime.errors import ModelFormatError

transformers = pytest.importorskip("transformers", reason="transformers not installed (dev extra)")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors not installed")

torch.set_num_threads(1)

SMALL = {
    "num_queries": 10,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "d_model": 64,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
}
OURS = {
    "num_queries": 10,
    "enc_layers": 2,
    "dec_layers": 2,
    "hidden_dim": 64,
    "dim_feedforward": 128,
    "nheads": 4,
}


def _hf_model(backbone_config: object | None = None, num_labels: int = 5) -> Any:
    """Small HF DETR with a transformers-native ResNet (no timm, no pretrained weights),
    every parameter and BN statistic randomised so a wrong key mapping shows."""
    torch.manual_seed(0)
    extra = {"backbone_config": backbone_config} if backbone_config is not None else {}
    config = transformers.DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_labels=num_labels,
        **SMALL,
        **extra,
    )
    model = transformers.DetrForObjectDetection(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                torch.nn.init.xavier_uniform_(p)
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.1)
        model.model.query_position_embeddings.weight.normal_(0, 1)
        for name, b in model.named_buffers():  # frozen BN statistics and affine
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith(("running_mean", ".bias")):
                b.normal_(0, 0.1)
            elif name.endswith(".weight"):
                b.uniform_(0.5, 1.5)
    return model


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images of different sizes (64x96 and 32x64) zero-padded to 64x96; mask True = padding."""
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, 32:, :] = True
    mask[1, :, 64:] = True
    images[1][:, mask[1]] = 0.0
    return images, mask


def _assert_parity(ours: torch.nn.Module, hf: torch.nn.Module) -> None:
    images, mask = _padded_batch()
    with torch.no_grad():
        out = ours.eval()(images, mask)
        ref = hf(pixel_values=images, pixel_mask=(~mask).long())  # HF: 1 = valid pixel
        unmasked = ours(images)
    assert (out["pred_logits"] - ref.logits).abs().max() <= 1e-5
    assert (out["pred_boxes"] - ref.pred_boxes).abs().max() <= 1e-5
    # The mask must matter at this size, else the padded case would test nothing.
    assert (unmasked["pred_logits"][1] - ref.logits[1]).abs().max() > 1e-3


def test_parity_with_transformers_r50_padded_batch() -> None:
    hf = _hf_model()
    ours = detr.build_model("detr-r50", 5, **OURS)
    ours.load_state_dict(hf_to_official(hf.state_dict()), strict=True)
    _assert_parity(ours, hf)


def test_parity_with_transformers_resnet18_basic_blocks() -> None:
    backbone = transformers.ResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[64, 128, 256, 512],
        out_features=["stage4"],
    )
    hf = _hf_model(backbone_config=backbone)
    ours = detr.build_model("detr-tiny", 5, frozen_batchnorm=True, **OURS)
    ours.load_state_dict(hf_to_official(hf.state_dict()), strict=True)
    _assert_parity(ours, hf)


def test_hf_snapshot_folder_safetensors_and_config(tmp_path: Path) -> None:
    """save_pretrained writes the hub (transformers 4.x) names: conv_encoder, out_proj, fc1."""
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "snap")
    loaded = detr.load_checkpoint(tmp_path / "snap")
    assert loaded.source_format == "hf" and loaded.num_classes == 5
    assert loaded.config.nheads == 4  # from config.json; shapes cannot tell
    assert loaded.class_names == [f"LABEL_{i}" for i in range(5)]
    _assert_parity(loaded.model, hf)


def test_hf_pytorch_model_bin_and_timm_backbone_keys(tmp_path: Path) -> None:
    """facebook/detr-resnet-50 style: timm ResNet keys under model.backbone.conv_encoder.model."""
    hf = _hf_model()
    state = {}
    for key, value in hf_to_official(hf.state_dict()).items():
        if key.startswith("backbone.0.body."):
            state["model.backbone.conv_encoder.model." + key[len("backbone.0.body.") :]] = value
    state.update({k: v for k, v in hf.state_dict().items() if not k.startswith("model.backbone.")})
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    hf.config.to_json_file(str(folder / "config.json"))
    _assert_parity(detr.load_model(folder / "pytorch_model.bin"), hf)
    # A bare .safetensors without config.json: the architecture comes from the shapes;
    # the head count is invisible in shapes and falls back to the paper's 8.
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors")
    )
    loaded = detr.load_checkpoint(tmp_path / "w.safetensors")
    assert loaded.config.backbone == "resnet50" and loaded.config.nheads == 8
    assert loaded.config.hidden_dim == 64 and loaded.config.enc_layers == 2


def test_incomplete_hf_state_dict_is_reported(tmp_path: Path) -> None:
    hf = _hf_model()
    state = {
        k: v.contiguous()
        for k, v in hf.state_dict().items()
        if "decoder.layers.1.encoder_attn.q_proj" not in k
    }
    safetensors_torch.save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(
        ModelFormatError,
        match=r"broken\.safetensors: .*missing key\(s\): transformer\.decoder\.layers"
        r"\.1\.multihead_attn\.in_proj_weight",
    ):
        detr.load_checkpoint(tmp_path / "broken.safetensors")
