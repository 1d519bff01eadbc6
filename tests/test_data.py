"""tda.data: tokenizers, bundled preparation, memory-mapped datasets, deterministic sharded sampling.

Fast and offline; the full download is marked `network` and runs only with TDA_NETWORK_TESTS=1.
"""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from tda.data import (
    ShardedBatchSampler, TokenDataset, Tokenizer, ensure_bundled_data, get_batch, load_long_documents, load_meta,
    load_tokenizer, open_split, prepare_bundled, prepare_documents, train_bpe,
)
from tda.data.sources import Document
from tda.data.text import strip_brown_tags, strip_gutenberg_boilerplate

network = pytest.mark.skipif(os.environ.get("TDA_NETWORK_TESTS") != "1", reason="set TDA_NETWORK_TESTS=1")

SAMPLE = "Hello world! It's 2026 — naïve café, 你好.\n\n  Tabs\tand  spaces   end.\n"


# -- tokenizers ----------------------------------------------------------------------------------


def test_gpt2_known_ids_and_roundtrip():
    tok = load_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.encode_batch(["Hello world", SAMPLE]) == [[15496, 995], tok.encode(SAMPLE)]
    # a literal "<|endoftext|>" in a document stays text: documents cannot forge boundaries
    assert 50256 not in tok.encode("a <|endoftext|> b")


def test_bundled_bpe_roundtrip_and_eot():
    tok = load_tokenizer("bundled")
    assert tok.vocab_size == 4096 and tok.eot_id == 0
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.eot_id not in tok.encode("a <|endoftext|> b")
    long_text = ("The quick brown fox jumps over the lazy dog. " * 2000).strip()
    # encode_batch cuts long texts for parallelism; the ids must equal the one-piece encoding
    assert tok.encode_batch([long_text])[0] == tok._hf.encode(long_text, add_special_tokens=False).ids


@pytest.mark.parametrize("spec", ["gpt2", "bundled"])
def test_tokenizer_dict_and_pickle_rebuild(spec):
    tok = load_tokenizer(spec)
    d = json.loads(json.dumps(tok.to_dict()))  # must survive JSON (checkpoints)
    for t2 in (Tokenizer.from_dict(d), pickle.loads(pickle.dumps(tok))):
        assert t2.vocab_size == tok.vocab_size and t2.eot_id == tok.eot_id
        assert t2.encode(SAMPLE) == tok.encode(SAMPLE)
    if spec == "gpt2":
        assert set(d) >= {"kind"} and "json" not in d


def test_train_bpe_small():
    texts = [f"document {i}: the cat sat on the mat, and the dog barked." for i in range(200)]
    tok = train_bpe(texts, vocab_size=300)
    assert tok.eot_id == 0 and tok.vocab_size <= 300
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(texts, vocab_size=10)


def test_bad_tokenizer_spec_names_argument():
    with pytest.raises(ValueError, match="spec"):
        load_tokenizer("no-such-tokenizer")
    with pytest.raises(ValueError, match="kind"):
        Tokenizer("wordpiece")


# -- cleaning ------------------------------------------------------------------------------------


def test_cleaning_helpers():
    text = "header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicence"
    assert strip_gutenberg_boilerplate(text).strip() == "body"
    tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, did/dod n't/* it/pps ?/.\n"
    assert strip_brown_tags(tagged) == 'The jury said "no evidence", didn\'t it?'


# -- bundled preparation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundled")
    meta = prepare_bundled(d)
    return d, meta


def test_bundled_prepare_layout(bundled):
    d, meta = bundled
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 4096
    for f in ("train.bin", "val.bin", "meta.json", "tokenizer.json", "long/index.json"):
        assert (d / f).exists(), f
    assert (d / "train.bin").stat().st_size == 2 * meta["train_tokens"]
    assert (d / "val.bin").stat().st_size == 2 * meta["val_tokens"]
    assert meta["train_tokens"] > 500_000 and meta["val_tokens"] > 10_000
    longs = load_long_documents(d)
    assert len(longs) >= 2 and all(e["tokens"] >= 10_000 and len(e["ids"]) == e["tokens"] for e in longs)
    assert load_meta(d) == meta
    tok = Tokenizer.from_dict(meta["tokenizer"])
    train = np.memmap(d / "train.bin", dtype=np.uint16, mode="r")
    assert int(train.max()) < tok.vocab_size and train[-1] == tok.eot_id


def test_bundled_long_docs_not_in_train_or_val(bundled):
    d, meta = bundled
    tok = Tokenizer.from_dict(meta["tokenizer"])
    splits = {s: tok.decode(np.fromfile(d / f"{s}.bin", dtype=np.uint16)) for s in ("train", "val")}
    for e in load_long_documents(d):
        text = tok.decode(e["ids"])
        for k in (0.25, 0.5, 0.75):  # probe passages from inside the held-out document
            i = int(len(text) * k)
            probe = text[i:i + 300]
            assert probe not in splits["train"] and probe not in splits["val"], (e["name"], k)
    assert meta["train_docs"] + meta["val_docs"] + meta["long_docs"] == sum(s["docs"] for s in meta["sources"].values())


def test_prepare_is_idempotent_and_deterministic(bundled, tmp_path):
    d, meta = bundled
    again = prepare_bundled(d)
    assert again["config_hash"] == meta["config_hash"] and again["seconds"] == meta["seconds"]  # not rebuilt
    assert ensure_bundled_data(d) == d
    # a different directory built from scratch is byte-identical
    docs = [Document("s", f"d{i}", f"Document number {i}. " * (50 + 40 * i)) for i in range(12)]
    tok = load_tokenizer("bundled")
    m1 = prepare_documents(tmp_path / "a", docs, tok, val_fraction=0.2, long_doc_tokens=1500, num_long_docs=2,
                           progress=False)
    m2 = prepare_documents(tmp_path / "b", docs, tok, val_fraction=0.2, long_doc_tokens=1500, num_long_docs=2,
                           progress=False)
    for f in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert m1["long"] == m2["long"] and len(m1["long"]) == 2 and all(e["tokens"] >= 1500 for e in m1["long"])
    assert m1["train_docs"] + m1["val_docs"] + m1["long_docs"] == 12 and m1["val_docs"] >= 1
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_documents(tmp_path / "c", docs, tok, val_fraction=1.5)


def test_uint32_for_large_vocab(tmp_path):
    docs = [Document("s", f"d{i}", f"Short text {i} about things. " * 20) for i in range(6)]
    meta = prepare_documents(tmp_path, docs, load_tokenizer("gpt2"), val_fraction=0.2, progress=False)
    assert meta["dtype"] == "uint16"  # 50257 < 65536
    from tda.data.prepare import _dtype_for
    assert _dtype_for(100_000) == np.uint32 and _dtype_for(65_535) == np.uint16


# -- datasets and sampling -----------------------------------------------------------------------


def test_token_dataset_memmap(bundled):
    d, meta = bundled
    ds = TokenDataset(d / "train.bin", meta["dtype"], block_size=64)
    raw = np.fromfile(d / "train.bin", dtype=np.uint16)
    assert ds.n_tokens == len(raw) == meta["train_tokens"] and len(ds) == len(raw) - 64
    x, y = ds[1000]
    assert x.dtype == torch.int64 and x.shape == (64,)
    assert torch.equal(x, torch.from_numpy(raw[1000:1064].astype(np.int64)))
    assert torch.equal(y[:-1], x[1:])
    ds2 = pickle.loads(pickle.dumps(ds))  # DataLoader workers
    assert torch.equal(ds2[5][0], ds[5][0])
    with pytest.raises(ValueError, match="block_size"):
        TokenDataset(d / "val.bin", "uint16", block_size=10**9)
    with pytest.raises(ValueError, match="dtype"):
        TokenDataset(d / "val.bin", "int8", block_size=8)


def test_get_batch(bundled):
    d, _ = bundled
    g = torch.Generator().manual_seed(0)
    x, y = get_batch("val", 4, 32, generator=g, data_dir=d)
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = get_batch(open_split(d, "val", 32), 4, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    x3, _ = get_batch(d / "val.bin", 4, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x3)


def test_sharded_sampler_pure_function_of_seed_step_rank(bundled):
    d, _ = bundled
    ds = open_split(d, "train", 128)
    s0 = ShardedBatchSampler(ds, 8, seed=1, rank=0, world_size=2)
    s1 = ShardedBatchSampler(ds, 8, seed=1, rank=1, world_size=2)
    # deterministic per (seed, step, rank): a fresh sampler (a resumed run) reproduces step 7 exactly
    x7, y7 = s0.batch(7)
    assert torch.equal(ShardedBatchSampler(ds, 8, seed=1, rank=0, world_size=2).batch(7)[0], x7)
    assert not torch.equal(s0.batch(8)[0], x7)
    assert not torch.equal(s1.batch(7)[0], x7)
    assert not torch.equal(ShardedBatchSampler(ds, 8, seed=2, rank=0, world_size=2).batch(7)[0], x7)
    assert not np.array_equal(s0.starts(7, micro_step=1), s0.starts(7))
    # disjoint shards: every window of rank 0 lies wholly before every window of rank 1
    end0 = max(s0.starts(t).max() for t in range(50)) + 128 + 1
    start1 = min(s1.starts(t).min() for t in range(50))
    assert end0 <= s0.hi <= s1.lo <= start1
    it = s0.iterate(start_step=7)
    step, xi, _ = next(it)
    assert step == 7 and torch.equal(xi, x7)
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchSampler(ds, 8, rank=2, world_size=2)


# -- CLI registration ----------------------------------------------------------------------------


def test_add_cli_parses(tmp_path, bundled, capsys):
    from tda.cli import build_parser

    ap = build_parser()
    a = ap.parse_args(["data", "prepare", "--tokenizer", "bpe", "--sources", "sotu,brown", "--max-tokens", "1000"])
    assert a.sources == [["sotu", "brown"]] and a.max_tokens == 1000 and a.tokenizer == "bpe"
    a = ap.parse_args(["data", "prepare", "--sources", "sotu", "--sources", "gcide,gocode", "--no-near-dedup"])
    assert a.sources == [["sotu"], ["gcide", "gocode"]] and a.near_dedup is False
    with pytest.raises(SystemExit):
        ap.parse_args(["data", "prepare", "--sources", "wikipedia"])
    a = ap.parse_args(["data", "shard", "DIR", "--out", "S", "--max-mib", "10", "--part", "2"])
    assert a.max_mib == 10 and a.part == 2
    a = ap.parse_args(["data", "prepare", "--sources", "prose,large"])
    assert a.sources[0][:4] == ["shakespeare", "gutenberg", "sotu", "brown"] and "javacode" not in a.sources[0]
    a = ap.parse_args(["data", "unpack", "A", "B", "--out", "O"])
    assert a.shards == ["A", "B"] and a.out == "O" and a.force is False
    a = ap.parse_args(["data", "sources"])
    assert a.handler(a) == 0 and "gcide" in capsys.readouterr().out
    d, _ = bundled
    a = ap.parse_args(["data", "info", str(d)])
    assert a.handler(a) == 0 and "train" in capsys.readouterr().out


# -- full corpus (network) -----------------------------------------------------------------------


@pytest.mark.network
@network
def test_full_prepare_small(tmp_path):
    from tda.data import prepare

    meta = prepare(tmp_path / "out", sources=["sotu"], tokenizer="gpt2", max_tokens=300_000,
                   cache_dir=tmp_path / "cache", progress=False)
    assert meta["train_tokens"] > 0 and meta["val_tokens"] > 0 and meta["dtype"] == "uint16"


@pytest.mark.network
@network
def test_debian_source_fetch(tmp_path):
    """`apt-get download` + `dpkg-deb -x` of a small Debian package (needs `apt-get update` done once)."""
    from tda.data.corpus import load_source
    from tda.data.fetch import source_versions

    docs = load_source("wordnet", tmp_path)
    assert len(docs) > 20 and all(d.source == "wordnet" for d in docs)
    assert "(n.): " in docs[0].text
    assert source_versions("wordnet", tmp_path).startswith("wordnet-base_")
    assert load_source("wordnet", tmp_path) == docs  # from the document cache


# -- more sources: cleaners, readers on local fixtures, deduplication ---------------------------

from tda.data.dedup import dedup_documents  # noqa: E402
from tda.data.corpus import load_source  # noqa: E402
from tda.data.sources import SOURCES, parse_sources  # noqa: E402
from tda.data.text import email_body, gcide_entries, html_to_text, pod_to_text, wordnet_glosses  # noqa: E402


def test_parse_sources():
    assert parse_sources("sotu,brown") == ["sotu", "brown"]
    assert parse_sources(["sotu", "gcide,sotu"]) == ["sotu", "gcide"]
    assert parse_sources("prose") == ["shakespeare", "gutenberg", "sotu", "brown"]
    assert parse_sources("all") == list(SOURCES)
    assert parse_sources("large") == [s for s in SOURCES if s != "javacode"]
    with pytest.raises(ValueError, match="sources"):
        parse_sources("sotu,wikipedia")
    with pytest.raises(ValueError, match="sources"):
        parse_sources("")
    assert {s.kind for s in SOURCES.values()} == {"prose", "docs", "dictionary", "email", "code"}
    assert all(s.licence and s.redistributable for s in SOURCES.values())


def test_html_to_text():
    page = ("<html><head><title>T</title><script>var x = '<p>no</p>';</script></head><body>"
            "<nav>Menu</nav><h1>Vector&lt;T&gt;</h1><p>A   dynamic\narray &amp; more.</p>"
            "<table><tr><td>a</td><td>b</td></tr></table><!-- hidden --><style>p{}</style>"
            "<footer>foot</footer></body></html>")
    text = html_to_text(page)
    assert text.splitlines()[0] == "Vector<T>"
    assert "A dynamic array & more." in text and "a b" in text
    for gone in ("Menu", "var x", "hidden", "p{}", "foot", "<", "T\n"):
        assert gone not in text.replace("Vector<T>", ""), gone


def test_pod_to_text():
    pod = "=head1 NAME\n\nperlfoo - B<bold> and C<< $x->y >>\n\n=over 4\n\n=item first\n\nSee L<the docs|perlpod>, " \
          "E<lt>tagE<gt> and I<F<file>>.\n\n=back\n\n=cut\n"
    text = pod_to_text(pod)
    assert text.splitlines()[0] == "NAME"
    assert "perlfoo - bold and $x->y" in text and "first" in text
    assert "See the docs, <tag> and file." in text
    assert "=over" not in text and "=cut" not in text


def test_email_body():
    raw = (b"From: a@example.com\nSubject: hello\nMIME-Version: 1.0\n"
           b"Content-Type: multipart/alternative; boundary=XX\n\n--XX\n"
           b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
           b"Caf=E9 at noon?\n--XX\nContent-Type: text/html\n\n<p>HTML copy</p>\n--XX--\n")
    body = email_body(raw)
    assert body.strip() == "Café at noon?"
    html_only = b"Subject: x\nContent-Type: text/html\n\n<html><body><p>Buy <b>now</b></p></body></html>\n"
    assert email_body(html_only).strip() == "Buy now"
    assert "Subject" not in email_body(b"Subject: x\n\nplain body\n")


def _b64(n):
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = digits[n % 64] + out
        n //= 64
        if n == 0:
            return out


def test_gcide_entries_and_wordnet_glosses():
    entries = ["00-database-short\n   header", "Abate \\A*bate\"\\, v. t.\n   To beat down. [1913 Webster]",
               "Abbé \\Ab`bé\"\\, n.\n   An abbot."]
    blob, index, pos = b"", [], 0
    for e in entries:
        raw = (e + "\n\n").encode()
        index.append(f"{e.split()[0]}\t{_b64(pos)}\t{_b64(len(raw))}")
        blob += raw
        pos += len(raw)
    index.append(f"abated\t{_b64(len(entries[0]) + 2)}\t{_b64(len(entries[1].encode()) + 2)}")  # 2nd headword
    got = gcide_entries(blob, "\n".join(index))
    assert got == entries[1:]  # header dropped, byte offsets (é is 2 bytes), shared entry once
    data = ("  1 This software and database is being provided\n"
            "00001740 03 n 02 entity 0 thing(a) 0 001 @ 00002137 n 0000 | that which is perceived; \"an entity\"  \n"
            "00002137 00 r 01 a_cappella 0 000 | without musical accompaniment  \n")
    assert wordnet_glosses(data) == ['entity, thing (n.): that which is perceived; "an entity"',
                                     "a cappella (adv.): without musical accompaniment"]


def _fake_deb(cache, package, files: dict):
    root = cache / "debian" / package
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    (root / ".complete").write_text(f"{package}_1.0_all.deb\n")  # as if fetched: no network


def test_debian_readers_on_local_fixtures(tmp_path):
    import gzip as gz

    _fake_deb(tmp_path, "perl-doc", {"usr/share/perl/5.36.0/pod/perlfoo.pod": "=head1 NAME\n\nperlfoo - B<x>\n",
                                     "usr/share/doc/perl/pumpkin.pod.gz": gz.compress(b"=head1 PUMPKIN\n\nText.\n")})
    docs = load_source("perldoc", tmp_path)
    assert [d.name for d in docs] == ["pumpkin", "perlfoo"]  # sorted by path
    assert docs[1].text == "NAME\n\nperlfoo - x\n"
    go = "usr/share/go-1.19/src/"
    _fake_deb(tmp_path, "golang-1.19-src", {
        go + "strings/a.go": "package strings\n\nfunc A() {}\n", go + "strings/b.go": "package strings\n",
        go + "strings/testdata/x.go": "package broken", go + "io/io.go": "package io\n"})
    docs = load_source("gocode", tmp_path)
    assert [d.name for d in docs] == ["io", "strings"]
    assert docs[1].text.startswith("// file: strings/a.go\npackage strings") and "// file: strings/b.go" in docs[1].text
    assert "broken" not in docs[1].text
    # the cleaned documents are cached, keyed by the archive versions
    cached = tmp_path / "docs" / "gocode.jsonl"
    assert cached.exists() and load_source("gocode", tmp_path) == docs
    (tmp_path / "debian" / "golang-1.19-src" / ".complete").write_text("golang-1.19-src_2.0_all.deb\n")
    (tmp_path / "debian" / "golang-1.19-src" / go / "io" / "io.go").write_text("package io2\n")
    assert "package io2" in load_source("gocode", tmp_path)[0].text  # new version: read again


def test_dedup_documents():
    para = "This paragraph is long enough to count for near-duplicate detection, clearly. "
    a = Document("x", "a", f"{para}one\n\n{para}two\n\n{para}three\n")
    exact = Document("y", "b", a.text)
    near = Document("y", "c", f"{para}ONE\n\n{para}   two\n\n{para}three\n\nshort tail\n")  # case/space folded
    partial = Document("y", "d", f"{para}one\n\nA different paragraph that is also long enough to be counted.\n\n"
                       "And yet another new paragraph with its own words in it, long enough.\n")
    stats = {}
    kept = dedup_documents([a, exact, near, partial], stats=stats)
    assert kept == [a, partial] and stats == {"y": {"exact": 1, "near": 1}}
    assert dedup_documents([a, exact, near], near=False) == [a, near]
    with pytest.raises(ValueError, match="threshold"):
        dedup_documents([a], threshold=0)


# -- sources in prepared data: ranges, mixture, long documents per source, BOS, shards ----------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A prepared directory of three sources, one of them code (bigger than the rest)."""
    d = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "window", "paper", "green"]
    docs = []
    for src, n_docs, scale in (("sotu", 12, 1), ("gcide", 12, 1), ("gocode", 16, 4)):
        for i in range(n_docs):
            n = int(rng.integers(200, 900)) * scale * (8 if i == 0 else 1)
            body = " ".join(rng.choice(words, size=n))
            text = f"func f{i}() {{ {body} }}" if src == "gocode" else f"{src} {i}. {body}."
            docs.append(Document(src, f"doc{i}", text))
    meta = prepare_documents(d, docs, load_tokenizer("bundled"), val_fraction=0.1, long_doc_tokens=2500,
                             num_long_docs=3, long_doc_max_tokens=None, progress=False)
    return d, meta


def test_prepared_ranges_mixture_and_long_per_source(mixed):
    d, meta = mixed
    train = np.fromfile(d / "train.bin", dtype=np.uint16)
    r = meta["ranges"]["train"]
    assert list(r) == ["sotu", "gcide", "gocode"]
    assert r["sotu"][0] == 0 and r["sotu"][1] == r["gcide"][0] and r["gocode"][1] == len(train)
    for s, (lo, hi) in r.items():
        assert hi - lo == meta["sources"][s]["train_tokens"] and train[hi - 1] == meta["eot_id"]
    # validation is stratified: every source is in it
    assert list(meta["ranges"]["val"]) == ["sotu", "gcide", "gocode"]
    assert sum(hi - lo for lo, hi in meta["ranges"]["val"].values()) == meta["val_tokens"]
    # code is > 25% of the tokens: capped at 25% in the default mixture, the rest keeps its proportions
    assert meta["sources"]["gocode"]["kind"] == "code"
    mix = meta["mixture"]
    assert mix["gocode"] == pytest.approx(0.25, abs=1e-5) and sum(mix.values()) == pytest.approx(1.0, abs=1e-5)
    n_s, n_g = r["sotu"][1] - r["sotu"][0], r["gcide"][1] - r["gcide"][0]
    assert mix["sotu"] / mix["gcide"] == pytest.approx(n_s / n_g, rel=1e-3)
    # one long document from each source in turn
    assert sorted(e["source"] for e in meta["long"]) == ["gcide", "gocode", "sotu"]


def test_default_mixture():
    from tda.data.prepare import default_mixture
    kinds = {"a": "prose", "b": "docs", "c": "code"}
    assert default_mixture({"a": 10, "b": 10, "c": 5}, kinds) is None  # code 20% <= 25%: natural
    assert default_mixture({"a": 10, "b": 30}, kinds) is None
    w = default_mixture({"a": 10, "b": 30, "c": 160}, kinds)
    assert w == {"a": 0.1875, "b": 0.5625, "c": 0.25}
    with pytest.raises(ValueError, match="code_share_max"):
        default_mixture({"a": 1}, kinds, code_share_max=2)


def test_weighted_sampler_follows_weights(mixed):
    from tda.data.dataset import resolve_weights, split_ranges
    d, meta = mixed
    ds = open_split(d, "train", 64)
    ranges = split_ranges(meta, "train")
    w = {"sotu": 0.6, "gcide": 0.3, "gocode": 0.1}
    s = ShardedBatchSampler(ds, 64, seed=3, ranges=ranges, weights=w)
    starts = np.concatenate([s.starts(t) for t in range(200)])
    counts = {k: int(((starts >= lo) & (starts + 64 + 1 <= hi)).sum()) for k, (lo, hi) in ranges.items()}
    assert sum(counts.values()) == len(starts)  # every window lies inside one source
    for k in w:
        assert counts[k] / len(starts) == pytest.approx(w[k], abs=0.02)
    assert np.array_equal(ShardedBatchSampler(ds, 64, seed=3, ranges=ranges, weights=w).starts(5), s.starts(5))
    # two ranks read disjoint parts of every source
    r0 = ShardedBatchSampler(ds, 64, seed=3, ranges=ranges, weights=w, rank=0, world_size=2)
    r1 = ShardedBatchSampler(ds, 64, seed=3, ranges=ranges, weights=w, rank=1, world_size=2)
    for (lo0, hi0), (lo1, hi1) in zip(r0.segments, r1.segments):
        assert hi0 <= lo1
    # a source left out of the mapping is never sampled
    s2 = ShardedBatchSampler(ds, 32, seed=0, ranges=ranges, weights={"gcide": 1.0})
    lo, hi = ranges["gcide"]
    st = np.concatenate([s2.starts(t) for t in range(20)])
    assert ((st >= lo) & (st + 65 <= hi)).all()
    assert resolve_weights(meta, None) == meta["mixture"] and resolve_weights(meta, "natural") is None
    with pytest.raises(ValueError, match="weights"):
        resolve_weights(meta, {"wikipedia": 1.0})
    with pytest.raises(ValueError, match="weights"):
        resolve_weights(meta, {"sotu": -1.0})
    with pytest.raises(ValueError, match="ranges"):
        ShardedBatchSampler(ds, 4, weights=w)


def test_bos_windows(mixed):
    d, meta = mixed
    ds = open_split(d, "val", 48)
    raw = np.fromfile(d / "val.bin", dtype=np.uint16).astype(np.int64)
    bos = meta["eot_id"]
    x, y = ds.windows(np.array([0, 100]), 48, bos_id=bos)
    assert x.shape == y.shape == (2, 48)
    assert (x[:, 0] == bos).all() and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y[1], torch.from_numpy(raw[100:148]))  # the window holds block_size tokens
    s = ShardedBatchSampler(ds, 8, seed=0, bos_id=bos)
    xb, yb = s.batch(3)
    assert (xb[:, 0] == bos).all() and torch.equal(xb[:, 1:], yb[:, :-1])
    xg, _ = get_batch(ds, 4, 48, generator=torch.Generator().manual_seed(0), bos_id=bos)
    assert (xg[:, 0] == bos).all()


def test_trainer_data_bos_and_weights(mixed):
    from tda.train.config import DataConfig, load_config
    from tda.train.distributed import DistContext
    from tda.train.loop import Data
    d, meta = mixed
    cfg = load_config(None, ["data.bos=true", "data.weights={'sotu': 1.0, 'gcide': 1.0}", f"data_dir={d}"])
    assert cfg.data == DataConfig(bos=True, weights={"sotu": 1.0, "gcide": 1.0})
    assert cfg.to_dict()["data"] == {"bos": True, "weights": {"sotu": 1.0, "gcide": 1.0}}
    data = Data(cfg.data_dir, 32, 4, DistContext(device=torch.device("cpu")), 0, cfg.data)
    for split in ("train", "val"):  # the fixed first token in training and validation alike
        x, y = data.batch(split, 0)
        assert (x[:, 0] == meta["eot_id"]).all() and torch.equal(x[:, 1:], y[:, :-1])
    assert data.train.sources == ["sotu", "gcide"]
    plain = Data(cfg.data_dir, 32, 4, DistContext(device=torch.device("cpu")), 0)
    assert plain.train.probs is not None  # the directory's default mixture (code capped)
    assert not (plain.batch("train", 0)[0][:, 0] == meta["eot_id"]).all()
    with pytest.raises(ValueError, match="data.colour"):
        load_config(None, ["data.colour=1"])
    with pytest.raises(ValueError, match="data.bos"):
        DataConfig(bos="yes")


def test_global_sampler_bos_and_weights(mixed):
    """The world-size-independent order (FSDP) draws by source weight and fixes the first token too."""
    from tda.data.dataset import split_ranges
    from tda.data.global_batches import GlobalBatchSampler
    d, meta = mixed
    ds = open_split(d, "train", 64)
    ranges = split_ranges(meta, "train")
    w = {"sotu": 0.6, "gcide": 0.3, "gocode": 0.1}
    bos = meta["eot_id"]
    one = GlobalBatchSampler(ds, 8, seed=3, ranges=ranges, weights=w, bos_id=bos, grad_accum=2)
    starts = np.concatenate([one.global_starts(t) for t in range(300)])
    counts = {k: int(((starts >= lo) & (starts + 65 <= hi)).sum()) for k, (lo, hi) in ranges.items()}
    assert sum(counts.values()) == len(starts)
    for k in w:
        assert counts[k] / len(starts) == pytest.approx(w[k], abs=0.02)
    # two ranks x one micro-batch see exactly the windows of one rank x two micro-batches
    r = [GlobalBatchSampler(ds, 8, seed=3, ranges=ranges, weights=w, bos_id=bos, rank=k, world_size=2)
         for k in range(2)]
    for step in (0, 5):
        x1 = torch.cat([one.batch(step, m)[0] for m in range(2)])
        x2 = torch.cat([rk.batch(step)[0] for rk in r])
        assert torch.equal(x1, x2) and (x1[:, 0] == bos).all()
    # one rank, no accumulation: the same windows as the per-rank order
    g = GlobalBatchSampler(ds, 8, seed=3, ranges=ranges, weights=w, bos_id=bos)
    sh = ShardedBatchSampler(ds, 8, seed=3, ranges=ranges, weights=w, bos_id=bos)
    assert torch.equal(g.batch(4)[0], sh.batch(4)[0])


def test_bos_agrees_with_packed_boundaries(mixed):
    """With bos, position 0 holds the eot token, which packing reads as the opener of the document after
    it: every packed segment is then [eot, document tokens ...], the first one included, and the
    boundaries are exactly the eot positions (column 0's forced start changes nothing)."""
    from tda.data.dataset import cu_seqlens_from_starts, document_starts
    from tda.train.config import load_config
    from tda.train.distributed import DistContext
    from tda.train.loop import Data
    d, meta = mixed
    eot = meta["eot_id"]
    cfg = load_config(None, ["data.bos=true", f"data_dir={d}", "pack_documents=true"])
    data = Data(cfg.data_dir, 256, 8, DistContext(device=torch.device("cpu")), 0, cfg.data, pack=(True, True))
    n_inner = 0
    for step in range(4):
        x, y, kw = data.model_batch("train", step)
        starts = document_starts(x, eot)
        assert torch.equal(starts, x == eot)
        docs = kw["docs"]  # the batch's PackedDocuments, built on the host
        cu = docs.cu_seqlens.tolist()
        flat = x.reshape(-1)
        assert all(int(flat[b]) == eot for b in cu[:-1])
        n_inner += int(starts[:, 1:].sum())
        assert (cu, docs.max_seqlen) == (cu_seqlens_from_starts(starts)[0].tolist(), cu_seqlens_from_starts(starts)[1])
        assert int(docs.table[:, 2].sum()) == x.numel() and docs.longest == docs.max_seqlen
    assert n_inner > 0  # windows of 256 tokens cross documents of a few hundred


def test_shard_roundtrip(mixed, tmp_path):
    from tda.data.shard import unpack_shards, write_shard
    d, meta = mixed
    train = np.fromfile(d / "train.bin", dtype=np.uint16)
    parts = []
    for k in range(2):
        m = write_shard(d, tmp_path / f"s{k}", max_bytes=2**20, part=k, val_tokens=4000, long_docs=2,
                        long_min_tokens=100, preset=1, progress=False)
        size = sum(f.stat().st_size for f in (tmp_path / f"s{k}").rglob("*") if f.is_file())
        assert size <= 2**20 and m["shard"]["part"] == k and len(m["long"]) == 2
        assert not (tmp_path / f"s{k}" / "train.bin").exists() and (tmp_path / f"s{k}" / "train.bin.xz").exists()
        parts.append(m)
    # each part's slice of a source is a contiguous piece of that source's range; parts are disjoint
    sl0, sl1 = parts[0]["shard"]["source_slices"], parts[1]["shard"]["source_slices"]
    for s, (lo, hi) in sl0.items():
        rlo, rhi = meta["ranges"]["train"][s]
        assert rlo <= lo < hi <= rhi
        if hi - lo < (rhi - rlo) / 2:
            assert sl1[s][0] >= hi
    out = tmp_path / "unpacked"
    um = unpack_shards([tmp_path / "s0", tmp_path / "s1"], out)
    got = np.fromfile(out / "train.bin", dtype=np.uint16)
    assert um["train_tokens"] == len(got)
    for s, (lo, hi) in um["ranges"]["train"].items():
        want = np.concatenate([train[sl[s][0]:sl[s][1]] for sl in (sl0, sl1) if s in sl])
        assert np.array_equal(got[lo:hi], want)
    longs = load_long_documents(out)
    assert len(longs) == 2 and all(len(e["ids"]) == e["tokens"] for e in longs)
    assert open_split(out, "val", 32).n_tokens == parts[0]["val_tokens"]
    assert unpack_shards([tmp_path / "s0", tmp_path / "s1"], out)["unpacked_from"] == um["unpacked_from"]
    with pytest.raises(ValueError, match="max_bytes"):
        write_shard(d, tmp_path / "tiny", max_bytes=1000)
    with pytest.raises(ValueError, match="shard_dirs"):
        unpack_shards([tmp_path / "s0", tmp_path / "s0"], tmp_path / "x")
    # the shard folder is replaced as a whole and the unpack target rewritten: neither may be other data
    with pytest.raises(ValueError, match="out_dir"):
        write_shard(d, d, max_bytes=2**20, progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="out_dir"):
        write_shard(d, tmp_path / "notes", max_bytes=2**20, progress=False)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="out_dir"):
        unpack_shards([tmp_path / "s0"], d)


def test_cli_shard_and_unpack(mixed, tmp_path, capsys):
    from tda.cli import main
    d, meta = mixed
    assert main(["data", "shard", str(d), "--out", str(tmp_path / "s"), "--max-mib", "1", "--val-tokens", "4000",
                 "--long-docs", "1", "--preset", "1"]) == 0
    out = capsys.readouterr().out
    assert "shard part 0" in out and "code" in out
    assert main(["data", "unpack", str(tmp_path / "s"), "--out", str(tmp_path / "u")]) == 0
    assert "gocode" in capsys.readouterr().out and load_meta(tmp_path / "u")["unpacked_from"]["parts"] == [0]
    assert main(["data", "info", str(d)]) == 0
    out = capsys.readouterr().out
    assert "mix 0.250" in out and "prose + documentation" in out
    # bad values stop before any work, with one line naming the option
    for argv, opt in ((["--preset", "12"], "--preset"), (["--max-mib", "0"], "--max-mib"), (["--part", "-1"], "--part")):
        with pytest.raises(SystemExit) as e:
            main(["data", "shard", str(d), "--out", str(tmp_path / "bad"), *argv])
        assert e.value.code == 2 and opt in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["data", "shard", str(tmp_path / "nothing"), "--out", str(tmp_path / "bad")]) == 2
    assert "tda data shard: error:" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_replicate_configs_match_and_fix_the_first_token():
    from pathlib import Path

    from tda.models.params import count_params
    from tda.train.compare import load_compare_config, variant_config
    from tda.train.config import load_config
    root = Path(__file__).resolve().parents[1] / "configs"
    base, cmp, variants = load_compare_config(root / "replicate.yaml")
    assert {"softmax", "tda", "tra", "diff", "rela", "entmax"} <= {v.name for v in variants}
    assert base.data.bos and base.model.block_size == 1024
    assert base.max_steps * base.batch_size * base.grad_accum * base.model.block_size >= 250_000_000
    ref = count_params(variant_config(base, cmp, variants[0]).model)
    for v in variants:
        assert abs(count_params(variant_config(base, cmp, v).model) / ref - 1) < 0.01, v.name
    for name in ("softmax", "tda"):  # the plain configs are the compare config's variants
        cfg = load_config(root / f"replicate-{name}.yaml")
        want = variant_config(base, cmp, next(v for v in variants if v.name == name))
        assert cfg.model == want.model and cfg.data == base.data and cfg.max_steps == base.max_steps
