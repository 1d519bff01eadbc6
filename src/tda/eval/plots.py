"""Figures for the analysis report (matplotlib, Agg backend, small PNGs).

Every function takes plain numbers (lists / tensors / dicts from the other eval modules) and a path, so
figures can be regenerated from the JSON the CLI writes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

DPI = 110


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not fig.get_constrained_layout():
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def log_binned(y, n_bins: int = 40, start: int = 1, weights=None):
    """(x, y) averaged over log-spaced position bins [start, N) — per-position curves are noisy.
    With weights (e.g. the number of rows behind each position's mean) the bin mean is weighted."""
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    N = len(y)
    if N <= start + 1:
        return np.arange(N), y
    edges = np.unique(np.round(np.logspace(math.log10(start), math.log10(N), n_bins + 1)).astype(int))
    xs, ys = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        seg, ws = y[a:b], w[a:b]
        ok = np.isfinite(seg) & (ws > 0)
        if ok.any():
            xs.append((a + b - 1) / 2)
            ys.append(float((seg[ok] * ws[ok]).sum() / ws[ok].sum()))
    return np.array(xs), np.array(ys)


def first_token_figure(series: dict, path, title: str):
    """series: name -> (first_share_pos, valid_pos). Left: share vs 1/(i+1) (log-log; bins where the share
    is exactly 0 cannot be drawn there). Right: ratio (i+1)·p_i0 to the uniform baseline (1 = no sink)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.7))
    N = max(len(v[0]) for v in series.values())
    for name, (share, valid) in series.items():
        share = np.asarray(share, dtype=np.float64)
        i = np.arange(len(share))
        x, y = log_binned(share, start=1, weights=valid)
        pos = y > 0
        axes[0].plot(x[pos], y[pos], marker=".", lw=1.3, label=name)
        xr, yr = log_binned(share * (i + 1), n_bins=20, start=1, weights=valid)
        axes[1].plot(xr, yr, marker=".", lw=1.3, label=name)
    i = np.arange(1, N)
    axes[0].plot(i, 1.0 / (i + 1), "k--", lw=1, label="uniform 1/(i+1)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("p_i0 (rows with mass)")
    axes[1].axhline(1.0, color="k", ls="--", lw=1, label="uniform")
    axes[1].set_ylabel("(i+1) · p_i0  (sink ratio)")
    axes[1].set_yscale("symlog", linthresh=0.1)
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("query position i")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def heatmaps(mats: dict, path, title: str, cbar_label: str, vmin=None, vmax=None, cmap="viridis",
             fmt: str = "{:.2f}", annotate_max_cells: int = 144):
    """One (layer x head) heat-map per model, side by side."""
    plt = _plt()
    n = len(mats)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.6, 3.2), squeeze=False)
    im = None
    for ax, (name, m) in zip(axes[0], mats.items()):
        m = np.asarray(m, dtype=np.float64)
        im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        if m.size <= annotate_max_cells:
            for (r, c), v in np.ndenumerate(m):
                ax.text(c, r, fmt.format(v) if np.isfinite(v) else "–", ha="center", va="center",
                        fontsize=6, color="w" if (vmax is not None and np.isfinite(v) and v < 0.5 * vmax) else "k")
        fig.colorbar(im, ax=ax, label=cbar_label, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def curves(series: dict, path, title: str, xlabel: str, ylabel: str, logx=False, logy=False,
           baseline=None, baseline_label=None, hline=None, hline_label=None):
    """series: name -> (x, y) or (x, y, yerr). baseline: (x, y) dashed reference curve."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, s in series.items():
        x, y = np.asarray(s[0]), np.asarray(s[1])
        if len(s) > 2 and s[2] is not None:
            ax.errorbar(x, y, yerr=np.asarray(s[2]), marker="o", ms=3, lw=1.2, capsize=2, label=name)
        else:
            ax.plot(x, y, marker="o" if len(x) <= 16 else None, ms=3, lw=1.4, label=name)
    if baseline is not None:
        ax.plot(baseline[0], baseline[1], "k--", lw=1, label=baseline_label)
    if hline is not None:
        ax.axhline(hline, color="gray", ls=":", lw=1, label=hline_label)
    if logx:
        ax.set_xscale("log", base=2 if logx == 2 else 10)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def attention_map_grid(maps: list, path, title: str, signed: bool, tokens: list | None = None,
                       max_layers: int = 4):
    """maps: per layer (H, N, N). Rows = layers (first / middle / last if many), columns = heads.
    Signed weights (TDA) use a diverging map centred at 0; probabilities a sequential map."""
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    L = len(maps)
    layers = list(range(L)) if L <= max_layers else sorted({0, L // 3, (2 * L) // 3, L - 1})
    H = maps[0].shape[0]
    N = maps[0].shape[-1]
    fig, axes = plt.subplots(len(layers), H, figsize=(1.9 * H + 0.8, 1.9 * len(layers) + 0.6), squeeze=False,
                             layout="constrained")
    upper = np.triu(np.ones((N, N), dtype=bool), 1)
    for r, l in enumerate(layers):
        layer = np.asarray(maps[l], dtype=np.float64)
        lim = float(np.abs(layer).max()) or 1.0     # one colour scale per layer, shared by its heads
        for h in range(H):
            ax = axes[r][h]
            w = layer[h].copy()
            w[upper] = np.nan
            if signed:
                im = ax.imshow(w, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim), interpolation="nearest")
            else:
                im = ax.imshow(w, cmap="magma", vmin=0.0, vmax=lim, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"head {h}", fontsize=7)
            if h == 0:
                ax.set_ylabel(f"layer {l}", fontsize=7)
        fig.colorbar(im, ax=list(axes[r]), fraction=0.03, pad=0.01)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def survivors_figure(results: list, path):
    """Rows: one view (vs the κ-level bound) and consensus (vs κ²/(i+1) at β = 1); one column per (κ, β).
    Lines: exact expectation; dashed: the bound; x: direct Monte-Carlo; dots: Binomial draws (zero
    counts are not drawn on the log axis)."""
    plt = _plt()
    settings = sorted({(r["kappa"], r["beta"]) for r in results})
    dims = sorted({r["d"] for r in results})
    fig, axes = plt.subplots(2, len(settings), figsize=(4.2 * len(settings), 6.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, (kappa, beta) in enumerate(settings):
        for r in (r for r in results if (r["kappa"], r["beta"]) == (kappa, beta)):
            col = colors[dims.index(r["d"]) % len(colors)]
            x = np.asarray(r["i"]) + 1
            for row, key in enumerate(("single", "consensus")):
                ax = axes[row][c]
                ax.plot(x, r[f"exact_{key}"], color=col, lw=1.3, label=f"d={r['d']} exact E")
                for est, marker in (("binomial", "."), ("direct", "x")):
                    e = r[est]
                    xi, m = np.asarray(e["i"]) + 1, np.asarray(e[f"{key}_mean"])
                    ax.plot(xi[m > 0], m[m > 0], marker, color=col, ms=4 if marker == "." else 5)
        x = np.asarray(results[0]["i"]) + 1
        for row, key in enumerate(("single", "consensus")):
            ax = axes[row][c]
            r0 = next(r for r in results if (r["kappa"], r["beta"]) == (kappa, beta))
            ax.plot(x, r0[f"bound_{key}"], "k--", lw=1, label="bound (Thm 4.3)" if row == 0 else "bound (Thm 4.6)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylim(1e-7 if row == 0 else 1e-12, 2 * max(1.0, kappa ** (1 + row)))
            ax.grid(alpha=0.3)
            ax.set_xlabel("keys in the row, i + 1")
            ax.set_title(f"{'one view' if row == 0 else 'consensus of two views'}: κ={kappa:g}, β={beta:g}",
                         fontsize=9)
        axes[0][c].legend(fontsize=6, title="x: direct MC, •: Binomial", title_fontsize=6)
    axes[0][0].set_ylabel("E[survivors per row]")
    axes[1][0].set_ylabel("E[consensus survivors per row]")
    return _save(fig, path)
