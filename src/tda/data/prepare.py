"""Turn documents into memory-mappable token files.

Layout of a prepared directory:
  train.bin, val.bin   documents' tokens, each document followed by eot, as uint16 (vocab < 65536) or uint32;
                       grouped by source in source order, meta.json's `ranges` give each source's [lo, hi)
  long/NNN_<source>_<name>.bin + long/index.json
                       whole long documents (>= long_doc_tokens) held out of train AND val, for
                       long-context evaluation (length extrapolation, passkey-style probes), taken from
                       every source in turn
  tokenizer.json       `Tokenizer.to_dict()` (also embedded in meta.json)
  meta.json            dtype, token / document counts per split and source, licences, kinds, the default
                       sampling mixture (when code is present), deduplication counts, the config

Splits are by whole document and depend only on (documents, tokenizer, seed, fractions), so re-running
gives byte-identical files; a directory whose meta.json records the same config is left as is.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from .corpus import load_corpus
from .fetch import source_versions
from .sources import PROSE_SOURCES, SOURCES, Document, default_data_root, parse_sources
from .tokenizer import Tokenizer, load_tokenizer, train_bpe

__all__ = [
    "prepare", "prepare_documents", "prepare_bundled", "ensure_bundled_data", "default_data_dir",
    "BUNDLED_DIR", "BUNDLED_CORPUS", "FORMAT_VERSION", "CODE_SHARE_MAX", "default_mixture",
]

FORMAT_VERSION = 4
# In the default mixture, code sources together get at most this share of the sampled windows, so the
# tens of millions of tokens of source code never crowd out the prose and documentation.
CODE_SHARE_MAX = 0.25
BUNDLED_DIR = Path(__file__).with_name("bundled")
BUNDLED_CORPUS = BUNDLED_DIR / "corpus.jsonl.gz"


def default_data_dir(name: str = "bundled") -> Path:
    """Where prepared token data lives by default: `<$TDA_DATA_DIR or ~/.cache/tda>/<name>`."""
    return default_data_root() / name


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


def _write_bin(path: Path, arrays: Sequence[np.ndarray], dtype: np.dtype) -> int:
    n = int(sum(a.size for a in arrays))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype=dtype).tobytes())
    os.replace(tmp, path)  # a crash never leaves a half-written file under the final name
    return n


def default_mixture(train_tokens: dict[str, int], kinds: dict[str, str],
                    code_share_max: float = CODE_SHARE_MAX) -> dict[str, float] | None:
    """Sampling weights per source: each source's share of the training tokens, except that "code"
    sources together get at most `code_share_max` (scaled down, never up). None when nothing is capped
    (then plain uniform sampling over the token stream is the same mixture)."""
    if not 0.0 <= code_share_max <= 1.0:
        raise ValueError(f"code_share_max: must be in [0, 1], got {code_share_max}")
    total = sum(train_tokens.values())
    code = sum(n for s, n in train_tokens.items() if kinds.get(s) == "code")
    if total == 0 or code == 0 or code <= code_share_max * total or code == total:
        return None
    rest = total - code
    # code gets code_share_max of the mass, the rest keeps its natural proportions
    w = {s: (code_share_max * n / code if kinds.get(s) == "code" else (1 - code_share_max) * n / rest)
         for s, n in train_tokens.items()}
    return {s: round(v, 6) for s, v in w.items()}


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:80]


def _config_hash(cfg: dict) -> str:
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def _corpus_hash(docs: Sequence[Document]) -> str:
    h = hashlib.sha1()
    for d in docs:
        h.update(f"{d.source}\0{d.name}\0{len(d.text)}\0".encode())
        h.update(hashlib.sha1(d.text.encode()).digest())
    return h.hexdigest()


@contextlib.contextmanager
def _dir_lock(out: Path):
    """Serialise preparation of one directory across processes (e.g. every torchrun rank calling
    ensure_bundled_data): the first builds, the others wait and then find it done."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking; call from one process only
        yield
        return
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _existing(out: Path, cfg_hash: str) -> dict | None:
    meta_path = out / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return None
    if meta.get("config_hash") != cfg_hash:
        return None
    files = [out / "train.bin", out / "val.bin"] + [out / "long" / d["file"] for d in meta.get("long", [])]
    return meta if all(f.exists() for f in files) else None


def prepare_documents(
    out_dir: str | os.PathLike,
    docs: Sequence[Document],
    tokenizer: Tokenizer,
    *,
    val_fraction: float = 0.02,
    long_doc_tokens: int = 10_000,
    num_long_docs: int = 24,
    long_doc_max_tokens: int | None = 131_072,
    max_tokens: int | None = None,
    seed: int = 0,
    licences: dict[str, str] | None = None,
    extra_meta: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenise `docs`, hold out long documents, split the rest train/val by document, write files.

    Long hold-out: among documents with long_doc_tokens <= tokens <= long_doc_max_tokens, each source
    in turn gives one (seeded choice; at most a quarter of its documents) until num_long_docs are chosen;
    they go to long/ and nowhere else
    (the cap keeps a 1M-token Bible in training instead of spending it on evaluation). Validation: documents in seeded
    random order are added to val until it holds ~val_fraction of the remaining tokens of their source
    (per source; a document that would overshoot the target by more than half is skipped, so one huge
    book cannot become val).
    max_tokens: keep documents (seeded order) only until this many tokens are kept (for quick runs).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: must be in (0, 1), got {val_fraction}")
    if long_doc_tokens < 1:
        raise ValueError(f"long_doc_tokens: must be >= 1, got {long_doc_tokens}")
    if long_doc_max_tokens is not None and long_doc_max_tokens < long_doc_tokens:
        raise ValueError(f"long_doc_max_tokens: must be >= long_doc_tokens ({long_doc_tokens}), got {long_doc_max_tokens}")
    if num_long_docs < 0:
        raise ValueError(f"num_long_docs: must be >= 0, got {num_long_docs}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens: must be >= 1 or None, got {max_tokens}")
    if not docs:
        raise ValueError("docs: no documents to prepare")
    out = Path(out_dir)
    cfg = dict(
        version=FORMAT_VERSION, corpus=_corpus_hash(docs), tokenizer=tokenizer.name,
        tokenizer_hash=hashlib.sha1(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest(),
        val_fraction=val_fraction, long_doc_tokens=long_doc_tokens, num_long_docs=num_long_docs,
        long_doc_max_tokens=long_doc_max_tokens, max_tokens=max_tokens, seed=seed,
    )
    cfg_hash = _config_hash(cfg)
    if not force and (meta := _existing(out, cfg_hash)) is not None:
        return meta
    with _dir_lock(out):
        if not force and (meta := _existing(out, cfg_hash)) is not None:  # another process built it meanwhile
            return meta
        return _build(out, docs, tokenizer, cfg, cfg_hash, val_fraction=val_fraction, long_doc_tokens=long_doc_tokens,
                      num_long_docs=num_long_docs, long_doc_max_tokens=long_doc_max_tokens, max_tokens=max_tokens,
                      seed=seed, licences=licences, extra_meta=extra_meta, progress=progress)


def _build(out: Path, docs: Sequence[Document], tokenizer: Tokenizer, cfg: dict, cfg_hash: str, *,
           val_fraction: float, long_doc_tokens: int, num_long_docs: int, long_doc_max_tokens: int | None,
           max_tokens: int | None, seed: int, licences: dict[str, str] | None, extra_meta: dict[str, Any] | None,
           progress: bool) -> dict:
    t0 = time.time()
    # Tokenise in batches so tiktoken/tokenizers can use their threads, with a visible bar.
    ids: list[np.ndarray] = []
    batch = 64
    bar = tqdm(total=sum(len(d.text) for d in docs), unit="B", unit_scale=True, desc=f"tokenize ({tokenizer.name})",
               disable=not progress)
    for i in range(0, len(docs), batch):
        chunk = docs[i:i + batch]
        for toks in tokenizer.encode_batch([d.text for d in chunk]):
            ids.append(np.asarray(toks, dtype=np.int64))
        bar.update(sum(len(d.text) for d in chunk))
    bar.close()
    dtype = _dtype_for(tokenizer.vocab_size)

    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(docs))]
    source_rank = {s: k for k, s in enumerate(dict.fromkeys(d.source for d in docs))}
    if max_tokens is not None:
        kept, total = [], 0
        for i in order:
            if total >= max_tokens:
                break
            kept.append(i)
            total += ids[i].size + 1
        order = kept

    cap = long_doc_max_tokens if long_doc_max_tokens is not None else float("inf")
    long_candidates = sorted(i for i in order if long_doc_tokens <= ids[i].size <= cap)
    # Every source in turn gives one long document (seeded choice) until num_long_docs are held out, so
    # each source with long documents is represented in long-context evaluation.
    by_source: dict[str, list[int]] = {}
    for i in rng.permutation(long_candidates).tolist() if long_candidates else []:
        by_source.setdefault(docs[i].source, []).append(int(i))
    # ... but never more than a quarter of a source's documents (a source of 14 whole books keeps most
    # of them for training)
    n_docs = {s: sum(1 for d in docs if d.source == s) for s in by_source}
    queues = [by_source[s][:max(1, n_docs[s] // 4)] for s in sorted(by_source, key=source_rank.__getitem__)]
    long_set: set[int] = set()
    while len(long_set) < num_long_docs and any(queues):
        for q in queues:
            if q and len(long_set) < num_long_docs:
                long_set.add(q.pop(0))
    long_ids = sorted(long_set, key=lambda i: (source_rank[docs[i].source], docs[i].name))
    rest = [i for i in order if i not in long_set]
    if len(rest) < 2:
        raise ValueError(f"docs: only {len(rest)} document(s) left after holding out long ones; need >= 2 for train/val")

    # Validation is stratified: every source gives ~val_fraction of its own tokens, so the validation
    # mixture can follow the training mixture and no source is missing from it by chance.
    val_set: set[int] = set()
    for src in source_rank:
        members = [i for i in rest if docs[i].source == src]
        target = val_fraction * sum(ids[i].size + 1 for i in members)
        got: list[int] = []
        val_tokens = 0
        for i in members:
            if val_tokens >= target:
                break
            n = ids[i].size + 1
            if val_tokens + n <= 1.5 * target:  # one huge document cannot become the source's val
                got.append(i)
                val_tokens += n
        if not got and len(members) >= 2:  # every document is bigger than the target: the smallest
            got.append(min(members, key=lambda i: ids[i].size))
        val_set.update(got)
    if not val_set:
        val_set.add(min(rest, key=lambda i: ids[i].size))
    if len(val_set) == len(rest):
        val_set.discard(max(val_set, key=lambda i: ids[i].size))
    # Grouped by source (stable: the seeded order stays within a source), so a source is one range.
    train_ids = sorted((i for i in rest if i not in val_set), key=lambda i: source_rank[docs[i].source])
    val_ids = sorted((i for i in rest if i in val_set), key=lambda i: source_rank[docs[i].source])

    eot = np.array([tokenizer.eot_id], dtype=np.int64)

    def with_eot(idx: list[int]) -> list[np.ndarray]:
        return [a for i in idx for a in (ids[i], eot)]

    def ranges(idx: list[int]) -> dict[str, list[int]]:
        r: dict[str, list[int]] = {}
        pos = 0
        for i in idx:
            lo_hi = r.setdefault(docs[i].source, [pos, pos])
            pos += ids[i].size + 1
            lo_hi[1] = pos
        return r

    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # invalidate first, so a crash mid-write is never "done"
    n_train = _write_bin(out / "train.bin", with_eot(train_ids), dtype)
    n_val = _write_bin(out / "val.bin", with_eot(val_ids), dtype)

    long_dir = out / "long"
    if long_dir.exists():
        shutil.rmtree(long_dir)
    long_dir.mkdir()
    long_index = []
    for k, i in enumerate(long_ids):
        d = docs[i]
        fname = f"{k:03d}_{_slug(d.source)}_{_slug(d.name)}.bin"
        n = _write_bin(long_dir / fname, [ids[i]], dtype)  # no eot: one whole document
        long_index.append(dict(file=fname, source=d.source, name=d.name, tokens=n, chars=len(d.text)))
    (long_dir / "index.json").write_text(json.dumps(long_index, indent=1))
    tokenizer.save(out / "tokenizer.json")

    per_source: dict[str, dict[str, int]] = {}
    for split, idx in (("train", train_ids), ("val", val_ids), ("long", long_ids)):
        for i in idx:
            s = per_source.setdefault(docs[i].source, dict(docs=0, tokens=0, chars=0, train_docs=0, val_docs=0,
                                                             long_docs=0))
            s["docs"] += 1
            s["tokens"] += int(ids[i].size)
            s["chars"] += len(docs[i].text)
            s[f"{split}_docs"] += 1
            if split == "train":
                s["train_tokens"] = s.get("train_tokens", 0) + int(ids[i].size) + 1
    licences = licences or {}
    kinds = {s: SOURCES[s].kind if s in SOURCES else "prose" for s in per_source}
    train_ranges, val_ranges = ranges(train_ids), ranges(val_ids)
    mixture = default_mixture({s: hi - lo for s, (lo, hi) in train_ranges.items()}, kinds)
    meta = dict(
        format_version=FORMAT_VERSION,
        config=cfg,
        config_hash=cfg_hash,
        tokenizer=tokenizer.to_dict(),
        tokenizer_name=tokenizer.name,
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        dtype=dtype.name,
        train_tokens=n_train,
        val_tokens=n_val,
        long_tokens=int(sum(e["tokens"] for e in long_index)),
        train_docs=len(train_ids),
        val_docs=len(val_ids),
        long_docs=len(long_ids),
        long_doc_tokens=long_doc_tokens,
        long_doc_max_tokens=long_doc_max_tokens,
        long_candidates=len(long_candidates),
        sources={k: dict(v, licence=licences.get(k, ""), kind=kinds[k],
                         redistributable=SOURCES[k].redistributable if k in SOURCES else "")
                 for k, v in sorted(per_source.items(), key=lambda kv: source_rank[kv[0]])},
        ranges=dict(train=train_ranges, val=val_ranges),
        mixture=mixture,
        long=long_index,
        seconds=round(time.time() - t0, 2),
        **(extra_meta or {}),
    )
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / "meta.json")
    return meta


def prepare(
    out_dir: str | os.PathLike | None = None,
    sources: Sequence[str] | str = PROSE_SOURCES,
    tokenizer: str | dict | Tokenizer = "gpt2",
    vocab_size: int = 4096,
    val_fraction: float = 0.02,
    long_doc_tokens: int = 10_000,
    max_tokens: int | None = None,
    seed: int = 0,
    *,
    num_long_docs: int = 24,
    long_doc_max_tokens: int | None = 131_072,
    cache_dir: str | os.PathLike | None = None,
    near_dedup: bool = True,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Fetch `sources` (see tda.data.sources.SOURCES; "a,b", a list, "all" or "prose"), deduplicate,
    tokenise and write a prepared directory.

    tokenizer: "gpt2" (GPT-2 BPE), "bpe" (train a byte-level BPE of `vocab_size` on these documents),
    "bundled" (the shipped 4096-token BPE), a Tokenizer, its dict, or a tokenizer JSON path.
    out_dir defaults to `<data root>/<tokenizer name>`. Returns meta.json's contents.
    """
    t0 = time.time()
    sources = parse_sources(sources)
    dedup: dict = {}
    docs = load_corpus(tuple(sources), cache_dir, near_dedup=near_dedup, stats=dedup)
    load_seconds = round(time.time() - t0, 1)
    if isinstance(tokenizer, str) and tokenizer == "bpe":
        name = f"bpe{vocab_size}"
        out = Path(out_dir) if out_dir is not None else default_data_dir(name)
        tok = None
        try:  # training is deterministic: reuse the BPE of an earlier run on the same documents
            old = json.loads((out / "meta.json").read_text())
            if old["tokenizer"].get("name") == name and old["config"]["corpus"] == _corpus_hash(docs) and not force:
                tok = Tokenizer.from_dict(old["tokenizer"])
        except (OSError, KeyError, ValueError):
            pass
        if tok is None:
            # The BPE learns from every document (val included): the vocabulary is not a label leak,
            # and it keeps the tokenizer independent of the split seed and max_tokens.
            tok = train_bpe((d.text for d in docs), vocab_size=vocab_size, name=name)
    else:
        tok = load_tokenizer(tokenizer)
        out = Path(out_dir) if out_dir is not None else default_data_dir(tok.name)
    return prepare_documents(
        out, docs, tok, val_fraction=val_fraction, long_doc_tokens=long_doc_tokens, num_long_docs=num_long_docs,
        long_doc_max_tokens=long_doc_max_tokens, max_tokens=max_tokens, seed=seed, licences={s: SOURCES[s].licence for s in sources},
        extra_meta=dict(source_packages={s: source_versions(s, cache_dir) for s in sources}, dedup_dropped=dedup,
                        near_dedup=near_dedup, load_seconds=load_seconds),
        force=force, progress=progress,
    )


# ----------------------------------------------------------------------------------------------
# bundled slice: a few MB of public-domain prose that ships inside the package (no download)


def load_bundled_documents() -> list[Document]:
    if not BUNDLED_CORPUS.exists():
        raise FileNotFoundError(f"bundled corpus missing: {BUNDLED_CORPUS} (is the package installed with its data?)")
    docs = []
    with gzip.open(BUNDLED_CORPUS, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            docs.append(Document(r["source"], r["name"], r["text"]))
    return docs


def prepare_bundled(out_dir: str | os.PathLike | None = None, *, val_fraction: float = 0.05,
                    long_doc_tokens: int = 10_000, num_long_docs: int = 3, seed: int = 0,
                    force: bool = False, progress: bool = False) -> dict:
    """Prepare the bundled slice with the bundled BPE tokenizer (a few seconds, no network)."""
    docs = load_bundled_documents()
    tok = load_tokenizer("bundled")
    licences = {s: SOURCES[s].licence for s in {d.source for d in docs} if s in SOURCES}
    meta = prepare_documents(
        out_dir if out_dir is not None else default_data_dir("bundled"), docs, tok,
        val_fraction=val_fraction, long_doc_tokens=long_doc_tokens, num_long_docs=num_long_docs, seed=seed,
        licences=licences, extra_meta=dict(bundled=True), force=force, progress=progress,
    )
    return meta


def ensure_bundled_data(data_dir: str | os.PathLike | None = None) -> Path:
    """Return a directory holding the prepared bundled slice, preparing it there first if needed."""
    out = Path(data_dir) if data_dir is not None else default_data_dir("bundled")
    prepare_bundled(out)  # returns at once when meta.json already matches
    return out
