"""Fused Triton kernels for Threshold Differential / Rectified Attention.

`attention.py` holds the public entry points (`tda`, `tra`, `unsupported_reason`) and the torch custom
ops; `fwd.py` the single-pass forward kernel; `bwd.py` the dK/dV and dQ backward kernels. Every kernel
is checked against `tda.ops.reference` (tests/test_triton_kernels.py, benchmarks/check_kernels.py).
"""
