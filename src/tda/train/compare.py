"""`tda compare CONFIG`: train several attention variants on identical data, budget and seed, then
tabulate validation loss, sparsity, sinks, dispersion, speed and memory.

A compare config is an ordinary training config (TrainConfig fields at top level, the model under
`model:`) plus a `compare:` section:

    compare:
      variants: [softmax, gated_softmax, diff, tda]   # names in tda.layers.ATTENTION, or mappings
                                                      #   {name: tda_k2, attention: tda, model: {kappa: 2}}
      results_dir: docs/results/compare-tiny          # results.md, results.json, loss_curves.png
      match_params: true      # set mlp_hidden per variant so non-embedding params match `reference`
      reference: softmax
      multiple_of: 8          # mlp_hidden granularity when matching
      stats_seqs: 4           # validation sequences (of block_size tokens) for sparsity / sink statistics

Each variant trains with the shared trainer (tda.train.loop.train) into `<out_dir>/<name>/`, with the
same seed (so the same batches in the same order and the same initial RNG state) and the same steps.
Resumable: a variant whose `compare.json` records the same config is skipped; any other resumes from its
`last.pt` (or starts). The table is rewritten after every variant, so a cut-short run keeps what finished.

Measurements (docs/baselines.md has the details):
  val loss      the trainer's final validation loss (eval_iters fixed batches)
  exact zeros   tda.eval.sparsity.exact_zero_fraction over the causal weights of `stats_seqs` val sequences
  sinks         tda.eval.attention_stats (when present): first-token sink ratio (1 = uniform baseline),
                Sink_1 share (heads with α_1 > 0.3), mean row entropy (dispersion)
  tokens/s      median of the trainer's logged train throughput, first log interval dropped (warm-up)
  peak memory   one training step (forward + backward, one micro-batch, autocast as in training):
                CUDA: torch.cuda.max_memory_allocated; CPU: growth of the peak RSS (VmHWM, reset just
                before the step) over the RSS before it, in a fresh subprocess (allocator-level counters
                do not exist on CPU, and tracemalloc does not see torch's allocations)
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import statistics
import time
from pathlib import Path

import torch

from .config import TrainConfig, apply_overrides, read_config_file

COMPARE_DEFAULTS = {
    "variants": ["softmax", "tda"],
    "results_dir": None,          # None = <out_dir>/results
    "match_params": True,
    "reference": "softmax",
    "multiple_of": 8,
    "stats_seqs": 4,
}
RESULT_FILE = "compare.json"


# --- config ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Variant:
    name: str
    attention: str
    model: dict          # GPTConfig overrides beyond `attention`


def load_compare_config(path, overrides=None):
    """(base TrainConfig, compare options, [Variant]) from a YAML/TOML compare config."""
    d = read_config_file(path)
    cmp = dict(COMPARE_DEFAULTS)
    extra = d.pop("compare", None) or {}
    unknown = set(extra) - set(COMPARE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown compare keys {sorted(unknown)} (known: {', '.join(sorted(COMPARE_DEFAULTS))})")
    cmp.update(extra)
    train_overrides, cmp_overrides = [], []
    for item in overrides or ():
        (cmp_overrides if item.startswith("compare.") else train_overrides).append(item)
    for item in cmp_overrides:
        key, value = item[len("compare."):].split("=", 1)
        if key not in COMPARE_DEFAULTS:
            raise ValueError(f"unknown compare key {key!r} in override {item!r}")
        from .config import parse_value
        cmp[key] = parse_value(value)
    apply_overrides(d, train_overrides)
    base = TrainConfig.from_dict(d)
    variants = parse_variants(cmp["variants"])
    return base, cmp, variants


def parse_variants(spec) -> list:
    from ..layers import ATTENTION
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    if not spec:
        raise ValueError("compare.variants is empty")
    out = []
    for v in spec:
        if isinstance(v, str):
            v = {"name": v}
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError(f"compare.variants: each entry is a name or a mapping with 'name', got {v!r}")
        bad = set(v) - {"name", "attention", "model"}
        if bad:
            raise ValueError(f"compare.variants[{v['name']!r}]: unknown keys {sorted(bad)}")
        att = v.get("attention", v["name"])
        if att not in ATTENTION:
            raise ValueError(f"compare.variants: attention must be one of {sorted(ATTENTION)}, got {att!r}")
        out.append(Variant(str(v["name"]), att, dict(v.get("model") or {})))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ValueError(f"compare.variants: duplicate names in {names}")
    return out


def variant_config(base: TrainConfig, cmp: dict, variant: Variant) -> TrainConfig:
    """The TrainConfig of one variant: same everything, own attention / model overrides / out_dir, and
    (with match_params) the MLP width that matches the reference variant's parameter count."""
    from ..models.params import matched_config
    cfg = copy.deepcopy(base)
    model = dataclasses.replace(cfg.model, **variant.model)
    if cmp["match_params"]:
        ref_model = dataclasses.replace(cfg.model, attention=cmp["reference"])
        matched = matched_config(ref_model, variant.attention, reference=cmp["reference"],
                                 multiple_of=int(cmp["multiple_of"]))
        model = dataclasses.replace(model, attention=variant.attention, mlp_hidden=matched.mlp_hidden)
        if variant.model:  # overrides may change the size again: match this exact model
            from ..models.params import count_params, match_mlp_hidden
            model = dataclasses.replace(model, mlp_hidden=match_mlp_hidden(
                model, count_params(ref_model), int(cmp["multiple_of"])))
    else:
        model = dataclasses.replace(model, attention=variant.attention)
    cfg.model = model
    cfg.out_dir = str(Path(base.out_dir) / variant.name)
    return cfg


def config_hash(cfg: TrainConfig, cmp: dict) -> str:
    d = cfg.to_dict()
    d.pop("progress", None)
    d["stats_seqs"] = cmp["stats_seqs"]
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- measurements ---------------------------------------------------------------------------------
def attention_measurements(model, ids: torch.Tensor, amp_dtype=None) -> dict:
    """Exact-zero fraction and (optionally) sink / dispersion numbers of a trained model."""
    out = {}
    ctx = (torch.autocast(device_type=ids.device.type, dtype=amp_dtype) if amp_dtype is not None
           else _null())
    try:
        from ..eval.sparsity import exact_zero_fraction
    except ImportError:
        exact_zero_fraction = None
    with ctx:
        if exact_zero_fraction is not None:
            z = exact_zero_fraction(model, ids)
            out["exact_zero_fraction"] = z["overall"]
            out["exact_zero_per_layer"] = z["per_layer"]
        try:
            from ..eval.attention_stats import collect_attention_stats
        except ImportError:
            collect_attention_stats = None
        if collect_attention_stats is not None:
            s = collect_attention_stats(model, ids).summary()
            out.update({f"stats_{k}": v for k, v in s.items()})
            out.setdefault("exact_zero_fraction", s.get("exact_zero_fraction"))
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _step_once(cfg: TrainConfig, device: str, amp_dtype):
    from ..models.gpt import GPT
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model).to(device)
    x = torch.randint(0, cfg.model.vocab_size, (cfg.batch_size, cfg.model.block_size), device=device)
    return model, x


def _one_step(model, x, amp_dtype):
    ctx = torch.autocast(device_type=x.device.type, dtype=amp_dtype) if amp_dtype is not None else _null()
    with ctx:
        _, loss = model(x, x, return_logits=False)
    loss.backward()


def peak_memory_cuda(cfg: TrainConfig, device, amp_dtype) -> float:
    """MiB: max_memory_allocated during one forward + backward (parameters and gradients included)."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    model, x = _step_once(cfg, device, amp_dtype)
    _one_step(model, x, amp_dtype)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del model, x
    torch.cuda.empty_cache()
    return peak / 2**20


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _cpu_probe(cfg_dict, queue):
    # VmHWM (this address space's peak RSS), not getrusage's ru_maxrss: the latter carries the
    # parent's peak across fork+exec, so a probe spawned from a big process would read the parent
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(cfg_dict)
    model, x = _step_once(cfg, "cpu", None)
    _one_step(model, x[:1, :8], None)     # load kernels / lazy library state before measuring
    model.zero_grad(set_to_none=True)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                  # reset VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass
    rss_before = _proc_status_kib("VmRSS")
    _one_step(model, x, None)
    peak = _proc_status_kib("VmHWM")
    queue.put(max(peak - rss_before, 0) / 1024)


def peak_memory_cpu(cfg: TrainConfig) -> float | None:
    """MiB: growth of peak RSS during one forward + backward, in a fresh process (None if unavailable)."""
    import multiprocessing as mp
    try:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_cpu_probe, args=(cfg.to_dict(), q))
        p.start()
        p.join(600)
        return q.get(timeout=5) if p.exitcode == 0 else None
    except Exception:  # a probe must never sink the comparison
        return None


def throughput(rows: list) -> float | None:
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    if len(tps) > 1:
        tps = tps[1:]   # the first interval carries warm-up (allocator, kernel autotune, compile)
    return statistics.median(tps) if tps else None


# --- running --------------------------------------------------------------------------------------
def run_variant(cfg: TrainConfig, cmp: dict, variant: Variant, force: bool = False, log=print) -> dict:
    """Train (or resume) one variant, measure it, write <out_dir>/compare.json; returns its result."""
    from .loop import ATTN_TREND, autocast_dtype, stats_batch, train
    out = Path(cfg.out_dir)
    h = config_hash(cfg, cmp)
    done = out / RESULT_FILE
    if done.is_file() and not force:
        res = json.loads(done.read_text())
        if res.get("config_hash") == h:
            log(f"[compare] {variant.name}: finished earlier, skipping ({done})")
            return res
        log(f"[compare] {variant.name}: config changed since {done} was written; re-running")
        for f in ("last.pt", "best.pt", "metrics.jsonl"):  # a different config must not resume an old run
            (out / f).unlink(missing_ok=True)
    log(f"[compare] {variant.name}: attention={cfg.model.attention} mlp_hidden={cfg.model.mlp_hidden}")
    summary = train(cfg, resume=True)
    model = summary["model"]
    device = next(model.parameters()).device
    rows = [json.loads(line) for line in open(summary["metrics"])] if Path(summary["metrics"]).is_file() else []
    vals = [r for r in rows if "val_loss" in r]
    trains = [r for r in rows if "train_loss" in r]
    amp = autocast_dtype(cfg, device.type)
    res = {
        "name": variant.name, "attention": cfg.model.attention, "config_hash": h,
        "params_non_embedding": model.num_params(non_embedding=True),
        "params_total": model.num_params(non_embedding=False),
        "mlp_hidden": cfg.model.mlp_hidden,
        "steps": summary["step"],
        "tokens": summary["step"] * cfg.batch_size * cfg.grad_accum * cfg.model.block_size,
        "val_loss": vals[-1]["val_loss"] if vals else summary.get("val_loss"),
        "train_loss": trains[-1]["train_loss"] if trains else None,
        "tokens_per_s": throughput(rows),
        "train_elapsed_s": summary.get("elapsed"),
        "device": str(device),
        "curve": {"train": [(r["step"], r["train_loss"]) for r in trains],
                  "val": [(r["step"], r["val_loss"]) for r in vals],
                  # the attention statistics at each evaluation (attn_stats_seqs), when logged
                  "attention": [(r["step"], {k: r[f"attn_{k}"] for k in ATTN_TREND if f"attn_{k}" in r})
                                for r in vals if "attn_first_token_sink_ratio" in r]},
    }
    t0 = time.time()
    # a failing measurement must not throw away the trained variant: its loss and curve are kept and the
    # error is recorded in the row (and the table), the other measurements still run
    try:
        ids = stats_batch(cfg, int(cmp["stats_seqs"]), device)
        res.update(attention_measurements(model, ids, amp))
    except Exception as e:  # noqa: BLE001
        _measure_failed(res, "attention statistics", e, log)
    del model, summary
    try:
        if device.type == "cuda":
            res["peak_mem_mib"] = peak_memory_cuda(cfg, device, amp)
            res["peak_mem_method"] = "cuda max_memory_allocated, one train step"
        else:
            res["peak_mem_mib"] = peak_memory_cpu(cfg)
            res["peak_mem_method"] = "cpu peak-RSS (VmHWM) growth, one train step (subprocess)"
    except Exception as e:  # noqa: BLE001
        _measure_failed(res, "peak memory", e, log)
    res["measure_s"] = time.time() - t0
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(res, indent=1))
    log(f"[compare] {variant.name}: val loss {res['val_loss']}, exact zeros {res.get('exact_zero_fraction')}")
    return res


def compare(config_path, overrides=None, only=None, results_dir=None, force=False, log=print) -> dict:
    """Run the whole comparison; returns {"results": [...], "table": path, "plot": path}."""
    base, cmp, variants = load_compare_config(config_path, overrides)
    if only:
        wanted = set(only)
        missing = wanted - {v.name for v in variants}
        if missing:
            raise ValueError(f"--variants: {sorted(missing)} not in the config's variants")
        variants = [v for v in variants if v.name in wanted]
    res_dir = Path(results_dir or cmp["results_dir"] or Path(base.out_dir) / "results")
    _ensure_data(base, log)
    cfgs = [variant_config(base, cmp, v) for v in variants]
    results = []
    for v, cfg in zip(variants, cfgs):
        try:
            results.append(run_variant(cfg, cmp, v, force=force, log=log))
        except Exception as e:  # one broken variant (an OOM, a kernel error) must not sink the others
            import traceback
            traceback.print_exc()
            log(f"[compare] {v.name}: FAILED ({type(e).__name__}: {e}); continuing with the next variant")
            results.append(_failed_row(v, cfg, e))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        paths = write_results(results, base, cmp, res_dir, config_path, overrides, only, results_dir)
    log(f"[compare] table: {paths['table']}\n[compare] curves: {paths['plot']}")
    return {"results": results, **paths}


def _measure_failed(res: dict, what: str, e: Exception, log) -> None:
    import traceback
    traceback.print_exc()
    msg = f"{what}: {type(e).__name__}: {e}"[:300]
    res.setdefault("measure_errors", []).append(msg)
    log(f"[compare] {res['name']}: measurement failed ({msg}); keeping the training results")


def _failed_row(v: Variant, cfg: TrainConfig, e: Exception) -> dict:
    from ..models.params import count_params
    return {"name": v.name, "attention": cfg.model.attention, "mlp_hidden": cfg.model.mlp_hidden,
            "params_non_embedding": count_params(cfg.model), "val_loss": None, "steps": 0, "tokens": 0,
            "device": cfg.device, "error": f"{type(e).__name__}: {e}"[:300], "curve": {"train": [], "val": []}}


def _ensure_data(cfg: TrainConfig, log):
    """The bundled slice is prepared on demand (seconds, offline); any other data_dir must exist."""
    d = Path(cfg.data_dir)
    if (d / "meta.json").is_file():
        return
    if d.name == "bundled":
        from ..data import ensure_bundled_data
        log(f"[compare] preparing the bundled corpus in {d}")
        ensure_bundled_data(d)
        return
    raise FileNotFoundError(f"data_dir {str(d)!r} holds no prepared corpus (meta.json); run `tda data prepare`")


# --- reporting ------------------------------------------------------------------------------------
def _fmt(x, spec, scale=1.0):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x * scale, spec)


def markdown_table(results: list, reference: str = "softmax") -> str:
    ref = next((r for r in results if r["name"] == reference and not r.get("error")), None)
    ref_loss = ref["val_loss"] if ref else None
    head = ("| variant | attention | non-emb params | mlp_hidden | val loss | Δ vs " + reference
            + " | exact zeros | first-token sink ratio | Sink₁ share | entropy (nats) | tokens/s | peak mem (MiB) |")
    lines = [head, "|" + "|".join(["---"] * 12) + "|"]
    for r in results:
        if r.get("error"):
            lines.append(f"| {r['name']} | {r['attention']} | {r['params_non_embedding'] / 1e6:.3f}M | "
                         f"{r['mlp_hidden']} | failed: {r['error'].splitlines()[0][:80]} |" + " |" * 7)
            continue
        d = (r["val_loss"] / ref_loss - 1) if (ref_loss and r["val_loss"] is not None) else None
        lines.append("| " + " | ".join([
            r["name"], r["attention"], f"{r['params_non_embedding'] / 1e6:.3f}M", str(r["mlp_hidden"]),
            _fmt(r["val_loss"], ".4f"), _fmt(d, "+.2f", 100) + ("%" if d is not None else ""),
            _fmt(r.get("exact_zero_fraction"), ".2f", 100) + ("%" if r.get("exact_zero_fraction") is not None else ""),
            _fmt(r.get("stats_first_token_sink_ratio"), ".2f"),
            _fmt(r.get("stats_sink_1_share_eps0.3"), ".2f"),
            _fmt(r.get("stats_entropy_nats"), ".2f"),
            _fmt(r.get("tokens_per_s"), ",.0f"),
            _fmt(r.get("peak_mem_mib"), ",.0f"),
        ]) + " |")
    notes = [f"- {r['name']}: measurement failed: {m}" for r in results for m in r.get("measure_errors", [])]
    if notes:
        lines += ["", "Measurement errors (the variant trained; '–' marks what could not be measured):", *notes]
    return "\n".join(lines)


def plot_curves(results: list, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        tr = r["curve"]["train"]
        if tr:
            s, l = zip(*tr)
            axes[0].plot(s, _smooth(l), label=r["name"], lw=1.2)
        va = r["curve"]["val"]
        if va:
            s, l = zip(*va)
            axes[1].plot(s, l, marker="o", ms=3, label=r["name"], lw=1.2)
    axes[0].set(title="train loss (EMA-smoothed)", xlabel="step", ylabel="loss")
    axes[1].set(title="validation loss", xlabel="step", ylabel="loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attention_trend(results: list, path: Path, tokens_per_step: int | None = None) -> bool:
    """The attention statistics logged at each evaluation (attn_stats_seqs) against training tokens (or
    steps): first-token sink ratio, Sink_1 share, exact zeros, silent heads. False (nothing written) when no
    row has them."""
    runs = [r for r in results if r.get("curve", {}).get("attention")]
    if not runs:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("first_token_sink_ratio", "first-token share / uniform share (1 = no sink)"),
              ("sink_1_share", "Sink₁ share (heads with α₁ > 0.3)"),
              ("exact_zero_fraction", "exact zeros (causal entries)"),
              ("silent_head_fraction", "silent heads (all-zero in >= 99% of rows)"))
    # only what was logged: rows written before a statistic existed lack it
    panels = [p for p in panels if any(p[0] in st for r in runs for _, st in r["curve"]["attention"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels) + 0.6, 4.2), squeeze=False)
    axes = axes[0]
    for i, r in enumerate(runs):
        steps, stats = zip(*r["curve"]["attention"])
        x = [s * tokens_per_step / 1e6 for s in steps] if tokens_per_step else list(steps)
        for ax, (key, _) in zip(axes, panels):
            pts = [(xi, st[key]) for xi, st in zip(x, stats) if key in st]
            if pts:
                # one colour per run in every panel (a panel may lack some runs; the legend is axes[0]'s)
                ax.plot(*zip(*pts), marker="o", ms=3, lw=1.2, label=r["name"], color=f"C{i % 10}")
    for ax, (key, title) in zip(axes, panels):
        ax.set(title=title, xlabel="training tokens (M)" if tokens_per_step else "step")
        ax.grid(alpha=0.3)
        if key == "first_token_sink_ratio":
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        elif key in ("sink_1_share", "silent_head_fraction"):
            ax.set_ylim(-0.02, 1.02)
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _smooth(xs, beta=0.8):
    out, m = [], None
    for x in xs:
        m = x if m is None else beta * m + (1 - beta) * x
        out.append(m)
    return out


def write_results(results: list, base: TrainConfig, cmp: dict, res_dir: Path, config_path, overrides,
                  only=None, results_dir=None) -> dict:
    res_dir.mkdir(parents=True, exist_ok=True)
    cmd = "tda compare " + str(config_path) + "".join(f" --set {o}" for o in overrides or ())
    if only:
        cmd += " --variants " + ",".join(only)
    if results_dir:
        cmd += f" --results-dir {results_dir}"
    r0 = next((r for r in results if "error" not in r), results[0])
    m = base.model
    tokens = base.max_steps * base.batch_size * base.grad_accum * m.block_size
    text = [
        f"# Attention comparison: {Path(str(config_path)).stem}", "",
        f"Command: `{cmd}`", "",
        f"Model: {m.n_layer} layers, d_model {m.n_embd}, {m.n_head} heads (kv {m.n_kv_head}), head dim "
        f"{m.head_dim}, context {m.block_size}, vocab {m.vocab_size}. Budget: {base.max_steps} steps × "
        f"{base.batch_size * base.grad_accum} seqs × {m.block_size} tokens = {tokens:,} tokens per variant, "
        f"seed {base.seed}, lr {base.lr}, data `{base.data_dir}`, device {r0['device']}.", "",
        markdown_table(results, cmp["reference"]), "",
        "Columns: non-embedding parameters (MLP width matched to the reference when `match_params`); "
        "final validation loss over the trainer's fixed validation batches; exact zeros = share of causal "
        f"attention weights that are exactly 0 on {cmp['stats_seqs']} validation sequences; first-token sink "
        "ratio = mean first-token share of |weights| over its uniform-attention baseline (1.0 = no sink); "
        "Sink₁ share = share of heads with α₁ > 0.3; entropy = mean row entropy of normalised |weights| "
        "(dispersion); tokens/s = median logged training throughput; peak memory = one training step "
        "(see docs/baselines.md).", "",
        "![loss curves](loss_curves.png)", "",
    ]
    table = res_dir / "results.md"
    table.write_text("\n".join(text))
    slim = [{k: v for k, v in r.items()} for r in results]
    (res_dir / "results.json").write_text(json.dumps(slim, indent=1))
    plot = res_dir / "loss_curves.png"
    plot_curves(results, plot)
    per_step = base.batch_size * base.grad_accum * m.block_size
    if plot_attention_trend(results, res_dir / "attention_trend.png", per_step):
        table.write_text(table.read_text() + "Sinks and zeros at each evaluation (`attn_stats_seqs`):\n\n"
                         "![attention statistics against training tokens](attention_trend.png)\n")
    return {"table": str(table), "plot": str(plot)}
