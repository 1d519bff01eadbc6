"""Survivor theory of the TDA gate, checked by simulation (no model involved).

Setting (paper §4): a query q̂ and i+1 keys k̂_0..k̂_i are independent uniform unit vectors in
R^d, s_j = <q̂, k̂_j>, and the row threshold is

    τ_i = β · sqrt( 2 · max(log((i+1)/κ), 0) / d ).

A key "survives" one view when s_j > τ_i (its exceedance is non-zero); it is a *consensus* survivor when
it survives two independent views (q̂¹,k̂¹) and (q̂²,k̂²) at once.

Exact law. The cosine of two independent uniform unit vectors satisfies (s+1)/2 ~ Beta((d−1)/2, (d−1)/2).
Given q̂, the s_j are i.i.d. with that law (rotation invariance), so with P_i = P(s > τ_i):

    single-view survivors  S_i ~ Binomial(i+1, P_i),     E[S_i] = (i+1)·P_i
    consensus survivors    C_i ~ Binomial(i+1, P_i²),    E[C_i] = (i+1)·P_i²

Bounds tested (the statements of the paper's Theorems 4.3 and 4.6, in the form we check). With the
spherical-cap bound P(s > t) <= exp(−d·t²/2) (0 <= t < 1) and τ_i as above, for i+1 >= κ:

    Theorem 4.3 (one view):   E[S_i] <= (i+1)·(κ/(i+1))^{β²} = κ^{β²}·(i+1)^{1−β²}       (= κ at β = 1)
    Theorem 4.6 (consensus):  E[C_i] <= (i+1)·(κ/(i+1))^{2β²} = κ^{2β²}·(i+1)^{1−2β²}   (= κ²/(i+1) at β = 1)

For i+1 < κ the gate is closed (τ_i = 0), P_i = 1/2 and E[S_i] = (i+1)/2 < κ.

Two estimators, and which is which:
  * `simulate_direct`   — honest Monte-Carlo: draws Gaussian vectors, normalises them, takes dot products
                          and counts s > τ_i. Costs O(trials·(i+1)·d); used for i up to a few thousand.
  * `simulate_binomial` — draws S_i and C_i from the exact Binomial laws above with P_i from the exact
                          Beta tail. This is exact *given* the independence model (it is not an
                          approximation of it), but it is not an independent check of the Beta law; the
                          direct Monte-Carlo at small i is what validates it. Used up to i = 64K and beyond.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def tau_row(i, d: int, beta: float = 1.0, kappa: float = 1.0) -> np.ndarray:
    """τ_i for 0-based positions i (array-like)."""
    i = np.asarray(i, dtype=np.float64)
    return beta * np.sqrt(2.0 * np.maximum(np.log((i + 1.0) / kappa), 0.0) / d)


def cosine_tail(t, d: int) -> np.ndarray:
    """P(s > t) for the cosine s of two independent uniform unit vectors in R^d (exact).

    (s+1)/2 ~ Beta(a, a), a = (d−1)/2, so P(s > t) = I_{(1−t)/2}(a, a) (regularised incomplete beta).
    Uses scipy when available, else a numerical integral of the density ∝ (1−s²)^{(d−3)/2}."""
    if d < 2:
        raise ValueError(f"d must be >= 2, got {d}")
    t = np.clip(np.asarray(t, dtype=np.float64), -1.0, 1.0)
    a = (d - 1) / 2.0
    try:
        from scipy.special import betainc
        return betainc(a, a, (1.0 - t) / 2.0)
    except ImportError:  # pragma: no cover - scipy is normally present
        return _cosine_tail_quad(t, d)


def _cosine_tail_quad(t, d: int, n: int = 200_001) -> np.ndarray:
    """Numerical P(s > t): integrate the log-density on a fine grid (trapezoid), normalised to 1.
    Accurate to ~1e-8 relative for d <= 1024 where the tail is above ~1e-300."""
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    x = np.linspace(-1.0, 1.0, n)
    with np.errstate(divide="ignore"):
        logf = 0.5 * (d - 3) * np.log1p(-x * x)
    logf = np.where(np.isfinite(logf), logf, -np.inf if d > 3 else 0.0)
    if d == 2:  # density ∝ (1−s²)^{-1/2}: integrable endpoint singularity; use the closed form
        return np.arccos(t) / math.pi
    f = np.exp(logf - logf.max())
    cdf_tail = np.concatenate([np.cumsum(((f[1:] + f[:-1]) / 2 * np.diff(x))[::-1])[::-1], [0.0]])
    cdf_tail /= cdf_tail[0]
    return np.interp(t, x, cdf_tail)


def survival_prob(i, d: int, beta: float = 1.0, kappa: float = 1.0) -> np.ndarray:
    """P_i = P(s > τ_i)."""
    return cosine_tail(tau_row(i, d, beta, kappa), d)


def expected_survivors(i, d: int, beta: float = 1.0, kappa: float = 1.0) -> np.ndarray:
    """Exact E[S_i] = (i+1)·P_i (one view)."""
    i = np.asarray(i, dtype=np.float64)
    return (i + 1.0) * survival_prob(i, d, beta, kappa)


def expected_consensus(i, d: int, beta: float = 1.0, kappa: float = 1.0) -> np.ndarray:
    """Exact E[C_i] = (i+1)·P_i² (two independent views)."""
    i = np.asarray(i, dtype=np.float64)
    return (i + 1.0) * survival_prob(i, d, beta, kappa) ** 2


def survivor_bound(i, beta: float = 1.0, kappa: float = 1.0) -> np.ndarray:
    """Theorem 4.3 bound: κ^{β²}·(i+1)^{1−β²} for i+1 >= κ, (i+1)/2 otherwise (gate closed)."""
    n = np.asarray(i, dtype=np.float64) + 1.0
    return np.where(n >= kappa, n * (kappa / n) ** (beta ** 2), n / 2.0)


def consensus_bound(i, beta: float = 1.0, kappa: float = 1.0) -> np.ndarray:
    """Theorem 4.6 bound: κ^{2β²}·(i+1)^{1−2β²} for i+1 >= κ, (i+1)/4 otherwise."""
    n = np.asarray(i, dtype=np.float64) + 1.0
    return np.where(n >= kappa, n * (kappa / n) ** (2 * beta ** 2), n / 4.0)


def simulate_direct(positions, d: int, beta: float = 1.0, kappa: float = 1.0, trials: int = 200,
                    seed: int = 0, key_chunk: int = 1 << 16) -> dict:
    """Monte-Carlo with explicit random unit vectors. For each position i and trial: draw q̂¹, q̂² and
    i+1 keys per view, count survivors (s¹ > τ_i) and consensus survivors (s¹ > τ_i and s² > τ_i).

    Returns {"i", "single_mean", "single_sem", "consensus_mean", "consensus_sem"} (numpy arrays)."""
    g = torch.Generator().manual_seed(seed)
    positions = np.asarray(positions, dtype=np.int64)
    out = {k: np.zeros(len(positions)) for k in ("single_mean", "single_sem", "consensus_mean", "consensus_sem")}
    for n_idx, i in enumerate(positions):
        t = float(tau_row(i, d, beta, kappa))
        single = torch.zeros(trials, dtype=torch.float64)
        cons = torch.zeros(trials, dtype=torch.float64)
        n_keys = int(i) + 1
        # trials in batches so that trials x keys x d stays ~ a few million floats
        tb = max(1, min(trials, (1 << 22) // max(1, min(n_keys, key_chunk) * d)))
        for t0 in range(0, trials, tb):
            T = min(tb, trials - t0)
            q = torch.nn.functional.normalize(torch.randn(2, T, 1, d, generator=g, dtype=torch.float32), dim=-1)
            for k0 in range(0, n_keys, key_chunk):
                K = min(key_chunk, n_keys - k0)
                k = torch.nn.functional.normalize(torch.randn(2, T, K, d, generator=g, dtype=torch.float32), dim=-1)
                s = (q * k).sum(-1)                      # (2, T, K)
                hit = s > t
                single[t0:t0 + T] += hit[0].sum(-1)
                cons[t0:t0 + T] += (hit[0] & hit[1]).sum(-1)
        out["single_mean"][n_idx] = single.mean().item()
        out["single_sem"][n_idx] = single.std().item() / math.sqrt(trials)
        out["consensus_mean"][n_idx] = cons.mean().item()
        out["consensus_sem"][n_idx] = cons.std().item() / math.sqrt(trials)
    out["i"] = positions
    return out


def simulate_binomial(positions, d: int, beta: float = 1.0, kappa: float = 1.0, trials: int = 2000,
                      seed: int = 0) -> dict:
    """Draw S_i ~ Binomial(i+1, P_i) and C_i ~ Binomial(i+1, P_i²) with the exact P_i (see module doc).
    Vectorised over positions; cheap at any i. Same return format as `simulate_direct`."""
    rng = np.random.default_rng(seed)
    positions = np.asarray(positions, dtype=np.int64)
    P = survival_prob(positions, d, beta, kappa)
    n = positions + 1
    S = rng.binomial(n[None, :], P[None, :], size=(trials, len(positions)))
    C = rng.binomial(n[None, :], (P ** 2)[None, :], size=(trials, len(positions)))
    return {
        "i": positions,
        "single_mean": S.mean(0), "single_sem": S.std(0, ddof=1) / math.sqrt(trials),
        "consensus_mean": C.mean(0), "consensus_sem": C.std(0, ddof=1) / math.sqrt(trials),
    }


def default_positions(max_i: int = 65535, per_octave: int = 2) -> np.ndarray:
    """Log-spaced 0-based positions 0 .. max_i (inclusive), unique integers."""
    pts = np.unique(np.round(np.logspace(0, math.log10(max_i + 1), per_octave * int(math.log2(max_i + 1)) + 1))) - 1
    return pts.astype(np.int64)


def survivor_experiment(dims=(32, 64, 128), betas=(1.0,), kappas=(1.0, 4.0), max_i: int = 65535,
                        direct_max_i: int = 2047, direct_trials: int = 100, binomial_trials: int = 2000,
                        seed: int = 0) -> list:
    """Grid of (d, β, κ) settings; each entry holds exact expectations, bounds, the direct Monte-Carlo
    (positions <= direct_max_i) and the Binomial draws (all positions)."""
    pos = default_positions(max_i)
    direct_pos = pos[pos <= direct_max_i]
    results = []
    for d in dims:
        for beta in betas:
            for kappa in kappas:
                results.append({
                    "d": d, "beta": beta, "kappa": kappa, "i": pos.tolist(),
                    "exact_single": expected_survivors(pos, d, beta, kappa).tolist(),
                    "exact_consensus": expected_consensus(pos, d, beta, kappa).tolist(),
                    "bound_single": survivor_bound(pos, beta, kappa).tolist(),
                    "bound_consensus": consensus_bound(pos, beta, kappa).tolist(),
                    "direct": {"trials": direct_trials, **{k: np.asarray(v).tolist() for k, v in
                               simulate_direct(direct_pos, d, beta, kappa, direct_trials, seed).items()}},
                    "binomial": {"trials": binomial_trials, **{k: np.asarray(v).tolist() for k, v in
                                 simulate_binomial(pos, d, beta, kappa, binomial_trials, seed).items()}},
                })
    return results
