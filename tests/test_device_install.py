"""The device install: a fresh virtual environment with only the `device` extra's
CPU-installable packages (no torch, no system site-packages) runs check-onnx and
predict on an exported detr-tiny, and benchmark on a bundle made on the workstation
side (with its PyTorch reference); every missing package names its extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _device_requirements() -> list[str]:
    """Base dependencies + the `device` extra, read from pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["device"])


def _run(cmd: list[str], env: dict[str, str], timeout: int = 900
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("device") / "venv"
    # --system-site-packages is NOT used: nothing from this machine's torch install leaks
    # in. Without its own pip (ensurepip is slow); this interpreter's pip installs into it.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=600)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
           "--quiet", "--no-compile"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    deps = _run(pip + _device_requirements(), env)
    assert deps.returncode == 0, deps.stderr[-3000:]
    project = _run(pip + ["--no-deps", "-e", str(REPO)], env)
    assert project.returncode == 0, project.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init detr-tiny exported here (the workstation side)."""
    torch = pytest.importorskip("torch")
    from detr import build_model
    from export.onnx_export import ExportConfig, export_detr
    from runtime.metadata import ModelMeta

    torch.manual_seed(0)
    model = build_model("detr-tiny", num_classes=3).eval()
    meta = ModelMeta(preset="detr-tiny", input_height=64, input_width=96,
                     class_names=["circle", "square", "triangle"], label_map=[3, 7, 11])
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    export_detr(model, meta, ExportConfig(checkpoint="<memory>", out=str(out), height=64,
                                          width=96, dynamic_batch=True, calib_images=1))
    return out


@pytest.fixture(scope="module")
def workstation_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workstation side: a detr-tiny checkpoint, its FP32/FP16 ONNX, a synthetic
    dataset, and `detr-edge bundle` with the PyTorch reference."""
    pytest.importorskip("torch")
    from test_benchmark import make_tiny_setup

    from benchmarks.bundle import BundleConfig, make_bundle

    root = tmp_path_factory.mktemp("workstation")
    paths = make_tiny_setup(root, int8=False)
    out = root / "bundle"
    make_bundle(BundleConfig(artifacts=str(paths["artifacts"]), data=str(paths["data"]),
                             out=str(out), checkpoint=str(paths["checkpoint"]), images=3,
                             calib_images=2, progress=False), log=lambda _: None)
    return out


def _check_bundle_benchmark(cli: list[str], bundle: Path, env: dict[str, str],
                            out: Path) -> None:
    """benchmark --bundle on the device: every ONNX Runtime row against PyTorch (the
    bundle's reference), the plot left out without matplotlib."""
    bench = _run(cli + ["benchmark", "--bundle", str(bundle), "--runs", "1", "--warmup", "0",
                        "--no-memory", "--out", str(out)], env)
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    doc = json.loads((out / "report.json").read_text())
    assert doc["reference"]["source"] == "file"
    assert doc["reference"]["name"].startswith("PyTorch FP32 (cpu) as trained")
    assert "torch" not in [k for k, v in doc["env"]["libraries"].items() if v]
    rows = {(r["backend"], r["precision"]): r for r in doc["rows"]}
    assert rows[("pytorch", "fp32")]["status"] == "ok"  # from the reference file
    for precision in ("fp32", "fp16"):
        row = rows[("onnxruntime", precision)]
        assert row["status"] == "ok", row["reason"]
        assert set(row["delta_vs_trained"]) >= {"AP", "AP50"} and row["delta_vs_canvas"]
        assert row["parity"]["logits_max_abs"] < (1e-3 if precision == "fp32" else 0.1)
    text = (out / "report.md").read_text()
    assert "from reference file reference.npz" in text and "dAP canvas" in text
    assert not (out / "plot.png").exists() and "not drawn" in bench.stdout


@pytest.mark.slow
def test_device_commands_without_torch(device_venv: Path, tiny_export: Path,
                                       workstation_bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    py = str(device_venv / "bin" / "python")
    env = {"PATH": f"{device_venv / 'bin'}:/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "HOME": str(tmp_path)}
    no_torch = _run([py, "-c", "import torch"], env)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    cli = [str(device_venv / "bin" / "detr-edge")]

    check = _run(cli + ["check-onnx", str(tiny_export)], env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "TensorRT should build this model" in check.stdout

    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 256, (48 + 16 * i, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "imgs" / f"{i}.png")
    predict = _run(cli + ["predict", "--model", str(tiny_export), "--images",
                          str(tmp_path / "imgs"), "--out", str(tmp_path / "out")], env)
    assert predict.returncode == 0, predict.stdout + predict.stderr
    assert any((tmp_path / "out").iterdir())

    # No TensorRT here: one line, exit 2, says where TensorRT comes from.
    build = _run(cli + ["build-engine", "--onnx", str(tiny_export), "--out",
                        str(tmp_path / "t.engine")], env)
    assert build.returncode == 2 and "Traceback" not in build.stderr
    assert "TensorRT not installed" in build.stderr and "detr-edge[trt]" in build.stderr
    assert not (tmp_path / "t.engine").exists()
    build = _run(cli + ["build-engine", "--bundle", str(workstation_bundle)], env)
    assert build.returncode == 2 and "TensorRT not installed" in build.stderr

    _check_bundle_benchmark(cli, workstation_bundle, env, tmp_path / "bench")

    # The training commands need torch: the error names the extra that provides it.
    train = _run(cli + ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")], env)
    assert train.returncode == 2 and "Traceback" not in train.stderr
    assert "detr-edge[train]" in train.stderr, train.stderr


def test_check_onnx_build_engine_and_golden_check_import_no_torch(tmp_path: Path) -> None:
    """Fast companion of the venv test: with torch blocked in this interpreter, check-onnx
    runs, build-engine gets as far as needing TensorRT, the golden check runs."""
    from no_torch import run_without_torch
    from tiny_onnx import make_tiny_onnx, tiny_meta

    model = make_tiny_onnx(tmp_path / "m.onnx", tiny_meta(32, 48))
    proc = run_without_torch(f"""
        import sys
        from runtime.cli import main
        assert main(["check-onnx", {str(model)!r}]) == 0
        assert main(["build-engine", "--onnx", {str(model)!r}, "--out",
                     {str(tmp_path / "m.engine")!r}]) == 2
        from export.golden import golden_check, onnxruntime_runner
        from runtime.metadata import ModelMeta
        run = onnxruntime_runner({str(model)!r})
        meta = ModelMeta(preset="t", input_height=32, input_width=48, class_names=list("abc"),
                         label_map=[3, 7, 11])
        assert golden_check(run, run, meta, "fp32", num_images=2, batch=2).passed
        import export.engine_builder, export.engine_output, export.calibrator
        loaded = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        assert not loaded, loaded
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    assert "TensorRT not installed" in proc.stderr


@pytest.mark.parametrize("module, extra", [
    ("onnx", "device"), ("onnxruntime.quantization", "device"), ("pycocotools.coco", "device"),
    ("torch", "train"), ("matplotlib.pyplot", "bench"), ("tensorrt", "trt"),
])
def test_missing_package_errors_name_their_extra(module: str, extra: str) -> None:
    from runtime.cli import missing_package_message

    exc = ModuleNotFoundError(f"No module named '{module}'", name=module)
    message = missing_package_message(exc)
    assert message.startswith(f"a required package is missing: No module named '{module}'")
    assert f"pip install 'detr-edge[{extra}]'" in message
    assert ("JetPack" in message) == (extra == "trt")
    assert missing_package_message(ModuleNotFoundError("x", name="left_pad")).endswith("x")
