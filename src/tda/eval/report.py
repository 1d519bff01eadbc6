"""`tda analyze`: measure sparsity, sinks and dispersion of several models on the same text, side by side.

    from tda.eval.report import analyze_models
    summary = analyze_models({"tda": (model, tok), "softmax": (model2, tok)}, "out/", text=open(f).read())

Writes into out_dir: report.md, summary.json and PNG figures (see `analyze_models`).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import plots
from .attention_stats import DEFAULT_TOPK, SILENT_ROWS, SINK_EPS, attention_maps, collect_attention_stats
from .bos import with_bos

DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192)


def _windows(tokens, N: int, n: int, bos_id: int | None = None) -> torch.Tensor:
    """n windows of N tokens spread evenly over the stream (non-overlapping when it is long enough).
    With bos_id each window is [bos_id] + N-1 stream tokens (the fixed first token of training)."""
    if bos_id is not None:
        if N < 2:
            raise ValueError(f"window length must be at least 2 with a first token, got {N}")
        w = _windows(tokens, N - 1, n)
        return torch.cat([torch.full((w.shape[0], 1), int(bos_id), dtype=torch.long), w], dim=1)
    T = len(tokens)
    if T < N:
        raise ValueError(f"text: need at least {N} tokens, got {T}")
    n = max(1, min(n, T // N)) if T >= N else 1
    starts = np.linspace(0, T - N, n).round().astype(int) if n > 1 else [0]
    return torch.tensor([list(tokens[s:s + N]) for s in starts], dtype=torch.long)


def map_ids(tokens, map_len: int, bos_id: int | None = None) -> list:
    """The tokens of the attention-map plots: the first map_len of the stream, or bos_id + map_len-1."""
    return with_bos(tokens[:map_len - (bos_id is not None)], bos_id)


def _describe(model) -> dict:
    c = model.config
    return {"attention": c.attention, "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
            "head_dim": c.head_dim, "block_size": c.block_size, "params": model.num_params(non_embedding=False)}


def analyze_model(model, tokens, *, max_len: int = 4096, lengths=DEFAULT_LENGTHS, n_seqs: int = 4,
                  n_seqs_long: int = 1, map_len: int = 48, topk=DEFAULT_TOPK, log=None,
                  bos_id: int | None = None) -> dict:
    """All statistics of one model on one token stream. Returns a dict with "model", "main" (summary at
    the training length over n_seqs windows, plus per-head and per-position arrays), "lengths" (summary per
    context length, n_seqs_long windows each) and "maps" (per-layer (H, n, n) weights of the first
    map_len tokens). With bos_id every window (maps included) starts with that token, as in training."""
    log = log or (lambda *a: print(*a, flush=True))
    device = next(model.parameters()).device
    T = len(tokens)
    N0 = min(model.config.block_size, max_len, T)
    t0 = time.time()
    main = collect_attention_stats(model, _windows(tokens, N0, n_seqs, bos_id).to(device), topk=topk)
    log(f"  N={N0} x {main.n_seqs} seqs: {time.time() - t0:.1f}s")
    sweep = {}
    for L in sorted(set(int(x) for x in lengths) | {N0}):
        if L > max_len or L > T:
            continue
        t0 = time.time()
        st = main if L == N0 and n_seqs_long >= n_seqs else collect_attention_stats(
            model, _windows(tokens, L, n_seqs_long, bos_id).to(device), topk=topk)
        sweep[L] = st.summary()
        log(f"  length {L}: {time.time() - t0:.1f}s")
    maps = attention_maps(model, torch.tensor([map_ids(tokens, map_len, bos_id)], device=device))
    return {
        "model": _describe(model),
        "main": {**main.summary(),
                 "zero_frac": main.zero_frac.tolist(), "alpha_1": main.alpha_1.tolist(),
                 "zero_row_frac": main.zero_row_frac.tolist(), "entropy": main.entropy.tolist(),
                 "zero_frac_pos": main.zero_frac_pos.tolist(), "first_share_pos": main.first_share_pos.tolist(),
                 "entropy_pos": main.entropy_pos.tolist(), "valid_pos": main.valid_pos.tolist()},
        "lengths": sweep,
        "maps": maps,
        "signed": main.signed,
    }


def analyze_models(models: dict, out_dir, *, text: str | None = None, tokens: dict | None = None,
                   max_len: int = 4096, lengths=DEFAULT_LENGTHS, n_seqs: int = 4, n_seqs_long: int = 1,
                   map_len: int = 48, topk=DEFAULT_TOPK, source: str = "", command: str = "",
                   log=None, bos_ids: dict | None = None) -> dict:
    """Analyse models = {name: (model, tokenizer)} on the same text and write the report.
    bos_ids = {name: id or None}: the fixed first token of each model's windows (see analyze_model).

    Give either `text` (encoded with each model's tokenizer) or `tokens` = {name: token ids}.
    Figures: sparsity_heatmap.png, sparsity_vs_position.png, sink_alpha1_heatmap.png,
    first_token_share.png, first_token_share_vs_length.png, entropy_vs_length.png, topk_mass_vs_length.png,
    attention_maps_<name>.png; data: summary.json; text: report.md."""
    log = log or (lambda *a: print(*a, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    for name, (model, tok) in models.items():
        if tokens is not None:
            ids = list(tokens[name])
        elif text is not None:
            ids = tok.encode(text)
        else:
            raise ValueError("give text or tokens")
        bos = (bos_ids or {}).get(name)
        log(f"[analyze] {name}: {len(ids)} tokens" + (f", first token {bos}" if bos is not None else ""))
        r = analyze_model(model, ids, max_len=max_len, lengths=lengths, n_seqs=n_seqs, n_seqs_long=n_seqs_long,
                          map_len=map_len, topk=topk, log=log, bos_id=bos)
        if tok is not None:
            r["map_tokens"] = [tok.decode([t]) for t in map_ids(ids, map_len, bos)]
        res[name] = r
    figs = write_figures(res, out)
    summary = {name: {k: v for k, v in r.items() if k != "maps"} for name, r in res.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    (out / "report.md").write_text(markdown_report(summary, figs, source=source, command=command, topk=topk))
    return summary


def write_figures(res: dict, out: Path) -> dict:
    figs = {}
    names = list(res)
    figs["sparsity_heatmap"] = plots.heatmaps(
        {n: 100 * np.asarray(res[n]["main"]["zero_frac"]) for n in names}, out / "sparsity_heatmap.png",
        "exact-zero weights per layer x head (%)", "% exact zeros", vmin=0, vmax=100, fmt="{:.1f}")
    figs["sink_alpha1_heatmap"] = plots.heatmaps(
        {n: np.asarray(res[n]["main"]["alpha_1"]) for n in names}, out / "sink_alpha1_heatmap.png",
        f"first-token importance α_1 (Gu et al.); sink if > {SINK_EPS}", "α_1", vmin=0, vmax=1)
    figs["sparsity_vs_position"] = plots.curves(
        {n: plots.log_binned(res[n]["main"]["zero_frac_pos"], start=1) for n in names},
        out / "sparsity_vs_position.png", "exact-zero fraction of row i (causal entries)", "query position i",
        "fraction exactly zero", logx=True)
    figs["first_token_share"] = plots.first_token_figure(
        {n: (res[n]["main"]["first_share_pos"], res[n]["main"]["valid_pos"]) for n in names},
        out / "first_token_share.png", "share of each row's |weight| on the first token vs uniform")
    sweep = {n: sorted((int(L), v) for L, v in res[n]["lengths"].items()) for n in names}
    if any(len(s) for s in sweep.values()):
        Ls = sorted({L for s in sweep.values() for L, _ in s})
        figs["first_token_share_vs_length"] = plots.curves(
            {n: ([L for L, _ in s], [v["first_token_sink_ratio"] for _, v in s]) for n, s in sweep.items()},
            out / "first_token_sink_ratio_vs_length.png", "first-token share / uniform baseline vs context length",
            "context length", "sink ratio (1 = uniform, no sink)", logx=2, logy=True, hline=1.0,
            hline_label="uniform")
        figs["entropy_vs_length"] = plots.curves(
            {n: ([L for L, _ in s], [v["entropy_nats"] for _, v in s]) for n, s in sweep.items()},
            out / "entropy_vs_length.png", "dispersion: mean row entropy of normalised |weights|",
            "context length", "entropy (nats)", logx=2,
            baseline=(Ls, [float(np.mean(np.log(np.arange(1, L + 1)))) for L in Ls]), baseline_label="uniform rows, log(i+1)")
        k = max(int(key[3:-5]) for key in next(iter(sweep.values()))[0][1] if key.startswith("top"))
        figs["topk_mass_vs_length"] = plots.curves(
            {n: ([L for L, _ in s], [v[f"top{k}_mass"] for _, v in s]) for n, s in sweep.items()},
            out / "topk_mass_vs_length.png", f"mass held by the top-{k} keys of each row", "context length",
            f"top-{k} mass", logx=2)
    for n in names:
        r = res[n]
        figs[f"attention_maps_{n}"] = plots.attention_map_grid(
            r["maps"], out / f"attention_maps_{_slug(n)}.png",
            f"{n}: attention weights, first {r['maps'][0].shape[-1]} tokens"
            + (" (signed, diverging, centred at 0)" if r["signed"] else " (probabilities)"), r["signed"])
    return {k: Path(v).name for k, v in figs.items()}


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _pct(x):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _f(x, nd=3):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def markdown_report(summary: dict, figs: dict, source: str = "", command: str = "", topk=DEFAULT_TOPK) -> str:
    names = list(summary)
    longest = {n: max((int(L) for L in summary[n]["lengths"]), default=None) for n in names}
    lines = ["# Attention analysis", ""]
    if command:
        lines += ["Produced by:", "", "```", command, "```", ""]
    if source:
        lines += [f"Text: {source}", ""]
    lines += ["Definitions: weights are softmax probabilities, or TDA's signed Δa = a1 − λ·a2. Distributions over "
              "keys use p_ij = |w_ij| / Σ_j |w_ij|; all-zero rows (a TDA head that abstains) are skipped and "
              "counted separately. α_1 = mean over rows of p_i0 (Gu et al. 2025, first token); "
              f"Sink_1 share = fraction of (layer, head) pairs with α_1 > {SINK_EPS}. "
              "First-token share = mean over rows i ≥ 1 (with mass) of p_i0; its uniform baseline is the mean of 1/(i+1) over "
              "the same rows, and the sink ratio is their quotient (1 = no sink). Uniform entropy likewise = mean "
              "log(i+1) over the same rows.", ""]
    hdr = "| metric | " + " | ".join(names) + " |"
    lines += [hdr, "|" + "---|" * (len(names) + 1)]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(n) for n in names) + " |")

    row("attention", lambda n: summary[n]["model"]["attention"])
    row("layers x heads (d_head)", lambda n: f"{summary[n]['model']['n_layer']} x {summary[n]['model']['n_head']} "
        f"({summary[n]['model']['head_dim']})")
    row("parameters", lambda n: f"{summary[n]['model']['params'] / 1e6:.2f}M")
    row("training context", lambda n: str(summary[n]["model"]["block_size"]))
    row("analysed at N (sequences)", lambda n: f"{summary[n]['main']['n_tokens']} ({summary[n]['main']['n_seqs']})")
    row("exact zeros (causal entries)", lambda n: _pct(summary[n]["main"]["exact_zero_fraction"]))
    row("all-zero rows", lambda n: _pct(summary[n]["main"]["all_zero_row_fraction"]))
    row(f"silent heads (all-zero in >= {100 * SILENT_ROWS:.0f}% of rows)",
        lambda n: _pct(summary[n]["main"]["silent_head_fraction"]))
    row(f"Sink_1 share (α_1 > {SINK_EPS})", lambda n: _pct(summary[n]["main"][f"sink_1_share_eps{SINK_EPS}"]))
    row("α_1 mean / max over heads", lambda n: f"{_f(summary[n]['main']['alpha_1_mean'])} / "
        f"{_f(summary[n]['main']['alpha_1_max'])}")
    row("first-token share (uniform)", lambda n: f"{_f(summary[n]['main']['first_token_share'], 4)} "
        f"({_f(summary[n]['main']['first_token_share_uniform'], 4)})")
    row("first-token sink ratio (share / uniform)", lambda n: _f(summary[n]["main"]["first_token_sink_ratio"], 2))
    row("row entropy at N (nats)", lambda n: _f(summary[n]["main"]["entropy_nats"]))
    row("longest length analysed", lambda n: str(longest[n]))
    row("row entropy at longest (uniform)", lambda n: "–" if longest[n] is None else
        f"{_f(summary[n]['lengths'][longest[n]]['entropy_nats'])} "
        f"({_f(summary[n]['lengths'][longest[n]]['uniform_entropy'])})")
    for k in topk:
        row(f"top-{k} mass at longest", lambda n, k=k: "–" if longest[n] is None else
            _f(summary[n]["lengths"][longest[n]][f"top{k}_mass"]))
    row("exact zeros at longest", lambda n: "–" if longest[n] is None else
        _pct(summary[n]["lengths"][longest[n]]["exact_zero_fraction"]))
    lines.append("")

    lines += ["## Versus context length", ""]
    for n in names:
        lines += [f"**{n}**", "", "| length | exact zeros | all-zero rows | Sink_1 share | first-token share (uniform) | "
                  "entropy (uniform) | " + " | ".join(f"top-{k} mass" for k in topk) + " |",
                  "|---|---|---|---|---|---|" + "---|" * len(topk)]
        for L in sorted(summary[n]["lengths"], key=int):
            v = summary[n]["lengths"][L]
            lines.append(f"| {L} | {_pct(v['exact_zero_fraction'])} | {_pct(v['all_zero_row_fraction'])} | "
                         f"{_pct(v[f'sink_1_share_eps{SINK_EPS}'])} | {_f(v['first_token_share'], 4)} "
                         f"({_f(v['first_token_share_uniform'], 4)}) | {_f(v['entropy_nats'])} "
                         f"({_f(v['uniform_entropy'])}) | " + " | ".join(_f(v[f'top{k}_mass']) for k in topk) + " |")
        lines.append("")
    lines += ["Lengths above a model's training context are extrapolation (RoPE unscaled).", "", "## Figures", ""]
    captions = {
        "sparsity_heatmap": "Exact-zero fraction per layer x head.",
        "sparsity_vs_position": "Exact-zero fraction of row i.",
        "sink_alpha1_heatmap": "α_1 per layer x head (first-token importance).",
        "first_token_share": "First-token share per query position vs the uniform baseline 1/(i+1) (left), and "
                             "their ratio (right; 1 = no sink). Log-binned, weighted by the rows with mass.",
        "first_token_share_vs_length": "First-token sink ratio (mean share / mean uniform share over the same rows) vs context length.",
        "entropy_vs_length": "Row entropy vs context length (dispersion).",
        "topk_mass_vs_length": "Top-k mass vs context length.",
    }
    for key, fname in figs.items():
        cap = captions.get(key, key.replace("_", " ") + " (signed weights use a diverging map centred at 0).")
        lines += [f"![{key}]({fname})", "", cap, ""]
    return "\n".join(lines)
