"""CLI glue: `tda analyze` and `tda eval` (registered on the main parser by `add_eval_cli`).

    tda analyze runs/demo-tda/best.pt runs/demo-softmax/best.pt --out docs/analysis
    tda eval runs/demo-tda/best.pt --task passkey --out out/eval-tda
    tda eval --task survivors --out out/survivors        # theory only, no checkpoint

Also runnable as `python -m tda.eval.cli analyze ...`.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

from .report import DEFAULT_LENGTHS

TASKS = ("passkey", "extrapolation", "survivors", "all")
print = functools.partial(print, flush=True)  # noqa: A001  (progress lines appear while long jobs run)


def add_eval_cli(subparsers) -> None:
    """Register `tda eval` and `tda analyze` (the latter only if no other plugin registered it)."""
    if "analyze" not in subparsers.choices:
        add_analyze_cli(subparsers)
    _add_eval_parser(subparsers)


def add_analyze_cli(subparsers) -> None:
    a = subparsers.add_parser(
        "analyze", help="sparsity, attention sinks and dispersion of one or more checkpoints, side by side",
        description="Measure exact zeros, attention sinks (Sink_1, first-token share) and dispersion "
                    "(entropy, top-k mass vs length) of each checkpoint on the same text; write PNGs, "
                    "summary.json and report.md into --out.")
    a.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files (or run directories)")
    a.add_argument("--out", required=True, help="output directory")
    a.add_argument("--names", nargs="+", help="display names (default: from the checkpoint paths)")
    a.add_argument("--text", help="UTF-8 text file to analyse (default: the held-out long documents of --data-dir)")
    a.add_argument("--data-dir", help="prepared data directory for the default text (default: the bundled slice)")
    a.add_argument("--max-len", type=int, default=4096, help="longest context analysed (default 4096)")
    a.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS),
                   help="context lengths for the dispersion sweep (capped by --max-len and the text)")
    a.add_argument("--n-seqs", type=int, default=4, help="windows at the training length (default 4)")
    a.add_argument("--n-seqs-long", type=int, default=1, help="windows per sweep length (default 1)")
    a.add_argument("--map-len", type=int, default=48, help="tokens shown in the attention-map plots")
    a.add_argument("--device", default="cpu")
    a.set_defaults(func=cmd_analyze)


def _add_eval_parser(subparsers) -> None:
    e = subparsers.add_parser(
        "eval", help="passkey retrieval, length extrapolation, survivor theory",
        description="Passkey retrieval (single/multi-needle) and long-document perplexity at 1x..8x the "
                    "training context, optionally with NTK-aware RoPE scaling; or the survivor-theory "
                    "simulation (no checkpoint). Writes JSON + PNG into --out.")
    e.add_argument("checkpoint", nargs="?", metavar="CKPT", help="checkpoint (not needed for --task survivors)")
    e.add_argument("--task", choices=TASKS, default="all", help="'all' = passkey + extrapolation")
    e.add_argument("--out", required=True)
    e.add_argument("--factors", type=float, nargs="+", default=[1, 2, 4, 8],
                   help="lengths as multiples of the training context (default 1 2 4 8)")
    e.add_argument("--lengths", type=int, nargs="+", help="explicit lengths in tokens (overrides --factors)")
    e.add_argument("--trials", type=int, default=50, help="passkey trials per length (default 50)")
    e.add_argument("--needles", type=int, nargs="+", default=[1], help="needle counts, e.g. 1 3 (default 1)")
    e.add_argument("--rope-scaling", choices=("none", "ntk", "both"), default="both",
                   help="NTK-aware RoPE scaling s = length / train_len (default: both with and without)")
    e.add_argument("--data-dir", help="prepared data directory with held-out long documents (default: bundled)")
    e.add_argument("--max-windows", type=int, default=8, help="extrapolation windows per length")
    e.add_argument("--token-budget", type=int, default=32768, help="extrapolation tokens per length")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu")
    e.add_argument("--max-i", type=int, default=65535, help="survivors: largest position")
    e.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128], help="survivors: head dims")
    e.add_argument("--kappas", type=float, nargs="+", default=[1.0, 4.0], help="survivors: κ values")
    e.add_argument("--betas", type=float, nargs="+", default=[1.0], help="survivors: β values")
    e.set_defaults(func=cmd_eval)


# --- helpers ------------------------------------------------------------------------------------------


def _command_line() -> str:
    return "tda " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""


def _resolve_ckpt(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt", "ckpt.pt", "latest.pt"):
            if (p / name).is_file():
                return p / name
        pts = sorted(p.glob("*.pt"))
        if pts:
            return pts[-1]
        raise FileNotFoundError(f"CKPT: no .pt file in directory {p}")
    return p


def _load(path: str, device: str):
    from ..train.checkpoint import load_checkpoint
    model, tok = load_checkpoint(_resolve_ckpt(path), device=device)
    return model, tok


def _name_for(path: str) -> str:
    p = Path(path)
    return p.name if p.is_dir() else (p.parent.name or p.stem)


def _tokenizer_hash(tok) -> str:
    return hashlib.sha1(json.dumps(tok.to_dict(), sort_keys=True).encode()).hexdigest()


def long_document_tokens(tokenizer, data_dir=None) -> tuple[list, str]:
    """Token-id lists of the held-out long documents of a prepared data directory (default: the bundled
    slice, prepared on first use) and a description. The directory must have been tokenised with the
    model's own tokenizer (checked by hash)."""
    from ..data import ensure_bundled_data, load_long_documents, load_meta

    d = Path(data_dir) if data_dir else ensure_bundled_data()
    meta = load_meta(d)
    if tokenizer is not None and meta.get("tokenizer_hash") and meta["tokenizer_hash"] != _tokenizer_hash(tokenizer):
        raise ValueError(f"--data-dir: {d} was tokenised with {meta.get('tokenizer')!r}, not the checkpoint's "
                         f"tokenizer; pass --data-dir prepared with it, or --text FILE")
    docs = load_long_documents(d)
    if not docs:
        raise ValueError(f"--data-dir: {d} holds no long documents")
    desc = f"held-out long documents of {d}: " + ", ".join(f"{x['source']}/{x['name']} ({x['tokens']} tok)" for x in docs)
    return [x["ids"].tolist() for x in docs], desc


# --- analyze ------------------------------------------------------------------------------------------


def cmd_analyze(args) -> int:
    from .report import analyze_models

    names = args.names or [_name_for(c) for c in args.checkpoints]
    if len(names) != len(args.checkpoints):
        raise SystemExit("--names: give one name per checkpoint")
    if len(set(names)) != len(names):
        names = [f"{n}-{i}" for i, n in enumerate(names)]
    models = {n: _load(c, args.device) for n, c in zip(names, args.checkpoints)}
    text, tokens, source = None, None, ""
    if args.text:
        text = Path(args.text).read_text(encoding="utf-8")
        source = f"{args.text} ({len(text)} characters)"
    else:
        tokens = {}
        for n, (m, tok) in models.items():
            docs, source = long_document_tokens(tok, args.data_dir)
            eot = getattr(tok, "eot_id", None)
            stream = []
            for doc in docs:
                stream.extend(doc)
                if eot is not None:
                    stream.append(eot)
            tokens[n] = stream
    t0 = time.time()
    analyze_models(models, args.out, text=text, tokens=tokens, max_len=args.max_len, lengths=args.lengths,
                   n_seqs=args.n_seqs, n_seqs_long=args.n_seqs_long, map_len=args.map_len, source=source,
                   command=_command_line())
    print(f"[analyze] wrote {Path(args.out) / 'report.md'} ({time.time() - t0:.0f}s)")
    return 0


# --- eval ---------------------------------------------------------------------------------------------


def cmd_eval(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.task == "survivors":
        return _eval_survivors(args, out)
    if not args.checkpoint:
        raise SystemExit(f"CKPT is required for --task {args.task}")
    model, tok = _load(args.checkpoint, args.device)
    train_len = model.config.block_size
    lengths = args.lengths or [int(round(f * train_len)) for f in args.factors]
    result = {"checkpoint": str(args.checkpoint), "train_len": train_len, "command": _command_line()}
    if args.task in ("passkey", "all"):
        result["passkey"] = _eval_passkey(args, model, tok, lengths, out)
    if args.task in ("extrapolation", "all"):
        result["extrapolation"] = _eval_extrapolation(args, model, tok, train_len, lengths, out)
    (out / f"eval_{args.task}.json").write_text(json.dumps(result, indent=1))
    print(f"[eval] wrote {out / f'eval_{args.task}.json'}")
    return 0


def _scalings(args):
    return {"none": [False], "ntk": [True], "both": [False, True]}[args.rope_scaling]


def _eval_passkey(args, model, tok, lengths, out):
    from . import plots
    from .passkey import passkey_accuracy

    if tok is None:
        raise SystemExit("passkey needs a tokenizer in the checkpoint")
    train_len = model.config.block_size
    runs = {}
    series = {}
    for n in args.needles:
        for ntk in _scalings(args):
            key = f"needles={n}" + (", NTK RoPE" if ntk else "")
            accs = []
            per = []
            for L in lengths:
                if ntk:
                    model.set_rope_scaling(max(1.0, L / train_len))
                try:
                    r = passkey_accuracy(model, tok, [L], trials=args.trials, n_needles=n, seed=args.seed)
                finally:
                    if ntk:
                        model.set_rope_scaling(model.config.rope_scaling)
                accs.append(r["accuracy"][0])
                per.append(r["per_trial"][0])
                print(f"[passkey] {key} length {L}: {100 * accs[-1]:.0f}%")
            runs[key] = {"lengths": lengths, "accuracy": accs, "per_trial": per}
            series[key] = (lengths, [100 * a for a in accs])
    plots.curves(series, out / "passkey_accuracy.png", f"passkey retrieval ({args.trials} trials / length)",
                 "prompt length (tokens)", "exact-match accuracy (%)", logx=2, hline=None)
    return {"trials": args.trials, "runs": runs}


def _eval_extrapolation(args, model, tok, train_len, lengths, out):
    from . import plots
    from .extrapolation import extrapolation_perplexity

    docs, source = long_document_tokens(tok, args.data_dir)
    factors = [L / train_len for L in lengths]
    res = {"source": source, "runs": {}}
    series, tail = {}, {}
    for ntk in _scalings(args):
        key = "NTK RoPE" if ntk else "no scaling"
        r = extrapolation_perplexity(model, docs, train_len, factors=factors, rope_scaling=ntk,
                                     max_windows=args.max_windows, token_budget=args.token_budget)
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


def _eval_survivors(args, out):
    from . import plots
    from .survivors import survivor_experiment

    t0 = time.time()
    res = survivor_experiment(dims=args.dims, betas=args.betas, kappas=args.kappas, max_i=args.max_i,
                              seed=args.seed)
    (out / "survivors.json").write_text(json.dumps({"command": _command_line(), "results": res}))
    plots.survivors_figure(res, out / "survivors.png")
    for r in res:
        print(f"[survivors] d={r['d']} β={r['beta']} κ={r['kappa']}: E[S] at i={r['i'][-1]}: "
              f"{r['exact_single'][-1]:.4f} (bound {r['bound_single'][-1]:.3f}); "
              f"E[C]: {r['exact_consensus'][-1]:.2e} (bound {r['bound_consensus'][-1]:.2e})")
    print(f"[survivors] wrote {out / 'survivors.png'} ({time.time() - t0:.0f}s)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tda")
    add_eval_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
