"""mypy type-check of the TensorRT code against tensorrt-stubs.

TensorRT itself cannot be installed here, so the code that calls it is checked
statically. tensorrt-stubs 10.13 ships ``tensorrt/__init__.pyi`` without a
``py.typed`` marker (mypy would silently treat ``tensorrt`` as ``Any`` under
``ignore_missing_imports``) and with a few lines that are not valid Python
(parameters named ``in``, a non-default parameter after defaults). The fixture
copies the stubs to a temporary stub path, repairs those signatures, and runs
mypy with it; a deliberate misuse of the API must then fail, which proves mypy
really sees the stubs.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OWN_FILES = ["export/engine_builder.py", "export/calibrator.py", "export/trt_compat.py",
             "export/engine_output.py", "export/engine_plan.py",
             "runtime/backends/trt_import.py"]
BACKEND_FILE = "runtime/backends/tensorrt_backend.py"


def _split_params(text: str) -> list[str]:
    depth, current, parts = 0, "", []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def _repair_def(line: str) -> str:
    """Rename parameters called ``in`` and give ``= ...`` to parameters that
    follow a defaulted one (both are pybind11 signatures stubgen copied verbatim)."""
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*(?:->.*)?:\s*)$", line)
    if not match:
        return line
    params, seen_default = [], False
    for param in _split_params(match.group(2)):
        param = re.sub(r"^(\s*)in:", r"\1in_:", param)
        if "=" in param:
            seen_default = True
        elif seen_default and not param.strip().startswith("*"):
            param += " = ..."
        params.append(param)
    return match.group(1) + ",".join(params) + match.group(3)


def _repair_stub(path: Path) -> int:
    lines = path.read_text().split("\n")
    repaired = 0
    for i, line in enumerate(lines):
        if line.lstrip().startswith("def "):
            try:
                ast.parse(line.strip() + " ...")
            except SyntaxError:
                lines[i] = _repair_def(line)
                repaired += 1
    path.write_text("\n".join(lines))
    return repaired


@pytest.fixture(scope="module")
def mypy_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs not installed")
    site = Path(str(dist.locate_file("")))
    stub_dir = tmp_path_factory.mktemp("trt_stubs")
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / package, stub_dir / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for stub in stub_dir.rglob("*.pyi"):
        _repair_stub(stub)
    for stub in stub_dir.rglob("*.pyi"):
        ast.parse(stub.read_text(), filename=str(stub))  # every stub now parses
    config = stub_dir / "mypy.ini"
    # Errors inside the third-party stubs are not ours; follow_imports=silent
    # checks the listed files only, not the project modules they import.
    config.write_text(
        "[mypy]\npython_version = 3.11\nignore_missing_imports = True\n"
        f"follow_imports = silent\nmypy_path = {stub_dir}\ncache_dir = {stub_dir / '.cache'}\n\n"
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\n"
        "ignore_errors = True\n")
    return config


def _mypy(config: Path, *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config),
                           "--no-error-summary", "--show-error-codes", *files],
                          check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_stub_repair_fixes_invalid_signatures() -> None:
    bad = "    def f(self, in: list[int], out: list[int], x: int = 1, axis: int) -> int:"
    fixed = _repair_def(bad)
    ast.parse(fixed.strip() + " ...")
    assert "in_: list[int]" in fixed and "axis: int = ..." in fixed


def test_mypy_sees_tensorrt_stubs(mypy_config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "misuse.py"
    bad.write_text(
        "import tensorrt as trt\n"
        "builder = trt.Builder(trt.Logger(trt.Logger.WARNING))\n"
        "config = builder.create_builder_config()\n"
        "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 'lots')\n"
        "builder.build_engine_from_onnx()\n")
    result = _mypy(mypy_config, str(bad))
    assert result.returncode != 0
    assert 'incompatible type "str"; expected "int"' in result.stdout
    assert '"Builder" has no attribute "build_engine_from_onnx"' in result.stdout


def test_engine_builder_typechecks(mypy_config: Path) -> None:
    result = _mypy(mypy_config, *OWN_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tensorrt_backend_typechecks(mypy_config: Path) -> None:
    if not (REPO / BACKEND_FILE).is_file():
        pytest.skip(f"{BACKEND_FILE} is missing")
    result = _mypy(mypy_config, BACKEND_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
