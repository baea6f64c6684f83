"""The 'shapes-hard' dataset: like a user's own data (mixed portrait /
landscape sizes, nested sub-folders, odd file names, grayscale files,
non-contiguous ids), deterministic, and read by the training data loader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from detr.data.synthetic import HARD_DEFAULTS, ShapesConfig, file_name_for
from runtime.cli import main


def _make(out: Path, seed: int = 4, num_train: int = 30, num_val: int = 8) -> Path:
    assert main(["make-dataset", "shapes-hard", "--out", str(out), "--seed", str(seed),
                 "--num-train", str(num_train), "--num-val", str(num_val)]) == 0
    return out


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory.mktemp("hard") / "shapes hard")


def _doc(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_sizes_and_orientations(hard: Path) -> None:
    images = _doc(hard, "train")["images"]
    sizes = {(im["height"], im["width"]) for im in images}
    assert len(sizes) >= 4, sizes
    assert sizes <= set(HARD_DEFAULTS["sizes"])
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes)  # portrait and landscape


def test_file_names_resolve_through_sub_folders(hard: Path) -> None:
    for split in ("train", "val"):
        for im in _doc(hard, split)["images"]:
            name = im["file_name"]
            assert "/" in name  # every image lives in a sub-folder
            with Image.open(hard / split / name) as f:  # the path is exactly the file_name
                assert f.size == (im["width"], im["height"])
    names = [im["file_name"] for im in _doc(hard, "train")["images"]]
    assert any(n.count("/") == 2 for n in names)  # nested two levels
    assert any(" " in Path(n).name for n in names)
    assert any(not n.isascii() for n in names)
    assert any(c in "".join(names) for c in "#&'[{,;")
    # The folder holds exactly the listed files: nothing unlisted to pick up by mistake.
    listed = {str(Path("train") / im["file_name"]) for im in _doc(hard, "train")["images"]}
    on_disk = {str(p.relative_to(hard)) for p in (hard / "train").rglob("*") if p.is_file()}
    assert on_disk == listed


def test_grayscale_and_rgb_files_mixed(hard: Path) -> None:
    modes = {}
    for im in _doc(hard, "train")["images"]:
        with Image.open(hard / "train" / im["file_name"]) as f:
            modes[im["file_name"]] = (f.mode, f.format)
    assert ("L", "PNG") in modes.values() and ("RGB", "JPEG") in modes.values()
    assert all(name.endswith(".png") == (mode == "L") for name, (mode, _) in modes.items())


def test_five_non_contiguous_categories(hard: Path) -> None:
    doc = _doc(hard, "train")
    ids = [c["id"] for c in doc["categories"]]
    assert len(ids) == 5 and ids != list(range(min(ids), min(ids) + 5))
    assert {a["category_id"] for a in doc["annotations"]} <= set(ids)
    per_image: dict[int, int] = {}
    for a in doc["annotations"]:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert max(per_image.values()) <= HARD_DEFAULTS["max_objects"]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_from_the_seed(tmp_path: Path) -> None:
    a = _digest(_make(tmp_path / "a", seed=7, num_train=6, num_val=2))
    b = _digest(_make(tmp_path / "b", seed=7, num_train=6, num_val=2))
    c = _digest(_make(tmp_path / "c", seed=8, num_train=6, num_val=2))
    assert a == b and len(a) == 6 + 2 + 2
    assert a != c


def test_plain_shapes_names_unchanged() -> None:
    """The hard options draw from their own generator: the default dataset keeps
    its flat names and its pixels (existing datasets regenerate identically)."""
    assert file_name_for(ShapesConfig(), "train", 0) == ("000001.jpg", False)
    assert file_name_for(ShapesConfig(image_format="png"), "val", 41) == ("000042.png", False)


def test_sizes_option_and_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    assert main(["make-dataset", "shapes-hard", "--out", str(out), "--num-train", "4",
                 "--num-val", "0", "--sizes", "64x96", "96x64"]) == 0
    sizes = {(im["height"], im["width"]) for im in _doc(out, "train")["images"]}
    assert sizes <= {(64, 96), (96, 64)}
    assert main(["make-dataset", "shapes-hard", "--out", str(out), "--sizes", "64by96"]) == 2
    assert "--sizes: expected HEIGHTxWIDTH" in capsys.readouterr().err
    assert main(["make-dataset", "shapes", "--out", str(out), "--sizes", "16x96"]) == 2
    assert "sizes: need (height, width) pairs >= 32" in capsys.readouterr().err


def test_training_loader_reads_it(hard: Path) -> None:
    """The training path (build_dataset + paper transforms + collate) loads every
    image, grayscale ones as 3 channels, and pads mixed orientations with a mask."""
    import torch

    from detr.data import build_dataset, collate_fn, make_coco_transforms

    ds = build_dataset(hard, "train", make_coco_transforms("val", scales=[128], max_size=160))
    assert ds.num_classes == 5 and ds.label_map == [3, 8, 21, 34, 55]
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), collate_fn=collate_fn)
    samples, targets = next(iter(loader))
    assert samples.tensors.shape[:2] == (len(ds), 3)
    assert max(samples.tensors.shape[2:]) <= 160
    sizes = [tuple(t["size"].tolist()) for t in targets]
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes)
    assert samples.mask.any()  # mixed orientations: the batch is padded
    assert all(len(t["boxes"]) >= 1 and t["labels"].max() < 5 for t in targets)
    # The split folder works as well as the root.
    assert len(build_dataset(hard / "train", "train")) == len(ds)
