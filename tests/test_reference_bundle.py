"""The device half of the benchmark without torch: which reference a run uses, the
reference file (round trip, and the bad files it refuses), and the device bundle
(manifest, subset annotations, torch-free benchmark and build-engine on it)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks import reference as refs
from benchmarks.reference_file import (
    Fingerprint,
    ReferenceData,
    check_matches,
    load_reference,
    save_reference,
)
from runtime.errors import InputError

pytest.importorskip("onnxruntime")
pytest.importorskip("pycocotools")

N, Q, K = 3, 5, 3  # images, queries, classes of the synthetic reference files


# ---- which reference ------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint, file, has_torch, expected", [
    ("c.pth", None, True, refs.PYTORCH),
    ("c.pth", "r.npz", True, refs.PYTORCH),  # PyTorch first, the file is not needed
    ("c.pth", "r.npz", False, refs.FILE),  # no torch: the workstation's file
    (None, "r.npz", True, refs.FILE),  # no checkpoint: the file
    ("c.pth", None, False, refs.ONNXRUNTIME),
    (None, None, True, refs.ONNXRUNTIME),
])
def test_reference_order(monkeypatch: pytest.MonkeyPatch, checkpoint: str | None,
                         file: str | None, has_torch: bool, expected: str) -> None:
    monkeypatch.setattr(refs, "torch_available", lambda: has_torch)
    lines: list[str] = []
    source, why = refs.choose_source(checkpoint, file, lines.append)
    assert source == expected
    assert (why == "") == (source == refs.PYTORCH)
    if checkpoint and not has_torch:
        assert any("torch is not installed" in line and checkpoint in line for line in lines)


def test_torch_available_sees_a_blocked_torch() -> None:
    from no_torch import run_without_torch

    proc = run_without_torch("""
        from benchmarks.reference import choose_source, torch_available
        assert not torch_available()
        print(choose_source("c.pth", None, print)[0])
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("onnxruntime")


# ---- the reference file ---------------------------------------------------------------

def _fingerprint(**changes: object) -> Fingerprint:
    fp = Fingerprint(image_ids=[4, 9, 12], file_names=["a.jpg", "b/c.png", "d e.jpg"],
                     images_sha256="1" * 64, gt_sha256="2" * 64, height=64, width=96,
                     with_mask=False, resize=None, class_names=["circle", "square", "triangle"],
                     label_map=[3, 7, 11], decoding="official PostProcess",
                     onnx_fp32_sha256="3" * 64, checkpoint_sha256=None)
    return replace(fp, **changes)


def _data(fp: Fingerprint | None = None) -> ReferenceData:
    from dataclasses import asdict

    from benchmarks.reference_file import detections_arrays

    rng = np.random.default_rng(0)
    ap = {"AP": 0.41, "AP50": 0.66, "AP75": 0.4, "AP_S": 0.17, "AP_M": 0.4, "AP_L": -1.0}
    header = {"name": "PyTorch FP32 (cpu) as trained", "accuracy": ap, "canvas_accuracy": ap,
              "protocol": {"resize": "rule", "decoding": "official"}, "eval_images": N,
              "training_resize": None, "fingerprint": asdict(fp or _fingerprint())}
    results = [{"image_id": 9, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9},
               {"image_id": 12, "category_id": 3, "bbox": [5.0, 6.0, 7.0, 8.0], "score": 0.2}]
    return ReferenceData(header=header,
                         logits=rng.standard_normal((N, Q, K + 1)).astype(np.float32),
                         boxes=rng.uniform(0, 1, (N, Q, 4)).astype(np.float32),
                         detections=detections_arrays(results))


def test_reference_round_trip(tmp_path: Path) -> None:
    data = _data()
    path = save_reference(tmp_path / "sub" / "ref.npz", data)
    back = load_reference(path)
    np.testing.assert_array_equal(back.logits, data.logits)
    np.testing.assert_array_equal(back.boxes, data.boxes)
    for name, array in data.detections.items():
        np.testing.assert_array_equal(back.detections[name], array)
    assert back.header["accuracy"] == data.header["accuracy"]
    assert back.fingerprint == _fingerprint()
    check_matches(back, _fingerprint(), path)  # the same run: accepted
    # A checkpoint hash known on one side only does not refuse (the device has none).
    check_matches(back, _fingerprint(checkpoint_sha256="4" * 64), path)


@pytest.mark.parametrize("changes, message", [
    ({"image_ids": [4, 9]}, ("made on other images (3 images, ids 4, 9, 12) than this "
                            "benchmark evaluates (2 images")),
    ({"file_names": ["a.jpg", "b/c.png", "x.jpg"]}, "made on other images"),
    ({"images_sha256": "5" * 64}, "image files differ"),
    ({"gt_sha256": "5" * 64}, "annotations of these images differ"),
    ({"onnx_fp32_sha256": "5" * 64}, "another FP32 ONNX model"),
    ({"height": 128}, "another canvas"),
    ({"with_mask": True}, "another input form"),
    ({"label_map": [3, 7, 12]}, "other category ids"),
    ({"decoding": "drop no-object"}, "another decoding"),
])
def test_reference_for_another_run_is_refused(tmp_path: Path, changes: dict[str, object],
                                              message: str) -> None:
    path = save_reference(tmp_path / "ref.npz", _data())
    with pytest.raises(InputError, match="reference") as err:
        check_matches(load_reference(path), _fingerprint(**changes), path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def _npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _arrays(data: ReferenceData) -> dict[str, np.ndarray]:
    text = json.dumps({"format": "detr-edge-reference", "version": 1, **data.header})
    return {"header": np.frombuffer(text.encode(), np.uint8), "logits": data.logits,
            "boxes": data.boxes, **data.detections}


def _with(**arrays: np.ndarray) -> dict[str, np.ndarray]:
    return {**_arrays(_data()), **arrays}


def _header(doc: object) -> np.ndarray:
    return np.frombuffer(json.dumps(doc).encode() if not isinstance(doc, bytes) else doc,
                         np.uint8)


def _bad_header(**changes: object) -> np.ndarray:
    doc = json.loads(_arrays(_data())["header"].tobytes())
    doc.update(changes)
    return _header(doc)


BAD_FILES = {
    "empty file": lambda p: p.write_bytes(b""),
    "text, not an npz": lambda p: p.write_text("PyTorch reference\n"),
    "truncated": lambda p: p.write_bytes(save_reference(p.with_suffix(".ok.npz"), _data())
                                         .read_bytes()[:-200]),
    "header not JSON": lambda p: _npz(p, _with(header=_header(b"{not json"))),
    "header nested 200 deep": lambda p: _npz(p, _with(header=_header(b"[" * 200 + b"]" * 200))),
    "header a list": lambda p: _npz(p, _with(header=_header([1, 2]))),
    "other format": lambda p: _npz(p, _with(header=_bad_header(format="something"))),
    "newer version": lambda p: _npz(p, _with(header=_bad_header(version=2))),
    "AP out of range": lambda p: _npz(p, _with(header=_bad_header(accuracy={"AP": 7.0}))),
    "eval_images disagrees": lambda p: _npz(p, _with(header=_bad_header(eval_images=5))),
    "fingerprint field missing": lambda p: _npz(p, _with(header=_bad_header(fingerprint={}))),
    "member missing": lambda p: _npz(p, {k: v for k, v in _arrays(_data()).items()
                                         if k != "boxes"}),
    "extra member": lambda p: _npz(p, _with(extra=np.zeros(3))),
    "object array (pickle)": lambda p: _npz(p, _with(det_score=np.array([None, 1], object))),
    "logits float64": lambda p: _npz(p, _with(logits=np.zeros((N, Q, K + 1)))),
    "logits for 2 classes": lambda p: _npz(p, _with(logits=np.zeros((N, Q, 3), np.float32))),
    "boxes NaN": lambda p: _npz(p, _with(boxes=np.full((N, Q, 4), np.nan, np.float32))),
    "boxes other queries": lambda p: _npz(p, _with(boxes=np.zeros((N, Q + 1, 4), np.float32))),
    "detections of another image": lambda p: _npz(p, _with(
        det_image_id=np.array([9, 99], np.int64))),
    "detection score infinite": lambda p: _npz(p, _with(
        det_score=np.array([np.inf, 0.1], np.float32))),
    "a directory": lambda p: p.mkdir(),
    "a FIFO": lambda p: os.mkfifo(p),
}


# What each refusal says (after the file name).
EXPECTED = {
    "empty file": "not an npz", "text, not an npz": "not an npz", "truncated": "truncated",
    "header not JSON": "header is not JSON", "header nested 200 deep": "nested 200 levels",
    "header a list": "no format", "other format": "no format", "newer version": "version 2",
    "AP out of range": "numbers in [-1, 1]", "eval_images disagrees": "lists disagree",
    "fingerprint field missing": "fingerprint fields", "member missing": "members",
    "extra member": "extra.npy", "object array (pickle)": "allow_pickle=False",
    "logits float64": "logits are float64", "logits for 2 classes": "expected float32 [3, Q, 4]",
    "boxes NaN": "NaN", "boxes other queries": "expected float32 [3, 5, 4]",
    "detections of another image": "images or categories", "detection score infinite": "NaN",
    "a directory": "directory", "a FIFO": "FIFO",
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_reference_file_is_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "ref.npz"
    BAD_FILES[case](path)
    with pytest.raises(InputError) as err:
        load_reference(path)
    text = str(err.value)
    assert text.startswith(str(path)) and "\n" not in text, text
    assert EXPECTED[case] in text, text


def test_missing_reference_file_through_the_cli(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main

    art, data = _device_inputs(tmp_path)
    code = main(["benchmark", "--data", str(data), "--artifacts", str(art), "--reference",
                 str(tmp_path / "none.npz"), "--runs", "1", "--no-memory",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "none.npz: file not found" in err and len(err.splitlines()) == 1
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"weights")
    assert main(["benchmark", "--data", str(data), "--checkpoint", str(ckpt),
                 "--save-reference", str(ckpt)]) == 2
    assert "--save-reference: would overwrite the input" in capsys.readouterr().err
    assert ckpt.read_bytes() == b"weights"


# ---- the bundle -----------------------------------------------------------------------

def _device_inputs(root: Path) -> tuple[Path, Path]:
    """A torch-free model (tiny hand-built ONNX) and a synthetic dataset with its classes."""
    from tiny_onnx import make_tiny_onnx, tiny_meta

    from detr.data.synthetic import ShapesConfig, make_shapes_dataset

    data = root / "data"
    if not data.exists():
        make_shapes_dataset(data, ShapesConfig(
            num_train=4, num_val=8, image_size=64, max_objects=3,
            categories=((3, "circle"), (7, "square"), (11, "triangle"))), progress=False)
    art = root / "artifacts"
    art.mkdir(exist_ok=True)
    make_tiny_onnx(art / "m_fp32.onnx", tiny_meta(64, 64))
    (art / "m_fp32.quant.json").write_text("{}")  # a report: travels with its ONNX
    (art / "m_fp32.engine.golden.json").write_text("{}")  # an engine's: stays behind
    return art, data


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from benchmarks.bundle import BundleConfig, make_bundle

    root = tmp_path_factory.mktemp("bundle")
    art, data = _device_inputs(root)
    out = root / "bundle"
    make_bundle(BundleConfig(artifacts=str(art), data=str(data), out=str(out), images=4, seed=1,
                             calib_images=2, progress=False), log=lambda _: None)
    return out, art, data


def test_bundle_manifest(bundle: tuple[Path, Path, Path]) -> None:
    from benchmarks.bundle import read_bundle
    from runtime.files import file_sha256

    out, art, _ = bundle
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "detr-edge-bundle" and manifest["split"] == "val"
    assert manifest["reference"] is None and manifest["reference_missing"] == "no --checkpoint given"
    assert manifest["onnx"] == ["m_fp32.onnx"] and manifest["calib_images"] == 2
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk
    assert "artifacts/m_fp32.quant.json" in on_disk
    assert not any("engine" in name for name in on_disk)
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": file_sha256(out / name), "bytes": (out / name).stat().st_size}
    assert file_sha256(out / "artifacts" / "m_fp32.onnx") == file_sha256(art / "m_fp32.onnx")
    read = read_bundle(out)
    assert read.calib == out / "calib" and read.reference is None and read.split == "val"


def test_bundle_subset_is_valid_coco(bundle: tuple[Path, Path, Path]) -> None:
    from benchmarks.bundle import subset
    from detr.coco_eval import load_coco_gt
    from detr.data.coco_schema import read_coco_json
    from runtime.dataset import resolve_dataset

    out, _, data = bundle
    full = read_coco_json(data / "annotations" / "instances_val.json")
    sub = read_coco_json(out / "data" / "annotations" / "instances_val.json")  # validated
    ids = [im["id"] for im in sub["images"]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert ids == manifest["image_ids"] and len(ids) == 4
    assert ids == [im["id"] for im in subset(full["images"], 4, 1)]  # seeded: reproducible
    assert ids != [im["id"] for im in full["images"][:4]]  # and not simply the first four
    assert sub["categories"] == full["categories"]
    assert sub["annotations"] == [a for a in full["annotations"] if a["image_id"] in ids]
    assert len(load_coco_gt(out / "data" / "annotations" / "instances_val.json").getImgIds()) == 4
    split = resolve_dataset(out / "data")  # every listed image is in the bundle
    assert split.image_ids == sorted(ids) and all(p.is_file() for p in split.images)


def test_bundle_refuses_bad_outputs_and_tampering(bundle: tuple[Path, Path, Path],
                                                  tmp_path: Path) -> None:
    import shutil

    from benchmarks.bundle import BundleConfig, make_bundle, read_bundle

    out, art, data = bundle
    with pytest.raises(InputError, match="inside the input folder"):
        make_bundle(BundleConfig(artifacts=str(art), data=str(data), out=str(data / "b")),
                    log=lambda _: None)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    onnx = copy / "artifacts" / "m_fp32.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\x00")
    with pytest.raises(InputError, match="artifacts/m_fp32.onnx does not match its SHA-256"):
        read_bundle(copy)
    shutil.copyfile(out / "artifacts" / "m_fp32.onnx", onnx)
    read_bundle(copy)  # whole again
    (copy / "data" / "val").rename(copy / "gone")
    with pytest.raises(InputError, match="is missing"):
        read_bundle(copy)
    (copy / "manifest.json").write_text('{"format": "detr-edge-bundle", "version": 1}')
    with pytest.raises(InputError, match="manifest needs"):
        read_bundle(copy)


def test_device_commands_on_a_bundle_without_torch(bundle: tuple[Path, Path, Path],
                                                   tmp_path: Path) -> None:
    """No reference in the bundle, torch blocked: ONNX Runtime FP32 is the reference,
    labelled so; build-engine --bundle gets as far as TensorRT (not installed here)."""
    from no_torch import run_without_torch

    out = bundle[0]
    rep = tmp_path / "rep"
    proc = run_without_torch(f"""
        import json, sys
        from runtime.cli import main
        assert main(["benchmark", "--bundle", {str(out)!r}, "--runs", "1", "--warmup", "0",
                     "--no-memory", "--out", {str(rep)!r}]) == 0
        code = main(["build-engine", "--bundle", {str(out)!r}])
        saved = main(["benchmark", "--bundle", {str(out)!r}, "--save-reference",
                      {str(tmp_path / "r.npz")!r}, "--out", {str(tmp_path / "rep2")!r}])
        assert saved == 2
        loaded = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        assert not loaded, loaded
        print("BUILD", code)
    """)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "BUILD 2" in proc.stdout and "TensorRT not installed" in proc.stderr
    assert "--save-reference: needs the PyTorch reference, and torch is not installed" in \
        proc.stderr and not (tmp_path / "r.npz").exists()
    doc = json.loads((rep / "report.json").read_text())
    assert doc["reference"]["source"] == "onnxruntime"
    assert doc["reference"]["name"] == refs.ORT_REFERENCE_NAME
    assert doc["settings"]["eval_images"] == 4
    ort = next(r for r in doc["rows"] if (r["backend"], r["precision"]) == ("onnxruntime", "fp32"))
    assert ort["delta_vs_trained"]["AP"] == 0.0 and ort["delta_vs_canvas"] is None
    assert doc["figures"]["ort_fp32_AP_delta_vs_trained (AP points)"] is None
    text = (rep / "report.md").read_text()
    assert "ONNX Runtime FP32 (no PyTorch reference)" in text and "not PyTorch" in text
    torch_row = next(r for r in doc["rows"] if r["backend"] == "pytorch")
    assert torch_row["status"] == "skipped" and "torch is not installed" in torch_row["reason"]
