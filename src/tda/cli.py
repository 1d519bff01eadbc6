"""The `tda` command: argparse and thin handlers; the work lives in functions of the packages.

    tda demo | train | sample | export | info | eval | analyze | compare
    tda data prepare | info | sources | shard | unpack

Each subcommand has one `add_<name>(sub)` that builds its parser and one `cmd_<name>(args)` handler;
COMMANDS lists the builders. A handler returns an exit code. User errors (ValueError, CLIError, missing
files) print one line `tda <command>: error: ...` and exit 2; no traceback reaches the user for them.
A checkpoint argument is a file or a run folder (its best.pt if present, else last.pt).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from . import __version__

CKPT_HELP = "checkpoint file, or run folder (uses its best.pt if present, else last.pt)"


class CLIError(Exception):
    """A user error: printed as `tda <cmd>: error: ...`, exit status 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Appends '(default: X)' to an option's help unless the help already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


# --- argument types: checked while parsing, before any slow work ----------------------------------
def _number(kind, low, strict):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if v < low or (strict and v == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return v
    return parse


positive_int = _number(int, 0, strict=True)
nonneg_int = _number(int, 0, strict=False)
positive_float = _number(float, 0.0, strict=True)
nonneg_float = _number(float, 0.0, strict=False)


def device_arg(text: str) -> str:
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")


def _check_device(device: str):
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: no CUDA device is available (use --device cpu)")


def _command_line() -> str:
    return "tda " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# --- demo -------------------------------------------------------------------------------------------
def add_demo(sub):
    from .train.demo import demo_dict
    p = sub.add_parser("demo", help="train a small TDA (or softmax) model on the bundled corpus, on the CPU",
                       formatter_class=HelpFormatter,
                       description="Prepare the bundled public-domain corpus slice, train a small model "
                                   "(settings: tda/train/demo.yaml, also configs/demo.yaml), then report "
                                   "validation loss, the exact-zero fraction of the causal attention weights, "
                                   "and a sample.")
    p.add_argument("--attention", default="tda", help="attention family: tda, softmax, tra, rela, diff, ...")
    p.add_argument("--out", default=None, help="output folder (default: runs/demo-<attention>)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="optimiser steps; eval/checkpoint intervals scale with it "
                        f"(default: {demo_dict()['max_steps']}, from demo.yaml)")
    p.add_argument("--data-dir", default=None,
                   help="where to prepare the bundled corpus (default: $TDA_DATA_DIR/bundled or ~/.cache/tda/bundled)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a demo config value, e.g. --set model.n_embd=128 (repeatable; default: none)")
    _add_run_policy(p)
    p.set_defaults(handler=cmd_demo)


def _add_run_policy(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue the run in the output folder from its last.pt (metrics are appended); "
                        "default: refuse a folder that holds a run")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in the output folder (its checkpoints and metrics are deleted); "
                        "default: refuse a folder that holds a run")


def cmd_demo(args):
    from .layers import ATTENTION
    from .train.demo import demo_config, run_demo
    from .train.rundir import check_out_dir
    if args.attention not in ATTENTION:
        raise CLIError(f"--attention must be one of {', '.join(sorted(ATTENTION))}, got {args.attention!r}")
    cfg = demo_config(args.attention, args.out, args.steps, args.data_dir, args.overrides)
    check_out_dir(cfg.out_dir, resume=args.resume, overwrite=args.overwrite)  # before the corpus is prepared

    from .data.prepare import ensure_bundled_data
    print("preparing the bundled corpus slice ...", flush=True)
    data_dir = ensure_bundled_data(args.data_dir)
    cfg = demo_config(args.attention, args.out, args.steps, data_dir, args.overrides)
    r = run_demo(cfg, resume=args.resume, overwrite=args.overwrite, log=lambda s: print(s, flush=True))
    per_layer = ", ".join(f"{100 * z:.1f}%" for z in r["exact_zero_fraction_per_layer"])
    print()
    print(f"attention            {r['attention']} ({r['params']:,} parameters)")
    print(f"validation loss      {_fmt(r['val_loss'])} after {r['steps']} steps")
    print(f"exact zeros          {100 * r['exact_zero_fraction']:.2f}% of causal attention weights "
          f"(per layer: {per_layer})")
    print(f"wall time            {r['wall_seconds']:.0f}s (training {r['train_seconds']:.0f}s)")
    print(f"sample               {r['sample_text'][:300]!r}")
    print(f"files                checkpoint {r['checkpoint']} (best: {r['best']})")
    print(f"                     metrics    {r['metrics']}")
    print(f"                     sample     {r['sample']}")
    print(f"                     summary    {r['summary']}")
    return 0


# --- train ------------------------------------------------------------------------------------------
def add_train(sub):
    p = sub.add_parser("train", help="train a model from a YAML/TOML config", formatter_class=HelpFormatter,
                       description="Train from a config file; run under torchrun for DDP "
                                   "(python -m torch.distributed.run --nproc_per_node=N -m tda.cli train CONFIG). "
                                   "An output folder that holds a run needs --resume or --overwrite.")
    p.add_argument("config", help="a .yaml/.yml/.toml file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, dotted for the model: --set model.n_layer=6 --set lr=1e-3 "
                        "(repeatable; default: none)")
    _add_run_policy(p)
    p.set_defaults(handler=cmd_train)


def cmd_train(args):
    from .train.config import load_config
    from .train.loop import train
    cfg = load_config(args.config, args.overrides)
    s = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if _is_main_rank():
        print(f"done: step {s['step']}, val loss {_fmt(s['val_loss'])}, best {_fmt(s['best_val_loss'])}, "
              f"{s['elapsed']:.0f}s")
        print(f"checkpoint: {s['last']}\nmetrics:    {s['metrics']}")
    return 0


# --- sample -----------------------------------------------------------------------------------------
def top_p_arg(text: str) -> float:
    v = _number(float, 0.0, strict=True)(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def add_sample(sub):
    p = sub.add_parser("sample", help="generate text from a checkpoint, streamed as it is produced",
                       formatter_class=HelpFormatter,
                       description="Print each sample as its tokens are produced, then a tokens/s line on "
                                   "stderr. The KV cache is used while prompt + new tokens fit the model's "
                                   "context; past it, each step re-reads the last block_size tokens.")
    p.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    p.add_argument("--max-new-tokens", type=positive_int, default=200, help="tokens to generate per sample")
    p.add_argument("--temperature", type=nonneg_float, default=0.8, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=nonneg_int, default=50, help="keep the k most likely tokens; 0 = off")
    p.add_argument("--top-p", type=top_p_arg, default=1.0,
                   help="nucleus: keep the most likely tokens up to this total probability, in (0, 1]; 1 = off")
    p.add_argument("--num-samples", type=positive_int, default=1, help="independent samples")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same text")
    p.add_argument("--stop-at-eot", action="store_true",
                   help="end a sample at the end-of-text token (default: generate all --max-new-tokens)")
    p.add_argument("--no-cache", action="store_true",
                   help="no KV cache: every step re-reads the last block_size tokens (default: the cache "
                        "while prompt + new tokens fit the context)")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each decode step from a CUDA graph (CUDA only, with the cache): the same "
                        "tokens, without the host's per-layer launch work (default: on with --device cuda "
                        "and the cache, off otherwise)")
    p.set_defaults(handler=cmd_sample)


def cmd_sample(args):
    from .models.checkpoint import load_checkpoint, resolve_checkpoint
    from .models.generate import sample_loop
    if args.cuda_graph and not args.device.startswith("cuda"):
        raise CLIError(f"--cuda-graph needs --device cuda, got --device {args.device}")
    if args.cuda_graph and args.no_cache:
        raise CLIError("--cuda-graph replays cached decode steps: it cannot be combined with --no-cache")
    if args.cuda_graph is None:  # a served model decodes from a graph unless asked not to (5-10x eager's tokens/s)
        args.cuda_graph = args.device.startswith("cuda") and not args.no_cache
    _check_device(args.device)
    path = resolve_checkpoint(args.checkpoint)
    model, tokenizer = load_checkpoint(path, device=args.device)
    if tokenizer is None:
        raise CLIError(f"{path}: the checkpoint holds no tokenizer; cannot encode a prompt")
    sample_loop(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k or None, top_p=args.top_p if args.top_p < 1 else None, seed=args.seed,
                num_samples=args.num_samples, stop_at_eot=args.stop_at_eot,
                use_cache=False if args.no_cache else None, cuda_graph=args.cuda_graph)
    return 0


# --- export -----------------------------------------------------------------------------------------
def add_export(sub):
    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face model folder",
                       formatter_class=HelpFormatter,
                       description="Write config.json, model.safetensors and the tokenizer files to a new or "
                                   "empty folder that transformers' Auto classes load after `import tda.hf` "
                                   "(needs pip install 'tda[hf]').")
    p.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: new, or empty")
    p.set_defaults(handler=cmd_export)


def cmd_export(args):
    from .models.checkpoint import resolve_checkpoint
    path = resolve_checkpoint(args.checkpoint)   # a missing file is named before transformers loads
    try:
        from .hf import export_checkpoint
    except ImportError as e:
        raise CLIError(f"exporting needs the Hugging Face extras ({e}): pip install 'tda[hf]'") from None
    out = export_checkpoint(path, args.out)
    print(f"exported {path} to {out}")
    return 0


# --- info -------------------------------------------------------------------------------------------
def add_info(sub):
    p = sub.add_parser("info", help="describe a checkpoint: config, step, parameters, validation loss",
                       formatter_class=HelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    p.set_defaults(handler=cmd_info)


def cmd_info(args):
    from .models.checkpoint import checkpoint_info
    info = checkpoint_info(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    m = info["model_config"]
    print(f"checkpoint   {info['path']}")
    print(f"step         {info['step']}")
    print(f"parameters   {info['params']:,} ({info['params_non_embedding']:,} without embeddings)")
    print(f"val loss     {_fmt(info['val_loss'])} (best {_fmt(info['best_val_loss'])})")
    print(f"attention    {m['attention']}")
    print(f"model        {m['n_layer']} layers, {m['n_head']} heads, n_embd {m['n_embd']}, "
          f"context {m['block_size']}, vocab {m['vocab_size']}")
    print(f"tokenizer    {info['tokenizer']}")
    print("model config " + json.dumps(m))
    print("train config " + json.dumps(info["train_config"], default=str))
    return 0


# --- eval -------------------------------------------------------------------------------------------
def add_eval(sub):
    from .eval.tasks import TASKS
    e = sub.add_parser(
        "eval", help="passkey retrieval, length extrapolation, survivor theory", formatter_class=HelpFormatter,
        description="Passkey retrieval (single/multi-needle) and long-document perplexity at 1x..8x the "
                    "training context, optionally with NTK-aware RoPE scaling; or the survivor-theory "
                    "simulation (no checkpoint). Writes JSON + PNG into --out.")
    e.add_argument("checkpoint", nargs="?", metavar="CKPT", help=CKPT_HELP + "; not taken by --task survivors")
    e.add_argument("--task", choices=TASKS, default="all", help="'all' = passkey + extrapolation")
    e.add_argument("--out", required=True, help="output folder for the JSON and PNG files (required)")
    e.add_argument("--factors", type=positive_float, nargs="+", default=[1, 2, 4, 8],
                   help="lengths as multiples of the training context")
    e.add_argument("--lengths", type=positive_int, nargs="+",
                   help="explicit lengths in tokens, overriding --factors (default: from --factors)")
    e.add_argument("--trials", type=positive_int, default=50, help="passkey trials per length")
    e.add_argument("--needles", type=positive_int, nargs="+", default=[1], help="passkey needle counts, e.g. 1 3")
    e.add_argument("--rope-scaling", choices=("none", "ntk", "both"), default="both",
                   help="NTK-aware RoPE scaling s = length / train_len: without, with, or both")
    e.add_argument("--data-dir", help="prepared data folder with held-out long documents (default: the bundled slice)")
    e.add_argument("--max-windows", type=positive_int, default=8, help="extrapolation windows per length")
    e.add_argument("--token-budget", type=positive_int, default=32768, help="extrapolation tokens per length")
    e.add_argument("--seed", type=int, default=0, help="random seed")
    e.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N")
    e.add_argument("--passkey-finetune", dest="finetune_steps", type=nonneg_int, default=0, metavar="STEPS",
                   help="after the other tests, fine-tune on passkey prompts at the training length for STEPS "
                        "steps and test passkey again at every length (0 = off)")
    e.add_argument("--finetune-batch", dest="finetune_batch", type=positive_int, default=16,
                   help="passkey fine-tune prompts per step")
    e.add_argument("--finetune-lr", dest="finetune_lr", type=positive_float, default=1e-4,
                   help="passkey fine-tune learning rate (AdamW, linear warm-up over 20 steps)")
    e.add_argument("--max-i", type=positive_int, default=65535, help="survivors: largest position")
    e.add_argument("--dims", type=positive_int, nargs="+", default=[32, 64, 128], help="survivors: head dims")
    e.add_argument("--kappas", type=positive_float, nargs="+", default=[1.0, 4.0], help="survivors: κ values")
    e.add_argument("--betas", type=positive_float, nargs="+", default=[1.0], help="survivors: β values")
    e.set_defaults(handler=cmd_eval)


def cmd_eval(args):
    from dataclasses import fields

    from .eval.tasks import EvalSettings, evaluate_checkpoint, survivors_report
    values = {f.name: getattr(args, f.name) for f in fields(EvalSettings)}
    s = EvalSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    if args.task == "survivors":
        if args.checkpoint:
            raise CLIError("CKPT: --task survivors simulates random vectors and takes no checkpoint")
        survivors_report(args.out, s, command=_command_line())
        return 0
    if not args.checkpoint:
        raise CLIError(f"CKPT is required for --task {args.task}")
    _check_device(args.device)
    evaluate_checkpoint(args.checkpoint, args.out, s, command=_command_line())
    return 0


# --- analyze ----------------------------------------------------------------------------------------
def add_analyze(sub):
    from .eval.report import DEFAULT_LENGTHS
    a = sub.add_parser(
        "analyze", help="sparsity, attention sinks and dispersion of one or more checkpoints, side by side",
        formatter_class=HelpFormatter,
        description="Measure exact zeros, attention sinks (Sink_1, first-token share) and dispersion "
                    "(entropy, top-k mass vs length) of each checkpoint on the same text; write PNGs, "
                    "summary.json and report.md into --out.")
    a.add_argument("checkpoints", nargs="+", metavar="CKPT", help=CKPT_HELP + "; one or more")
    a.add_argument("--out", required=True, help="output folder (required)")
    a.add_argument("--names", nargs="+", help="display names, one per CKPT (default: the run folders' names)")
    a.add_argument("--text", help="UTF-8 text file to analyse (default: the held-out long documents of --data-dir)")
    a.add_argument("--data-dir", help="prepared data folder for the default text (default: the bundled slice)")
    a.add_argument("--max-len", type=positive_int, default=4096, help="longest context analysed")
    a.add_argument("--lengths", type=positive_int, nargs="+", default=list(DEFAULT_LENGTHS),
                   help="context lengths for the dispersion sweep (capped by --max-len and the text)")
    a.add_argument("--n-seqs", type=positive_int, default=4, help="windows at the training length")
    a.add_argument("--n-seqs-long", type=positive_int, default=1, help="windows per sweep length")
    a.add_argument("--map-len", type=positive_int, default=48, help="tokens shown in the attention-map plots")
    a.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N")
    a.set_defaults(handler=cmd_analyze)


def cmd_analyze(args):
    from .eval.analyze import AnalyzeSettings, analyze_checkpoints
    _check_device(args.device)
    s = AnalyzeSettings(text=args.text, data_dir=args.data_dir, max_len=args.max_len, lengths=tuple(args.lengths),
                        n_seqs=args.n_seqs, n_seqs_long=args.n_seqs_long, map_len=args.map_len, device=args.device)
    analyze_checkpoints(args.checkpoints, args.out, s, names=args.names, command=_command_line())
    return 0


# --- compare ----------------------------------------------------------------------------------------
def add_compare(sub):
    p = sub.add_parser(
        "compare", help="train attention variants on identical data/budget/seed and tabulate them",
        formatter_class=HelpFormatter,
        description="Train every variant of a compare config (resumable per variant) and write a "
                    "Markdown table and loss curves.")
    p.add_argument("config", help="compare config (.yaml/.toml): a training config plus a `compare:` section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set max_steps=50 --set model.n_layer=2 "
                        "--set compare.stats_seqs=2 (repeatable; default: none)")
    p.add_argument("--variants", default=None, help="comma-separated subset of the config's variant names "
                                                    "(default: all)")
    p.add_argument("--results-dir", default=None,
                   help="where results.md / loss_curves.png go (default: the config's compare.results_dir)")
    p.add_argument("--force", action="store_true", help="re-measure variants even if compare.json exists "
                                                        "(default: skip finished variants)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (default: bars on)")
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args):
    from .train.compare import compare
    overrides = list(args.overrides) + (["progress=false"] if args.no_progress else [])
    only = [v.strip() for v in args.variants.split(",")] if args.variants else None
    compare(args.config, overrides, only=only, results_dir=args.results_dir, force=args.force)
    return 0


# --- data -------------------------------------------------------------------------------------------
def _sources_arg(text: str) -> list[str]:
    from .data.sources import parse_sources
    try:
        return parse_sources(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("sources: ")) from None


def _preset_arg(text: str) -> int:
    v = nonneg_int(text)
    if v > 9:
        raise argparse.ArgumentTypeError(f"must be in 0..9, got {text}")
    return v


def add_data(sub):
    p = sub.add_parser("data", help="prepare, inspect and ship token datasets", formatter_class=HelpFormatter,
                       description="Prepare, inspect and ship token datasets (real text: prose, documentation, "
                                   "dictionaries, e-mail, source code).")
    dsub = p.add_subparsers(dest="data_command", metavar="{prepare,info,sources,shard,unpack}")
    dsub.required = True

    pp = dsub.add_parser("prepare", help="fetch sources, tokenise, write train/val/long token files",
                         formatter_class=HelpFormatter)
    pp.add_argument("--tokenizer", default="gpt2",
                    help="gpt2 (GPT-2 BPE), bpe (train a byte-level BPE of --vocab-size), bundled "
                         "(the shipped 4096 BPE), or a tokenizer JSON path")
    pp.add_argument("--vocab-size", type=positive_int, default=4096, help="vocabulary for --tokenizer bpe")
    pp.add_argument("--out", default=None,
                    help="output folder (default: <$TDA_DATA_DIR or ~/.cache/tda>/<tokenizer>)")
    pp.add_argument("--sources", type=_sources_arg, action="append", default=None,
                    help="comma-separated source names (`tda data sources` lists them), repeatable; 'all' = "
                         "every source, 'large' = all but javacode, 'prose' = the four narrative prose sources "
                         "(default: prose)")
    pp.add_argument("--no-near-dedup", dest="near_dedup", action="store_false",
                    help="remove exact duplicate documents only (default: near-duplicates too)")
    pp.add_argument("--max-tokens", type=positive_int, default=None,
                    help="keep documents until this many tokens, for quick runs (default: no limit)")
    pp.add_argument("--val-fraction", type=positive_float, default=0.02, help="share of tokens held out for val")
    pp.add_argument("--long-doc-tokens", type=positive_int, default=10_000,
                    help="documents this long are candidates for the long/ hold-out")
    pp.add_argument("--num-long-docs", type=nonneg_int, default=24, help="how many long documents to hold out")
    pp.add_argument("--long-doc-max-tokens", type=positive_int, default=131_072,
                    help="longer documents always stay in training")
    pp.add_argument("--seed", type=int, default=0, help="random seed of the document split")
    pp.add_argument("--cache-dir", default=None, help="raw archive cache (default: <data root>/corpus)")
    pp.add_argument("--bundled", action="store_true",
                    help="prepare the bundled slice instead, no download (default: the full corpus)")
    pp.add_argument("--force", action="store_true", help="rebuild even if the folder already matches "
                                                         "(default: reuse it)")
    pp.set_defaults(handler=cmd_data_prepare, command="data prepare")

    pi = dsub.add_parser("info", help="summarise a prepared folder", formatter_class=HelpFormatter)
    pi.add_argument("dir", help="prepared data folder (holds meta.json)")
    pi.add_argument("--json", action="store_true", help="print meta.json without the tokenizer body "
                                                        "(default: a table)")
    pi.set_defaults(handler=cmd_data_info, command="data info")

    ps = dsub.add_parser("sources", help="list the corpus sources: kind, packages, licence",
                         formatter_class=HelpFormatter)
    ps.set_defaults(handler=cmd_data_sources, command="data sources")

    sh = dsub.add_parser("shard", help="write an xz-compressed subset of a prepared folder under a size budget",
                         formatter_class=HelpFormatter,
                         description="Write a compressed subset of a prepared folder (a mixture-shaped slice of "
                                     "every source's training tokens, validation tokens, long documents) that "
                                     "stays under --max-mib in all; `tda data unpack` restores a prepared folder.")
    sh.add_argument("dir", metavar="DIR", help="prepared data folder (holds meta.json)")
    sh.add_argument("--out", required=True, metavar="SHARD", help="shard folder to write (a shard already there is replaced)")
    sh.add_argument("--max-mib", type=positive_float, default=50.0, metavar="MIB", help="size budget in MiB, all files")
    sh.add_argument("--part", type=nonneg_int, default=0, metavar="K",
                    help="take the K-th disjoint slice of every source's training tokens")
    sh.add_argument("--val-tokens", type=positive_int, default=1_000_000, metavar="N",
                    help="validation tokens, at least 8192 per source")
    sh.add_argument("--long-docs", type=nonneg_int, default=8, metavar="N", help="held-out long documents to include")
    sh.add_argument("--preset", type=_preset_arg, default=6, metavar="P", help="xz compression preset, 0-9")
    sh.set_defaults(handler=cmd_data_shard, command="data shard")

    pu = dsub.add_parser("unpack", help="decompress shard parts into a prepared folder",
                         formatter_class=HelpFormatter)
    pu.add_argument("shards", nargs="+", metavar="SHARD", help="shard folders (parts of one prepared folder)")
    pu.add_argument("--out", required=True, metavar="DIR", help="prepared folder to write")
    pu.add_argument("--force", action="store_true",
                    help="rewrite even if the folder already holds these parts (default: keep it)")
    pu.set_defaults(handler=cmd_data_unpack, command="data unpack")


def cmd_data_prepare(args):
    from pathlib import Path

    from .data.prepare import default_data_dir, prepare, prepare_bundled
    from .data.sources import PROSE_SOURCES
    from .data.summary import format_info
    if args.bundled:
        out = Path(args.out) if args.out else default_data_dir("bundled")
        meta = prepare_bundled(out, seed=args.seed, force=args.force, progress=True)
    else:
        sources = [n for group in (args.sources or [list(PROSE_SOURCES)]) for n in group]
        meta = prepare(args.out, sources=list(dict.fromkeys(sources)), tokenizer=args.tokenizer,
                       vocab_size=args.vocab_size, val_fraction=args.val_fraction,
                       long_doc_tokens=args.long_doc_tokens, max_tokens=args.max_tokens, seed=args.seed,
                       num_long_docs=args.num_long_docs, long_doc_max_tokens=args.long_doc_max_tokens,
                       cache_dir=args.cache_dir, near_dedup=args.near_dedup, force=args.force)
        out = Path(args.out) if args.out else default_data_dir(meta["tokenizer_name"])
    print(format_info(meta, out))
    return 0


def cmd_data_info(args):
    from .data.dataset import load_meta
    from .data.summary import format_info
    meta = load_meta(args.dir)
    if args.json:
        m = dict(meta)
        m["tokenizer"] = {k: v for k, v in m["tokenizer"].items() if k != "json"}
        print(json.dumps(m, indent=1))
    else:
        print(format_info(meta, args.dir))
    return 0


def cmd_data_sources(args):
    from .data.summary import format_sources
    print(format_sources())
    return 0


def cmd_data_shard(args):
    from .data.shard import write_shard
    from .data.summary import format_info
    meta = write_shard(args.dir, args.out, max_bytes=int(args.max_mib * 2**20), part=args.part,
                       val_tokens=args.val_tokens, long_docs=args.long_docs, preset=args.preset)
    print(format_info(meta, args.out))
    return 0


def cmd_data_unpack(args):
    from .data.shard import unpack_shards
    from .data.summary import format_info
    meta = unpack_shards(args.shards, args.out, force=args.force)
    print(format_info(meta, args.out))
    return 0


# --- main -------------------------------------------------------------------------------------------
COMMANDS = (add_demo, add_train, add_sample, add_export, add_info, add_eval, add_analyze, add_compare,
            add_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tda", description="Threshold Differential Attention: train, sample, "
                                     "inspect and analyse sink-free, ultra-sparse language models.")
    parser.add_argument("--version", action="version", version=f"tda {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _silence_stdout():
    """After a closed pipe (`tda info CKPT | head -2`): send the rest of stdout, and the interpreter's
    final flush, to /dev/null instead of raising again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = args.handler(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return 141  # as if killed by SIGPIPE, like other Unix tools
    except (CLIError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        _report(args.command, e)
        return 2
    except (OSError, FloatingPointError) as e:  # disk full, a diverged run: one line, not a traceback
        _report(args.command, e)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if rc is None else int(rc)


def _report(command: str, e: BaseException):
    msg = " ".join(str(e).split("\n")).strip() or type(e).__name__
    print(f"tda {command}: error: {msg}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
