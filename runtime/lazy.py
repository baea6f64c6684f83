"""Lazy package attributes: a package's public names are imported on first use.

Package ``__init__`` files use it so that importing a light module of a package
(the CLI's command modules, ``runtime.errors``) does not import torch, onnx or
onnxruntime through the package's public API.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package``: ``exports`` maps each public
    name to the module that defines it. The value is cached in the package, so
    later lookups do not come back here."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
