"""The `tda` command.

    tda demo [--attention tda|softmax] [--out DIR] [--steps N]   train a small model on the bundled corpus (CPU)
    tda train CONFIG [--set key=value ...] [--resume]           train from a YAML/TOML config (torchrun-ready)
    tda sample CKPT [--prompt TEXT] [--max-new-tokens N] ...    generate text from a checkpoint
    tda info CKPT                                               config, step, parameters, validation loss
    tda data prepare|info ...                                   corpus preparation (tda.data.cli)

Other subcommands live next to their code: a module listed in PLUGINS defines
`add_<name>_cli(subparsers)`, which adds its parser and sets `func=handler(args) -> int | None`.
Adding a subcommand = one file + one line in PLUGINS; a module that is absent is skipped.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

# (module, registration function); imported when the parser is built, skipped if the module is absent
PLUGINS = (
    ("tda.data.cli", "add_cli"),                  # tda data prepare|info
    ("tda.eval.cli", "add_eval_cli"),             # tda eval
    ("tda.eval.analyze", "add_analyze_cli"),      # tda analyze
    ("tda.train.compare", "add_compare_cli"),     # tda compare
)

# `tda demo`: a 4-layer model that trains on 2 CPU cores in ~6 minutes (configs/demo.yaml is the same)
DEMO_CONFIG = {
    "data_dir": "bundled",
    "out_dir": "runs/demo",
    "model": {"vocab_size": 4096, "block_size": 256, "n_layer": 4, "n_head": 4, "n_embd": 192,
              "attention": "tda"},
    "batch_size": 16,
    "grad_accum": 1,
    "max_steps": 250,
    "lr": 2e-3,
    "min_lr": 2e-4,
    "warmup_steps": 25,
    "eval_interval": 125,
    "eval_iters": 10,
    "log_interval": 10,
    "ckpt_interval": 125,
    "seed": 1337,
    "device": "auto",
}


class CLIError(Exception):
    """A user error: printed as `tda <cmd>: error: ...`, exit status 2."""


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# --- train ----------------------------------------------------------------------------------------
def add_train_cli(sub):
    p = sub.add_parser("train", help="train a model from a YAML/TOML config",
                       description="Train from a config file; run under torchrun for DDP "
                                   "(python -m torch.distributed.run --nproc_per_node=N -m tda.cli train CONFIG).")
    p.add_argument("config", help="a .yaml/.yml/.toml file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, dotted for the model: --set model.n_layer=6 --set lr=1e-3")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt if it exists")
    p.set_defaults(func=cmd_train)


def cmd_train(args):
    from .train.config import load_config
    from .train.loop import train
    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume=args.resume)
    if _is_main_rank():
        print(f"done: step {summary['step']}, val loss {summary['val_loss']:.4f}, "
              f"best {summary['best_val_loss']:.4f}, {summary['elapsed']:.0f}s")
        print(f"checkpoint: {summary['last']}\nmetrics:    {summary['metrics']}")
    return 0


# --- sample ---------------------------------------------------------------------------------------
def add_sample_cli(sub):
    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = no top-k filtering")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_sample)


def sample_text(model, tokenizer, prompt: str, *, max_new_tokens: int, temperature: float, top_k: int | None,
                seed: int, num_samples: int = 1) -> list[str]:
    import torch
    if tokenizer is None:
        raise CLIError("the checkpoint holds no tokenizer; cannot encode a prompt")
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    device = next(model.parameters()).device
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None, generator=gen)
    model.train(was_training)
    start = 0 if prompt else 1  # drop the eot we started from
    return [tokenizer.decode(row[start:].tolist()) for row in y]


def cmd_sample(args):
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise CLIError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise CLIError(f"--top-k must be >= 0, got {args.top_k}")
    from .train.checkpoint import load_checkpoint
    model, tokenizer = load_checkpoint(args.checkpoint, device=args.device)
    texts = sample_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                        num_samples=args.num_samples)
    for i, t in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i}")
        print(t)
    return 0


# --- info -----------------------------------------------------------------------------------------
def add_info_cli(sub):
    p = sub.add_parser("info", help="describe a checkpoint: config, step, parameters, validation loss")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)


def checkpoint_info(path) -> dict:
    from .config import GPTConfig
    from .models.gpt import GPT
    from .train.checkpoint import read_checkpoint
    ck = read_checkpoint(path)
    model = GPT(GPTConfig.from_dict(ck["model_config"]))
    vals = [r["val_loss"] for r in ck.get("metrics", []) if "val_loss" in r]
    tok = ck.get("tokenizer") or {}
    return {
        "path": str(path),
        "step": ck.get("step"),
        "params": model.num_params(non_embedding=False),
        "params_non_embedding": model.num_params(),
        "val_loss": vals[-1] if vals else None,
        "best_val_loss": ck.get("best_val_loss"),
        "elapsed_s": ck.get("elapsed"),
        "tokenizer": tok.get("name"),
        "has_optimizer": "optimizer" in ck,
        "model_config": ck["model_config"],
        "train_config": {k: v for k, v in (ck.get("train_config") or {}).items() if k != "model"},
    }


def cmd_info(args):
    info = checkpoint_info(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    m = info["model_config"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"checkpoint   {info['path']}")
    print(f"step         {info['step']}")
    print(f"parameters   {info['params']:,} ({info['params_non_embedding']:,} without embeddings)")
    print(f"val loss     {fmt(info['val_loss'])} (best {fmt(info['best_val_loss'])})")
    print(f"attention    {m['attention']}")
    print(f"model        {m['n_layer']} layers, {m['n_head']} heads, n_embd {m['n_embd']}, "
          f"context {m['block_size']}, vocab {m['vocab_size']}")
    print(f"tokenizer    {info['tokenizer']}")
    print("model config " + json.dumps(m))
    print("train config " + json.dumps(info["train_config"], default=str))
    return 0


# --- demo -----------------------------------------------------------------------------------------
def add_demo_cli(sub):
    p = sub.add_parser("demo", help="train a small TDA (or softmax) model on the bundled corpus, on the CPU",
                       description="Prepare the bundled public-domain corpus slice, train a small model "
                                   "(~6 min on 2 CPU cores), then report validation loss, the exact-zero "
                                   "fraction of the causal attention weights, and a sample.")
    p.add_argument("--attention", default="tda", help="attention family: tda (default), softmax, tra, ...")
    p.add_argument("--out", default=None, help="output directory (default: runs/demo-<attention>)")
    p.add_argument("--steps", type=int, default=None, help=f"optimiser steps (default {DEMO_CONFIG['max_steps']})")
    p.add_argument("--data-dir", default=None,
                   help="where to prepare the bundled corpus (default: tda's cache, $TDA_DATA_DIR or ~/.cache/tda)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a demo config value, e.g. --set model.n_embd=128")
    p.set_defaults(func=cmd_demo)


def demo_config(attention="tda", out=None, steps=None, data_dir=None, overrides=()):
    """The TrainConfig `tda demo` runs."""
    import copy
    from .layers import ATTENTION
    from .train.config import TrainConfig, apply_overrides
    if attention not in ATTENTION:
        raise CLIError(f"--attention must be one of {', '.join(sorted(ATTENTION))}, got {attention!r}")
    d = copy.deepcopy(DEMO_CONFIG)
    d["model"]["attention"] = attention
    d["out_dir"] = out or f"runs/demo-{attention}"
    if data_dir is not None:
        d["data_dir"] = str(data_dir)
    if steps is not None:
        if steps < 1:
            raise CLIError(f"--steps must be >= 1, got {steps}")
        d["max_steps"] = steps
        d["warmup_steps"] = min(d["warmup_steps"], max(1, steps // 10))
        d["eval_interval"] = d["ckpt_interval"] = max(1, steps // 3)
        d["log_interval"] = max(1, min(d["log_interval"], steps // 10))
    apply_overrides(d, overrides)
    return TrainConfig.from_dict(d)


def cmd_demo(args):
    import torch
    from .data.prepare import ensure_bundled_data
    from .eval.sparsity import exact_zero_fraction
    from .train.loop import Data, train
    from .train.distributed import DistContext

    t0 = time.time()
    print("preparing the bundled corpus slice ...", flush=True)
    data_dir = ensure_bundled_data(args.data_dir)
    cfg = demo_config(args.attention, args.out, args.steps, data_dir, args.overrides)
    m = cfg.model
    print(f"training {m.attention}: {m.n_layer} layers, {m.n_head} heads, n_embd {m.n_embd}, context "
          f"{m.block_size}, batch {cfg.batch_size}, {cfg.max_steps} steps -> {cfg.out_dir}", flush=True)
    summary = train(cfg)
    model, tokenizer = summary["model"], summary["tokenizer"]

    # exact zeros on a fixed validation batch (4 full-context windows)
    device = str(next(model.parameters()).device)
    data = Data(data_dir, m.block_size, 4, DistContext(device=device), cfg.seed + 7)
    x, _ = data.batch("val", 0)
    zeros = exact_zero_fraction(model, x)
    text = sample_text(model, tokenizer, "The ", max_new_tokens=120, temperature=0.8, top_k=50, seed=0)[0]
    out = Path(cfg.out_dir)
    (out / "sample.txt").write_text(text + "\n")
    wall = time.time() - t0
    result = {"attention": m.attention, "steps": summary["step"], "val_loss": summary["val_loss"],
              "best_val_loss": summary["best_val_loss"], "exact_zero_fraction": zeros["overall"],
              "exact_zero_fraction_per_layer": zeros["per_layer"], "train_seconds": summary["elapsed"],
              "wall_seconds": wall, "params": model.num_params(non_embedding=False),
              "checkpoint": summary["last"], "metrics": summary["metrics"], "sample": str(out / "sample.txt")}
    (out / "demo.json").write_text(json.dumps(result, indent=1) + "\n")

    print()
    print(f"attention            {m.attention} ({result['params']:,} parameters)")
    print(f"validation loss      {summary['val_loss']:.4f} after {summary['step']} steps")
    print(f"exact zeros          {100 * zeros['overall']:.2f}% of causal attention weights "
          f"(per layer: {', '.join(f'{100 * z:.1f}%' for z in zeros['per_layer'])})")
    print(f"wall time            {wall:.0f}s (training {summary['elapsed']:.0f}s)")
    print(f"sample               {text[:300]!r}")
    print(f"files                checkpoint {summary['last']} (best: {summary['best']})")
    print(f"                     metrics    {summary['metrics']}")
    print(f"                     sample     {out / 'sample.txt'}")
    print(f"                     summary    {out / 'demo.json'}")
    return 0


# --- main -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="tda", description="Threshold Differential Attention: train, sample, "
                                     "inspect and analyse sink-free, ultra-sparse language models.")
    parser.add_argument("--version", action="version", version=f"tda {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (add_demo_cli, add_train_cli, add_sample_cli, add_info_cli):
        add(sub)
    for module, func in PLUGINS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and module.startswith(e.name):
                continue  # the plugin does not exist (yet)
            print(f"tda: warning: cannot load {module}: {e}", file=sys.stderr)
            continue
        except Exception as e:  # a broken plugin must not take the other commands down
            print(f"tda: warning: cannot load {module}: {e}", file=sys.stderr)
            continue
        getattr(mod, func)(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        if args.command is None:
            parser.print_help()
            return 2
        # a plugin that registered subcommands without a handler of its own
        parser.parse_args([args.command, "--help"])
        return 2
    try:
        rc = func(args)
    except (CLIError, ValueError, FileNotFoundError) as e:
        print(f"tda {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if rc is None else int(rc)


if __name__ == "__main__":
    sys.exit(main())
