"""Checkpoint save/load: own format round trip, official format, safety, clear errors."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch

import detr
from runtime.errors import InputError, ModelFormatError

torch.set_num_threads(1)


def _outputs(model: torch.nn.Module, seed: int = 1) -> dict:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, 64, 64))


def test_own_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = detr.build_model("detr-tiny", 3, num_queries=20)
    path = tmp_path / "ckpt" / "model.pth"
    detr.save_checkpoint(
        path, model, model.config, ["cat", "dog", "cow"], [1, 5, 9], extra={"epoch": 4}
    )
    loaded = detr.load_checkpoint(path)
    assert loaded.source_format == "detr-edge"
    assert loaded.config == model.config and loaded.config.num_queries == 20
    assert (loaded.class_names, loaded.label_map, loaded.num_classes) == (
        ["cat", "dog", "cow"],
        [1, 5, 9],
        3,
    )
    assert loaded.raw["epoch"] == 4 and loaded.raw["preset"] == "detr-tiny"
    assert not loaded.model.training
    a, b = _outputs(model), _outputs(loaded.model)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(
        a["pred_boxes"], b["pred_boxes"]
    )
    assert [p.name for p in tmp_path.joinpath("ckpt").iterdir()] == ["model.pth"]  # no temp left


def test_save_rejects_wrong_class_name_count(tmp_path: Path) -> None:
    model = detr.build_model("detr-tiny", 3)
    with pytest.raises(InputError, match="need 3 entries each"):
        detr.save_checkpoint(tmp_path / "m.pth", model, model.config, ["a"], [1])


def _official_r50_file(tmp_path: Path, dilation: bool) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = detr.build_model("detr-r50-dc5" if dilation else "detr-r50", 91)
    args = argparse.Namespace(
        backbone="resnet50",
        dilation=dilation,
        position_embedding="sine",
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=2048,
        hidden_dim=256,
        dropout=0.1,
        nheads=8,
        num_queries=100,
        pre_norm=False,
        aux_loss=True,
        lr=1e-4,
        output_dir="out",
    )
    path = tmp_path / "detr-r50-official.pth"
    # Official training checkpoints: model, optimizer, lr_scheduler, epoch, args.
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": {"state": {}, "param_groups": []},
            "lr_scheduler": {"step_size": 200, "last_epoch": 3},
            "epoch": 3,
            "args": args,
        },
        path,
    )
    return path, model


def test_official_checkpoint_with_namespace_args_loads_strict(tmp_path: Path) -> None:
    path, model = _official_r50_file(tmp_path, dilation=True)
    loaded = detr.load_checkpoint(path)
    assert loaded.source_format == "official"
    assert loaded.config.name == "detr-r50-dc5" and loaded.config.dilation  # from args
    assert loaded.num_classes == 91 and loaded.label_map == list(range(91))
    a, b = _outputs(model), _outputs(loaded.model)
    torch.testing.assert_close(b["pred_logits"], a["pred_logits"], atol=0, rtol=0)


def test_official_state_dict_without_args_infers_architecture(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = detr.build_model("detr-tiny", 5, frozen_batchnorm=True, freeze_stem=True)
    path = tmp_path / "plain.pth"
    state = model.state_dict()
    # Official files exported from torchvision BN carry num_batches_tracked: ignored.
    state["backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(0)
    torch.save({"model": state}, path)
    loaded = detr.load_checkpoint(path)
    cfg = loaded.config
    assert (
        cfg.backbone,
        cfg.hidden_dim,
        cfg.num_queries,
        cfg.enc_layers,
        cfg.dec_layers,
        cfg.dim_feedforward,
    ) == ("resnet18", 128, 50, 3, 3, 512)
    assert loaded.num_classes == 5 and loaded.config.frozen_batchnorm and loaded.config.freeze_stem
    torch.testing.assert_close(
        _outputs(loaded.model)["pred_boxes"], _outputs(model)["pred_boxes"], atol=0, rtol=0
    )


def test_wrong_class_count_gives_clear_message(tmp_path: Path) -> None:
    model = detr.build_model("detr-tiny", 3)
    path = tmp_path / "m.pth"
    detr.save_checkpoint(path, model, model.config, ["a", "b", "c"], [1, 2, 3])
    with pytest.raises(
        ModelFormatError,
        match=r"checkpoint has 3 classes \(class_embed has 4 "
        r"outputs incl. no-object\) but num_classes=80 was requested",
    ):
        detr.load_model(path, num_classes=80)


def test_architecture_mismatch_lists_keys_and_counts(tmp_path: Path) -> None:
    model = detr.build_model("detr-tiny", 3)
    path = tmp_path / "m.pth"
    detr.save_checkpoint(path, model, model.config, ["a", "b", "c"], [1, 2, 3])
    with pytest.raises(
        ModelFormatError,
        match=r"does not match detr-r50 with 3 classes: \d+ missing "
        r"key\(s\): .* and \d+ more; \d+ shape mismatch key\(s\): .*\(checkpoint "
        r"\[384, 128\] vs model \[768, 256\]\)",
    ):
        detr.load_model(path, preset="detr-r50")


def test_unexpected_keys_are_reported(tmp_path: Path) -> None:
    model = detr.build_model("detr-tiny", 3, frozen_batchnorm=True)
    state = model.state_dict()
    state["transformer.extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "x.pth")
    with pytest.raises(ModelFormatError, match=r"1 unexpected key\(s\): transformer.extra.weight"):
        detr.load_model(tmp_path / "x.pth")


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


# torch warns that a plain-pickle protocol 4 file is unusual; that is the point here.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path, writer: str) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": {"query_embed.weight": torch.zeros(2, 2)}, "x": _Evil(target)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    with pytest.raises(ModelFormatError, match=r"evil\.pth: refused to unpickle"):
        detr.load_checkpoint(path)
    assert not target.exists()


def test_missing_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="nope.pth: checkpoint file does not exist"):
        detr.load_checkpoint(tmp_path / "nope.pth")
    model = detr.build_model("detr-tiny", 3)
    good = tmp_path / "good.pth"
    detr.save_checkpoint(good, model, model.config, ["a", "b", "c"], [1, 2, 3])
    data = good.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 100):
        bad = tmp_path / f"cut{cut}.pth"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match=rf"cut{cut}\.pth: .*(truncated or corrupt)"):
            detr.load_checkpoint(bad)
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ModelFormatError, match=r"t\.safetensors: unreadable safetensors"):
        detr.load_checkpoint(trunc)
    assert os.path.getsize(good) == len(data)


def test_not_a_detr_checkpoint(tmp_path: Path) -> None:
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "r.pth")
    with pytest.raises(ModelFormatError, match="not a DETR checkpoint"):
        detr.load_checkpoint(tmp_path / "r.pth")
    torch.save([1, 2], tmp_path / "l.pth")
    with pytest.raises(ModelFormatError, match="expected a dict checkpoint, got list"):
        detr.load_checkpoint(tmp_path / "l.pth")


def test_plain_state_dict_of_a_batchnorm_model_rebuilds_batchnorm(tmp_path: Path) -> None:
    model = detr.build_model("detr-tiny", 2)  # nn.BatchNorm2d, trained from scratch
    torch.save({"model": model.state_dict()}, tmp_path / "bn.pth")
    cfg = detr.load_checkpoint(tmp_path / "bn.pth").config
    assert cfg == detr.PRESETS["detr-tiny"]
