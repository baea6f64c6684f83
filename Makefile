# Two entry points for a fresh machine (see README):
#   make demo  - the main job on the embedded default (synthetic data, CPU backends)
#   make test  - the test suite
# Each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.detr-edge-installed
# Threads per process: the suite and the demo run on 2-core machines.
export OMP_NUM_THREADS ?= 2

.PHONY: demo test test-fast lint typecheck clean device-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision pinned: the only versions served on the build machines.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[onnx,train,export,bench,dev,video]'
	# Type stubs only: the package's dependency on tensorrt itself cannot be installed
	# here (its wheels live on another index), so skip dependencies.
	$(PY) -m pip install --quiet --no-deps 'tensorrt-stubs>=10.8'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/detr-edge pipeline --out runs/demo

# Two workers, one thread each (tests/conftest.py): on 2 cores the suite's serial parts
# (imports, subprocesses, ONNX export) overlap. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -x

lint: $(STAMP)
	$(VENV)/bin/ruff check detr export runtime benchmarks tests

# The whole library, with the tensorrt-stubs installed above (tests/test_typecheck_trt.py
# also checks that mypy really sees them). ~1.5 min without a cache on 2 cores.
typecheck: $(STAMP)
	$(PY) -m mypy detr export runtime benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache

# The TensorRT path on a machine with a GPU, TensorRT and cuda-python: engines of the
# demo model and of DETR-R50, golden checks, benchmark with TensorRT rows and CUDA
# graphs. Without a GPU it says so and exits 2.
device-check: $(STAMP)
	$(PY) -m benchmarks.device_check --out runs/device-check
