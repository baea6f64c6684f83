"""runtime.dataset.resolve_dataset: a dataset root, a split folder or a plain image
folder resolves to the same (images, annotations) everywhere images are taken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from detr.data.synthetic import HARD_DEFAULTS, ShapesConfig, make_shapes_dataset
from runtime.dataset import dataset_splits, resolve_dataset
from runtime.errors import DataError, InputError


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resolve") / "my data"
    config = ShapesConfig(**{**HARD_DEFAULTS, "sizes": ((40, 64), (64, 40))}, seed=3,
                          num_train=7, num_val=5)
    make_shapes_dataset(root, config, progress=False)
    return root


def _records(root: Path, split: str) -> list[dict]:
    doc = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    return sorted(doc["images"], key=lambda im: im["id"])


def test_root_gives_the_split_in_annotation_order(hard: Path) -> None:
    val = resolve_dataset(hard)  # default split: val
    records = _records(hard, "val")
    assert val.split == "val" and val.root == hard and val.image_dir == hard / "val"
    assert val.annotations == hard / "annotations" / "instances_val.json"
    assert val.image_ids == [im["id"] for im in records]
    assert val.file_names == [im["file_name"] for im in records]  # sub-folders kept
    assert all(p.is_file() for p in val.images)
    train = resolve_dataset(hard, "train")
    assert len(train.images) == 7 and resolve_dataset(hard, default_split="train") == train
    assert dataset_splits(hard) == ["train", "val"]
    assert "val of" in val.describe() and "5 images, annotated" in val.describe()


def test_split_folder_is_the_same_split(hard: Path) -> None:
    assert resolve_dataset(hard / "val") == resolve_dataset(hard, "val")
    assert resolve_dataset(hard / "val", "val") == resolve_dataset(hard, "val")
    with pytest.raises(InputError, match="is the 'val' split folder, not split 'train'"):
        resolve_dataset(hard / "val", "train")


def test_plain_folder(hard: Path) -> None:
    folder = resolve_dataset(hard).images[0].parent  # a sub-folder: no annotations of its own
    assert folder != hard / "val"
    plain = resolve_dataset(folder)
    assert plain.annotations is None and plain.image_ids is None and plain.split is None
    assert plain.images == sorted(p for p in folder.rglob("*") if p.is_file())
    with pytest.raises(InputError, match="split 'val' needs a dataset root"):
        resolve_dataset(folder, "val")


def test_errors(hard: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset has no split 'test'.*its splits: train, val"):
        resolve_dataset(hard, "test")
    with pytest.raises(InputError, match="no such folder"):
        resolve_dataset(tmp_path / "missing")
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(InputError, match="expected a folder"):
        resolve_dataset(tmp_path / "f.png")


def _copy_with(hard: Path, tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "copy"
    shutil.copytree(hard, root)
    ann = root / "annotations" / "instances_val.json"
    doc = json.loads(ann.read_text())
    edit(doc, root)
    ann.write_text(json.dumps(doc))
    return root


def test_missing_listed_image_and_escaping_name(hard: Path, tmp_path: Path) -> None:
    def drop_file(doc: dict, root: Path) -> None:
        (root / "val" / doc["images"][0]["file_name"]).unlink()

    root = _copy_with(hard, tmp_path / "a", drop_file)
    with pytest.raises(DataError, match=r"1 of 5 listed images are not in .*val"):
        resolve_dataset(root)

    def escape(doc: dict, root: Path) -> None:
        doc["images"][0]["file_name"] = "../train/x.png"

    root = _copy_with(hard, tmp_path / "b", escape)
    with pytest.raises(DataError, match="must be a relative path inside the image folder"):
        resolve_dataset(root)


def test_coco_2017_split_names(tmp_path: Path) -> None:
    """COCO's val2017: the default 'val' finds the one split named val<suffix>."""
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (40, 30)).save(root / "val2017" / "000000000139.jpg")
    doc = {"images": [{"id": 139, "file_name": "000000000139.jpg", "height": 30, "width": 40}],
           "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    split = resolve_dataset(root)
    assert split.split == "val2017" and split.image_ids == [139]


def test_calibration_and_predict_take_a_dataset_root(hard: Path) -> None:
    """--calib-data ROOT calibrates on the train split only; predict --images ROOT
    runs the val split and numbers results with the annotation ids."""
    from export.int8.calib_data import list_images
    from runtime.predict import collect_inputs

    assert list_images(hard) == resolve_dataset(hard, "train").images
    assert list_images(hard / "val", 2) == resolve_dataset(hard, "val").images[:2]
    files, ids = collect_inputs([hard])
    val = resolve_dataset(hard)
    assert files == val.images and ids == val.image_ids
    files, ids = collect_inputs([hard], split="train")
    assert len(files) == 7
    files, ids = collect_inputs([hard / "val", val.images[0]])  # mixed inputs: ids 1..N
    assert ids == list(range(1, len(val.images) + 2))
