"""Backbone pretraining on object crops: crops show the objects, the weights plug
into DETR through backbone_weights, the command reports accuracies and bad
options are user errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_checks import make_dataset

import detr
from detr.train.pretrain_backbone import ObjectCrops, pretrain_backbone
from detr.train.pretrain_config import PretrainConfig
from runtime.errors import InputError
from runtime.metadata import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shapes"))


def test_cli_defaults_are_the_config_defaults():
    import argparse

    from detr.commands.pretrain_backbone import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", "o.pth"])
    assert config_from_args(args) == PretrainConfig(data="d", out="o.pth")
    args = parser.parse_args(["--data", "d", "--out", "o.pth", "--val-split", "", "--epochs", "2"])
    assert config_from_args(args) == PretrainConfig(data="d", out="o.pth", val_split=None, epochs=2)


def test_one_crop_per_object_centred_on_it(shapes):
    crops = ObjectCrops(shapes, "val", image_size=48, crop_size=24, train=False)
    annotations = crops.dataset.coco.dataset["annotations"]
    assert len(crops) == len(annotations)
    for index in range(len(crops)):
        image, label = crops[index]
        assert image.shape == (3, 24, 24) and image.dtype == torch.float32
        ann = annotations[index]
        assert label == crops.dataset.cat_to_label[ann["category_id"]]
        # Un-normalised crops are real pixels in 0..1 (zero padding outside the image).
        pixels = image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + \
            torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        assert float(pixels.min()) > -1e-4 and float(pixels.max()) < 1 + 1e-4
    first, _ = crops[0]
    again, _ = crops[0]
    assert torch.equal(first, again)  # deterministic without augmentation


def test_train_crops_are_augmented_deterministically(shapes):
    a = ObjectCrops(shapes, "train", image_size=48, crop_size=24, train=True)
    b = ObjectCrops(shapes, "train", image_size=48, crop_size=24, train=True)
    a.reseed(7)
    b.reseed(7)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    plain = ObjectCrops(shapes, "train", image_size=48, crop_size=24, train=False)
    assert any(not torch.equal(a[i][0], plain[i][0]) for i in range(len(a)))


def test_pretrained_weights_load_into_detr(shapes, tmp_path):
    out = tmp_path / "r18.pth"
    result = pretrain_backbone(PretrainConfig(data=str(shapes), out=str(out), image_size=48,
                                              crop_size=24, epochs=1, batch_size=8,
                                              progress=False))
    assert result.out == out and out.is_file()
    assert 0.0 <= result.train_accuracy <= 1.0
    assert result.val_accuracy is not None and 0.0 <= result.val_accuracy <= 1.0
    state = torch.load(out, map_location="cpu", weights_only=True)
    model = detr.build_model("detr-tiny", num_classes=6, backbone_weights=str(out))
    body = model.backbone[0].body
    for key, value in body.state_dict().items():
        # Every backbone tensor comes from the file (fc.* is the classifier, not used).
        assert torch.equal(value, state[key]), key
    assert any(k.startswith("fc.") for k in state)
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_bad_options_are_user_errors(shapes, tmp_path):
    with pytest.raises(InputError, match="--crop-size"):
        pretrain_backbone(PretrainConfig(data=str(shapes), out=str(tmp_path / "x.pth"),
                                         image_size=32, crop_size=64, progress=False))
    with pytest.raises(InputError, match="--backbone"):
        pretrain_backbone(PretrainConfig(data=str(shapes), out=str(tmp_path / "x.pth"),
                                         backbone="vgg16", epochs=1, progress=False))


def test_command_prints_accuracy_and_maps_errors(shapes, tmp_path, capsys):
    from runtime.cli import main

    out = tmp_path / "cli.pth"
    argv = ["pretrain-backbone", "--data", str(shapes), "--out", str(out), "--image-size", "48",
            "--crop-size", "24", "--epochs", "1", "--batch-size", "8", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"backbone weights: {out}" in text and "val accuracy" in text
    assert main(["pretrain-backbone", "--data", str(tmp_path / "missing"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]
    assert np.isfinite(torch.load(out, weights_only=True)["conv1.weight"].sum().item())


def test_checkpoint_loads_after_the_backbone_file_is_gone(shapes, tmp_path):
    """A DETR built from pretrained backbone weights records their path in its config;
    the checkpoint holds every weight, so loading it must not need that file."""
    weights = tmp_path / "r18.pth"
    pretrain_backbone(PretrainConfig(data=str(shapes), out=str(weights), image_size=48,
                                     crop_size=24, epochs=1, batch_size=8, val_split=None,
                                     progress=False))
    config = detr.get_config("detr-tiny", backbone_weights=str(weights), num_queries=5)
    model = detr.build_model_from_config(config, 6)
    ckpt = tmp_path / "detr.pth"
    detr.save_checkpoint(ckpt, model, config, [f"c{i}" for i in range(6)], list(range(1, 7)))
    weights.unlink()
    loaded = detr.load_checkpoint(ckpt)
    assert loaded.config.backbone_weights is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
