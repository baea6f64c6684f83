"""Session fixtures shared by several test files, and the suite's parallel layout.

Every shared fixture is built once per test process, under ``tmp_path_factory``, and is
read-only: a test that changes one copies it first.

``make test`` runs the suite in two pytest-xdist workers (``--dist loadfile``). Each
test file is one unit of work, so a module fixture is built by one worker only; the
files that use the same expensive session fixture (``SHARED_UNITS``) form one unit, so
that fixture is built once too. Units holding slow tests are handed out first, so that
no long file starts last. Each worker sets OMP_NUM_THREADS=1 (torch, numpy): two workers
on two cores, without the thread pools of one fighting those of the other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


def _one_onnxruntime_thread_per_worker() -> None:
    """ONNX Runtime sessions that leave their thread count to ORT get 1 intra-op
    thread that does not busy-wait: ORT's default is a pool of one thread per core
    that spins after each run, so two workers on two cores would each keep both
    cores busy spinning while the other worker waits for a core. Sessions that set
    their threads or spinning themselves (timing code, the stream runner) keep them."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    original = ort.InferenceSession.__init__

    def init(self: Any, path_or_bytes: Any, sess_options: Any = None, *args: Any,
             **kwargs: Any) -> None:
        options = sess_options if sess_options is not None else ort.SessionOptions()
        if options.intra_op_num_threads == 0:
            options.intra_op_num_threads = 1
            try:  # raises when the key was never set
                options.get_session_config_entry("session.intra_op.allow_spinning")
            except RuntimeError:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        original(self, path_or_bytes, options, *args, **kwargs)

    ort.InferenceSession.__init__ = init  # type: ignore[method-assign]


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Before torch / ONNX Runtime / numpy are imported by any test module.
    os.environ["OMP_NUM_THREADS"] = "1"
    _one_onnxruntime_thread_per_worker()

# Expensive session fixtures (tens of CPU seconds) -> the test files that use them: one
# unit of work for xdist, so the fixture is built by one worker only.
SHARED_UNITS = {"detr_tiny_int8": ("test_int8_exact.py", "test_qdq_format.py",
                                   "test_quantize.py", "test_stem_s2d.py")}
HEAVY_SHARED = tuple(SHARED_UNITS)


# ---- shared fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train + 2 val synthetic 64 px images with COCO annotations (6 categories)."""
    pytest.importorskip("torch")  # the synthetic dataset is drawn by detr.data
    from cli_checks import make_dataset

    return make_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def shapes_checkpoint(shapes_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ``SMALL`` detr-tiny checkpoint for the categories of ``shapes_dataset``."""
    from tiny_checkpoint import dataset_categories, save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth",
                                dataset_categories(shapes_dataset))


@pytest.fixture(scope="session")
def detr_tiny_int8(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real DETR-tiny graph (random init, 64 px, tests/tiny_detr_like.py), 24
    calibration images, and its INT8 models in both formats (8 calibration images).

    Keys: ``fp32``, ``images``, ``cache`` (paths); ``tensorrt`` / ``cpu`` (the INT8
    files); ``tensorrt_model`` / ``cpu_model`` (ModelProto); ``tensorrt_report`` /
    ``cpu_report`` (QuantizeReport)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from tiny_detr_like import export_detr_tiny, write_images

    from export.int8.config import QuantizeConfig
    from export.int8.quantize import quantize_int8

    root = tmp_path_factory.mktemp("detr_tiny_int8")
    out: dict[str, Any] = {"fp32": export_detr_tiny(root / "detr_tiny.onnx"),
                           "images": write_images(root / "images"), "cache": root / "cache"}
    for target in ("tensorrt", "cpu"):
        out[target] = root / f"detr_tiny.{target}.onnx"
        out[f"{target}_model"], out[f"{target}_report"] = quantize_int8(
            out["fp32"], str(out["images"]), QuantizeConfig(
                out_path=str(out[target]), calib_images=8, eval_images=0, latency_runs=0,
                threads=1, progress=False, target=target, cache_dir=str(out["cache"])))
    return out


# ---- parallel layout ---------------------------------------------------------------------

def _unit(path: str) -> str:
    """The unit of work of a test file (path or name): its own path, or the shared unit
    of the files that use one expensive session fixture."""
    name = Path(path).name
    return next((f"<{fixture}>" for fixture, files in SHARED_UNITS.items() if name in files),
                path)


@pytest.hookimpl(tryfirst=True)  # before xdist's own loadfile scheduler
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with the files of ``SHARED_UNITS`` as one unit each."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid.split("::", 1)[0])

    return FileUnits(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in HEAVY_SHARED:
            if fixture in getattr(item, "fixturenames", ()) and \
                    item.path.name not in SHARED_UNITS[fixture]:
                item.warn(pytest.PytestWarning(
                    f"uses {fixture}: list {item.path.name} in SHARED_UNITS (tests/conftest.py) "
                    "so that the fixture is built by one xdist worker only"))
    slow_units = {_unit(str(item.path)) for item in items if item.get_closest_marker("slow")}
    # Stable sort: units with slow tests first (xdist hands units out in this order, and a
    # long file started last would leave one worker idle), collection order otherwise.
    items.sort(key=lambda item: _unit(str(item.path)) not in slow_units)
