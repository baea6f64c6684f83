"""The dynamo ONNX exporter path: ``torch.onnx.export(..., dynamo=True)``.

``torch.export`` captures :class:`export.export_wrapper.ExportWrapper` as an
FX graph (non-strict mode), decomposes it to ATen core ops, and onnxscript's
torch_lib translates those to ONNX; onnxscript's optimizer then folds
constants. :func:`export.onnx_export.trace_to_onnx` runs the same onnxslim
pass, graph checks and parity on the result as for the TorchScript path.

What differs from the TorchScript exporter (torch 2.14.1, onnxscript 0.7.2),
measured on detr-tiny (docs/ARCHITECTURE.md, "ONNX exporters"):

- Opset >= 18 only. torch_lib has no implementations below 18; asking for 17
  makes torch convert the opset-18 graph down with ONNX's C converter, which
  leaves ``Split``'s opset-18 ``num_outputs`` attribute in an opset-17 graph
  (``onnx.checker`` full check: "Unrecognized attribute: num_outputs"). TensorRT
  10/11 parse opsets up to 24/25 (export/trt_ops.py), so 18 costs nothing there.
- The batch axis is a ``torch.export.Dim``; images and mask share one, so the
  graph knows both batch axes are equal.
- Export takes several times longer (decomposition runs every op through
  fake tensors with symbolic shapes).
- onnxslim cannot fold the unoptimised dynamo graph (a multi-output constant
  Split), so onnxscript's own optimizer runs first.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from runtime.errors import InputError

if TYPE_CHECKING:
    import onnx
    import torch

DYNAMO_MIN_OPSET = 18  # torch_lib's lowest opset (see module docstring)
# onnxscript's constant folder logs a warning for every Split it leaves alone
# ("Skipping constant folding ...", "Evaluation failed ...": numpy cannot
# evaluate Split with num_outputs); the graph is correct, the lines are noise.
_NOISY_LOGGERS = ("onnxscript.optimizer._constant_folding",)


@contextmanager
def _quiet_optimizer() -> Iterator[None]:
    """Raise the optimizer loggers to ERROR for the duration, then restore them."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Two inputs share the one batch Dim; torch then says it will not
            # rename the second axis "batch" (it already is).
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used",
                                    category=UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_dynamo_opset(opset: int) -> None:
    """Raise ``InputError`` for an opset the dynamo path cannot write correctly."""
    if opset < DYNAMO_MIN_OPSET:
        raise InputError("--opset", f"{opset} < {DYNAMO_MIN_OPSET}: the dynamo exporter "
                         "writes opset 18 or later (its conversion down to 17 produces an "
                         "invalid Split); use --opset 18 or --exporter torchscript")


def dynamo_export(wrapper: torch.nn.Module, args: tuple[torch.Tensor, ...],
                  input_names: Sequence[str], dynamic_batch: bool,
                  opset: int) -> onnx.ModelProto:
    """Export ``wrapper(*args)`` with the dynamo exporter -> ONNX model (opset ``opset``).

    ``args`` are example inputs whose axis 0 is the batch; ``dynamic_batch``
    makes that axis symbolic ('batch') on every input and output. Output names
    are ``logits``, ``boxes``. Raises ``InputError`` naming ``--exporter`` when
    torch cannot export (the message keeps torch's first 300 characters).
    """
    import torch

    check_dynamo_opset(opset)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = {name: {0: batch} for name in input_names}
    try:
        with torch.no_grad(), _quiet_optimizer():
            program = torch.onnx.export(
                wrapper, args, dynamo=True, input_names=list(input_names),
                output_names=["logits", "boxes"], opset_version=opset,
                dynamic_shapes=dynamic_shapes, optimize=True, verbose=False, report=False)
    except (ValueError, RuntimeError) as exc:  # torch.onnx errors derive from RuntimeError
        raise InputError("--exporter", f"the dynamo exporter failed at opset {opset}: "
                         f"{str(exc)[:300]}") from exc
    if program is None:  # only for a file-path target, which is not used here
        raise InputError("--exporter", "the dynamo exporter returned no program")
    return name_nodes_by_module(program.model_proto)


def name_nodes_by_module(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename nodes ``/<module path>/<op type>`` (in place), as TorchScript names them.

    Dynamo names nodes by op and counter (``node_MatMul_410``) and initializers
    by value (``val_411``), so nothing in a transformer node's names says which
    layer it belongs to; INT8 fallback groups nodes into blocks by those names
    (``export.int8.nodes.block_of``). The module path comes from the node's
    ``pkg.torch.onnx.name_scopes`` metadata: ``['', 'encoder', 'encoder.layers.0',
    'encoder.layers.0.linear1', 'linear_4']`` -> ``/encoder.layers.0.linear1/MatMul``.
    The metadata (with stack traces) is dropped; onnxslim would drop it anyway.
    """
    import ast

    used: set[str] = set()
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes_text = props.get("pkg.torch.onnx.name_scopes")
        del node.metadata_props[:]
        if not scopes_text:
            continue
        scopes = ast.literal_eval(scopes_text)  # a Python list literal of str
        # The last entry is the op itself; torch's placeholders start with "_".
        module = next((s for s in reversed(scopes[:-1]) if s and not s.startswith("_")), "")
        base = f"/{module}/{node.op_type}" if module else f"/{node.op_type}"
        name, i = base, 0
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        node.name = name
    return model
