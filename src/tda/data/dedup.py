"""Exact and near-duplicate removal over documents (anything with `.source` and `.text`)."""
from __future__ import annotations

import hashlib
from typing import Iterable

def _paragraph_keys(text: str, min_chars: int = 40) -> list[tuple[int, int]]:
    """(hash, length) of each paragraph of at least min_chars after case and whitespace folding."""
    keys = []
    for para in text.split("\n\n"):
        norm = " ".join(para.split()).lower()
        if len(norm) >= min_chars:
            keys.append((hash(norm), len(norm)))
    return keys


def dedup_documents(docs: Iterable, near: bool = True, threshold: float = 0.8,
                    stats: dict | None = None) -> list:
    """Drop exact duplicates (same text) and, with `near`, near-duplicates: a document at least
    `threshold` of whose paragraph characters (paragraphs of >= 40 characters, case and whitespace
    folded) already appeared in kept documents. The first copy wins, so put preferred sources first.
    `stats` (optional) receives {source: {"exact": n, "near": n}} of dropped documents."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: must be in (0, 1], got {threshold}")
    seen_docs: set[bytes] = set()
    seen_paras: set[int] = set()
    out = []
    for d in docs:
        h = hashlib.sha1(d.text.encode()).digest()
        if h in seen_docs:
            if stats is not None:
                stats.setdefault(d.source, dict(exact=0, near=0))["exact"] += 1
            continue
        if near:
            keys = _paragraph_keys(d.text)
            total = sum(n for _, n in keys)
            dup = sum(n for k, n in keys if k in seen_paras)
            if total and dup >= threshold * total:
                if stats is not None:
                    stats.setdefault(d.source, dict(exact=0, near=0))["near"] += 1
                continue
            seen_paras.update(k for k, _ in keys)
        seen_docs.add(h)
        out.append(d)
    return out
