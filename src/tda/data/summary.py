"""A prepared data directory, or the list of corpus sources, in a few lines (what `tda data info`,
`tda data prepare`, `tda data shard`, `tda data unpack` and `tda data sources` print)."""
from __future__ import annotations

from pathlib import Path

from .sources import SOURCES


def format_info(meta: dict, data_dir: str | Path = "") -> str:
    """meta.json of a prepared directory as a short table: tokenizer, splits, sources (kind, counts, mixture
    weight, licence), tokens of prose + documentation vs code, dropped duplicates, shard part."""
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
        kind = s.get("kind", "prose")  # directories prepared before kinds were recorded hold prose only
        kinds[kind] = kinds.get(kind, 0) + s["tokens"]
    code = kinds.get("code", 0)
    lines.append(f"  prose + documentation {sum(kinds.values()) - code:,} tokens, code {code:,} tokens")
    if meta.get("dedup_dropped"):
        lines.append("  dropped duplicates: " + ", ".join(
            f"{k} {v['exact']} exact + {v['near']} near" for k, v in meta["dedup_dropped"].items()))
    if meta.get("shard"):
        sh = meta["shard"]
        lines.append(f"  shard part {sh['part']} of {sh['source_dir']} ({sh['compression']})")
    return "\n".join(lines)


def format_sources() -> str:
    """Every corpus source: name, kind, registry, package(s), description, licence and whether its token
    files may be passed on."""
    lines = []
    for name, spec in SOURCES.items():
        lines.append(f"{name:<13} {spec.kind:<10} {spec.registry:<6} {spec.package}")
        lines.append(f"{'':<13} {spec.description}")
        lines.append(f"{'':<13} licence: {spec.licence}; token files redistributable: {spec.redistributable}")
    return "\n".join(lines)
