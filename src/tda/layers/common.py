"""Pieces every attention layer shares: RMSNorm and rotary position embeddings."""
from __future__ import annotations

import contextlib
import importlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _nn_module  # the global forward hooks


def _triton_module(name: str):
    """tda.ops.triton.<name>, or None where triton is not installed."""
    try:
        return importlib.import_module(f"..ops.triton.{name}", __package__)
    except ImportError:
        return None


# the fused paths' loaders, one per module (benchmarks/bench_train.py --without swaps them for the run)
def _fused_rope():
    return _triton_module("rope")


def _fused_project_rope():
    return _triton_module("project_rope")


def _fused_rms_norm():
    return _triton_module("rms_norm")


class RMSNorm(nn.Module):
    """x / rms(x) * gain over the last dim; `shape` may be (H, D) for a per-head norm."""

    def __init__(self, shape, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(shape))

    def forward(self, x):
        # in fp32: bf16 squares lose the small rows that sparse attention produces. Eager CUDA runs one Triton
        # kernel each way that casts in registers (tda.ops.triton.rms_norm); elsewhere torch's rms_norm,
        # which inductor fuses with the casts around it in a compiled model
        if x.is_cuda and not torch.compiler.is_compiling():
            fused = _fused_rms_norm()
            if fused is not None and fused.supported(x, self.weight):
                return fused.rms_norm(x, self.weight, self.eps)
        if self.weight.dim() == 1:
            return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)
        # (H, D) gains: normalise each head's D alone, then scale
        return (F.rms_norm(x.float(), (x.shape[-1],), None, self.eps) * self.weight.float()).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """RoPE (rotate-half form) with an optional NTK-aware base scaling for length extrapolation."""

    def __init__(self, head_dim: int, base: float = 10000.0, scaling: float = 1.0, max_positions: int = 0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
        self.head_dim = head_dim
        self.max_positions = max_positions
        self._shared = None  # see shared_angles
        self.set_scaling(base, scaling)

    def set_scaling(self, base: float, scaling: float = 1.0):
        """NTK-aware: base' = base * s^(d / (d - 2)) stretches low frequencies by ~s, keeps high ones."""
        if scaling <= 0:
            raise ValueError(f"rope scaling must be > 0, got {scaling}")
        self.base, self.scaling = base, scaling
        d = self.head_dim
        eff = base * scaling ** (d / (d - 2)) if scaling != 1.0 else base
        inv_freq = 1.0 / (eff ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        # fp32 tables of the first max_positions rows, as buffers: a compiled model reads them as graph inputs
        # (see _cos_sin); they move with .to(device) and are not saved in checkpoints
        cos, sin = self._table(self.max_positions, self.inv_freq.device, torch.float32)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)
        self._cache = None

    def _table(self, n: int, device, dtype):
        t = torch.arange(n, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(device))
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _cos_sin(self, n: int, device, dtype):
        if torch.compiler.is_compiling():
            # traced: the buffers where they are long enough, else computed inside the graph; never the cache,
            # which a compiled graph would fill with one of its outputs -- memory a CUDA-graph replay (compile
            # mode "reduce-overhead") overwrites
            if self.cos_table.shape[0] >= n:
                return self.cos_table[:n].to(dtype), self.sin_table[:n].to(dtype)
            return self._table(n, device, dtype)
        c = self._cache
        if c is None or c[0].shape[0] < n or c[0].device != device or c[0].dtype != dtype:
            c = self._cache = self._table(max(n, 256), device, dtype)
        return c

    @contextlib.contextmanager
    def shared_angles(self):
        """Within one model call, the per-sequence angles of a (B,) offsets tensor are computed once and reused
        by every layer's q and k (a decode step over sequences of different lengths); forgotten on exit."""
        self._shared = {}
        try:
            yield
        finally:
            self._shared = None

    def _offset_angles(self, position_offset, n, x):
        """(cos, sin) (B, 1, n, D) for rows at position_offset[b] + r, with the table's arithmetic (fp32
        position * inv_freq), so each row rotates exactly as the table would rotate it."""
        shared = self._shared
        key = (id(position_offset), n, x.dtype, x.device)
        if shared is not None and not torch.compiler.is_compiling() and key in shared:
            return shared[key]
        pos = position_offset.to(torch.float32)[:, None] + torch.arange(n, device=x.device, dtype=torch.float32)
        freqs = pos[..., None] * self.inv_freq.to(x.device)                         # (B, N, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]                            # (B, 1, N, D)
        out = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        if shared is not None and not torch.compiler.is_compiling():
            shared[key] = out
        return out

    def pair(self, q, k, position_offset=0, positions: torch.Tensor | None = None):
        """(self(q, ...), self(k, ...)) for q and k of the same batch and rows (their heads may differ). Eager
        CUDA rotates both in one fused launch each way where both fit the kernel, instead of one launch each (at
        short lengths and in decoding the host's per-launch work is the cost)."""
        if (_eager_cuda_rows(q, position_offset, positions) and q.dtype == k.dtype and q.device == k.device
                and q.dim() == k.dim() == 4
                and (q.shape[0], q.shape[2], q.shape[3]) == (k.shape[0], k.shape[2], k.shape[3])):
            fused = _fused_rope()
            if fused is not None:
                cos, sin = self._tables(q.shape[-2], position_offset, positions, q.device, q.dtype)
                if fused.pair_supported(q, k, cos, sin, positions):
                    return fused.rope_pair(q, k, cos, sin, positions)
        return self(q, position_offset, positions), self(k, position_offset, positions)

    def _tables(self, n, position_offset: int, positions, device, dtype):
        """The (rows, D) cos/sin tables the fused kernel reads: the first n rows with per-token positions,
        else rows position_offset .. position_offset + n - 1."""
        if positions is not None:
            return self._cos_sin(n, device, dtype)
        cos, sin = self._cos_sin(position_offset + n, device, dtype)
        return cos[position_offset:position_offset + n], sin[position_offset:position_offset + n]

    def project(self, x, linears, heads: tuple, position_offset=0, positions: torch.Tensor | None = None):
        """(self(q), self(k), v) for [q | k | v] = the nn.Linear `linears`' outputs on x side by side (TDA: q, k
        and v projections; the softmax family: q and k|v), heads = (hq, hk, hv) heads of head_dim, as one GEMM
        over their concatenated weights and one fused RoPE launch each way
        (tda.ops.triton.project_rope), on eager CUDA where the kernel takes them and every Linear is plain
        (plain_linear); None elsewhere (the caller then projects and rotates as usual)."""
        if not _eager_cuda_rows(x, position_offset, positions):
            return None
        fused = _fused_project_rope()
        if fused is None or not all(map(plain_linear, linears)) or len({lin.bias is None for lin in linears}) != 1:
            return None
        weight = torch.cat([lin.weight for lin in linears])  # small next to x; autograd splits its gradient
        cos, sin = self._tables(x.shape[1], position_offset, positions, x.device, fused.compute_dtype(x, weight))
        if not fused.supported(x, weight, heads, self.head_dim, cos, sin, positions):
            return None
        bias = None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])
        return fused.project_rope(x, weight, bias, heads, self.head_dim, cos, sin, positions)

    def forward(self, x, position_offset=0, positions: torch.Tensor | None = None):
        """Rotate x (B, H, N, D) as if its rows sat at positions offset .. offset + N - 1; position_offset
        is an int, or a (B,) tensor of per-sequence offsets (batched decoding over a KV cache). Given
        `positions` (B, N) ints in [0, N) (packed documents: each restarts at 0), at those positions."""
        n = x.shape[-2]
        if positions is not None:
            if isinstance(position_offset, torch.Tensor) or position_offset:
                raise ValueError("positions: per-token positions take no position_offset")
            # per-token positions (each < n): eager CUDA reads each row's table row in the fused kernel
            cos, sin = self._tables(n, 0, positions, x.device, x.dtype)
            if x.is_cuda and not torch.compiler.is_compiling():
                fused = _fused_rope()
                if fused is not None and fused.supported(x, cos, sin, positions):
                    return fused.rope(x, cos, sin, positions)
            cos, sin = cos[positions][:, None], sin[positions][:, None]          # (B, 1, N, D)
            x1, x2 = x.chunk(2, dim=-1)
            return x * cos + torch.cat([-x2, x1], dim=-1) * sin
        if isinstance(position_offset, torch.Tensor):
            cos, sin = self._offset_angles(position_offset, n, x)
            x1, x2 = x.chunk(2, dim=-1)
            return x * cos + torch.cat([-x2, x1], dim=-1) * sin
        cos, sin = self._tables(n, position_offset, None, x.device, x.dtype)
        if x.is_cuda and not torch.compiler.is_compiling():
            # eager CUDA: one Triton kernel each way instead of five-plus elementwise passes (compiled models
            # get inductor's fusion of the expression below)
            fused = _fused_rope()
            if fused is not None and fused.supported(x, cos, sin):
                return fused.rope(x, cos, sin)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def plain_linear(module) -> bool:
    """Whether `module` computes x W^T + b and nothing else: exactly an nn.Linear, with no forward hooks of its
    own or global ones. The fused paths read such a module's weight instead of calling it, which would skip
    what a subclass (a LoRA adapter, a quantized Linear) or a hook adds."""
    return (type(module) is nn.Linear and not module._forward_hooks and not module._forward_pre_hooks
            and not getattr(_nn_module, "_global_forward_hooks", None)
            and not getattr(_nn_module, "_global_forward_pre_hooks", None))


def _eager_cuda_rows(x, position_offset, positions) -> bool:
    """Whether the fused RoPE paths may take x: eager CUDA, rows at an int offset or at per-token positions
    (not both; a (B,) offsets tensor goes through the torch expression)."""
    return (x.is_cuda and not torch.compiler.is_compiling() and not isinstance(position_offset, torch.Tensor)
            and (positions is None or not position_offset))


def doc_positions(docs):
    """Per-token positions (B, N) of packed documents (tda.ops.varlen.PackedDocuments), or None."""
    return None if docs is None else docs.positions


def row_positions(position_offset, n: int, device):
    """Absolute positions of n rows: (n,) for an int offset, (B, n) for a (B,) tensor of offsets."""
    if isinstance(position_offset, torch.Tensor):
        return position_offset.long()[:, None] + torch.arange(n, device=device)[None, :]
    return torch.arange(position_offset, position_offset + n, device=device)


def causal_mask(n_q: int, n_k: int, device):
    """(n_q, n_k) bool, True where key j is visible to query i (bottom-right aligned)."""
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(n_k - n_q)


def split_heads(x, n_heads: int, head_dim: int):
    """(B, N, n_heads * head_dim) -> (B, n_heads, N, head_dim)."""
    B, N, _ = x.shape
    return x.view(B, N, n_heads, head_dim).transpose(1, 2)


def merge_heads(x):
    """(B, H, N, D) -> (B, N, H * D)."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


class AttentionBase(nn.Module):
    """Shared contract of every attention layer.

    forward(x (B, N, C), rope, position_offset=0, docs=None, cache=None) -> (B, N, C). When `record_weights`
    is set, the layer also stores its (B, H, N, N) attention weights in `last_weights` (detached) for
    analysis: the probabilities for softmax-like layers, the signed weights a1 - lam * a2 for TDA.

    docs (tda.ops.varlen.PackedDocuments) packs several documents per row: each attends only within
    itself, RoPE and position-dependent terms restart at its first token.

    With a KV cache (`cache`: a models.kv_cache.LayerCache), the model passes position_offset = the
    positions already cached (an int, or a (B,) tensor when sequences differ); the layer writes what
    `cache_shapes()` names for the new positions and attends over everything cached. Its cached path
    is its uncached math with a per-sequence key mask.

    docs and cache exclude each other (a cache holds one sequence per row, packing several).
    """

    @staticmethod
    def check_docs_cache(docs, cache):
        """ValueError when both packed documents and a KV cache are given."""
        if docs is not None and cache is not None:
            raise ValueError("docs: packed documents cannot be combined with a KV cache (cache)")

    def cache_shapes(self) -> dict:
        """name -> (heads, dim) of what one position keeps in the KV cache (default: raw k and v)."""
        return {"k": (self.n_kv_head, self.head_dim), "v": (self.n_kv_head, self.head_dim)}

    @staticmethod
    def cached_kv(cache, allow_unmasked: bool = False, **new):
        """With a cache: write the new tensors and return (what to attend over, per-sequence key mask);
        the mask is None where plain causal attention over the new tokens is exact (no cache, or every
        sequence starting empty), and, with allow_unmasked, where one new row per sequence sees the whole
        cache (equal lengths; the caller then attends without a mask and not causally). Without one:
        (the new tensors, None)."""
        if cache is None:
            return tuple(new.values()), None
        cache.write(**new)
        if cache.fresh:
            return tuple(new.values()), None
        if allow_unmasked and cache.sees_whole_cache:
            return cache.read(*new), None
        return cache.read(*new), cache.mask()

    def __init__(self):
        super().__init__()
        self.record_weights = False
        self.last_weights = None

    def dense_scores(self, x, rope, position_offset, docs, cache, fp32: bool = False):
        """For the layers that materialise their scores (q_proj / kv_proj, RoPE, cache, grouped-query heads
        expanded): (s = q.k / sqrt(d) of shape (B, H, N, N_k), v, the bool mask of visible keys)."""
        self.check_docs_cache(docs, cache)
        H, Hk, D = self.n_head, self.n_kv_head, self.head_dim
        pos = doc_positions(docs)
        q = rope(split_heads(self.q_proj(x), H, D), position_offset, pos)
        k, v = split_heads(self.kv_proj(x), 2 * Hk, D).chunk(2, dim=1)
        (k, v), mask = self.cached_kv(cache, k=rope(k, position_offset, pos), v=v)
        k, v = k.to(q.dtype), v.to(q.dtype)
        if H > Hk:
            k, v = k.repeat_interleave(H // Hk, 1), v.repeat_interleave(H // Hk, 1)
        s = ((q.float() @ k.float().transpose(-1, -2)) if fp32 else (q @ k.transpose(-1, -2))) * D ** -0.5
        if docs is not None:  # packed documents: block-diagonal causal
            mask = docs.mask
        elif mask is None:
            mask = causal_mask(s.shape[-2], s.shape[-1], s.device)
        return s, v, mask

    @staticmethod
    def causal_softmax_weights(q, k, scale, mask=None):
        """Materialised causal softmax probabilities (bottom-right aligned, or `mask`), for analysis only."""
        s = (q.float() @ k.float().transpose(-1, -2)) * scale
        M, N = s.shape[-2:]
        if mask is None:
            mask = torch.ones(M, N, dtype=torch.bool, device=s.device).tril(N - M)
        return F.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
