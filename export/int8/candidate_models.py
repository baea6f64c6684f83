"""The INT8 model of each configuration the search tries (blocks kept in FP32,
calibration method per block), each made once, from calibration ranges measured
once per method and cached on disk (keyed by model, images and method), so a
rerun after Ctrl-C resumes from the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.int8.calib_data import fixed_size_batches, iter_feeds
from export.int8.calib_methods import merge_caches, tensor_blocks
from export.int8.config import QuantizeConfig
from export.int8.qdq_insert import quantize_nodes
from runtime import json_limits
from runtime.errors import DataError
from runtime.metadata import ModelMeta

if TYPE_CHECKING:
    import onnx


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over preprocessed calibration feeds."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _cache_key(model: onnx.ModelProto, images: Sequence[Path], config: QuantizeConfig,
               method: str) -> str:
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    # The cpu target calibrates more tensors (ReLU/Add outputs): its own cache.
    h.update(json.dumps([method, config.percentile, config.quantize_attention,
                         [str(p) for p in images]] + (["cpu-s2d"] if config.target == "cpu" else [])
                        ).encode())
    return h.hexdigest()[:16]


def drop_unreadable_cache(path: Path) -> None:
    """ORT writes its calibration cache non-atomically; a cache cut short by
    Ctrl-C is removed so the rerun recalibrates instead of failing on it."""
    if not path.is_file():
        return
    try:
        json_limits.read_json_file(path, what="calibration cache", allow_nan=True)
    except DataError:
        path.unlink(missing_ok=True)


class CandidateModels:
    """``models(fallback, methods)`` -> path of the INT8 model with the blocks
    ``fallback`` in FP32 and ``methods`` (block -> calibration method) ranges; made
    on first request, in ``work``."""

    def __init__(self, fp32: onnx.ModelProto, fp32_path: Path, work: Path,
                 blocks: dict[str, list[str]], calib: list[Path], meta: ModelMeta,
                 config: QuantizeConfig, cache_dir: Path) -> None:
        self.fp32, self.fp32_path, self.work, self.blocks = fp32, fp32_path, work, blocks
        self.calib, self.meta, self.config, self.cache_dir = calib, meta, config, cache_dir
        self.nodes = [n for nodes in blocks.values() for n in nodes]
        self.owner = tensor_blocks(fp32, blocks)
        self.made: dict[tuple[frozenset[str], tuple[tuple[str, str], ...]], Path] = {}

    def cache(self, method: str) -> Path:
        """The calibration cache file of ``method`` (whether or not it exists yet)."""
        return self.cache_dir / \
            f"detr-edge-calib-{_cache_key(self.fp32, self.calib, self.config, method)}.json"

    def _reader(self) -> _Reader:
        batch = self.meta.batch_size or 1
        return _Reader(fixed_size_batches(self.calib, self.meta, batch) if self.meta.batch_size
                       else iter_feeds(self.calib, self.meta, batch))

    def _calibrated(self, method: str) -> Path:
        """The calibration cache of ``method`` (calibrating every node once if absent)."""
        path = self.cache(method)
        drop_unreadable_cache(path)
        if not path.is_file():
            quantize_nodes(self.fp32_path, self.work / f"calib_{method}.onnx", self.nodes,
                           self._reader(), path, dataclasses.replace(self.config, method=method))
        return path

    def __call__(self, fallback: Sequence[str], methods: dict[str, str] | None = None) -> Path:
        methods = {b: m for b, m in (methods or {}).items() if m != self.config.method}
        key = (frozenset(fallback), tuple(sorted(methods.items())))
        if key not in self.made:
            cache = self._calibrated(self.config.method)
            if methods:
                cache = merge_caches(cache, {m: self._calibrated(m) for m in set(methods.values())},
                                     methods, self.owner, self.cache_dir)
            skip = {n for b in fallback for n in self.blocks[b]}
            path = self.work / f"int8_{len(self.made)}.onnx"
            quantize_nodes(self.fp32_path, path, [n for n in self.nodes if n not in skip],
                           self._reader(), cache, self.config)
            self.made[key] = path
        return self.made[key]
