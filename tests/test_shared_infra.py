"""Shared infrastructure: atomic writes, the metadata contract, the CLI dispatcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.atomic import atomic_write, atomic_write_text
from runtime.cli import COMMANDS, main
from runtime.errors import InputError, ModelFormatError
from runtime.metadata import ModelMeta


def _meta(**changes):
    base = ModelMeta(preset="detr-tiny", input_height=64, input_width=96,
                     class_names=["circle", "square"], label_map=[2, 5])
    return base.replace(**changes)


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.json"
    atomic_write_text(dest, "old")
    atomic_write_text(dest, "new")
    assert dest.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp files left


def test_atomic_write_interrupted_keeps_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    atomic_write_text(dest, "old")
    with pytest.raises(KeyboardInterrupt), atomic_write(dest, "w") as fh:
        fh.write("half of the new fi")
        raise KeyboardInterrupt
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_atomic_write_unwritable_dir_names_file(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(InputError, match="afile/out.bin: cannot write"):
        atomic_write_text(blocker / "out.bin", "data")


def test_metadata_round_trip() -> None:
    meta = _meta(batch_size=None, precision="int8", extra={"source": "test"})
    again = ModelMeta.from_json(meta.to_json())
    assert again == meta
    assert again.num_classes == 2


@pytest.mark.parametrize("text, message", [
    ("not json", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"format_version": 99}), "format version 99 is not supported"),
])
def test_metadata_rejects_bad_documents(text: str, message: str) -> None:
    with pytest.raises(ModelFormatError, match=message):
        ModelMeta.from_json(text, source="m.onnx")


def test_metadata_rejects_inconsistent_fields() -> None:
    raw = json.loads(_meta().to_json())
    raw["label_map"] = [1]
    with pytest.raises(ModelFormatError, match="label_map has 1 entries but there are 2 classes"):
        ModelMeta.from_json(json.dumps(raw), source="m.onnx")
    raw = json.loads(_meta().to_json())
    raw["surprise"] = 1
    with pytest.raises(ModelFormatError, match="unknown fields"):
        ModelMeta.from_json(json.dumps(raw), source="m.onnx")


def test_cli_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, *_ in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"detr-edge {name}" in capsys.readouterr().out


def test_console_script_help_without_torch(tmp_path: Path) -> None:
    """`detr-edge --help` must work on a runtime-only install (no torch)."""
    from no_torch import run_without_torch

    proc = run_without_torch("""
        import sys
        from runtime.cli import main
        sys.exit(main(sys.argv[1:]))
    """, ["--help"])
    assert proc.returncode == 0, proc.stderr
    assert "predict" in proc.stdout


@pytest.mark.parametrize("name, module_name", [(c[0], c[1]) for c in COMMANDS])
def test_every_command_module_is_light_and_complete(name: str, module_name: str) -> None:
    """Each command module exists, exposes add_arguments/run, and imports no torch."""
    code = (
        "import importlib, sys\n"
        f"m = importlib.import_module({module_name!r})\n"
        "assert callable(m.add_arguments) and callable(m.run)\n"
        "assert 'torch' not in sys.modules, 'command module imported torch at import time'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, f"{name}: {proc.stderr.strip().splitlines()[-1:]}"


def test_atomic_write_permissions(tmp_path: Path) -> None:
    """A new file gets 0o666 & ~umask (mkstemp alone gives 0o600); a replaced file keeps
    its own permissions."""
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text(tmp_path / "new.json", "{}")
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o666 & ~umask
    private = tmp_path / "private.pth"
    private.write_text("old")
    private.chmod(0o600)
    atomic_write_text(private, "new")
    assert private.stat().st_mode & 0o777 == 0o600 and private.read_text() == "new"
