"""Orchestration, not a benchmark: ``detr-edge pipeline`` runs the whole job (dataset
checks, training or the demo checkpoint, ONNX export, INT8, engines) and ends with
the benchmark (``benchmarks.suite``).

- ``pipeline.py``: the stages in order, resumable (``run_pipeline``);
- ``pipeline_stages.py``: the work of each stage and the resume cache;
- ``dataset_check.py``: a user's dataset checked and described, its canvas chosen.
"""
