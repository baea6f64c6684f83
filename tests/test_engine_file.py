"""Engine file format: round trip, corruption detection, compatibility checks."""

from __future__ import annotations

import pytest

from runtime.engine_file import (
    MAGIC,
    check_compatible,
    is_engine_file,
    read_engine_file,
    read_engine_header,
    version_problem,
    write_engine_file,
)
from runtime.errors import InputError, ModelFormatError
from runtime.metadata import ModelMeta

META = ModelMeta(preset="detr-tiny", input_height=64, input_width=96, class_names=["cat", "dog"],
                 label_map=[17, 18], batch_size=None, with_mask=True, precision="fp16")
PLAN = bytes(range(256)) * 40


def _write(path):
    return write_engine_file(path, META, PLAN, tensorrt_version="10.13.0.35",
                             gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                             built_with={"fp16": True, "detr_edge": "0.1.0"})


def test_round_trip(tmp_path) -> None:
    path = tmp_path / "m.engine"
    written = _write(path)
    raw = path.read_bytes()
    assert raw.startswith(MAGIC) and raw.endswith(PLAN)
    assert int.from_bytes(raw[8:12], "little") == len(raw) - 12 - len(PLAN)
    header, plan = read_engine_file(path)
    assert plan == PLAN and header == written
    assert header.meta == META and header.meta.with_mask and header.meta.batch_size is None
    assert read_engine_header(path).built_with == {"fp16": True, "detr_edge": "0.1.0"}
    assert is_engine_file(path) and not is_engine_file(tmp_path / "missing")


def test_truncated_and_corrupt_files(tmp_path) -> None:
    path = tmp_path / "m.engine"
    _write(path)
    raw = path.read_bytes()
    cases = {
        "trunc_plan.engine": (raw[:-10], "truncated"),
        "trunc_header.engine": (raw[:40], "truncated"),
        "trunc_len.engine": (raw[:10], "truncated"),
        "bad_magic.engine": (b"NOTMAGIC" + raw[8:], "DETREDGE magic"),
        "onnx.engine": (b"\x08\x07\x12\x04", "DETREDGE magic"),
        "flipped.engine": (raw[:-1] + bytes([raw[-1] ^ 1]), "SHA-256"),
        "huge_len.engine": (MAGIC + b"\xff\xff\xff\xff" + raw[12:], "implausible"),
    }
    for name, (data, message) in cases.items():
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(ModelFormatError, match=message) as info:
            read_engine_file(bad)
        assert name in str(info.value)
    with pytest.raises(InputError, match="not found"):
        read_engine_header(tmp_path / "nope.engine")


def test_check_compatible(tmp_path) -> None:
    header = _write(tmp_path / "m.engine")
    check_compatible(header, "10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")  # same: fine
    check_compatible(header, "10.13.0.99", "NVIDIA H100 80GB HBM3", "9.0")  # build differs only
    with pytest.raises(ModelFormatError, match=r"TensorRT 10\.13\.0\.35, this is TensorRT 10\.8"):
        check_compatible(header, "10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(ModelFormatError, match=r"compute capability 9\.0 .* Orin is 8\.7"):
        check_compatible(header, "10.13.0.35", "Orin", "8.7", source="m.engine")
    with pytest.raises(ModelFormatError, match="specific to the GPU model"):
        check_compatible(header, "10.13.0.35", "NVIDIA H200", "9.0")
    relaxed = header.__class__(**{**header.__dict__, "built_with": {
        "version_compatible": True, "hardware_compatibility": "ampere_plus"}})
    # Version-compatible (built with 10.13): later runtimes of the same major and 11.x
    # run it; an older 10.x does not (NVIDIA's "Version Compatibility" rules).
    check_compatible(relaxed, "10.16.1.11", "NVIDIA A100", "8.0")
    check_compatible(relaxed, "11.0.0.1", "NVIDIA A100", "8.0")
    with pytest.raises(ModelFormatError, match=r"older TensorRT 10\.8"):
        check_compatible(relaxed, "10.8.0.43", "NVIDIA A100", "8.0")
    with pytest.raises(ModelFormatError, match="Ampere"):
        check_compatible(relaxed, "10.16.1.11", "Tesla T4", "7.5")
    unknown_gpu = header.__class__(**{**header.__dict__, "gpu_name": "unknown",
                                      "compute_capability": "unknown"})
    check_compatible(unknown_gpu, "10.13.0.35", "Orin", "8.7")  # GPU not recorded: not checked
    with pytest.raises(ModelFormatError, match="TensorRT 10.13.0.35"):
        check_compatible(unknown_gpu, "10.3.0.30", "Orin", "8.7")


@pytest.mark.parametrize("built, runtime, compatible, ok", [
    ("10.13.0.35", "10.13.0.99", False, True),  # only the build number differs
    ("10.13.0.35", "10.13.3.9", False, False),  # another patch release
    ("10.13.0.35", "10.3.0.30", True, False),  # never on an older runtime
    ("10.3.0.30", "10.13.0.35", True, True),  # later runtime, same major
    ("10.3.0.30", "11.1.0.4", True, True),  # 10 -> 11 is supported
    ("8.6.1.6", "10.3.0.30", True, True),  # 8 -> 10 is supported
    ("8.6.1.6", "11.1.0.4", True, False),  # 8 -> 11 is not
    ("11.1.0.4", "10.13.0.35", True, False),  # newer major on an older runtime
    ("8.5.3.1", "8.6.1.6", True, False),  # version compatibility starts at 8.6
])
def test_version_rule(built: str, runtime: str, compatible: bool, ok: bool) -> None:
    assert (version_problem(built, runtime, compatible) is None) == ok
