"""`make device-check` on a machine without a GPU/TensorRT: one clear line, exit 2,
nothing written (the check itself needs the device; see benchmarks/device_check.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.device_check import main, unavailable_reason

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(unavailable_reason() is None, reason="a GPU with TensorRT is present")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "dc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("device-check: not run, it needs a CUDA GPU "
                                               "with TensorRT and cuda-python: ")
    assert "TensorRT not installed" in err[0]
    assert not (tmp_path / "dc").exists()


@pytest.mark.skipif(unavailable_reason() is None, reason="a GPU with TensorRT is present")
def test_make_target_runs_the_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "device-check: $(STAMP)\n\t$(PY) -m benchmarks.device_check" in makefile
    proc = subprocess.run([sys.executable, "-m", "benchmarks.device_check", "--no-r50"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "device-check: not run" in proc.stderr
