"""A source's cleaned documents, and whole corpora (deduplicated).

Every document comes back as a `Document(source, name, text)`, in a fixed order, so the pipeline is
deterministic. A source's cleaned documents are cached as JSON lines next to its archives, keyed by the
archive versions and READER_VERSION, so a re-run does not convert PDFs or parse HTML again.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .dedup import dedup_documents
from .fetch import fetch_source, source_versions
from .readers import read_source
from .sources import PROSE_SOURCES, READER_VERSION, Document, default_cache_dir, parse_sources
from .text import normalise_text, strip_gutenberg_boilerplate

__all__ = ["load_source", "load_corpus"]


def _cached_docs(name: str, cache: Path, key: str) -> list[Document] | None:
    path = cache / "docs" / f"{name}.jsonl"
    try:
        with open(path, encoding="utf-8") as f:
            if json.loads(f.readline()).get("key") != key:
                return None
            return [Document(name, r["name"], r["text"]) for r in map(json.loads, f)]
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def _store_docs(name: str, cache: Path, key: str, docs: list[Document]) -> None:
    path = cache / "docs" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(dict(key=key)) + "\n")
        for d in docs:
            f.write(json.dumps(dict(name=d.name, text=d.text), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def load_source(name: str, cache_dir: str | os.PathLike | None = None, *,
                skip_duplicates_of: tuple[str, ...] = ()) -> list[Document]:
    """Fetch source `name` if needed and return its cleaned documents (empty ones dropped)."""
    root = fetch_source(name, cache_dir)
    if name == "gutenberg":  # the only reader whose output depends on the other sources: not cached
        return _clean(read_source(name, root, skip_duplicates_of))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = f"{READER_VERSION}:{source_versions(name, cache)}"
    docs = _cached_docs(name, cache, key)
    if docs is None:
        docs = _clean(read_source(name, root))
        _store_docs(name, cache, key, docs)
    return docs


def _clean(raw: list[Document]) -> list[Document]:
    out = []
    for d in raw:
        text = normalise_text(strip_gutenberg_boilerplate(d.text)) if d.source in PROSE_SOURCES else normalise_text(d.text)
        if text.strip():
            out.append(Document(d.source, d.name, text))
    return out


def load_corpus(sources: tuple[str, ...] | list[str] | str = PROSE_SOURCES,
                cache_dir: str | os.PathLike | None = None, *, near_dedup: bool = True,
                stats: dict | None = None) -> list[Document]:
    """All documents of `sources`, in source order then file order, exact duplicates removed (and
    near-duplicates with `near_dedup`; see dedup_documents). `stats` receives the dropped counts."""
    names = parse_sources(sources)
    docs = [d for s in names for d in load_source(s, cache_dir, skip_duplicates_of=tuple(names))]
    return dedup_documents(docs, near=near_dedup, stats=stats)
