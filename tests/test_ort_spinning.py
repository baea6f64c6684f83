"""ORT intra-op spinning: off by default on machines with <= 2 CPUs
(runtime/ort_spinning.py), identically in the runtime backend and in the timing
sessions of quantize and the benchmark (benchmarks.timing.onnx_cpu_session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from benchmarks.timing import onnx_cpu_session
from runtime.backends.onnxruntime_backend import session_options
from runtime.ort_spinning import default_spinning

KEY = "session.intra_op.allow_spinning"


@pytest.mark.parametrize(("cpus", "spins"), [(1, False), (2, False), (3, True), (16, True)])
def test_default_spinning_by_cpu_count(cpus: int, spins: bool) -> None:
    assert default_spinning(cpus) is spins


def _identity(path: Path) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_runtime_and_timing_sessions_spin_alike(tmp_path: Path) -> None:
    want = "1" if (os.cpu_count() or 1) > 2 else "0"
    assert session_options(ort, None, False, None).get_session_config_entry(KEY) == want
    session = onnx_cpu_session(_identity(tmp_path / "relu.onnx"))
    assert session.get_session_options().get_session_config_entry(KEY) == want
    # An explicit choice still wins.
    assert session_options(ort, None, False, True).get_session_config_entry(KEY) == "1"
