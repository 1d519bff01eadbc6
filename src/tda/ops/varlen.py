"""TDA / TRA over packed documents, in flash-attn's varlen convention (`cu_seqlens`, `max_seqlen`).

Layout: q (B, H, N, D) as everywhere in tda, its B * N tokens numbered row-major (token (b, n) is
b * N + n). With B = 1 this is flash-attn's packed token dimension: q (1, H, T, D), T = total tokens.
cu_seqlens is int32 (n_docs + 1,) with 0 = cu_seqlens[0] <= ... <= cu_seqlens[-1] = B * N; document k
holds tokens cu_seqlens[k] .. cu_seqlens[k+1] - 1 (a repeated entry is an empty document, skipped). With
B > 1 every row start b * N must be an entry: a document never spans two rows. max_seqlen is an int at
least the longest document's length (flash-attn's convention; the kernels size their grid by it).

Every document restarts its positions: token t of document k sits at position pos_t = t - cu_seqlens[k],
and sees only the keys of its own document, causally:

    tau_t  = beta * sqrt(2 * max(log((pos_t + 1) / kappa), 0) / d)
    out_t  = sum_{j in doc(t), j <= t} ((s1_tj - tau_t)_+^p - lam * (s2_tj - tau_t)_+^p) v_j

so a packed batch gives, token for token, what each document run alone gives. k and v have as many
tokens as q (no KV cache here); they may have fewer heads (grouped-query).

Implementation. A causal call the fused kernel can run (CUDA, or backend="triton" under the interpreter)
goes to the fused kernels with the document table as their batch
(tda.ops.triton.attention.packed_attention, also under torch.compile through the custom ops): each program
reads its document's row, first token and length, so one launch each way covers every document, with no
copies and no padding. The layers pass a prebuilt table (attend_packed, PackedDocuments), so a compiled model
reads nothing of the documents on the host. Otherwise (the reference backend, non-causal calls) documents
are grouped by length into buckets (causal: lengths rounded up to a power of two, at least 16; non-causal:
equal lengths only), each bucket a padded (n_docs, H, L_pad, D) batch run through one call of the public op.
One gather per input lays every bucket's rows end to end, and one gather brings each token's output back;
the backward is the same two gathers the other way, with no scatter-add. Causal padding at the end of a document is
invisible to its real rows (a key after a row is never seen), and padded rows are dropped, so each document
gets what it gets run alone (up to summation order). Windows of 1024 tokens thus cost at most 7 launches
per layer however many documents they hold, at the price of at most 2x padded tokens. `varlen_reference`
is an independent dense oracle: one masked T x T computation with per-token positions (O(T^2) memory;
tests and small inputs only).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import cached_property

import torch

from . import threshold_differential_attention, threshold_rectified_attention
from .reference import NORM_EPS, l2_normalize
from .validate import _check_scalar_param, check_inputs

__all__ = [
    "threshold_differential_attention_varlen", "threshold_rectified_attention_varlen", "varlen_reference",
    "check_cu_seqlens", "positions_from_cu_seqlens", "PackedDocuments", "attend_packed",
]


def check_cu_seqlens(cu_seqlens, max_seqlen, total: int, row_len: int | None = None) -> list[int]:
    """Validate cu_seqlens / max_seqlen for `total` packed tokens; returns the boundaries as a host list.

    row_len: with B > 1 rows of row_len tokens, every row start must be a boundary. A CUDA cu_seqlens
    costs one device-to-host copy here; pass it on the CPU to avoid it.
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens must be a torch.Tensor (int32), got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must have dtype int32, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu_seqlens.shape)}")
    bounds = [int(b) for b in cu_seqlens.tolist()]
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {bounds[0]}")
    if any(b1 < b0 for b0, b1 in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {bounds}")
    if bounds[-1] != total:
        raise ValueError(f"cu_seqlens must end at the {total} packed tokens, got {bounds[-1]}")
    if row_len is not None and total > row_len:
        missing = sorted(set(range(0, total, row_len)) - set(bounds))
        if missing:
            raise ValueError(f"cu_seqlens must hold every row start (multiples of N = {row_len}) when B > 1: "
                             f"documents cannot span rows; missing {missing[:8]}")
    longest = max(b1 - b0 for b0, b1 in zip(bounds, bounds[1:]))
    if not isinstance(max_seqlen, numbers.Integral) or isinstance(max_seqlen, bool) or max_seqlen < longest:
        raise ValueError(f"max_seqlen must be an int >= the longest document ({longest}), got {max_seqlen!r}")
    return bounds


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int, device=None) -> torch.Tensor:
    """(total,) int64: each token's position inside its document (0 at a document's first token).
    Computed on the device, no host sync."""
    device = cu_seqlens.device if device is None else device
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    t = torch.arange(total, device=device)
    # the last boundary <= t is the start of t's document (empty documents repeat a boundary: same start)
    doc = torch.searchsorted(cu, t, right=True) - 1
    return t - cu[doc]


@dataclass(frozen=True)
class PackedDocuments:
    """Document structure of a (B, N) batch, built on the host once per batch and shared by every layer.

    cu_seqlens: int32 on the host (the bucket path reads it without a device sync);
    positions: (B, N) int64 on the model's device, each token's position in its document (RoPE, tau);
    table: int32 (n_docs, 3) on the model's device, (batch row, first token, length) of every non-empty
    document, the fused kernels' batch; longest: the longest document.
    Built outside a compiled model (the trainer does so), it is all a compiled forward needs: no layer reads
    anything of it on the host there.
    """
    cu_seqlens: torch.Tensor
    max_seqlen: int
    positions: torch.Tensor
    shape: tuple[int, int]
    table: torch.Tensor
    longest: int

    @classmethod
    def build(cls, cu_seqlens: torch.Tensor, max_seqlen: int, batch: int, seqlen: int, device) -> "PackedDocuments":
        bounds = check_cu_seqlens(cu_seqlens, max_seqlen, batch * seqlen, seqlen if batch > 1 else None)
        positions = positions_from_cu_seqlens(cu_seqlens, batch * seqlen, device).view(batch, seqlen)
        return cls(cu_seqlens.cpu(), int(max_seqlen), positions, (batch, seqlen), *_doc_table(bounds, seqlen, device))

    @property
    def mask(self) -> torch.Tensor:
        """(B, 1, N, N) bool, True where key j is visible to query i: same document and j <= i. Query i's
        document starts at i - positions[i], and documents are contiguous. Eager: built on first use, then
        shared by every layer of the forward; under torch.compile, traced where used (no stored state)."""
        if torch.compiler.is_compiling():
            return self._build_mask()
        mask = self.__dict__.get("_mask")
        if mask is None:
            mask = self._build_mask()
            object.__setattr__(self, "_mask", mask)
        return mask

    def _build_mask(self) -> torch.Tensor:
        B, N = self.shape
        i = torch.arange(N, device=self.positions.device)
        j = i[None, None, :]
        start = (i[None, :] - self.positions)[:, :, None]          # (B, N, 1)
        return ((j <= i[None, :, None]) & (j >= start))[:, None]


def _documents(bounds: list[int]):
    """(start, length) in flat token indices (b * N + n) for each non-empty document."""
    return [(s, e - s) for s, e in zip(bounds, bounds[1:]) if e > s]


def _doc_table(bounds: list[int], row_len: int, device):
    """(int32 (n_docs, 3) on device: batch row, first token, length of each non-empty document; the longest
    length): the fused kernels' batch for packed rows of row_len tokens."""
    docs = [(start // row_len, start % row_len, length) for start, length in _documents(bounds)]
    return (torch.tensor(docs, dtype=torch.int32).reshape(-1, 3).to(device),
            max((d[2] for d in docs), default=0))


MIN_BUCKET = 16  # the kernels' smallest query tile: shorter padding would not save work


def _bucket(length: int, causal: bool) -> int:
    """The padded length a document runs at: the next power of two (>= MIN_BUCKET) when causal, else its own
    (without causality, padded keys would be seen)."""
    if not causal:
        return length
    return max(MIN_BUCKET, 1 << (length - 1).bit_length())


class _Plan:
    """What one cu_seqlens needs, built on the host once per batch (every layer and the backward reuse it),
    each part on first use (a call takes either the fused kernels or the buckets).

    `docs` int32 (n_docs, 3) (batch row, first token, length) and `longest`: the fused kernels' table, on the
    device. The length buckets' indices: the buckets' padded rows laid end to end (P rows in all), `gather`
    (P,) the flat token index of each (padding repeats the document's last token), `buckets`
    ((L_pad, n_docs), ...) how they split, and `real` (B * N,) each token's row of its one unpadded copy
    among the P."""

    def __init__(self, bounds: list[int], causal: bool, device, row_len: int):
        self.bounds, self.causal, self.device, self.row_len = bounds, causal, device, row_len

    @cached_property
    def _table(self):  # built on first use: the bucket path never needs it
        return _doc_table(self.bounds, self.row_len, self.device)

    @property
    def docs(self) -> torch.Tensor:
        return self._table[0]

    @property
    def longest(self) -> int:
        return self._table[1]

    @cached_property
    def _bucket_indices(self):
        groups: dict[int, list] = {}
        for start, length in _documents(self.bounds):
            groups.setdefault(_bucket(length, self.causal), []).append((start, length))
        buckets, gathers, reals = [], [], []
        row0 = 0
        for L_pad, docs in sorted(groups.items()):
            starts = torch.tensor([d[0] for d in docs], dtype=torch.int64)
            lengths = torch.tensor([d[1] for d in docs], dtype=torch.int64)
            r = torch.arange(L_pad, dtype=torch.int64)
            gather = (starts[:, None] + torch.minimum(r[None, :], lengths[:, None] - 1)).reshape(-1)
            keep = (r[None, :] < lengths[:, None]).reshape(-1).nonzero().squeeze(1)
            buckets.append((L_pad, len(docs)))
            gathers.append(gather)
            reals.append((row0 + keep, gather[keep]))
            row0 += gather.numel()
        real = torch.empty(self.bounds[-1], dtype=torch.int64)
        for rows, tokens in reals:
            real[tokens] = rows
        return tuple(buckets), torch.cat(gathers).to(self.device), real.to(self.device)

    @property
    def buckets(self) -> tuple:
        return self._bucket_indices[0]

    @property
    def gather(self) -> torch.Tensor:
        return self._bucket_indices[1]

    @property
    def real(self) -> torch.Tensor:
        return self._bucket_indices[2]


_PLAN_CACHE: dict = {}


def _plan(bounds: list[int], causal: bool, device, row_len: int) -> _Plan:
    """The cached _Plan of this batch's boundaries."""
    key = (tuple(bounds), causal, str(device), row_len)
    plan = _PLAN_CACHE.get(key)
    if plan is None:
        if len(_PLAN_CACHE) >= 8:
            _PLAN_CACHE.clear()
        plan = _PLAN_CACHE[key] = _Plan(bounds, causal, device, row_len)
    return plan


class _ToBuckets(torch.autograd.Function):
    """(T, h, d) tokens -> (P, h, d) bucket rows (x[gather]). Backward: each token's gradient is that of its
    real row (g[real]), one gather with no scatter-add. Exact because the padded rows get no gradient: a
    causal bucket pads a document after its last token, where no real row sees them and their own outputs
    are dropped; a non-causal bucket has no padding (gather is then a permutation)."""

    @staticmethod
    def forward(ctx, x, gather, real):
        ctx.save_for_backward(real)
        return x.index_select(0, gather)

    @staticmethod
    def backward(ctx, g):
        (real,) = ctx.saved_tensors
        return g.index_select(0, real), None, None


class _FromBuckets(torch.autograd.Function):
    """(P, h, d) bucket rows -> (T, h, d) tokens (y[real]). Backward: the gradient lands on the real rows,
    zero on the padded ones (index_copy: every token has one real row, so no accumulation)."""

    @staticmethod
    def forward(ctx, y, real):
        ctx.save_for_backward(real)
        ctx.rows = y.shape[0]
        return y.index_select(0, real)

    @staticmethod
    def backward(ctx, g):
        (real,) = ctx.saved_tensors
        return g.new_zeros((ctx.rows, *g.shape[1:])).index_copy_(0, real, g), None


def _fused_kernel(backend, q, k, v, p) -> bool:
    from . import _use_fused_kernel
    return _use_fused_kernel(backend, q, k, v, p, False, None)


def _varlen(fn, qs, ks, v, params, *, cu_seqlens, max_seqlen, kappa, p, causal, normalize_qk, backend,
            check_finite):
    B, H, N, D, Hk, Nk = check_inputs(qs, ks, v, kappa=kappa, p=p, causal=False, position_offset=0)
    if Nk != N:
        raise ValueError(f"{ks[0][0]} must have as many tokens as {qs[0][0]} ({N}) in packed attention, got {Nk}")
    bounds = check_cu_seqlens(cu_seqlens, max_seqlen, B * N, N if B > 1 else None)
    plan = _plan(bounds, causal, v.device, N)
    if causal and _fused_kernel(backend, qs[0][1], ks[0][1], v, p):
        # the fused kernels take the document table: one launch each way, no gathers, no padding
        from .triton.attention import packed_attention
        two = len(qs) == 2
        return packed_attention(qs[0][1], ks[0][1], qs[1][1] if two else None, ks[1][1] if two else None, v,
                                params[0], params[1] if two else None, docs=plan.docs, longest=plan.longest,
                                kappa=kappa, p=p, normalize_qk=normalize_qk, check_finite=check_finite)
    # (B, h, N, d) -> (B * N, h, d) -> every bucket's rows end to end, one gather per tensor
    rows = [_ToBuckets.apply(t.transpose(1, 2).reshape(B * N, t.shape[1], t.shape[3]), plan.gather, plan.real)
            for t in [x for _, x in qs] + [x for _, x in ks] + [v]]
    outs, r0 = [], 0
    for L_pad, n in plan.buckets:
        parts = [t[r0:r0 + n * L_pad].view(n, L_pad, t.shape[1], t.shape[2]).transpose(1, 2) for t in rows]
        out = fn(*parts, *params, kappa=kappa, p=p, causal=causal, position_offset=0,
                 normalize_qk=normalize_qk, backend=backend, check_finite=check_finite)   # (n, H, L_pad, Dv)
        outs.append(out.transpose(1, 2).reshape(n * L_pad, H, -1))
        r0 += n * L_pad
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return _FromBuckets.apply(out, plan.real).view(B, N, H, -1).transpose(1, 2)


def attend_packed(q1, k1, q2, k2, v, beta, lam, docs: PackedDocuments, *, kappa=1.0, p=2.0, backend="auto",
                  check_finite=True):
    """The layers' packed TDA (q2/k2 given) or TRA over a PackedDocuments, causal, fused normalisation: the
    fused kernels over docs.table where they run (eager, and under torch.compile through the custom ops,
    reading nothing of docs on the host), else the length buckets."""
    two = q2 is not None
    if _fused_kernel(backend, q1, k1, v, p):
        from .triton.attention import packed_attention
        return packed_attention(q1, k1, q2, k2, v, beta, lam if two else None, docs=docs.table,
                                longest=None if torch.compiler.is_compiling() else docs.longest, kappa=kappa,
                                p=p, check_finite=check_finite)
    # elsewhere (the reference backend: a CPU model) the length buckets, whose host reads of cu_seqlens
    # break a compiled graph there: correct, not fast
    if two:
        return threshold_differential_attention_varlen(q1, k1, q2, k2, v, beta, lam, cu_seqlens=docs.cu_seqlens,
                                                       max_seqlen=docs.max_seqlen, kappa=kappa, p=p,
                                                       backend=backend, check_finite=check_finite)
    return threshold_rectified_attention_varlen(q1, k1, v, beta, cu_seqlens=docs.cu_seqlens,
                                                max_seqlen=docs.max_seqlen, kappa=kappa, p=p, backend=backend,
                                                check_finite=check_finite)


def threshold_differential_attention_varlen(q1, k1, q2, k2, v, beta, lam, *, cu_seqlens, max_seqlen, kappa=1.0,
                                            p=2.0, causal=True, normalize_qk=True, backend="auto",
                                            check_finite=True):
    """TDA over packed documents: (B, H, N, Dv), each document attended alone with positions from 0.

    q1, q2: (B, H, N, D); k1, k2: (B, Hk, N, D); v: (B, Hk, N, Dv); cu_seqlens int32 over the B * N tokens
    (see the module docstring); backend as in tda.ops. Returns the pre-RMSNorm aggregation.
    """
    if q2 is None or k2 is None:
        raise ValueError("q2 and k2 are required for TDA; use threshold_rectified_attention_varlen for one view")

    def op(q1, q2, k1, k2, v, beta, lam, **kw):
        return threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, **kw)

    return _varlen(op, [("q1", q1), ("q2", q2)], [("k1", k1), ("k2", k2)], v, (beta, lam),
                   cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, kappa=kappa, p=p, causal=causal,
                   normalize_qk=normalize_qk, backend=backend, check_finite=check_finite)


def threshold_rectified_attention_varlen(q, k, v, beta, *, cu_seqlens, max_seqlen, kappa=1.0, p=2.0, causal=True,
                                         normalize_qk=True, backend="auto", check_finite=True):
    """TRA (one view) over packed documents; see threshold_differential_attention_varlen."""
    return _varlen(threshold_rectified_attention, [("q", q)], [("k", k)], v, (beta,), cu_seqlens=cu_seqlens,
                   max_seqlen=max_seqlen, kappa=kappa, p=p, causal=causal, normalize_qk=normalize_qk,
                   backend=backend, check_finite=check_finite)


def varlen_reference(q1, k1, q2, k2, v, beta, lam, *, cu_seqlens, kappa=1.0, p=2.0, causal=True,
                     normalize_qk=True):
    """Dense oracle for packed TDA (q2 = k2 = lam = None: TRA), from first principles.

    All B * N tokens in one T x T score matrix per head; a key is allowed when it lies in the query's
    document (and, causal, not after it); tau per row from the token's position in its document.
    """
    views = [(q1, k1)] + ([(q2, k2)] if q2 is not None else [])
    B, H, N, D = q1.shape
    T = B * N
    cu = cu_seqlens.to(device=q1.device, dtype=torch.int64)
    t = torch.arange(T, device=q1.device)
    doc = torch.searchsorted(cu, t, right=True) - 1
    pos = (t - cu[doc]).to(torch.float64)
    allowed = doc[:, None] == doc[None, :]
    if causal:
        allowed = allowed & (t[None, :] <= t[:, None])
    beta = _check_scalar_param("beta", beta, H, q1).to(torch.float64)
    gate = torch.log((pos + 1.0) / kappa).clamp_min(0.0)
    tau = (beta[:, None] * torch.sqrt(2.0 * gate / D)[None, :]).to(q1.dtype)   # (H, T)

    def flat(x):  # (B, h, N, d) -> (H, T, d), k/v heads repeated for grouped-query
        x = x.transpose(0, 1).reshape(x.shape[1], T, x.shape[3])
        return x.repeat_interleave(H // x.shape[0], 0) if x.shape[0] != H else x

    w = 0
    for n, (q, k) in enumerate(views):
        if normalize_qk:
            q, k = l2_normalize(q, NORM_EPS), l2_normalize(k, NORM_EPS)
        s = flat(q) @ flat(k).transpose(-1, -2)                                   # (H, T, T)
        a = (s - tau[:, :, None]).clamp_min(0).masked_fill(~allowed, 0) ** p
        w = a if n == 0 else w - _check_scalar_param("lam", lam, H, q1).to(a.dtype)[:, None, None] * a
    out = w @ flat(v)                                                             # (H, T, Dv)
    return out.reshape(H, B, N, -1).transpose(0, 1)
