"""`tda data prepare` / `tda data info`: registered on the main CLI with `add_cli(subparsers)`.

    tda data prepare [--tokenizer gpt2|bpe|bundled] [--vocab-size N] [--out DIR] [--sources a,b,...]
                     [--max-tokens N] [--val-fraction F] [--long-doc-tokens N] [--num-long-docs N] [--long-doc-max-tokens N]
                     [--seed S] [--cache-dir DIR] [--force]
    tda data prepare --bundled [--out DIR]        # the shipped slice, no download
    tda data info DIR
Each handler is stored as `func` on the parsed namespace and returns an exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .sources import PROSE_SOURCES, SOURCES

__all__ = ["add_cli", "cmd_prepare", "cmd_info", "format_info", "main"]


def _sources_arg(s: str) -> list[str]:
    names = [x for x in s.replace(" ", ",").split(",") if x]
    bad = [x for x in names if x not in SOURCES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--sources: unknown {bad or s!r}; choose from {','.join(SOURCES)}")
    return names


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register `data` with `prepare` and `info` under an argparse subparsers object."""
    p = subparsers.add_parser("data", help="prepare and inspect token datasets",
                              description="Prepare and inspect token datasets (real English prose).")
    sub = p.add_subparsers(dest="data_command", metavar="{prepare,info}")
    sub.required = True

    pp = sub.add_parser("prepare", help="fetch sources, tokenise, write train/val/long token files")
    pp.add_argument("--tokenizer", default="gpt2",
                    help="gpt2 (GPT-2 BPE), bpe (train a byte-level BPE of --vocab-size), bundled "
                         "(the shipped 4096 BPE), or a tokenizer JSON path (default: gpt2)")
    pp.add_argument("--vocab-size", type=int, default=4096, help="vocabulary for --tokenizer bpe (default 4096)")
    pp.add_argument("--out", default=None, help="output directory (default: <$TDA_DATA_DIR or ~/.cache/tda>/<tokenizer>)")
    pp.add_argument("--sources", type=_sources_arg, default=list(PROSE_SOURCES),
                    help=f"comma-separated subset of {','.join(SOURCES)} (default: all)")
    pp.add_argument("--max-tokens", type=int, default=None, help="keep documents until this many tokens (quick runs)")
    pp.add_argument("--val-fraction", type=float, default=0.02, help="share of tokens held out for val (default 0.02)")
    pp.add_argument("--long-doc-tokens", type=int, default=10_000,
                    help="documents this long are candidates for the long/ hold-out (default 10000)")
    pp.add_argument("--num-long-docs", type=int, default=24, help="how many long documents to hold out (default 24)")
    pp.add_argument("--long-doc-max-tokens", type=int, default=131_072,
                    help="longer documents always stay in training (default 131072)")
    pp.add_argument("--seed", type=int, default=0)
    pp.add_argument("--cache-dir", default=None, help="raw archive cache (default: <data root>/corpus)")
    pp.add_argument("--bundled", action="store_true", help="prepare the bundled slice instead (no download)")
    pp.add_argument("--force", action="store_true", help="rebuild even if DIR already matches")
    pp.set_defaults(func=cmd_prepare)

    pi = sub.add_parser("info", help="summarise a prepared directory")
    pi.add_argument("dir", help="prepared data directory (holds meta.json)")
    pi.add_argument("--json", action="store_true", help="print meta.json (without the tokenizer body)")
    pi.set_defaults(func=cmd_info)
    return p


def cmd_prepare(args: argparse.Namespace) -> int:
    from .prepare import default_data_dir, prepare, prepare_bundled

    if args.bundled:
        out = Path(args.out) if args.out else default_data_dir("bundled")
        meta = prepare_bundled(out, seed=args.seed, force=args.force, progress=True)
    else:
        meta = prepare(args.out, sources=args.sources, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       val_fraction=args.val_fraction, long_doc_tokens=args.long_doc_tokens,
                       max_tokens=args.max_tokens, seed=args.seed, num_long_docs=args.num_long_docs,
                       long_doc_max_tokens=args.long_doc_max_tokens,
                       cache_dir=args.cache_dir, force=args.force)
        out = Path(args.out) if args.out else default_data_dir(meta["tokenizer_name"])
    print(format_info(meta, out))
    return 0


def format_info(meta: dict, data_dir: str | Path = "") -> str:
    lines = [
        f"{data_dir}",
        f"  tokenizer  {meta['tokenizer_name']}  vocab {meta['vocab_size']}  eot {meta['eot_id']}  dtype {meta['dtype']}",
        f"  train      {meta['train_tokens']:>12,} tokens  {meta['train_docs']:>5} docs",
        f"  val        {meta['val_tokens']:>12,} tokens  {meta['val_docs']:>5} docs",
        f"  long       {meta['long_tokens']:>12,} tokens  {meta['long_docs']:>5} docs "
        f"(of {meta['long_candidates']} with {meta['long_doc_tokens']:,}..{meta.get('long_doc_max_tokens') or 'inf'} tokens)",
        "  sources:",
    ]
    for name, s in meta["sources"].items():
        lines.append(f"    {name:<12} {s['docs']:>5} docs {s['tokens']:>12,} tokens  "
                     f"(train {s['train_docs']}, val {s['val_docs']}, long {s['long_docs']})  {s.get('licence', '')}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from .dataset import load_meta

    meta = load_meta(args.dir)
    if args.json:
        m = dict(meta)
        m["tokenizer"] = {k: v for k, v in m["tokenizer"].items() if k != "json"}
        print(json.dumps(m, indent=1))
    else:
        print(format_info(meta, args.dir))
    return 0


def main(argv=None) -> int:
    """Standalone entry: `python -m tda.data.cli data prepare ...`."""
    ap = argparse.ArgumentParser(prog="tda")
    add_cli(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
