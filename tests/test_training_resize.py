"""The training resize rule: derived and recorded, applied identically by training's
transforms, evaluation and the runtime; old metadata keeps its behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from detr.training_resize import PAPER, TrainingResize, from_checkpoint, from_train_config
from runtime.errors import ModelFormatError
from runtime.metadata import ModelMeta
from runtime.preprocess import preprocess, shorter_side_size, target_size

DEMO_TRAIN_CONFIG = {"scales": [128], "max_size": 128, "crop": False, "eval_size": None,
                     "batch_size": 8}  # the fields of detr/assets/detr-tiny-shapes.pth that matter


@pytest.mark.parametrize(("cfg", "sizes", "expected"), [
    (DEMO_TRAIN_CONFIG, None, TrainingResize(128, 128, False, "train_config")),
    # The run: --scales 128 --max-size 160 with the default crop augmentation.
    ({"scales": [128], "max_size": 160, "batch_size": 4}, None,
     TrainingResize(128, 160, True, "train_config")),
    ({"scales": [96, 128], "max_size": 200, "crop": False, "batch_size": 2}, None,
     TrainingResize(128, 200, True, "train_config")),
    ({"scales": [128], "max_size": 160, "crop": False, "eval_size": 112, "batch_size": 2}, None,
     TrainingResize(112, 160, True, "train_config")),
    # Recorded from the data: same-shape images are never padded, mixed shapes are.
    ({"scales": [128], "max_size": 160, "crop": False, "batch_size": 2}, [(192, 192)] * 3,
     TrainingResize(128, 160, False, "recorded")),
    ({"scales": [128], "max_size": 160, "crop": False, "batch_size": 2},
     [(192, 192), (100, 150)], TrainingResize(128, 160, True, "recorded")),
    ({"scales": [128], "max_size": 160, "crop": True, "batch_size": 1}, None,
     TrainingResize(128, 160, False, "train_config")),
    ({}, None, TrainingResize(800, 1333, True, "train_config")),  # paper defaults
])
def test_rule_from_train_config(cfg, sizes, expected):
    assert from_train_config(cfg, sizes) == expected


def test_rule_from_checkpoints():
    import detr

    demo = detr.load_checkpoint("detr/assets/detr-tiny-shapes.pth").raw
    assert from_checkpoint(demo) == TrainingResize(128, 128, False, "train_config")
    official = {"model": {}, "args": object()}  # no train_config, no record
    assert from_checkpoint(official) is PAPER and PAPER.padded
    assert (PAPER.shorter, PAPER.max_size) == (800, 1333)
    recorded = {"train_config": DEMO_TRAIN_CONFIG,
                "training_resize": {"shorter": 96, "max_size": 144, "padded": True}}
    assert from_checkpoint(recorded) == TrainingResize(96, 144, True, "recorded")
    broken = {"train_config": DEMO_TRAIN_CONFIG, "training_resize": {"shorter": "x"}}
    assert from_checkpoint(broken).source == "train_config"


@pytest.mark.parametrize(("h", "w"), [(192, 192), (100, 150), (150, 100), (90, 400), (37, 41)])
@pytest.mark.parametrize(("shorter", "max_size"), [(128, 160), (128, 128), (64, None)])
def test_one_rule_for_training_and_runtime(h, w, shorter, max_size):
    """Training's resize (detr.data.transforms) and the runtime give the same size."""
    from detr.data import transforms as T

    out, _ = T.resize(Image.new("RGB", (w, h)), None, shorter, max_size)
    assert (out.height, out.width) == shorter_side_size(h, w, shorter, max_size)
    new_h, new_w = out.height, out.width
    assert min(new_h, new_w) <= shorter and (max_size is None or max(new_h, new_w) <= max_size)


def _meta(**kw) -> ModelMeta:
    return ModelMeta(preset="t", input_height=160, input_width=160, class_names=["a"],
                     label_map=[1], with_mask=True, **kw)


def test_runtime_applies_rule_inside_canvas():
    rule = _meta(resize_shorter=128, resize_max=160)
    # Landscape 3:2 -> shorter 128 would make the longer 192 > 160: capped at 160.
    assert target_size(100, 150, rule)[:2] == (107, 160)
    # Rule size fits: used as is, NOT enlarged to fill the canvas.
    assert target_size(192, 192, rule)[:2] == (128, 128)
    assert target_size(192, 192, _meta())[:2] == (160, 160)  # old metadata: fit the canvas
    # Rule larger than a small canvas: fit into the canvas.
    small = rule.replace(input_height=96, input_width=96)
    assert target_size(192, 192, small)[:2] == (96, 96)

    imgs = [np.full((100, 150, 3), 50, np.uint8), np.full((192, 192, 3), 200, np.uint8)]
    batch = preprocess(imgs, rule)
    assert batch.images.shape == (2, 3, 160, 160)
    assert batch.valid_sizes.tolist() == [[107, 160], [128, 128]]
    assert not batch.mask[1, :128, :128].any() and batch.mask[1, 128:, :].all()
    assert not batch.mask[0, :107, :].any() and batch.mask[0, 107:, :].all()


def test_rule_canvas():
    from detr.training_resize import rule_canvas

    assert rule_canvas(128, 128) == 128 and rule_canvas(128, 160) == 160
    assert rule_canvas(800, 1333) == 1344 and rule_canvas(128, 100) == 128


def test_metadata_resize_fields_backward_compatible():
    doc = json.loads(_meta().to_json())
    for key in ("resize_shorter", "resize_max"):
        doc.pop(key)
    old = ModelMeta.from_json(json.dumps(doc))  # a file written before the fields existed
    assert old.resize_shorter is None and old.resize_max is None
    new = _meta(resize_shorter=128, resize_max=160)
    assert ModelMeta.from_json(new.to_json()) == new
    with pytest.raises(ModelFormatError, match="resize_shorter must be an integer or null"):
        ModelMeta.from_json(json.dumps({**doc, "resize_shorter": "128"}))
    with pytest.raises(ModelFormatError, match="resize_max 0 is not positive"):
        ModelMeta.from_json(json.dumps({**doc, "resize_max": 0}))
