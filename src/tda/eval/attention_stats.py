"""Statistics of attention weights: exact zeros, attention sinks, and dispersion.

Every metric is defined on a causal weight tensor w of shape (..., N, N) (query row i, key column j,
j <= i; 0-based positions), so it can be checked on hand-built weights, and is collected from a model
layer by layer by `collect_attention_stats` (a forward hook reads each layer's weights, reduces them to
a few numbers per head, and frees them before the next layer runs: only one layer's N x N weights are
alive at a time).

Weights are softmax probabilities for softmax layers and the SIGNED differential weights
Δa_ij = a1_ij − λ·a2_ij for TDA, whose rows do not sum to one and may be entirely zero. Where a metric
needs a distribution over keys we use the magnitude, row-normalised:

    p_ij = |w_ij| / Σ_{j'≤i} |w_ij'|          (rows with Σ|w| = 0 — a head that abstains — are SKIPPED)

For softmax p = w. Skipping all-zero rows is the strict choice: a head cannot hide a sink behind many
abstaining rows, because only the rows that do attend are averaged. The fraction of all-zero rows is
reported beside every metric (`zero_row_fraction`).

Metrics (per layer l, head h, averaged over sequences):
  exact-zero fraction   #{j ≤ i : w_ij == 0} / #{j ≤ i}                  (causal entries only)
  α_k (Gu et al. 2025)  α_k = 1/(T−k+1) · Σ_{i ≥ k} p_ik   with 1-based k; we report α_1 (the first token)
                        averaged over the non-zero rows; Sink_1^ε = share of (l, h) with α_1 > ε (ε = 0.3)
  first-token share     p_i0 per row i, against the uniform baseline 1/(i+1)
  entropy               H_i = −Σ_j p_ij log p_ij   (nats; 0 for a one-hot row, log(i+1) for uniform)
  top-k mass            Σ of the k largest p_ij
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

SINK_EPS = 0.3
# a head is silent when it abstains (an all-zero row) in at least this share of rows: an exact zero passes no
# gradient back to its q, k or beta, so such a head has little signal left to recover
SILENT_ROWS = 0.99
DEFAULT_TOPK = (1, 8)


def causal_mask(n: int, device=None) -> torch.Tensor:
    """Bool (n, n): True where key j <= query i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def normalise_rows(w: torch.Tensor, row0: int = 0):
    """(p, valid): p_ij = |w_ij| / Σ_j |w_ij| over the causal part of rows row0.. of a (..., C, N) slice,
    and valid (..., C) = the row has non-zero mass. Invalid rows come back as all zeros."""
    C, N = w.shape[-2:]
    rows = torch.arange(row0, row0 + C, device=w.device)[:, None]
    allowed = torch.arange(N, device=w.device)[None, :] <= rows
    a = w.abs().float().masked_fill(~allowed, 0.0)
    mass = a.sum(-1, keepdim=True)
    valid = mass.squeeze(-1) > 0
    p = a / mass.clamp_min(torch.finfo(a.dtype).tiny)
    return p, valid


# --- metrics on a weight tensor (the definitions; the model path below uses the same code) ---------


def exact_zero_fraction_of(w: torch.Tensor) -> float:
    """Fraction of causal entries (j <= i) of w (..., N, N) that are exactly zero."""
    N = w.shape[-1]
    mask = causal_mask(N, w.device)
    zeros = ((w == 0) & mask).sum().item()
    total = mask.sum().item() * (w.numel() // (N * N))
    return zeros / total


def sink_alpha(w: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Gu et al.'s importance of key k (1-based): α_k = mean over rows i >= k (0-based i >= k−1) with
    non-zero mass of p_{i,k−1}. w (..., N, N) -> (...,). NaN if no row attends."""
    p, valid = normalise_rows(w)
    col = p[..., k - 1:, k - 1]
    v = valid[..., k - 1:].float()
    return (col * v).sum(-1) / v.sum(-1)


def sink_share(alpha_1: torch.Tensor, eps: float = SINK_EPS) -> float:
    """Sink_1^ε: share of (layer, head) entries of alpha_1 with α_1 > ε (NaN entries count as no sink)."""
    a = torch.nan_to_num(alpha_1.float(), nan=0.0)
    return (a > eps).float().mean().item()


def first_token_share(w: torch.Tensor) -> torch.Tensor:
    """Per row i, the mean (over leading dims, valid rows only) of p_i0; shape (N,). Uniform causal
    weights give exactly 1/(i+1)."""
    p, valid = normalise_rows(w)
    lead = p[..., 0].reshape(-1, p.shape[-2])
    v = valid.reshape(-1, p.shape[-2]).float()
    return (lead * v).sum(0) / v.sum(0)


def row_entropy(w: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row's normalised |weights|, (..., N); NaN for all-zero rows."""
    p, valid = normalise_rows(w)
    h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    return h.masked_fill(~valid, float("nan"))


def topk_mass(w: torch.Tensor, k: int) -> torch.Tensor:
    """Mass held by each row's k largest normalised |weights|, (..., N); NaN for all-zero rows."""
    p, valid = normalise_rows(w)
    m = p.topk(min(k, p.shape[-1]), dim=-1).values.sum(-1)
    return m.masked_fill(~valid, float("nan"))


# --- streaming accumulation, one layer at a time ----------------------------------------------------


@dataclass
class AttentionStats:
    """Reductions of one model's attention on a batch of sequences of length N (all as float64 tensors).

    Per (layer, head): zero_frac, alpha_1, zero_row_frac, entropy, topk[k] (means over valid rows).
    Per position i (averaged over layers, heads and sequences): zero_frac_pos, first_share_pos
    (valid rows only), entropy_pos. `signed` says whether the weights had negative entries (TDA)."""
    n_tokens: int
    n_seqs: int
    zero_frac: torch.Tensor          # (L, H)
    alpha_1: torch.Tensor            # (L, H)
    zero_row_frac: torch.Tensor      # (L, H)
    entropy: torch.Tensor            # (L, H)
    topk: dict = field(default_factory=dict)   # k -> (L, H)
    zero_frac_pos: torch.Tensor = None         # (N,)
    first_share_pos: torch.Tensor = None       # (N,)
    entropy_pos: torch.Tensor = None           # (N,)
    valid_pos: torch.Tensor = None             # (N,) number of (sequence, layer, head) rows with mass
    signed: bool = False

    @property
    def exact_zero_fraction(self) -> float:
        return self.zero_frac.mean().item()

    def sink_share(self, eps: float = SINK_EPS) -> float:
        return sink_share(self.alpha_1, eps)

    def first_token_share_mean(self, skip_first: int = 1) -> float:
        """Mean of p_i0 over all rows with mass at positions i >= skip_first (row 0 can only attend to
        itself), pooled over sequences, layers and heads."""
        v = self.valid_pos[skip_first:]
        return (torch.nan_to_num(self.first_share_pos[skip_first:]) * v).sum().item() / max(v.sum().item(), 1.0)

    def uniform_first_token_share_mean(self, skip_first: int = 1) -> float:
        """The same mean for uniform rows, 1/(i+1), over the SAME rows (so a model whose late rows are
        all zero is compared with the right baseline)."""
        i = torch.arange(skip_first, self.n_tokens, dtype=torch.float64)
        v = self.valid_pos[skip_first:]
        return ((1.0 / (i + 1)) * v).sum().item() / max(v.sum().item(), 1.0)

    def uniform_entropy_mean(self) -> float:
        """Mean log(i+1) (entropy of a uniform causal row) over the rows with mass."""
        i = torch.arange(self.n_tokens, dtype=torch.float64)
        v = self.valid_pos
        return (torch.log(i + 1) * v).sum().item() / max(v.sum().item(), 1.0)

    def summary(self) -> dict:
        d = {
            "n_tokens": self.n_tokens, "n_seqs": self.n_seqs,
            "exact_zero_fraction": self.exact_zero_fraction,
            "all_zero_row_fraction": self.zero_row_frac.mean().item(),
            "silent_head_fraction": (self.zero_row_frac >= SILENT_ROWS).float().mean().item(),
            "alpha_1_mean": torch.nan_to_num(self.alpha_1, nan=0.0).mean().item(),
            "alpha_1_max": torch.nan_to_num(self.alpha_1, nan=0.0).max().item(),
            f"sink_1_share_eps{SINK_EPS}": self.sink_share(),
            "first_token_share": self.first_token_share_mean(),
            "first_token_share_uniform": self.uniform_first_token_share_mean(),
            "entropy_nats": self.entropy.nanmean().item(),
            "uniform_entropy": self.uniform_entropy_mean(),
            "signed_weights": self.signed,
        }
        d["first_token_sink_ratio"] = d["first_token_share"] / d["first_token_share_uniform"]
        for k, v in self.topk.items():
            d[f"top{k}_mass"] = v.nanmean().item()
        return d


class _LayerAccumulator:
    """Sums for ONE layer over any number of (B, H, N, N) batches (same N), reduced in row chunks so no
    second N x N tensor is ever built."""

    def __init__(self, topk=DEFAULT_TOPK, row_chunk: int = 256):
        self.topk, self.row_chunk = tuple(topk), row_chunk
        self.s = None          # per-head sums
        self.pos = None        # per-position sums
        self.signed = False
        self.n_seqs = 0
        self.N = None

    def add(self, w: torch.Tensor):
        B, H, N, _ = w.shape
        f64 = torch.float64
        if self.s is None:
            self.N = N
            # accumulators on the weights' device (a GPU run sums there); per_head() hands back CPU tensors
            dev = w.device
            self.s = {n: torch.zeros(H, dtype=f64, device=dev) for n in ("zeros", "alpha", "valid", "ent")}
            self.s.update({("top", k): torch.zeros(H, dtype=f64, device=dev) for k in self.topk})
            self.pos = {n: torch.zeros(N, dtype=f64, device=dev) for n in ("zeros", "first", "valid", "ent", "cnt")}
        elif N != self.N:
            raise ValueError(f"all batches must have the same length; got {N} after {self.N}")
        s, pos = self.s, self.pos
        self.signed |= bool((w < 0).any())
        self.n_seqs += B
        for r0 in range(0, N, self.row_chunk):
            c = w[:, :, r0:r0 + self.row_chunk].float()
            C = c.shape[-2]
            sl = slice(r0, r0 + C)
            allowed = (torch.arange(N, device=w.device)[None, :]
                       <= torch.arange(r0, r0 + C, device=w.device)[:, None])                # (C, N)
            z = (c == 0) & allowed                                                     # (B, H, C, N)
            s["zeros"] += z.sum((0, 2, 3)).to(f64)
            pos["zeros"][sl] += z.sum((0, 1, 3)).to(f64)
            del z
            p, valid = normalise_rows(c, r0)                                           # (B,H,C,N), (B,H,C)
            del c
            vf = valid.to(f64)
            s["valid"] += vf.sum((0, 2))
            pos["valid"][sl] += vf.sum((0, 1))
            pos["cnt"][sl] += B * H
            first = p[..., 0].to(f64) * vf
            s["alpha"] += first.sum((0, 2))
            pos["first"][sl] += first.sum((0, 1))
            h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).to(f64) * vf
            s["ent"] += h.sum((0, 2))
            pos["ent"][sl] += h.sum((0, 1))
            for k in self.topk:
                s[("top", k)] += (p.topk(min(k, N), dim=-1).values.sum(-1).to(f64) * vf).sum((0, 2))
            del p

    def per_head(self) -> dict:
        s, N, B = {k: v.cpu() for k, v in self.s.items()}, self.N, self.n_seqs
        valid = s["valid"]
        mean = lambda x: torch.where(valid > 0, x / valid.clamp_min(1), torch.full_like(x, float("nan")))  # noqa: E731
        return {
            "zero_frac": s["zeros"] / (B * N * (N + 1) / 2),
            "alpha_1": mean(s["alpha"]),
            "zero_row_frac": 1.0 - valid / (B * N),
            "entropy": mean(s["ent"]),
            "topk": {k: mean(s[("top", k)]) for k in self.topk},
        }


def _combine(accs) -> AttentionStats:
    heads = [a.per_head() for a in accs]
    stack = lambda key: torch.stack([x[key] for x in heads])  # noqa: E731
    pos = {k: sum(a.pos[k].cpu() for a in accs) for k in accs[0].pos}
    N = accs[0].N
    i = torch.arange(N, dtype=torch.float64)
    return AttentionStats(
        n_tokens=N, n_seqs=accs[0].n_seqs,
        zero_frac=stack("zero_frac"), alpha_1=stack("alpha_1"), zero_row_frac=stack("zero_row_frac"),
        entropy=stack("entropy"),
        topk={k: torch.stack([x["topk"][k] for x in heads]) for k in accs[0].topk},
        zero_frac_pos=pos["zeros"] / (pos["cnt"] * (i + 1)),
        first_share_pos=pos["first"] / pos["valid"],
        entropy_pos=pos["ent"] / pos["valid"],
        valid_pos=pos["valid"],
        signed=any(a.signed for a in accs),
    )


def stats_from_weights(weights, topk=DEFAULT_TOPK, row_chunk: int = 256) -> AttentionStats:
    """AttentionStats from a list (one entry per layer) of (B, H, N, N) causal weights."""
    accs = []
    for w in weights:
        acc = _LayerAccumulator(topk, row_chunk)
        acc.add(w)
        accs.append(acc)
    return _combine(accs)


def _attention_modules(model):
    return [block.attn for block in model.blocks]


@torch.no_grad()
def collect_attention_stats(model, input_ids: torch.Tensor, topk=DEFAULT_TOPK, row_chunk: int = 256,
                            batch_size: int = 1) -> AttentionStats:
    """Run the model on input_ids (B, N) and reduce every layer's weights as soon as that layer has
    produced them (forward hook), so peak memory is one layer's (batch_size, H, N, N) weights plus what
    the layer itself needs to build them. Per-head statistics are pooled over all sequences."""
    model.eval()
    accs = [_LayerAccumulator(topk, row_chunk) for _ in _attention_modules(model)]
    handles = []

    def make_hook(acc):
        def hook(module, args, output):
            w = module.last_weights
            module.last_weights = None          # free it before the next layer builds its own
            if w is None:
                raise RuntimeError(f"{type(module).__name__} did not record its attention weights")
            acc.add(w)
        return hook

    try:
        model.record_attention(True)
        for m, acc in zip(_attention_modules(model), accs):
            handles.append(m.register_forward_hook(make_hook(acc)))
        for b0 in range(0, input_ids.shape[0], batch_size):
            model(input_ids[b0:b0 + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.record_attention(False)
    return _combine(accs)


@torch.no_grad()
def attention_maps(model, input_ids: torch.Tensor) -> list:
    """Per layer, the (H, N, N) weights of a single short sequence (1, N) — for plotting only."""
    model.eval()
    try:
        model.record_attention(True)
        model(input_ids[:1])
        return [w[0].float().cpu() for w in model.attention_weights()]
    finally:
        model.record_attention(False)
