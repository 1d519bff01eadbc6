"""Argument checks shared by every backend: bad input fails here, with the argument's name,
before any kernel sees it."""
from __future__ import annotations

import math

import torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, t, ndim: int = 4) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise ValueError(f"{name} must be a floating tensor (fp16/bf16/fp32/fp64), got dtype {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims (B, H, N, D), got shape {tuple(t.shape)}")


def _check_scalar_param(name: str, t, n_heads: int, ref: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
    """beta / lam: a Python number or a tensor of shape () or (H,). Returns a float32 (H,) tensor.
    check_finite=False skips the value test (a host sync for CUDA tensors): for callers whose beta/lam are
    learned parameters, where a non-finite value can only come from a diverged optimiser."""
    if not isinstance(t, torch.Tensor):
        if not isinstance(t, (int, float)):
            raise ValueError(f"{name} must be a float or a tensor, got {type(t).__name__}")
        t = torch.tensor(float(t), device=ref.device)
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if t.numel() not in (1, n_heads) or t.dim() > 1:
        raise ValueError(f"{name} must be a scalar or have shape ({n_heads},) (one per query head), "
                         f"got shape {tuple(t.shape)}")
    # A host sync on CUDA; skipped while tracing under torch.compile, where it would break the graph.
    if check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} must be finite, got {t.detach().cpu().tolist()}")
    if t.dim() == 1 and t.shape[0] == n_heads:
        return t  # as is: no view nodes for autograd to walk in the backward
    return t.reshape(-1).expand(n_heads)


def check_inputs(qs, ks, v, *, kappa, p, causal, position_offset, key_padding_mask=None):
    """Validate the query/key views and value tensor. `qs` and `ks` are lists of (name, tensor).

    Causal lengths: the mask is bottom-right aligned (query row r sees keys j <= r + N_k - N_q) and query row
    r sits at absolute position position_offset + r, so a causal call needs N_q <= N_k <= N_q +
    position_offset: fewer keys than queries would leave the first rows with no key at all, and keys
    beyond the offset would let a query see more keys than precede its position. N_k = N_q + position_offset
    is a KV cache of position_offset positions; N_k < N_q + position_offset a window of the latest keys."""
    for name, t in (*qs, *ks, ("v", v)):
        _check_tensor(name, t)
    (qn, q0), (kn, k0) = qs[0], ks[0]
    B, H, M, D = q0.shape
    _, Hk, N, _ = k0.shape
    for name, t in qs:
        if t.shape != q0.shape:
            raise ValueError(f"{name} must have the shape of {qn} {tuple(q0.shape)}, got {tuple(t.shape)}")
    for name, t in ks:
        if t.shape[0] != B:
            raise ValueError(f"{name} batch size {t.shape[0]} != {qn} batch size {B}")
        if t.shape[3] != D:
            raise ValueError(f"{name} head dim {t.shape[3]} != {qn} head dim {D}")
        if t.shape != k0.shape:
            raise ValueError(f"{name} must have the shape of {kn} {tuple(k0.shape)}, got {tuple(t.shape)}")
    if v.shape[0] != B or v.shape[1] != Hk or v.shape[2] != N:
        raise ValueError(f"v must have shape ({B}, {Hk}, {N}, Dv) to match {kn}, got {tuple(v.shape)}")
    if Hk == 0 or H % Hk != 0:
        raise ValueError(f"{kn} heads ({Hk}) must divide {qn} heads ({H}) for grouped-query attention")
    dtypes = {t.dtype for _, t in (*qs, *ks)} | {v.dtype}
    if len(dtypes) != 1:
        raise ValueError(f"q, k and v must share one dtype, got {sorted(str(d) for d in dtypes)}")
    devices = {t.device for _, t in (*qs, *ks)} | {v.device}
    if len(devices) != 1:
        raise ValueError(f"q, k and v must be on one device, got {sorted(str(d) for d in devices)}")
    if not isinstance(kappa, (int, float)) or not math.isfinite(kappa) or kappa <= 0:
        raise ValueError(f"kappa must be a finite number > 0, got {kappa!r}")
    if not isinstance(p, (int, float)) or not math.isfinite(p) or p < 1:
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    if not isinstance(position_offset, int) or isinstance(position_offset, bool) or position_offset < 0:
        raise ValueError(f"position_offset must be an int >= 0, got {position_offset!r}")
    if causal and N < M:
        raise ValueError(f"causal attention needs at least as many keys as queries: {kn} has {N} positions, "
                         f"{qn} has {M} (its first {M - N} rows would see no key)")
    if causal and N - M > position_offset:
        raise ValueError(f"{kn} is {N - M} positions longer than {qn}, but position_offset is {position_offset}: "
                         f"with a KV cache, position_offset must count the cached positions ({N - M})")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise ValueError("key_padding_mask must be a bool tensor of shape (B, N_k), True = attend")
        if tuple(key_padding_mask.shape) != (B, N):
            raise ValueError(f"key_padding_mask must have shape ({B}, {N}), got {tuple(key_padding_mask.shape)}")
    return B, H, M, D, Hk, N


def linear_compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype nn.Linear would compute x @ weight.T in: autocast's where it is on for x's device, else the
    promoted input dtypes."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(x.dtype, weight.dtype)
