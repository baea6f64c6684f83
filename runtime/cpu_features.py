"""Does this CPU have an int8 dot-product instruction ONNX Runtime's integer kernels rely on?

Why it matters: on x86 CPUs with AVX2 but without VNNI, ONNX Runtime's u8 x s8
kernels (QLinearConv, MatMulInteger; int8 activations are shifted to uint8 first)
use ``vpmaddubsw``, which adds two u8 x s8 products into a SATURATING int16. With
8-bit weights the pair can reach 2 x 255 x 127 = 64,770 > 32,767, so outputs are
clipped silently. Measured on this project's AVX2-only EPYC on the random-init
DETR-tiny of ``tests/test_qdq_format.py``: relative logits error 0.34 (cpu format)
and 0.20 (TensorRT format) with 8-bit weights, against 0.05 for the same models
with 7-bit weights or with the Q/DQ graph run unfused (exact integer semantics).
VNNI (``vpdpbusd``) accumulates in int32 and has no such limit; ARM's ``sdot``/
``udot`` neither. 7-bit weights (|w| <= 63 -> 2 x 255 x 63 = 32,130) never saturate.
"""

from __future__ import annotations

from functools import lru_cache

# /proc/cpuinfo flags that give int32-accumulating int8 dot products.
_DOT_PRODUCT_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8",  # x86
                      "asimddp"}  # aarch64 (sdot/udot)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty when unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):  # x86 | aarch64
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def int8_dot_product_safe(flags: frozenset[str] | None = None) -> bool:
    """True unless ONNX Runtime's CPU int8 kernels saturate here: an x86 CPU with
    AVX2 but no VNNI/AMX (``vpmaddubsw``). CPUs without AVX2 (SSE kernels widen to
    int16 x int16) and ARM CPUs (``sdot``/``udot`` or widening multiplies) are safe."""
    flags = cpu_flags() if flags is None else flags
    return "avx2" not in flags or bool(flags & _DOT_PRODUCT_FLAGS)
