"""Where quantize calibrates and where it decides (export.int8.calib_data.quant_images):
a dataset root calibrates on train and decides on val with val's annotations, also
with sub-folders and odd file names; a split folder alone splits itself; a plain
folder has no annotations (pseudo ground truth)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from detr.data.synthetic import ShapesConfig, make_shapes_dataset
from export.int8.calib_data import quant_images


@pytest.fixture(scope="module")
def hard_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qi") / "data"
    make_shapes_dataset(root, ShapesConfig(num_train=10, num_val=12, max_objects=2,
                                           sizes=((64, 96), (96, 64)), subfolders=2,
                                           odd_names=True, gray_fraction=0.3))
    return root


def test_dataset_root_calibrates_on_train_and_decides_on_val(hard_root: Path) -> None:
    got = quant_images(hard_root, num_calib=6, num_eval=500)
    assert len(got.calib) == 6 and all("/train/" in p.as_posix() for p in got.calib)
    assert len(got.held_out) == 12  # all of val (fewer than asked)
    assert got.annotations == hard_root / "annotations" / "instances_val.json"
    # Image ids come from the annotation file (sub-folders, odd names): each held-out
    # image is the record with that id.
    doc = json.loads(got.annotations.read_text())
    by_id = {im["id"]: im["file_name"] for im in doc["images"]}
    assert [hard_root / "val" / by_id[i] for i in got.image_ids] == got.held_out
    assert got.eval_from.startswith("val of") and got.calib_from.startswith("train of")
    # The same images from the train split folder (its dataset's val still decides).
    again = quant_images(hard_root / "train", num_calib=6, num_eval=500)
    assert again.held_out == got.held_out and again.calib == got.calib


def test_val_split_folder_alone_splits_itself_and_keeps_annotations(hard_root: Path) -> None:
    got = quant_images(hard_root / "val", num_calib=4, num_eval=500)
    assert len(got.held_out) == 6 and len(got.calib) == 4  # at most half held out
    assert not set(got.calib) & set(got.held_out)
    assert got.annotations == hard_root / "annotations" / "instances_val.json"
    assert got.image_ids is not None and len(got.image_ids) == 6


def test_plain_folder_has_no_annotations(hard_root: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(hard_root / "val", plain)
    got = quant_images(plain, num_calib=4, num_eval=4)
    assert got.annotations is None and got.image_ids is None
    assert len(got.held_out) == 4 and len(got.calib) == 4
    # --eval-data: held-out images (and annotations) from a dataset instead.
    other = quant_images(plain, num_calib=4, num_eval=5, eval_data=hard_root)
    assert other.annotations == hard_root / "annotations" / "instances_val.json"
    assert len(other.held_out) == 5 and all("/val/" in p.as_posix() for p in other.held_out)
