"""Entry points of the fused kernels: `threshold_differential_attention`, `threshold_rectified_attention`
(called by tda.ops for backend="triton" / "auto" on CUDA), `unsupported_reason`, and their autograd.

Semantics are those of tda.ops.reference (its docstring; its `attention_backward` gives the gradients the
backward kernel computes). The l2 normalisation of q/k is fused (normalize_qk=True): the kernels get the raw
q/k and scale the raw dot products by fp32 inverse norms -- rq computed and stored by the forward kernel
itself, rk by one small pre-pass launch -- kept for the backward, whose epilogues apply the normalisation's
exact backward. tau_i = beta_h * scale_i, scale_i = sqrt(2 max(log((pos+1)/kappa), 0) / d) (reference.tau),
is formed inside the kernels from beta and a cached scale vector, and the backward returns each dQ program's
dbeta share, so a call runs no PyTorch kernels besides allocations and one final reduction: at short N the
per-call host work, not the GPU, sets the time.

Which path a call takes:
- no gradient wanted (no_grad, or no input requiring grad): `launch.forward(..., for_bwd=False)`, the
  inference forward (no autograd node, no flags, no stored norms), with the table's inference config;
- eager training: `_EagerAttention` (a plain autograd.Function): `launch.forward` then `launch.backward`,
  with the table's training config;
- under torch.compile: the torch custom ops `tda::threshold_attention_fwd` / `_bwd` (opaque to the compiler:
  no graph break), with tau (H, M) formed in torch and the table's training config.
The config comes from config.block_config(head dim, dtype, key length, training); `config=` replaces it
(eager only) for tests and benchmarks.
"""
import contextlib
import weakref
from typing import Optional

import torch
import triton

from .. import reference
from ..validate import _check_scalar_param, check_inputs
from . import launch
from .common import dot_probe_kernel
from .config import KernelConfig, block_config, interpreting

HEAD_DIMS = (16, 32, 64, 128)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------------------------------
# what the kernels support

def unsupported_reason(q, k, v, p) -> Optional[str]:
    """None if the fused kernel can run a call with these tensors, else why not (in words)."""
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return None  # let argument validation name the culprit
    if (q.is_cuda and q.dtype in _DTYPES and q.dim() == 4 and v.dim() == 4 and q.shape[-1] in HEAD_DIMS
            and v.shape[-1] in HEAD_DIMS):
        return None  # the common case, decided without the environment look-ups below
    if q.device.type != "cuda" and not interpreting():
        return f"tensors are on {q.device.type}; the Triton kernel needs CUDA (or TRITON_INTERPRET=1)"
    dtypes = _DTYPES + ((torch.float64,) if interpreting() else ())
    if q.dtype not in dtypes:
        return f"dtype {q.dtype} not in {tuple(str(d) for d in dtypes)}"
    if interpreting() and q.dtype in (torch.float16, torch.bfloat16) and not interpreter_dot_ok(q.dtype):
        return (f"this Triton's interpreter ({triton.__version__}) computes {q.dtype} products wrongly; "
                f"on the CPU pass float32 or float64 (or use backend='reference')")
    if q.dim() == 4 and q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} not in {HEAD_DIMS}"
    if v.dim() == 4 and v.shape[-1] not in HEAD_DIMS:
        return f"value head dim {v.shape[-1]} not in {HEAD_DIMS}"
    return None


_DOT_OK: dict = {}


@torch.compiler.assume_constant_result  # under torch.compile: probed eagerly once, not traced
def interpreter_dot_ok(dtype: torch.dtype) -> bool:
    """Whether the Triton interpreter multiplies `dtype` tiles correctly (once per dtype: a 16 x 16 tl.dot
    against torch). Triton 3.9's does not for bfloat16: it multiplies bf16's raw bit patterns (values off by
    ~1e10; triton-lang/triton#11584, unsupported upstream), so a bf16 call under TRITON_INTERPRET=1 is
    refused rather than answered with garbage."""
    ok = _DOT_OK.get(dtype)
    if ok is None:
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(16, 16, generator=g).to(dtype) for _ in range(2))
        c = torch.empty(16, 16)
        dot_probe_kernel[(1,)](a, b, c, N=16)
        want = a.float() @ b.float()
        ok = _DOT_OK[dtype] = bool(torch.allclose(c, want, rtol=1e-2, atol=1e-2))
    return ok


def _on_device(t):
    """torch.cuda.device(t.device) only where it differs from the current device (entering the context
    costs a few microseconds, a large share of a small call)."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _training_config(q1, k1) -> KernelConfig:
    return block_config(q1.shape[-1], q1.dtype, k1.shape[2], True)


# ---------------------------------------------------------------------------------------------------
# torch.compile path: torch custom ops (opaque to the compiler) with autograd; tau (H, M) precomputed, so
# beta's gradient flows through it by autograd. Defined through torch.library.Library rather than the
# @custom_op decorator, whose per-call Python wrapper (it checks that no output aliases an input) cost 4 us per
# forward and 13 us per backward call on top (torch 2.13, CPU): a compiled model calls both ops once per layer
# and step, and its step can be host-bound (docs/kernels.md). Every output here is a fresh tensor.

_LIB = torch.library.Library("tda", "DEF")
# docs: packed documents' table (packed_attention), the grid sized by the row length M
_LIB.define("threshold_attention_fwd(Tensor q1, Tensor k1, Tensor? q2, Tensor? k2, Tensor v, Tensor tau, "
            "Tensor? lam, float p, bool causal, bool normalize=False, Tensor? docs=None) "
            "-> (Tensor, Tensor, Tensor, Tensor)")
_LIB.define("threshold_attention_bwd(Tensor do, Tensor q1, Tensor k1, Tensor? q2, Tensor? k2, Tensor v, "
            "Tensor tau, Tensor? lam, Tensor flags, Tensor rq, Tensor rk, float p, bool causal, "
            "Tensor? docs=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


def _impl(name):
    def register(fn):
        _LIB.impl(name, fn, "CompositeExplicitAutograd")  # any device: CUDA, or the CPU under the interpreter
        return fn
    return register


@_impl("threshold_attention_fwd")
def _fwd_op(q1, k1, q2, k2, v, tau, lam, p, causal, normalize=False, docs=None):
    """(out, survivor flags, rq, rk) for tau (H, M) fp32 and lam (H,) fp32 (TDA) or None (TRA).
    normalize: q/k are raw and the op uses their cosine (rq (T, B, H, M), rk (T, B, Hk, N) are the inverse
    norms, for the backward); else q/k are used as given (unit vectors) and rq, rk are empty."""
    with _on_device(q1):
        out, flags, rq, rk = launch.forward(q1, k1, q2, k2, v, None, tau, lam, p, causal,
                                            _training_config(q1, k1), normalize,
                                            docs=None if docs is None else (docs, q1.shape[2]))
    if rq is None:
        rq, rk = tau.new_empty(0), tau.new_empty(0)
    return out, flags, rq, rk


@torch.library.register_fake("tda::threshold_attention_fwd", lib=_LIB)
def _(q1, k1, q2, k2, v, tau, lam, p, causal, normalize=False, docs=None):
    B, H, M, D = q1.shape
    Hk, N = k1.shape[1], k1.shape[2]
    FM, FN = _training_config(q1, k1).flags
    out = q1.new_empty((B, H, M, v.shape[-1]))
    n_seq = B if docs is None else docs.shape[0]
    flags = q1.new_empty((n_seq * H, -(-M // FM), -(-N // FN)), dtype=torch.int8)
    T = 2 if q2 is not None else 1
    if normalize:
        rq = q1.new_empty((T, B, H, M), dtype=launch.norm_dtype(q1))
        rk = q1.new_empty((T, B, Hk, N), dtype=launch.norm_dtype(q1))
    else:
        rq, rk = tau.new_empty(0), tau.new_empty(0)
    return out, flags, rq, rk


@_impl("threshold_attention_bwd")
def _bwd_op(do, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, p, causal, docs=None):
    """(dq1, dk1, dq2, dk2, dv, dtau (H, M), dlam (H,)); the view-2 and lam grads are empty for TRA.
    rq, rk: the forward's inverse norms (empty: no normalisation)."""
    if rq.numel() == 0 or rk.numel() == 0:
        rq, rk = None, None
    with _on_device(q1):
        dq1, dk1, dq2, dk2, dv, g = launch.backward(do, q1, k1, q2, k2, v, None, tau, lam, flags, rq, rk, p, causal,
                                                    _training_config(q1, k1),
                                                    docs=None if docs is None else (docs, q1.shape[2]))
    dtau = g[0].sum(1).to(tau.dtype)
    if q2 is None:
        return dq1, dk1, q1.new_empty(0), k1.new_empty(0), dv, dtau, tau.new_empty(0)
    return dq1, dk1, dq2, dk2, dv, dtau, g[1].sum((1, 2)).to(tau.dtype)


@torch.library.register_fake("tda::threshold_attention_bwd", lib=_LIB)
def _(do, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, p, causal, docs=None):
    # the real op returns contiguous gradients whatever the inputs' strides (empty_like would copy a
    # transposed input's strides, and torch.compile rejects a fake kernel whose strides differ)
    two = q2 is not None
    H, M = q1.shape[1], q1.shape[2]
    dq2 = q1.new_empty(q1.shape) if two else q1.new_empty(0)
    dk2 = k1.new_empty(k1.shape) if two else k1.new_empty(0)
    dlam = q1.new_empty((H,), dtype=tau.dtype) if two else q1.new_empty(0, dtype=tau.dtype)
    return (q1.new_empty(q1.shape), k1.new_empty(k1.shape), dq2, dk2, v.new_empty(v.shape),
            q1.new_empty((H, M), dtype=tau.dtype), dlam)


def _setup_context(ctx, inputs, output):
    q1, k1, q2, k2, v, tau, lam, p, causal, normalize, docs = inputs
    _, flags, rq, rk = output
    ctx.save_for_backward(q1, k1, q2, k2, v, tau, lam, flags, rq, rk, docs)
    ctx.p, ctx.causal = p, causal
    ctx.mark_non_differentiable(flags, rq, rk)


def _backward(ctx, dout, dflags, drq, drk):
    q1, k1, q2, k2, v, tau, lam, flags, rq, rk, docs = ctx.saved_tensors
    dq1, dk1, dq2, dk2, dv, dtau, dlam = threshold_attention_bwd(
        dout, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, ctx.p, ctx.causal, docs)
    two = q2 is not None
    return (dq1, dk1, dq2 if two else None, dk2 if two else None, dv, dtau, dlam if two else None,
            None, None, None, None)


torch.library.register_autograd("tda::threshold_attention_fwd", _backward, setup_context=_setup_context, lib=_LIB)
threshold_attention_fwd = torch.ops.tda.threshold_attention_fwd
threshold_attention_bwd = torch.ops.tda.threshold_attention_bwd


# ---------------------------------------------------------------------------------------------------
# eager path

_VALIDATED: dict = {}  # name -> (weakref to a beta/lam tensor, its version) that passed the checks
_SCALE_CACHE: dict = {}  # (device, M, offset, kappa, d, dtype) -> (M,) beta-free row factor of tau


def _scalar_param(name, t, n_heads, ref, check_finite=True):
    """_check_scalar_param, whose finiteness test costs a host sync on CUDA, skipped for the very tensor
    object (same version counter, so not modified in place since) that passed it on the previous call.
    Returns an (H,) view on ref's device."""
    if isinstance(t, torch.Tensor) and not torch.compiler.is_compiling():
        seen = _VALIDATED.get(name)
        if (seen is not None and seen[0]() is t and seen[1] == t._version and seen[2] == n_heads
                and t.is_floating_point()):
            # a per-head (H,) tensor is used as is: no view nodes for autograd to walk in the backward
            out = t if t.dim() == 1 and t.shape[0] == n_heads else t.reshape(-1).expand(n_heads)
        else:
            out = _check_scalar_param(name, t, n_heads, ref, check_finite)
            if check_finite:
                _VALIDATED[name] = (weakref.ref(t), t._version, n_heads)
    else:
        out = _check_scalar_param(name, t, n_heads, ref, check_finite)
    return out if out.device == ref.device else out.to(ref.device)


def tau_scale(M, position_offset, kappa, D, device, dtype):
    """reference.tau's beta-free row factor (M,) in dtype (fp32, or fp64 for an fp64 beta), cached per
    shape: tau_i = beta_h * scale_i is then formed inside the kernels, with reference.tau's rounding."""
    key = (device, M, position_offset, kappa, D, dtype)
    scale = _SCALE_CACHE.get(key)
    if scale is None:
        positions = torch.arange(position_offset, position_offset + M, device=device)
        scale = reference.tau(positions, torch.ones(1, device=device, dtype=dtype), kappa, D)[0].contiguous()
        if len(_SCALE_CACHE) > 64:
            _SCALE_CACHE.clear()
        _SCALE_CACHE[key] = scale
    return scale


class _EagerAttention(torch.autograd.Function):
    """launch.forward, then launch.backward, with one config for both."""

    @staticmethod
    def forward(ctx, q1, k1, q2, k2, v, beta, lam, scale, p, causal, normalize, cfg, docs=None):
        with _on_device(q1):
            out, flags, rq, rk = launch.forward(q1, k1, q2, k2, v, beta, scale, lam, p, causal, cfg, normalize,
                                                docs=docs)
        ctx.save_for_backward(q1, k1, q2, k2, v, beta, lam)
        # the op's own tensors (no autograd history, so no reference cycle) ride on ctx as they are, with the
        # backward's norm pointer arguments prepared here: the backward runs on autograd's device thread,
        # where the same Python runs markedly slower (docs/kernels.md)
        norm = launch.norm_args(rq, rk, scale) if rq is not None else None
        ctx.own = (scale, flags, rq, rk, norm)
        ctx.p, ctx.causal, ctx.cfg, ctx.docs = p, causal, cfg, docs
        return out

    @staticmethod
    def backward(ctx, dout):
        q1, k1, q2, k2, v, beta, lam = ctx.saved_tensors
        scale, flags, rq, rk, norm = ctx.own
        with _on_device(q1):
            dq1, dk1, dq2, dk2, dv, g = launch.backward(dout, q1, k1, q2, k2, v, beta, scale, lam, flags, rq, rk,
                                                        ctx.p, ctx.causal, ctx.cfg, norm, ctx.docs)
        # one contiguous reduction for both: (dbeta (H,), dlam (H,))
        dbeta, dlam = g.view(2, g.shape[1], g.shape[2] * g.shape[3]).sum(2).unbind(0)
        if q2 is None:
            dlam = None
        elif dlam.dtype != lam.dtype:
            dlam = dlam.to(lam.dtype)
        if dbeta.dtype != beta.dtype:
            dbeta = dbeta.to(beta.dtype)
        return dq1, dk1, dq2, dk2, dv, dbeta, dlam, None, None, None, None, None, None


def _attention(q1, k1, q2, k2, v, beta, lam, *, kappa, p, causal, position_offset, normalize_qk, check_finite,
               config, docs=None, longest=None):
    """The fused op's dispatch. docs / longest (packed_attention): the document table as the kernels' batch;
    rows then sit at positions 0 .. length - 1 of their document, so tau's rows and the block table's key
    length are the longest document's (under torch.compile the row length's: no guard on `longest`)."""
    qs = [("q1", q1), ("q2", q2)] if q2 is not None else [("q", q1)]
    ks = [("k1", k1), ("k2", k2)] if k2 is not None else [("k", k1)]
    B, H, M, D, Hk, N = check_inputs(qs, ks, v, kappa=kappa, p=p, causal=causal, position_offset=position_offset)
    beta = _scalar_param("beta", beta, H, q1, check_finite)
    lam = _scalar_param("lam", lam, H, q1, check_finite) if q2 is not None else None
    why = unsupported_reason(q1, k1, v, p)
    if why is not None:
        raise ValueError(f"the Triton kernel cannot run this call: {why}")
    if config is not None and not isinstance(config, KernelConfig):
        raise ValueError(f"config must be a KernelConfig or None, got {type(config).__name__}")
    if torch.compiler.is_compiling():  # the custom op, with tau (H, M) formed in torch
        if config is not None:
            raise ValueError("config= is not supported under torch.compile (the custom op uses the block table)")
        pdt = torch.float64 if q1.dtype == torch.float64 else torch.float32
        positions = torch.arange(position_offset, position_offset + M, device=q1.device)
        tau_rows = reference.tau(positions, beta, kappa, D).to(pdt).contiguous()
        lam_h = lam.to(pdt).contiguous() if lam is not None else None
        return threshold_attention_fwd(q1, k1, q2, k2, v, tau_rows, lam_h, float(p), bool(causal),
                                       bool(normalize_qk), docs)[0]
    # eager: tau formed in-kernel from beta and the cached scale
    rows, keys = (M, N) if docs is None else (longest, longest)
    sdt = torch.float64 if beta.dtype == torch.float64 else torch.float32
    scale = tau_scale(rows, position_offset, float(kappa), D, q1.device, sdt)
    training = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q1, k1, q2, k2, v, beta, lam))
    cfg = config if config is not None else block_config(D, q1.dtype, keys, training)
    table = None if docs is None else (docs, longest)
    if not training:  # no backward can follow: no autograd node, and a forward that keeps nothing for one
        with _on_device(q1):
            return launch.forward(q1, k1, q2, k2, v, beta, scale, lam, float(p), bool(causal), cfg,
                                  bool(normalize_qk), for_bwd=False, docs=table)[0]
    return _EagerAttention.apply(q1, k1, q2, k2, v, beta, lam, scale, float(p), bool(causal), bool(normalize_qk),
                                 cfg, table)


def threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, *, kappa=1.0, p=2.0, causal=True,
                                     position_offset=0, normalize_qk=True, check_finite=True,
                                     config: Optional[KernelConfig] = None):
    """Fused TDA: sum_j (a1_ij - lam a2_ij) v_j, a_ij = (cos(q_i, k_j) - tau_i)_+^p; see reference.py.
    config: the KernelConfig to run with instead of the block table's (tests, benchmarks; eager only)."""
    if q2 is None or k2 is None:
        raise ValueError("q2 and k2 are required for TDA; use threshold_rectified_attention for one view")
    return _attention(q1, k1, q2, k2, v, beta, lam, kappa=kappa, p=p, causal=causal,
                      position_offset=position_offset, normalize_qk=normalize_qk, check_finite=check_finite,
                      config=config)


def threshold_rectified_attention(q, k, v, beta, *, kappa=1.0, p=2.0, causal=True, position_offset=0,
                                  normalize_qk=True, check_finite=True, config: Optional[KernelConfig] = None):
    """Fused TRA: sum_j (cos(q_i, k_j) - tau_i)_+^p v_j (single view); config as for TDA."""
    return _attention(q, k, None, None, v, beta, None, kappa=kappa, p=p, causal=causal,
                      position_offset=position_offset, normalize_qk=normalize_qk, check_finite=check_finite,
                      config=config)


def packed_attention(q1, k1, q2, k2, v, beta, lam, *, docs, longest, kappa=1.0, p=2.0, normalize_qk=True,
                     check_finite=True, config: Optional[KernelConfig] = None):
    """TDA (q2/k2 given) or TRA over packed documents in one launch each way (tda.ops.varlen calls it; under
    torch.compile through the custom ops, with the table as an argument). q*, k*, v: (B, H, N, D) with
    k/v of N tokens too; docs: int32 (n_docs, 3) on the device, (batch row, first token, length) of every
    non-empty document, which together cover every token once; longest: the longest length (unused under
    torch.compile, where the grid covers the row length, so that it needs no guard on it). Each document
    is causal from position 0 (tau and the mask restart); returns the pre-RMSNorm aggregation (B, H, N, Dv).
    config: as for threshold_differential_attention."""
    return _attention(q1, k1, q2, k2, v, beta, lam, kappa=kappa, p=p, causal=True, position_offset=0,
                      normalize_qk=normalize_qk, check_finite=check_finite, config=config, docs=docs,
                      longest=longest)
