"""Model files: a truncated, non-ONNX or inconsistent ONNX model and a
truncated, corrupt or incompatible engine file are one line on stderr, exit
code 2, naming the file, no traceback, for every command that reads them
(predict, check-onnx, quantize, build-engine).

"Wrong input size for a fixed-size model": the runtime resizes every image to
the size in the model's metadata, so the real failure is metadata that
disagrees with the graph's fixed input (or batch); both the runtime and
build-engine refuse such a file before running anything.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import ROOT, assert_one_line_error, fails, make_dataset
from tiny_onnx import make_tiny_onnx, tiny_meta

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")  # the synthetic dataset is drawn by detr.data
    return make_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_onnx(tmp_path_factory.mktemp("onnx") / "m.onnx", tiny_meta())


def _onnx_with_meta(src: Path, dest: Path, meta_json: str) -> Path:
    """``src`` with its detr-edge metadata replaced by ``meta_json`` (graph unchanged)."""
    import onnx

    from runtime.metadata import METADATA_KEY

    model = onnx.load(str(src))
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=meta_json)
    onnx.save(model, str(dest))
    return dest


def _onnx_argv(command: str, model: Path, dataset: Path, tmp_path: Path) -> list[str]:
    if command == "predict":
        return ["predict", "--model", str(model), "--images", str(dataset / "val"),
                "--out", str(tmp_path / "out")]
    if command == "check-onnx":
        return ["check-onnx", str(model)]
    if command == "quantize":
        return ["quantize", "--onnx", str(model), "--calib-data", str(dataset / "train"),
                "--out", str(tmp_path / "q.onnx"), "--calib-images", "2", "--eval-images", "0",
                "--latency-runs", "0"]
    return ["build-engine", "--onnx", str(model), "--out", str(tmp_path / "m.engine")]


ONNX_COMMANDS = ["predict", "check-onnx", "quantize", "build-engine"]


@pytest.mark.parametrize("command", ONNX_COMMANDS)
@pytest.mark.parametrize("case", ["truncated", "not_onnx"])
def test_bad_onnx_file(case: str, command: str, onnx_model: Path, dataset: Path,
                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / f"{case}.onnx"
    if case == "truncated":
        bad.write_bytes(onnx_model.read_bytes()[:900])
    else:
        bad.write_text("name,score\ncat,0.9\n")
    fails(capsys, _onnx_argv(command, bad, dataset, tmp_path), re.escape(str(bad)) + ": ",
          r"not a (readable|loadable) ONNX model")
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".engine", ".json")
                or p.name in ("q.onnx", "out")]


@pytest.mark.parametrize("command", ["predict", "build-engine"])
def test_metadata_of_the_wrong_type(command: str, onnx_model: Path, dataset: Path,
                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(tiny_meta().to_json())
    doc["input_height"] = "64"  # a string: parsed as data, rejected with the field named
    bad = _onnx_with_meta(onnx_model, tmp_path / "typed.onnx", json.dumps(doc))
    fails(capsys, _onnx_argv(command, bad, dataset, tmp_path), r"typed\.onnx: ",
          r'field input_height must be an integer, got "64"')


@pytest.mark.parametrize("command", ["predict", "build-engine"])
def test_metadata_size_disagrees_with_the_fixed_size_graph(
        command: str, onnx_model: Path, dataset: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The graph takes 64x64 canvases; metadata saying 32x48 would make the runtime
    resize every image to the wrong input size."""
    bad = _onnx_with_meta(onnx_model, tmp_path / "resized.onnx", tiny_meta(32, 48).to_json())
    fails(capsys, _onnx_argv(command, bad, dataset, tmp_path), r"resized\.onnx: ",
          r"graph input 'images' has shape .*64, 64\] but the metadata says")


def test_batch_size_larger_than_the_fixed_batch(dataset: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model = make_tiny_onnx(tmp_path / "b2.onnx", tiny_meta(batch_size=2))
    fails(capsys, _onnx_argv("predict", model, dataset, tmp_path) + ["--batch-size", "4"],
          r"batch_size: the model has a fixed batch size of 2")
    fails(capsys, _onnx_argv("build-engine", model, dataset, tmp_path) + ["--max-batch", "4"],
          r"--max-batch: the ONNX model has a fixed batch of 2")


# ---- engine files: predict ---------------------------------------------------------------

def _engine(path: Path, **header: str) -> Path:
    from runtime.engine_file import write_engine_file

    fields = {"tensorrt_version": "10.13.0.35", "gpu_name": "NVIDIA H100 80GB HBM3",
              "compute_capability": "9.0", **header}
    write_engine_file(path, tiny_meta(), b"\x00not a real TensorRT plan\xff" * 64, **fields)
    return path


@pytest.mark.parametrize(("case", "pattern"), [
    ("truncated", r"engine file is truncated or has trailing data"),
    ("cut_header", r"engine file is truncated \(header is"),
    ("flipped_byte", r"engine plan is corrupted \(SHA-256"),
])
def test_bad_engine_file(case: str, pattern: str, dataset: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before TensorRT is imported: the same message with or without it."""
    raw = _engine(tmp_path / "good.engine").read_bytes()
    bad = tmp_path / f"{case}.engine"
    bad.write_bytes({"truncated": raw[:-100], "cut_header": raw[:60],
                     "flipped_byte": raw[:-1] + bytes([raw[-1] ^ 1])}[case])
    fails(capsys, _onnx_argv("predict", bad, dataset, tmp_path), re.escape(str(bad)) + ": ",
          pattern)


@pytest.mark.parametrize(("header", "pattern"), [
    ({"tensorrt_version": "9.0.0.1"}, r"built with TensorRT 9\.0\.0\.1, this is TensorRT "),
    ({"compute_capability": "1.0", "gpu_name": "Old GPU"},
     r"built for compute capability 1\.0 \(Old GPU\), this GPU "),
])
def test_engine_from_another_tensorrt_or_gpu(header: dict[str, str], pattern: str,
                                             dataset: Path, tmp_path: Path) -> None:
    """The real TensorRT and GPU against a header from another version / GPU. (The
    comparison itself is unit-tested without TensorRT in test_engine_file.py.)"""
    from runtime.backends.tensorrt_backend import device_info, tensorrt_available
    from runtime.errors import BackendUnavailableError

    reason = tensorrt_available()
    if reason is not None:
        pytest.skip(f"needs TensorRT and cuda-python: {reason}")
    try:
        device_info(0)
    except BackendUnavailableError as exc:  # no driver / no device
        pytest.skip(f"needs a CUDA GPU: {exc}")
    import tensorrt

    fields = {"tensorrt_version": tensorrt.__version__, **header}
    engine = _engine(tmp_path / "other.engine", **fields)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "runtime.cli",
                           *_onnx_argv("predict", engine, dataset, tmp_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
                          check=False)
    assert_one_line_error(proc.returncode, proc.stderr, "predict", r"other\.engine: ",
                          r"engine is not compatible: " + pattern, r"Rebuild it on this machine")
