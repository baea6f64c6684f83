"""A full disk and an interrupted run, for real, in subprocesses.

Out of disk: the command runs with ``RLIMIT_FSIZE`` lowered and SIGXFSZ ignored,
so the kernel fails its write() with EFBIG at the limit (no mocks); where this
machine allows mounting a tmpfs (root), also on a nearly full tmpfs (ENOSPC).
Either way: exit code 2, one line naming the output file, the old file intact
and no temporary file left.

Interrupts: ``detr-edge benchmark`` stopped with Ctrl-C (SIGINT) or SIGTERM
mid-measurement exits 130 / 143 with a hint and no traceback, and leaves the old
report untouched. Training's SIGINT/SIGTERM/SIGKILL tests are in test_train.py.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_checks import ROOT, assert_one_line_error, sigint_not_ignored
from tiny_checkpoint import SQUARE_64, dataset_categories, save_tiny_checkpoint
from tiny_onnx import make_tiny_onnx, tiny_meta

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
       "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def run_cli(argv: list[str], file_size_limit: int | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m runtime.cli <argv>``, optionally with a file-size limit in bytes."""

    def limit() -> None:  # runs in the child between fork and exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills it at the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, "-m", "runtime.cli", *argv], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=timeout, check=False,
                          preexec_fn=limit if file_size_limit is not None else None)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes (``.<name>.<random>.tmp``) left in ``folder``."""
    return sorted(p.name for p in folder.rglob("*.tmp"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    for i in range(6):
        Image.new("RGB", (40 + 8 * i, 32), (20 * i, 90, 160)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_onnx(tmp_path_factory.mktemp("onnx") / "m.onnx", tiny_meta())


def _predict_argv(model: Path, images: Path, out: Path) -> list[str]:
    # Threshold 0 and second-best: every query of every image, a few kB of JSON.
    return ["predict", "--model", str(model), "--images", str(images), "--out", str(out),
            "--threshold", "0", "--second-best", "--no-draw"]


# ---- out of disk ---------------------------------------------------------------------------

def test_predict_file_size_limit(onnx_model: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text("OLD")
    proc = run_cli(_predict_argv(onnx_model, images, out), file_size_limit=512)
    assert_one_line_error(proc.returncode, proc.stderr, "predict",
                          r"predictions\.json: file too large", r"previous file.*unchanged")
    assert (out / "predictions.json").read_text() == "OLD"
    assert leftovers(out) == []
    # The same command without the limit works: the failure was the limit only.
    assert run_cli(_predict_argv(onnx_model, images, out)).returncode == 0
    assert len(json.loads((out / "predictions.json").read_text())) == 6 * 6


def test_export_onnx_file_size_limit(tmp_path: Path) -> None:
    """An exported model (tens of MB) hits a 1 MB limit: the old model stays."""
    pytest.importorskip("torch")
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pth", [(1, "a"), (2, "b")])
    out = tmp_path / "models" / "model.onnx"
    out.parent.mkdir()
    out.write_bytes(b"OLD MODEL")
    proc = run_cli(["export-onnx", "--checkpoint", str(ckpt), "--out", str(out), "--height",
                    "64", "--width", "64"], file_size_limit=1 << 20)
    assert_one_line_error(proc.returncode, proc.stderr, "export-onnx",
                          r"model\.onnx: file too large")
    assert out.read_bytes() == b"OLD MODEL"
    assert leftovers(out.parent) == []


@pytest.fixture()
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs filled to the last byte; skipped where mounting is not allowed."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_predict_on_a_full_disk(onnx_model: Path, images: Path, full_tmpfs: Path) -> None:
    out = full_tmpfs / "out"
    out.mkdir()
    (out / "predictions.json").write_text("OLD")
    with open(full_tmpfs / "filler", "wb", buffering=0) as fh:  # take every remaining block
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    proc = run_cli(_predict_argv(onnx_model, images, out))
    assert_one_line_error(proc.returncode, proc.stderr, "predict",
                          r"predictions\.json: no space left on device")
    assert (out / "predictions.json").read_text() == "OLD"
    assert leftovers(out) == []


# ---- interrupts ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    from detr.data.synthetic import ShapesConfig, make_shapes_dataset

    root = tmp_path_factory.mktemp("bench")
    make_shapes_dataset(root / "data", ShapesConfig(num_train=1, num_val=2, image_size=64,
                                                    max_objects=2), progress=False)
    save_tiny_checkpoint(root / "tiny.pth", dataset_categories(root / "data"), extra=SQUARE_64)
    return {"data": root / "data", "checkpoint": root / "tiny.pth"}


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_benchmark_interrupted(sig: signal.Signals, code: int, bench_inputs: dict[str, Path],
                               tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text("OLD")
    log = tmp_path / "stdout.txt"
    argv = [sys.executable, "-m", "runtime.cli", "benchmark", "--checkpoint",
            str(bench_inputs["checkpoint"]), "--data", str(bench_inputs["data"]), "--height",
            "64", "--width", "64", "--runs", "1000000", "--warmup", "0", "--max-images", "2",
            "--no-memory", "--out", str(out)]
    sigint_not_ignored()
    with open(log, "w") as stdout:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, text=True,
                                env=ENV, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            while "== pytorch FP32" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.1)
            assert "== pytorch FP32" in log.read_text(), "the benchmark did not start in time"
            time.sleep(0.5)  # into the accuracy pass or the timed runs
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert "benchmark interrupted" in err and "rerun the same command" in err
    assert err.rstrip().splitlines()[-1] in ("detr-edge benchmark: interrupted",
                                             "detr-edge benchmark: terminated (SIGTERM)")
    assert (out / "report.json").read_text() == "OLD"
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
