"""runtime.cpu_features: which CPUs make ONNX Runtime's int8 kernels saturate."""

from __future__ import annotations

import sys

import pytest

from runtime.cpu_features import cpu_flags, int8_dot_product_safe


@pytest.mark.parametrize(("flags", "safe"), [
    ({"sse4_1", "avx2", "fma"}, False),  # AVX2 without VNNI: vpmaddubsw saturates
    ({"avx2", "avx512f", "avx512_vnni"}, True),
    ({"avx2", "avx_vnni"}, True),  # Alder Lake+ without AVX-512
    ({"avx2", "amx_int8"}, True),
    ({"sse4_1", "ssse3"}, True),  # no AVX2: SSE kernels widen to int16 x int16
    ({"fp", "asimd", "asimddp"}, True),  # aarch64 with sdot/udot
    ({"fp", "asimd"}, True),  # aarch64 without: widening multiplies
    (set(), True),
])
def test_saturating_cpus(flags: set[str], safe: bool) -> None:
    assert int8_dot_product_safe(frozenset(flags)) is safe


def test_this_machine_reads_its_flags() -> None:
    flags = cpu_flags()
    if sys.platform == "linux":  # /proc/cpuinfo always lists them there
        assert flags and all(f == f.lower() for f in flags)
    assert int8_dot_product_safe() is int8_dot_product_safe(flags)
