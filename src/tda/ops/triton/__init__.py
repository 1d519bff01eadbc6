"""Fused Triton kernels for Threshold Differential / Rectified Attention.

`attention.py` holds the public entry points (`tda`, `tra`, `unsupported_reason`) and the torch custom
ops; `fwd.py` the single-pass forward kernel; `bwd.py` the dK/dV and dQ backward kernels; `common.py`
shared jit helpers and the inverse-norm pre-pass of the fused q/k normalisation (normalize_qk=True).
Every kernel is checked against `tda.ops.reference` (tests/test_triton_kernels.py, benchmarks/check_kernels.py).
"""
