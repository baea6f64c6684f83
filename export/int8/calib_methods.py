"""Calibration ranges mixed per block: each block's activations quantized with
the calibration method that suits it best.

ONNX Runtime's ``quantize_static`` applies one calibration method to the whole
model, and caches the measured ranges as JSON (``calibration_cache_path``: per
tensor ``lowest`` / ``highest``). Each method is calibrated once, into its own
cache; a configuration "block b with method m" is then a merged cache in which
the tensors block b quantizes (the activation inputs of its nodes) take their
range from m's cache and every other tensor from the default method's. Only the
ranges change: the Q/DQ structure is the same, so the merged model is compared
with the others like for like.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from export.onnx_graph import constant_names
from runtime import json_limits
from runtime.atomic import atomic_write_text
from runtime.errors import DataError

if TYPE_CHECKING:
    import onnx


def tensor_blocks(model: onnx.ModelProto, blocks: dict[str, list[str]]) -> dict[str, str]:
    """Activation tensor -> block whose node reads it (the first reader in graph
    order: a block's input belongs to the block that quantizes it)."""
    constants = constant_names(model)
    node_block = {n: b for b, nodes in blocks.items() for n in nodes}
    owner: dict[str, str] = {}
    for node in model.graph.node:
        block = node_block.get(node.name)
        if block is None:
            continue
        for name in node.input:
            if name and name not in constants:
                owner.setdefault(name, block)
    return owner


def _read(path: Path) -> dict:
    try:
        return json_limits.read_json_file(path, what="calibration cache", allow_nan=True)
    except DataError as exc:
        raise DataError(path, f"unreadable calibration cache ({exc.problem}); delete it to "
                        "recalibrate") from exc


def merge_caches(default_cache: Path, method_caches: dict[str, Path],
                 block_methods: dict[str, str], owner: dict[str, str], out_dir: Path) -> Path:
    """A cache with the default method's ranges, except the tensors of each block in
    ``block_methods`` (block -> method), which take that method's. Written once
    per combination (file name = hash of the inputs); returns its path."""
    key = hashlib.sha256(json.dumps([str(default_cache), sorted(block_methods.items()),
                                     {m: str(p) for m, p in sorted(method_caches.items())}]
                                    ).encode()).hexdigest()[:16]
    out = out_dir / f"detr-edge-calib-mixed-{key}.json"
    if out.is_file():
        return out
    merged = _read(default_cache)
    data = merged["data"]
    others = {m: _read(p)["data"] for m, p in method_caches.items()
              if m in set(block_methods.values())}
    for tensor, block in owner.items():
        method = block_methods.get(block)
        if method is not None and tensor in others[method] and tensor in data:
            # Only the range: histograms of another method mean nothing to this one.
            source = others[method][tensor]
            data[tensor] = {k: source[k] for k in ("lowest", "highest", "CLS") if k in source}
    atomic_write_text(out, json.dumps(merged))
    return out
