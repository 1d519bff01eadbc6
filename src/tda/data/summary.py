"""A prepared data directory in a few lines (what `tda data info` and `tda data prepare` print)."""
from __future__ import annotations

from pathlib import Path


def format_info(meta: dict, data_dir: str | Path = "") -> str:
    """meta.json of a prepared directory as a short table: tokenizer, splits, sources."""
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
