"""Odd files, output folders, multi-line errors and memory.

- FIFOs and devices among a split's images or given as a model are refused
  without being opened (no hang); Unicode-digit file names do not crash; file
  names with control characters are escaped in the one error line.
- ``predict`` refuses an output folder that contains an input or lies inside
  one, and a run that fails leaves the previous run's outputs as they were.
- torch's refusal of an unsafe pickle is one line that never advises
  ``weights_only=False``; warnings are not printed before the error line.
- Images over the pixel limit are refused from their header, and a batch is
  decoded one image at a time (peak memory measured in a child process).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_checks import BAD_IMAGES, ROOT, capped_cli, make_dataset, refused_capped
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny_checkpoint import SMALL

from runtime.errors import one_line

pytest.importorskip("onnxruntime")
OK = BAD_IMAGES / "ok.png"
FEW = settings(max_examples=10, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_onnx import make_tiny_onnx, tiny_meta

    return make_tiny_onnx(tmp_path_factory.mktemp("model") / "m.onnx", tiny_meta())


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail (instead of hanging the suite) when the test blocks for 120 s."""
    def stop(signum: int, frame: object) -> None:
        raise TimeoutError("blocked: a FIFO or device was opened")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(120)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _predict(model: Path, images: list[Path], out: Path, *extra: str) -> tuple[int, str]:
    return capped_cli(["predict", "--model", str(model), "--images", *map(str, images),
                       "--out", str(out), *extra])


# ---- odd files ---------------------------------------------------------------------------

def _make_odd(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_odd_file_in_a_split_is_refused_without_hanging(kind: str, tmp_path: Path,
                                                        shapes_dataset: Path,
                                                        shapes_checkpoint: Path,
                                                        no_hang: None) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes_dataset, data)
    ckpt = shapes_checkpoint
    victim = min((data / "val").iterdir())
    _make_odd(victim, kind)
    what = "FIFO" if kind == "fifo" else "character device"
    refused_capped(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--size", "64", "64"],
                   f"{victim.name}: is a {what}", "not a regular file")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_odd_model_file_and_folder_entries(kind: str, model: Path, tmp_path: Path,
                                           no_hang: None) -> None:
    odd = tmp_path / "m.onnx"
    _make_odd(odd, kind)
    refused_capped(["predict", "--model", str(odd), "--images", str(OK), "--out",
                    str(tmp_path / "out")], "m\\.onnx: ")
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(OK, folder / "a.png")
    _make_odd(folder / "b.png", kind)  # skipped by the folder listing, never opened
    code, err = _predict(model, [folder], tmp_path / "out")
    assert code == 0, err
    assert [d["file_name"] for d in json.loads((tmp_path / "out" / "images.json").read_text())] \
        == [str(folder / "a.png")]


@FEW
@given(stem=st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=4))
def test_unicode_digit_file_names(stem: str, model: Path,
                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("digits")
    shutil.copy(OK, folder / f"{stem}.png")
    code, err = _predict(model, [folder / f"{stem}.png"], folder / "out", "--no-draw")
    assert code == 0, err
    ids = [d["id"] for d in json.loads((folder / "out" / "images.json").read_text())]
    assert ids == ([int(stem)] if stem.isascii() else [1])


_control = st.characters(categories=["Cc"], exclude_characters="\x00")
_names = st.lists(st.sampled_from("ab") | _control, min_size=1, max_size=6).map("".join) \
    .filter(lambda s: any(c not in "ab" for c in s))


@FEW
@given(stem=_names)
def test_control_characters_in_file_names_stay_on_one_line(
        stem: str, model: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("names")
    bad = folder / f"{stem}.png"
    bad.write_bytes(b"not an image")
    code, err = _predict(model, [bad], folder / "out")
    assert code == 2 and err.count("\n") == 1 and "\r" not in err and "\x1b" not in err, err
    assert one_line(str(bad)) in err and "Traceback" not in err


# ---- output folders ----------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_output_folder_never_holds_an_input(model: Path, tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    shutil.copy(OK, images / "a.png")
    assert _predict(model, [images], out)[0] == 0
    before = _snapshot(out)
    refused_capped(["predict", "--model", str(model), "--images", str(out / "annotated"),
                    "--out", str(out)], "--out: output folder .* contains the input")
    refused_capped(["predict", "--model", str(model), "--images", str(images), "--out",
                    str(images / "results")], "--out: .* is inside the input folder")
    (tmp_path / "link").symlink_to(images)
    refused_capped(["predict", "--model", str(model), "--images", str(images / "a.png"),
                    "--out", str(tmp_path / "link")], "--out: .* contains the input")
    assert _snapshot(out) == before and not (images / "results").exists()


def test_a_failed_run_keeps_the_previous_outputs(model: Path, tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(OK, images / name)
    assert _predict(model, [images], out)[0] == 0
    before = _snapshot(out)
    (images / "c.png").write_bytes(b"garbage after two good images")
    refused_capped(["predict", "--model", str(model), "--images", str(images), "--out",
                    str(out)], "c\\.png: not an image")
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["annotated", "images.json",
                                                      "predictions.json"]  # no staging left
    (images / "c.png").unlink()
    assert _predict(model, [images / "a.png"], out, "--no-draw")[0] == 0
    # One run's set replaces the previous set: no stale annotated/ of the earlier run.
    assert sorted(p.name for p in out.iterdir()) == ["images.json", "predictions.json"]


# ---- multi-line errors -------------------------------------------------------------------

class Payload:
    """Not on the allow-list: unpickling it would need its class."""


def test_unsafe_pickle_refusal_is_one_line_without_weights_only_advice(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Payload()}, evil)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(evil, run / "checkpoint.pth")
    data = make_dataset(tmp_path / "data")
    for argv in (["export-onnx", "--checkpoint", str(evil), "--out", str(tmp_path / "m.onnx"),
                  "--height", "64", "--width", "64"],
                 ["train", "--data", str(data), "--out", str(run), "--resume", "--epochs", "9"],
                 ["train", "--data", str(data), "--out", str(tmp_path / "r2"), "--model-opt",
                  f"backbone_weights={evil}", "--epochs", "1"]):
        line = refused_capped(argv, "evil\\.pth|checkpoint\\.pth", "refused to unpickle",
                              "Payload")
        assert "weights_only" not in line and "safe_globals" not in line


def _exif_warning_jpeg(path: Path) -> Path:
    """A valid JPEG whose EXIF makes PIL warn ('Tag data larger than file')."""
    exif = Image.Exif()
    exif[0x010E] = "x" * 40  # ImageDescription
    raw = bytearray(exif.tobytes())
    at = raw.find(b"\x01\x0e\x00\x02")
    raw[at + 4:at + 8] = struct.pack(">I", 100_000)  # count far past the data
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, "JPEG", exif=bytes(raw))
    path.write_bytes(buffer.getvalue())
    return path


def test_warnings_do_not_precede_the_error_line(model: Path, tmp_path: Path) -> None:
    warned = _exif_warning_jpeg(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    refused_capped(["predict", "--model", str(model), "--images", str(warned),
                    str(tmp_path / "b.jpg"), "--out", str(tmp_path / "out")], "b\\.jpg: ")
    code, err = _predict(model, [warned], tmp_path / "out")
    assert code == 0 and "Tag data larger than file" in err  # shown when the run succeeds


# ---- pixel limit and per-image decoding (child processes, peak memory measured) -----------

# VmHWM (peak resident set of this process image), not ru_maxrss: Linux carries
# ru_maxrss over fork + exec, so it would report the test process's own size.
_CHILD = ("import sys; from pathlib import Path; from runtime.cli import main; "
          "code = main(sys.argv[1:]); print([ln for ln in Path('/proc/self/status').read_text()"
          ".splitlines() if ln.startswith('VmHWM')][0]); sys.exit(code)")


def _child(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, int]:
    """Run ``detr-edge argv`` in a child under a 4 GiB address-space cap: (code, stderr,
    peak RSS in MiB)."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    proc = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True,
                          cwd=ROOT, preexec_fn=cap, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    peak = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("VmHWM")]
    return proc.returncode, proc.stderr, (peak[0] // 1024 if peak else -1)


def _big_png(path: Path, width: int, height: int) -> Path:
    Image.new("1", (width, height)).save(path)  # bilevel: a few MB in memory, KBs on disk
    return path


@pytest.mark.slow
def test_pixel_limit_and_per_image_decoding(model: Path, tmp_path: Path) -> None:
    huge = _big_png(tmp_path / "huge.png", 12_000, 12_000)  # 144 Mpx
    assert huge.stat().st_size < 1 << 20
    code, err, peak = _child(["predict", "--model", str(model), "--images", str(huge),
                              "--out", str(tmp_path / "o1")])
    assert code == 2 and err.count("\n") == 1, err
    assert "huge.png: image is 12000x12000 (144.0 Mpx), above the limit of 64 Mpx" in err
    assert peak < 600, peak  # refused from the header: nothing decoded
    code, err, _ = _child(["predict", "--model", str(model), "--images", str(huge), "--out",
                           str(tmp_path / "o2")], env={"DETR_EDGE_MAX_PIXELS": "1000"})
    assert code == 2 and "above the limit of 0.001 Mpx" in err, err
    # Six 40 Mpx images (119 MB each as RGB) in one batch of 6 under a raised limit: one
    # image at a time stays far below the ~710 MB that six decoded images would need.
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(6):
        _big_png(folder / f"{i}.png", 6_300, 6_300)
    code, err, peak = _child(["predict", "--model", str(model), "--images", str(folder),
                              "--out", str(tmp_path / "o3"), "--no-draw", "--batch-size", "6",
                              "--max-pixels", "40000000"])
    assert code == 0, err
    assert peak < 650, peak


# ---- model files that fail late ----------------------------------------------------------

def _edited_model(model: Path, dest: Path, edit: str) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    proto = onnx.load(str(model))
    inits = proto.graph.initializer
    if edit == "reshape":  # 24 logits per image cannot be reshaped to [-1, 7, 4] at run time
        at = next(i for i, t in enumerate(inits) if t.name == "shape_cls")
        inits[at].CopyFrom(numpy_helper.from_array(np.array([-1, 7, 4], np.int64), "shape_cls"))
    else:  # a weight stored as external data outside the model's folder
        tensor = inits[0]
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", "../outside.bin"
        tensor.ClearField("raw_data")
        (dest.parent.parent / "outside.bin").write_bytes(bytes(4096))
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(dest))
    return dest


def test_onnx_runtime_failure_while_running_is_one_line(model: Path, tmp_path: Path) -> None:
    bad = _edited_model(model, tmp_path / "bad.onnx", "reshape")
    refused_capped(["predict", "--model", str(bad), "--images", str(OK), "--out",
                    str(tmp_path / "out")], "bad\\.onnx: ONNX Runtime failed while running",
                   "Reshape")
    refused_capped(["check-onnx", str(bad)], "bad\\.onnx: ONNX Runtime failed while running")


def test_external_data_outside_the_folder_is_one_line(model: Path, tmp_path: Path) -> None:
    bad = _edited_model(model, tmp_path / "sub" / "ext.onnx", "external")
    refused_capped(["check-onnx", str(bad)], "ext\\.onnx: onnx refused to load the model",
                   "outside")
    refused_capped(["predict", "--model", str(bad), "--images", str(OK), "--out",
                    str(tmp_path / "out")], "ext\\.onnx: not a loadable ONNX model")


def test_backbone_weights_with_non_string_keys(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    weights = tmp_path / "r18.pth"
    torch.save({1: torch.zeros(1), "conv1.weight": torch.zeros(1)}, weights)
    refused_capped(["train", "--data", str(make_dataset(tmp_path / "data")), "--out",
                    str(tmp_path / "run"), "--model-opt", f"backbone_weights={weights}"],
                   "r18\\.pth: ResNet state dict has a key 1 that is not a string")


@pytest.mark.slow
def test_resume_onto_a_dataset_with_other_classes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    data = make_dataset(tmp_path / "data")
    run = tmp_path / "run"
    opts = [f"--model-opt={k}={v}" for k, v in SMALL.items()]
    common = ["--out", str(run), "--batch-size", "2", "--max-steps", "1", "--eval-every", "0",
              "--num-workers", "0", "--scales", "64", "--max-size", "64", "--no-progress", *opts]
    code, err = capped_cli(["train", "--data", str(data), "--epochs", "1", *common])
    assert code == 0, err
    other = tmp_path / "other"
    shutil.copytree(data, other)
    for ann in (other / "annotations").glob("*.json"):
        doc = json.loads(ann.read_text())
        gone = doc["categories"].pop()["id"]
        doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] != gone]
        ann.write_text(json.dumps(doc))
    refused_capped(["train", "--data", str(other), "--epochs", "2", "--resume", *common],
                   "checkpoint\\.pth: was trained on 6 classes", "--data has 5")
