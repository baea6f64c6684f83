"""Run Python code in a fresh interpreter where importing torch (or torchvision) fails,
as on a device install without the training extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith(("torch.", "torchvision")):
                raise ImportError(f"torch is blocked in this test (tried to import {name})")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")


def run_without_torch(code: str, args: list[str] | None = None, timeout: float = 120
                      ) -> subprocess.CompletedProcess[str]:
    """``python -c <blocker + code> <args>`` from the repository root (first on the
    path), one thread, with a minimal environment: nothing of this process leaks in."""
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code),
                           *(args or [])], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
