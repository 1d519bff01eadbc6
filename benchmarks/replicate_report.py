"""Table, loss curves and the paper's claims for the replication runs (benchmarks/replicate.sh report).

    python benchmarks/replicate_report.py DIR [--out OUT_DIR] [--config configs/replicate.yaml]
        [--eval EVAL_DIR ...] [--survivors survivors.json]

DIR holds the rows `s<SEED>-<VARIANT>.json` that `replicate.sh train` copies out of each run (the
compare.json of tda.train.compare). Each EVAL_DIR is an unpacked replicate-eval.tar.gz of `replicate.sh eval`
(analysis/summary.json, eval-<run>/eval_all.json); several merge (one per GPU machine). survivors.json comes
from `tda eval --task survivors --out DIR` (a simulation: no checkpoint, runs on a CPU).

Writes OUT_DIR/results.md:
- the claims, one by one (tda.eval.claims: paper, here, verdict);
- per variant the mean and the seed spread (min..max and the standard deviation over seeds) of validation
  loss, exact zeros, first-token sink ratio and tokens/s, each difference to softmax beside the softmax
  seeds' spread;
- one row per run.

It also writes OUT_DIR/loss_curves.png, the train and validation loss of every run (matplotlib).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import statistics
from pathlib import Path

from tda.eval.attention_stats import SILENT_ROWS, SINK_EPS
from tda.eval.claims import claims_table, head_alpha, passkey_at
from tda.train.compare import markdown_table, plot_attention_trend, plot_curves

ROW = re.compile(r"s(\d+)-(.+)\.json$")
EVAL_RUN = re.compile(r"eval-s(\d+)-(.+)$")


def read_eval(dirs: list[Path]) -> tuple[dict, dict]:
    """Every unpacked eval folder, read once: (merged analysis summaries {run: ...}, {run: (eval_all.json,
    its folder)})."""
    summary, evals = {}, {}
    for d in dirs:
        f = d / "analysis" / "summary.json"
        if f.exists():
            summary.update(json.loads(f.read_text()))
        for e in sorted(d.glob("eval-*/eval_all.json")):
            evals[e.parent.name[len("eval-"):]] = (json.loads(e.read_text()), e.parent)
    return summary, evals


def passkey_hits(evals: dict) -> tuple[dict, dict]:
    """(passkey {variant: [(correct, trials) at 4K per run]}, the same after the passkey fine-tune)."""
    passkey, finetuned = {}, {}
    for name, (res, folder) in evals.items():
        m = EVAL_RUN.match(folder.name)
        for section, into in (("passkey", passkey), ("passkey_finetuned", finetuned)):
            hit = passkey_at(res, section=section)
            if m and hit is not None:
                into.setdefault(m.group(2), []).append(hit)
    return passkey, finetuned


def eval_tables(dirs: list[Path], an: dict, evals: dict, out: Path) -> str:
    """Markdown per run (read_eval's summaries and evals): the analysis at the training length and its
    sweep to the longest length (sinks, zeros, dispersion), passkey per length (zero-shot and after the
    fine-tune, without and with NTK scaling), perplexity at 1-8x the training length, and links to the plots."""
    plots = []
    for d in dirs:
        f = d / "analysis" / "summary.json"
        if not f.exists() or not set(json.loads(f.read_text())) & set(an):
            continue
        for png in ("first_token_share.png", "sink_alpha1_heatmap.png", "entropy_vs_length.png",
                    "topk_mass_vs_length.png", "first_token_sink_ratio_vs_length.png", "sparsity_heatmap.png"):
            if (d / "analysis" / png).exists():
                plots.append(f"[{d.name}: {png}]({(d / 'analysis' / png).relative_to(out)})")
    ev = {}
    for name, (res, folder) in evals.items():
        ev[name] = res
        plots += [f"[{folder.name}: {png.name}]({png.relative_to(out)})" for png in sorted(folder.glob("*.png"))]
    lines = []
    if an:
        lines += ["### Sinks, exact zeros and dispersion (`tda analyze`)", "",
                  "| run | exact zeros | first-token ratio | Sink₁ share | max α₁ | entropy / uniform (nats) | "
                  "top-8 mass | entropy at the longest length | top-8 mass there |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name in sorted(an):
            m = an[name]["main"]
            longest = max((int(k) for k in an[name].get("lengths", {})), default=None)
            far = an[name]["lengths"][str(longest)] if longest else {}
            lines.append(f"| {name} | {100 * m['exact_zero_fraction']:.2f}% | {m['first_token_sink_ratio']:.2f} | "
                         f"{m['sink_1_share_eps0.3']:.2f} | {m['alpha_1_max']:.3f} | {m['entropy_nats']:.2f} / "
                         f"{m['uniform_entropy']:.2f} | {m['top8_mass']:.3f} | "
                         + (f"{far['entropy_nats']:.2f} / {far['uniform_entropy']:.2f} at {longest} | "
                            f"{far['top8_mass']:.3f} |" if far else "- | - |"))
        lines.append("")
        lines += per_layer_lines(an)
    for section, title in (("passkey", "Passkey retrieval, zero-shot"),
                           ("passkey_finetuned", "Passkey retrieval after the passkey fine-tune at the training length")):
        rows = {n: e[section] for n, e in sorted(ev.items()) if section in e}
        if not rows:
            continue
        lengths = next(iter(rows.values()))["runs"]["needles=1"]["lengths"]
        extra = ""
        ft = next(iter(rows.values())).get("finetune")
        if ft:
            extra = (f" ({ft['steps']} steps x {ft['batch_size']} prompts of {ft['length']} tokens, lr {ft['lr']}, "
                     f"loss on the answer only)")
        lines += [f"### {title}{extra}", "",
                  "| run | " + " | ".join(f"{L}" for L in lengths) + " | " + " | ".join(f"{L} NTK" for L in lengths) + " |",
                  "|---|" + "---:|" * (2 * len(lengths))]
        for n, r in rows.items():
            cells = []
            for key in ("needles=1", "needles=1, NTK RoPE"):
                acc = r["runs"].get(key, {}).get("accuracy", [None] * len(lengths))
                cells += ["-" if a is None else f"{100 * a:.0f}%" for a in acc]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append(f"\n{next(iter(rows.values()))['trials']} trials per length; exact match of the 5-digit key.\n")
    ppl = {n: e["extrapolation"] for n, e in sorted(ev.items()) if "extrapolation" in e}
    if ppl:
        first = next(iter(ppl.values()))["runs"]
        lengths = [x["length"] for x in next(iter(first.values()))["results"]]
        lines += ["### Perplexity on held-out long documents at 1-8x the training length", "",
                  "| run | scaling | " + " | ".join(str(L) for L in lengths) + " |", "|---|---|" + "---:|" * len(lengths)]
        for n, r in ppl.items():
            for key, run in r["runs"].items():
                lines.append(f"| {n} | {key} | " + " | ".join(
                    f"{x['ppl']:.2f}" if x["n_windows"] else "-" for x in run["results"]) + " |")
        lines.append("")
    if plots:
        lines += ["Plots: " + ", ".join(plots), ""]
    return "\n".join(lines)


def per_layer_lines(an: dict) -> list[str]:
    """Markdown: per run and layer, the heads with a first-token sink (α₁ > 0.3), the layer's mean α₁ over its
    heads as a multiple of a uniform row's (mean of 1/(i+1) over the analysed rows); for variants that abstain,
    also the Sink₁ heads when abstaining rows count as no attention, the all-zero rows, and the silent heads
    (abstaining in 99% of rows or more: an exact zero passes no gradient back to q, k or beta)."""
    lines = []
    for name in sorted(an):
        m = an[name]["main"]
        if not m.get("alpha_1"):
            continue
        n = int(m["n_tokens"])
        uniform = sum(1.0 / (i + 1) for i in range(n)) / n
        alpha, live = head_alpha(m)
        if not lines:
            lines += ["### Sinks per layer", "",
                      f"Per layer: heads whose α₁ > {SINK_EPS} (Sink₁), the mean α₁ of its heads over a uniform row's "
                      "(1 = no preference for the first token; a head that never attends counts 0), and where heads "
                      "abstain (all weights of a row zero): Sink₁ with abstaining rows counted as no attention to "
                      "the first token, the all-zero rows, and the silent heads.", "",
                      "| run | per layer | " + " | ".join(f"L{i}" for i in range(len(alpha))) + " |",
                      "|---|---|" + "---:|" * len(alpha)]
        lines.append(f"| {name} | Sink₁ heads | " + " | ".join(
            f"{sum(a > SINK_EPS for a in layer)}/{len(layer)}" for layer in alpha) + " |")
        lines.append(f"| {name} | mean α₁ / uniform | " + " | ".join(
            f"{sum(layer) / len(layer) / uniform:.1f}" for layer in alpha) + " |")
        if m.get("zero_row_frac") and max(max(r) for r in m["zero_row_frac"]) > 0:
            # an abstaining row counts as no attention to the first token: a head that attends in a handful of
            # rows cannot make a sink
            lines.append(f"| {name} | Sink₁ heads, abstaining rows as 0 | " + " | ".join(
                f"{sum(a > SINK_EPS for a in layer)}/{len(layer)}" for layer in live) + " |")
            lines.append(f"| {name} | all-zero rows | " + " | ".join(
                f"{100 * sum(r) / len(r):.1f}%" for r in m["zero_row_frac"]) + " |")
            lines.append(f"| {name} | silent heads (>= {100 * SILENT_ROWS:.0f}% of rows zero) | " + " | ".join(
                f"{sum(z >= SILENT_ROWS for z in r)}/{len(r)}" for r in m["zero_row_frac"]) + " |")
    return lines + [""] if lines else []


def load_rows(d: Path) -> list[dict]:
    rows = []
    for p in sorted(d.glob("s*-*.json")):
        m = ROW.match(p.name)
        if not m:
            continue
        r = json.loads(p.read_text())
        r["seed"], r["variant"] = int(m.group(1)), m.group(2)
        r["name"] = f"{r['variant']} (seed {r['seed']})"
        rows.append(r)
    if not rows:
        raise SystemExit(f"{d}: no s<SEED>-<VARIANT>.json rows")
    return rows


def _spread(xs: list[float], fmt: str) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    mean = statistics.fmean(xs)
    if len(xs) == 1:
        return f"{mean:{fmt}} (1 seed)"
    sd = statistics.stdev(xs)
    return f"{mean:{fmt}} ± {sd:{fmt}} [{min(xs):{fmt}}..{max(xs):{fmt}}] ({len(xs)} seeds)"


def summary_table(rows: list[dict]) -> str:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    ref = [r["val_loss"] for r in by.get("softmax", []) if r.get("val_loss") is not None]
    ref_mean = statistics.fmean(ref) if ref else None
    lines = ["| variant | val loss | Δ vs softmax mean | exact zeros | first-token sink ratio | tokens/s |",
             "|---|---|---|---|---|---|"]
    for v, rs in by.items():
        vl = [r.get("val_loss") for r in rs]
        delta = "-"
        if ref_mean is not None and all(x is not None for x in vl):
            delta = f"{100 * (statistics.fmean(vl) - ref_mean) / ref_mean:+.2f}%"
        lines.append("| " + " | ".join([
            v, _spread(vl, ".4f"), delta,
            _spread([100 * r["exact_zero_fraction"] if r.get("exact_zero_fraction") is not None else None
                     for r in rs], ".2f"),
            _spread([r.get("stats_first_token_sink_ratio") for r in rs], ".2f"),
            _spread([r.get("tokens_per_s") for r in rs], ",.0f"),
        ]) + " |")
    if len(ref) >= 2:
        lines.append("")
        lines.append(f"Softmax seed-to-seed spread of the validation loss: {max(ref) - min(ref):.4f} "
                     f"({100 * (max(ref) - min(ref)) / ref_mean:.2f}% of its mean).")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--config", default="configs/replicate.yaml")
    ap.add_argument("--eval", type=Path, nargs="*", default=[], help="unpacked replicate-eval folders")
    ap.add_argument("--survivors", type=Path, default=None, help="survivors.json of tda eval --task survivors")
    ap.add_argument("--zeros-from", type=Path, default=None, metavar="RESULTS_JSON",
                    help="a tda compare results.json whose variants these runs lack (e.g. ReLA, entmax) join the "
                         "sparsity claim, marked with their source")
    a = ap.parse_args(argv)
    out = a.out or a.rows
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(a.rows)
    summary, evals = read_eval(a.eval)
    # a checkpoint evaluated without its training row (an old archive left beside the rows) stays out
    runs = {f"s{r['seed']}-{r['variant']}" for r in rows}
    dropped = sorted((set(summary) | set(evals)) - runs)
    if dropped:
        print(f"[report] no row for {', '.join(dropped)}: left out", file=sys.stderr)
    summary = {k: v for k, v in summary.items() if k in runs}
    evals = {k: v for k, v in evals.items() if k in runs}
    passkey, passkey_ft = passkey_hits(evals)
    survivors = json.loads(a.survivors.read_text()) if a.survivors else None
    extra_zeros = {}
    if a.zeros_from:
        for r in json.loads(a.zeros_from.read_text()):
            if r.get("exact_zero_fraction") is not None:
                extra_zeros[r["attention"]] = ([float(r["exact_zero_fraction"])],
                                               f"{a.zeros_from.parent.name}, {r.get('tokens', 0) / 1e6:.1f}M tokens")
    text = "\n".join([
        "# Replication: softmax vs TDA and the other attention families", "",
        f"Config: `{a.config}`; one run per variant and seed (`bash benchmarks/replicate.sh run VARIANT SEED`).", "",
        "## The paper's claims", "",
        claims_table(rows, summary or None, passkey, survivors, passkey_ft, extra_zeros), "",
        "Verdict rules: `tda.eval.claims` (a difference is real beyond 2 standard errors over seeds; "
        "passkey by 95% Wilson intervals).", "",
        "## Per variant (mean ± standard deviation over seeds [min..max])", "",
        summary_table(rows), "",
        "## Analysis and evaluation of the checkpoints", "",
        eval_tables(a.eval, summary, evals, out) if a.eval else "No evaluation archives were given.", "",
        "## Per run", "",
        markdown_table(rows, reference=next((r["name"] for r in rows if r["variant"] == "softmax"), "softmax")), "",
        "![loss curves](loss_curves.png)", "",
    ])
    tokens_per_step = next((r["tokens"] // r["steps"] for r in rows if r.get("steps")), None)
    if plot_attention_trend(rows, out / "attention_trend.png", tokens_per_step):
        text += ("\n## Sinks and sparsity during training\n\nLogged at every evaluation on the same validation "
                 "windows (`attn_stats_seqs`):\n\n![attention statistics against training tokens](attention_trend.png)\n")
    (out / "results.md").write_text(text)
    plot_curves(rows, out / "loss_curves.png")
    print(f"wrote {out / 'results.md'} and {out / 'loss_curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
