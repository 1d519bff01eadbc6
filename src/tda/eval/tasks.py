"""`tda eval`: passkey retrieval and long-document perplexity of a checkpoint at 1x..8x its training context
(optionally with NTK-aware RoPE scaling), or the survivor-theory simulation; JSON + PNG into an output folder.

    from tda.eval.tasks import EvalSettings, evaluate_checkpoint, survivors_report
    evaluate_checkpoint("runs/demo-tda", "out/eval-tda", EvalSettings(task="passkey"))
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..data import ensure_bundled_data, load_long_documents, load_meta
from ..models.checkpoint import load_checkpoint
from .bos import checkpoint_bos_id

TASKS = ("passkey", "extrapolation", "survivors", "all")
print = functools.partial(print, flush=True)  # noqa: A001  (progress lines appear while long jobs run)


@dataclass(frozen=True)
class EvalSettings:
    task: str = "all"                     # passkey | extrapolation | survivors | all (= passkey + extrapolation)
    factors: tuple = (1, 2, 4, 8)         # lengths as multiples of the training context
    lengths: tuple | None = None          # explicit lengths in tokens (overrides factors)
    trials: int = 50                      # passkey trials per length
    needles: tuple = (1,)                 # passkey needle counts
    rope_scaling: str = "both"            # none | ntk | both
    data_dir: str | None = None           # held-out long documents (None = the bundled slice)
    max_windows: int = 8                  # extrapolation windows per length
    token_budget: int = 32768             # extrapolation tokens per length
    seed: int = 0
    device: str = "cpu"
    finetune_steps: int = 0               # passkey: > 0 adds a test after that many fine-tune steps
    finetune_batch: int = 16              # ... prompts per step, at the training length
    finetune_lr: float = 1e-4
    max_i: int = 65535                    # survivors: largest position
    dims: tuple = (32, 64, 128)           # survivors: head dims
    kappas: tuple = (1.0, 4.0)
    betas: tuple = (1.0,)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.rope_scaling not in ("none", "ntk", "both"):
            raise ValueError(f"--rope-scaling must be none, ntk or both, got {self.rope_scaling!r}")
        if self.finetune_steps < 0:
            raise ValueError(f"--passkey-finetune must be >= 0 steps, got {self.finetune_steps}")

    @property
    def scalings(self) -> list[bool]:
        return {"none": [False], "ntk": [True], "both": [False, True]}[self.rope_scaling]


def tokenizer_hash(tok) -> str:
    return hashlib.sha1(json.dumps(tok.to_dict(), sort_keys=True).encode()).hexdigest()


def long_document_tokens(tokenizer, data_dir=None) -> tuple[list, str]:
    """Token-id lists of the held-out long documents of a prepared data directory (default: the bundled
    slice, prepared on first use) and a description. The directory must have been tokenised with the
    model's own tokenizer (checked by hash)."""
    d = Path(data_dir) if data_dir else ensure_bundled_data()
    meta = load_meta(d)
    if tokenizer is not None and meta.get("tokenizer_hash") and meta["tokenizer_hash"] != tokenizer_hash(tokenizer):
        raise ValueError(f"--data-dir: {d} was tokenised with {meta.get('tokenizer')!r}, not the checkpoint's "
                         f"tokenizer; pass --data-dir prepared with it, or --text FILE")
    docs = load_long_documents(d)
    if not docs:
        raise ValueError(f"--data-dir: {d} holds no long documents")
    desc = f"held-out long documents of {d}: " + ", ".join(
        f"{x['source']}/{x['name']} ({x['tokens']} tok)" for x in docs)
    return [x["ids"].tolist() for x in docs], desc


def evaluate_checkpoint(checkpoint, out_dir, s: EvalSettings, command: str = "") -> Path:
    """Passkey and/or extrapolation of a checkpoint (file or run folder); returns the JSON written."""
    if s.task == "survivors":
        raise ValueError("--task survivors takes no checkpoint")
    model, tok = load_checkpoint(checkpoint, device=s.device)  # checked before --out is created
    bos_id = checkpoint_bos_id(checkpoint, tok)  # windows start with the trained first token, if any
    if s.finetune_steps and s.task in ("passkey", "all"):  # fail before the other tests, not after them
        from .passkey_finetune import check_length
        if tok is None:
            raise ValueError("--passkey-finetune needs a tokenizer in the checkpoint")
        check_length(tok, model.config.block_size, model.config.block_size, bos_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_len = model.config.block_size
    lengths = list(s.lengths) if s.lengths else [int(round(f * train_len)) for f in s.factors]
    result = {"checkpoint": str(checkpoint), "train_len": train_len, "bos_id": bos_id, "command": command}
    path = out / f"eval_{s.task}.json"

    def save():  # after every test: a run cut short keeps what it finished
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
    if s.task in ("passkey", "all"):
        result["passkey"] = _eval_passkey(s, model, tok, lengths, out, bos_id)
        save()
    if s.task in ("extrapolation", "all"):
        result["extrapolation"] = _eval_extrapolation(s, model, tok, train_len, lengths, out, bos_id)
        save()
    if s.task in ("passkey", "all") and s.finetune_steps:  # last: the fine-tune changes the model
        from .passkey_finetune import FinetuneSettings, finetune_passkey
        ft = FinetuneSettings(steps=s.finetune_steps, batch_size=s.finetune_batch, lr=s.finetune_lr)
        t0 = time.time()
        curve = finetune_passkey(model, tok, ft, bos_id=bos_id)
        res = _eval_passkey(s, model, tok, lengths, out, bos_id, name="passkey_finetuned")
        res["finetune"] = {"steps": ft.steps, "batch_size": ft.batch_size, "lr": ft.lr, "warmup": ft.warmup,
                           "length": train_len, "seed": ft.seed, "seconds": round(time.time() - t0, 1),
                           "loss_curve": curve}
        result["passkey_finetuned"] = res
    save()
    print(f"[eval] wrote {path}")
    return path


def _eval_passkey(s: EvalSettings, model, tok, lengths, out, bos_id=None, name="passkey"):
    from . import plots
    from .passkey import passkey_accuracy

    if tok is None:
        raise ValueError("passkey needs a tokenizer in the checkpoint")
    train_len = model.config.block_size
    runs, series = {}, {}
    for n in s.needles:
        for ntk in s.scalings:
            key = f"needles={n}" + (", NTK RoPE" if ntk else "")
            accs, per = [], []
            for L in lengths:
                if ntk:
                    model.set_rope_scaling(max(1.0, L / train_len))
                try:
                    r = passkey_accuracy(model, tok, [L], trials=s.trials, n_needles=n, seed=s.seed,
                                         bos_id=bos_id)
                finally:
                    if ntk:
                        model.set_rope_scaling(model.config.rope_scaling)
                accs.append(r["accuracy"][0])
                per.append(r["per_trial"][0])
                print(f"[{name}] {key} length {L}: {100 * accs[-1]:.0f}%")
            runs[key] = {"lengths": lengths, "accuracy": accs, "per_trial": per}
            series[key] = (lengths, [100 * a for a in accs])
    title = f"passkey retrieval ({s.trials} trials / length)"
    if name != "passkey":
        title = f"passkey retrieval after a {s.finetune_steps}-step fine-tune at {model.config.block_size} tokens"
    plots.curves(series, out / f"{name}_accuracy.png", title,
                 "prompt length (tokens)", "exact-match accuracy (%)", logx=2, hline=None)
    return {"trials": s.trials, "runs": runs}


def _eval_extrapolation(s: EvalSettings, model, tok, train_len, lengths, out, bos_id=None):
    from . import plots
    from .extrapolation import extrapolation_perplexity

    docs, source = long_document_tokens(tok, s.data_dir)
    factors = [L / train_len for L in lengths]
    res = {"source": source, "runs": {}}
    series, tail = {}, {}
    for ntk in s.scalings:
        key = "NTK RoPE" if ntk else "no scaling"
        r = extrapolation_perplexity(model, docs, train_len, factors=factors, rope_scaling=ntk,
                                     max_windows=s.max_windows, token_budget=s.token_budget, bos_id=bos_id)
        res["runs"][key] = r
        for x in r["results"]:
            print(f"[extrapolation] {key} length {x['length']}: ppl {x['ppl']:.2f} (tail {x['ppl_tail']:.2f}, "
                  f"{x['n_windows']} windows)")
        ok = [x for x in r["results"] if x["n_windows"]]
        series[key] = ([x["length"] for x in ok], [x["ppl"] for x in ok])
        tail[key + " (last train_len tokens)"] = ([x["length"] for x in ok], [x["ppl_tail"] for x in ok])
    plots.curves({**series, **tail}, out / "extrapolation_ppl.png", "long-document perplexity",
                 "evaluation length (tokens)", "perplexity", logx=2, logy=True)
    return res


def survivors_report(out_dir, s: EvalSettings, command: str = "") -> Path:
    """The survivor-theory simulation (no checkpoint): survivors.json and survivors.png; returns the PNG."""
    from . import plots
    from .survivors import survivor_experiment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = survivor_experiment(dims=list(s.dims), betas=list(s.betas), kappas=list(s.kappas), max_i=s.max_i,
                              seed=s.seed)
    (out / "survivors.json").write_text(json.dumps({"command": command, "results": res}))
    plots.survivors_figure(res, out / "survivors.png")
    for r in res:
        print(f"[survivors] d={r['d']} β={r['beta']} κ={r['kappa']}: E[S] at i={r['i'][-1]}: "
              f"{r['exact_single'][-1]:.4f} (bound {r['bound_single'][-1]:.3f}); "
              f"E[C]: {r['exact_consensus'][-1]:.2e} (bound {r['bound_consensus'][-1]:.2e})")
    print(f"[survivors] wrote {out / 'survivors.png'} ({time.time() - t0:.0f}s)")
    return out / "survivors.png"
