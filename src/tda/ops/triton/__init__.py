"""Fused Triton kernels for Threshold Differential / Rectified Attention.

`attention.py` holds the public entry points (`tda`, `tra`, `unsupported_reason`) and the torch custom
ops; `fwd.py` the single-pass forward kernel; `bwd.py` the backward kernels (dK/dV and dQ programs, one
launch or two); `common.py` shared jit helpers (the survivor-flag tests, the live-block lists) and the
inverse-norm pre-pass of the fused q/k normalisation (normalize_qk=True); `launch.py` the launch cache;
`sm90.py` the compile-for-sm_90 check; `rope.py` rotary position embedding in one kernel each way (the layers'
RoPE on CUDA, eager).
Every kernel is checked against `tda.ops.reference` (tests/test_triton_kernels.py, benchmarks/check_kernels.py).
"""
