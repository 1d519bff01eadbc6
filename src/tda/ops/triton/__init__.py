"""Fused Triton kernels for Threshold Differential / Rectified Attention.

`attention.py`: the entry points (`threshold_differential_attention`, `threshold_rectified_attention`,
`unsupported_reason`) and their autograd (eager autograd.Function, torch.compile custom ops);
`config.py`: `KernelConfig` and the block table; `launch.py`: the launches (grids, arguments, options);
`launch_cache.py`: the per-specialisation launch cache; `fwd.py`: the forward kernel; `bwd.py`: the
backward kernel (dK/dV and dQ programs in one launch); `common.py`: jit helpers shared by both and the
key-norm pre-pass; `sm90.py`: compiling the table's kernels for sm_90 without a GPU; `rope.py`: rotary
position embedding in one kernel each way (the layers' RoPE on CUDA); `project_rope.py`: TDA's q/k/v
projections as one GEMM with RoPE fused; `rms_norm.py`: RMSNorm in one kernel each way; `cross_entropy.py`:
the chunked cross-entropy's row pass.
Every kernel is checked against `tda.ops.reference` (tests/test_triton_kernels.py, benchmarks/check_kernels.py).
"""
