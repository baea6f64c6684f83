"""Every user error of every command is one line on stderr, exit code 2,
naming the file or argument at fault, and no traceback: datasets, checkpoints,
images and outputs here; ONNX models and engine files in test_cli_model_errors.py.

The commands run through ``runtime.cli.main`` in-process (as the other CLI tests
do); one test runs the installed ``detr-edge`` script.

Documented behaviour checked here: an annotation box that lies (partly) outside
its image is accepted by every command (training clips it to the image and
drops it when nothing is left, see ``CocoDetection``); a box with a negative
width or height is rejected, by training and evaluation alike.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_checks import BAD_IMAGES, assert_one_line_error, fails
from tiny_checkpoint import SMALL, save_tiny_checkpoint
from tiny_onnx import make_tiny_onnx, tiny_meta

from runtime.cli import main

torch = pytest.importorskip("torch")


# ---- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_onnx(tmp_path_factory.mktemp("onnx") / "m.onnx", tiny_meta())


def bad_dataset(dataset: Path, dest: Path, mutate: Callable[[dict[str, Any]], None] | None = None,
                image_bytes: Callable[[bytes], bytes] | None = None) -> Path:
    """A copy of ``dataset`` with ``mutate`` applied to both annotation files and
    ``image_bytes`` to every image (so any batch order meets a bad one)."""
    shutil.copytree(dataset, dest)
    for ann in (dest / "annotations").glob("instances_*.json"):
        doc = json.loads(ann.read_text())
        if mutate is not None:
            mutate(doc)
        ann.write_text(json.dumps(doc))
    if image_bytes is not None:
        for image in dest.glob("*/*.jpg"):
            image.write_bytes(image_bytes(image.read_bytes()))
    return dest


def _set_first_annotation(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        doc["annotations"][0][key] = value
    return mutate


def _empty(doc: dict[str, Any]) -> None:
    doc["images"], doc["annotations"] = [], []


DATA_CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "corrupt_image": ({"image_bytes": lambda _: b"these bytes are no image"},
                      [r"0000\d\d\.jpg", r"not an image or corrupt"]),
    "truncated_image": ({"image_bytes": lambda data: data[: len(data) // 3]},
                        [r"0000\d\d\.jpg", r"truncated image"]),
    "bad_schema": ({"mutate": lambda doc: doc.pop("images")},
                   [r"instances_\w+\.json", r"missing key 'images'"]),
    "unknown_category": ({"mutate": _set_first_annotation("category_id", 999)},
                         [r"instances_\w+\.json", r"annotation \d+ refers to unknown category_id 999"]),
    "negative_box": ({"mutate": _set_first_annotation("bbox", [4, 4, -5, 3])},
                     [r"instances_\w+\.json", r"bbox with negative width"]),
    "empty_dataset": ({"mutate": _empty}, [r"instances_\w+\.json", r"no images"]),
}


def _eval_argv(checkpoint: Path, data: Path) -> list[str]:
    return ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--size", "64", "64",
            "--batch-size", "2"]


def _train_argv(data: Path, out: Path, workers: int = 0) -> list[str]:
    argv = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--max-steps", "1",
            "--num-workers", str(workers), "--scales", "64", "--max-size", "64",
            "--eval-every", "0", "--no-progress", "--batch-size", "2"]
    return argv + [a for k, v in SMALL.items() for a in ("--model-opt", f"{k}={v}")]


# ---- datasets: eval and train --------------------------------------------------------------

@pytest.mark.parametrize("case", DATA_CASES, ids=list(DATA_CASES))
def test_eval_bad_dataset(case: str, shapes_dataset: Path, shapes_checkpoint: Path,
                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    change, patterns = DATA_CASES[case]
    data = bad_dataset(shapes_dataset, tmp_path / "data", **change)
    fails(capsys, _eval_argv(shapes_checkpoint, data), *patterns)


@pytest.mark.parametrize("case", DATA_CASES, ids=list(DATA_CASES))
def test_train_bad_dataset(case: str, shapes_dataset: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    change, patterns = DATA_CASES[case]
    data = bad_dataset(shapes_dataset, tmp_path / "data", **change)
    fails(capsys, _train_argv(data, tmp_path / "run"), *patterns)
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_train_bad_image_in_a_dataloader_worker(shapes_dataset: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # torch re-raises a worker's exception as a RuntimeError carrying the worker's
    # traceback; the training loader must forward the DataError itself.
    change, patterns = DATA_CASES["corrupt_image"]
    data = bad_dataset(shapes_dataset, tmp_path / "data", **change)
    fails(capsys, _train_argv(data, tmp_path / "run", workers=1), *patterns)


def test_box_outside_the_image_is_accepted(shapes_dataset: Path, shapes_checkpoint: Path,
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bad_dataset(shapes_dataset, tmp_path / "data",
                       mutate=_set_first_annotation("bbox", [50, 50, 500, 500]))
    assert main(_eval_argv(shapes_checkpoint, data)) == 0
    assert "AP50" in capsys.readouterr().out


# ---- checkpoints: eval and export-onnx ----------------------------------------------------

class _Evil:
    """Unpickling this would create ``target``: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.target,))


def _bad_checkpoint(case: str, good: Path, dest: Path) -> Path:
    path = dest / f"{case}.pth"
    if case == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "text_file":
        path.write_text("these are my notes, not a checkpoint\n")
    elif case == "malicious_pickle":
        torch.save({"model": {"query_embed.weight": torch.zeros(2, 2)},
                    "payload": _Evil(dest / "pwned")}, path)
    else:
        raw = torch.load(good, map_location="cpu", weights_only=True)
        if case == "other_class_count":  # 6-class weights, metadata of a 3-class model
            raw.update(num_classes=3, class_names=["a", "b", "c"], label_map=[2, 5, 7])
        elif case == "other_architecture":  # weights of hidden_dim 32, config says 64
            raw["config"] = dict(raw["config"], hidden_dim=64)
        elif case == "class_names_mismatch":
            raw["class_names"] = ["only-one"]
        torch.save(raw, path)
    return path


CHECKPOINT_CASES = {
    "truncated": r"cannot read checkpoint \(truncated or corrupt\)",
    "text_file": r"cannot read checkpoint \(truncated or corrupt\)",
    "malicious_pickle": r"refused to unpickle: the file references code outside the allow-list",
    "other_class_count": r"does not match detr-tiny with 3 classes: .*class_embed\.weight",
    "other_architecture": r"does not match detr-tiny with 6 classes: \d+ shape mismatch",
    "class_names_mismatch": r"class_names must be 6 strings",
}


@pytest.mark.parametrize("command", ["eval", "export-onnx"])
@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=list(CHECKPOINT_CASES))
def test_bad_checkpoint(case: str, command: str, shapes_dataset: Path, shapes_checkpoint: Path,
                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _bad_checkpoint(case, shapes_checkpoint, tmp_path)
    out = tmp_path / "model.onnx"
    argv = (_eval_argv(bad, shapes_dataset) if command == "eval" else
            ["export-onnx", "--checkpoint", str(bad), "--out", str(out), "--height", "64",
             "--width", "64"])
    fails(capsys, argv, re.escape(str(bad)) + ": ", CHECKPOINT_CASES[case])
    assert not (tmp_path / "pwned").exists(), "unpickling ran code from the file"
    assert not out.exists()


def test_eval_checkpoint_of_another_dataset(shapes_dataset: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = save_tiny_checkpoint(tmp_path / "other.pth", [(101, "cat"), (102, "dog")])
    fails(capsys, _eval_argv(path, shapes_dataset), r"instances_val\.json: ",
          r"category ids \[101, 102\] are not in this dataset")


def test_missing_checkpoint(shapes_dataset: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, _eval_argv(tmp_path / "nope.pth", shapes_dataset),
          r"nope\.pth: .*does not exist")


# ---- images: predict ---------------------------------------------------------------------

@pytest.mark.parametrize(("name", "pattern"), [
    ("not_an_image.jpg", r"not an image or corrupt"),
    ("html_page.jpg", r"not an image or corrupt"),
    ("truncated.jpg", r"truncated image"),
    ("bomb.png", r"image too large to decode safely"),
])
def test_predict_bad_image(name: str, pattern: str, onnx_model: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, ["predict", "--model", str(onnx_model), "--images", str(BAD_IMAGES / name),
                   "--out", str(tmp_path / "out")], re.escape(name) + ": ", pattern)
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_predict_folder_without_images(onnx_model: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("no images here")
    fails(capsys, ["predict", "--model", str(onnx_model), "--images", str(tmp_path / "docs"),
                   "--out", str(tmp_path / "out")], r"docs: no images")


def test_the_installed_console_script_too(onnx_model: Path, tmp_path: Path) -> None:
    """The real ``detr-edge`` entry point (not only ``main``) prints one line."""
    exe = Path(sys.executable).with_name("detr-edge")
    if not exe.exists():
        pytest.skip("detr-edge console script not installed next to this python")
    text = tmp_path / "photo.jpg"
    text.write_text("not a photo")
    proc = subprocess.run([str(exe), "predict", "--model", str(onnx_model), "--images",
                           str(text), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_one_line_error(proc.returncode, proc.stderr, "predict", r"photo\.jpg: not an image")



# ---- outputs -----------------------------------------------------------------------------

@pytest.mark.parametrize("draw", [True, False], ids=["annotated", "json-only"])
def test_output_folder_is_a_file(draw: bool, onnx_model: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """An OSError naming a file (here from mkdir, not from an atomic write) is one line too."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should go")
    fails(capsys, ["predict", "--model", str(onnx_model), "--images",
                   str(BAD_IMAGES / "ok.png"), "--out", str(blocker)]
          + ([] if draw else ["--no-draw"]), r"results: exists and is not a folder")
    assert blocker.read_text().startswith("a file")
