"""Tests of tda.eval: every metric on hand-built weights with a known answer, the survivor theory against
its bounds, passkey prompts, extrapolation on a tiny model, and `tda analyze` end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tda.models.config import GPTConfig
from tda.eval import attention_stats as S
from tda.eval import survivors as V
from tda.eval.extrapolation import extrapolation_perplexity
from tda.eval.passkey import FILLER, build_prompt, is_correct, parse_answer, passkey_accuracy, units_for_length
from tda.models import GPT


class ByteTokenizer:
    """Bytes as tokens (vocab 257, eot 256): enough for prompts and decoding in tests."""
    eot_id = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def tiny_model(attention="tda", block_size=32, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=257, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                         attention=attention)).eval()


def uniform_causal(B, H, N):
    i = torch.arange(N)
    return torch.tril(torch.ones(N, N)) / (i[:, None] + 1.0) * torch.ones(B, H, 1, 1)


# --- sparsity ---------------------------------------------------------------------------------------


def test_exact_zero_fraction_known_pattern():
    N = 8
    w = torch.tril(torch.ones(1, 2, N, N))
    w[0, 0].fill_diagonal_(0)                # head 0: the N diagonal entries are zero
    w[0, 1] = torch.tril(torch.ones(N, N)) * -0.5   # head 1: none are
    causal = N * (N + 1) / 2
    assert S.exact_zero_fraction_of(w) == pytest.approx(N / (2 * causal))
    st = S.stats_from_weights([w])
    assert st.zero_frac[0, 0].item() == pytest.approx(N / causal)
    assert st.zero_frac[0, 1].item() == 0.0
    # row i of head 0 has one zero among i + 1 entries; averaged over the two heads
    i = torch.arange(N, dtype=torch.float64)
    torch.testing.assert_close(st.zero_frac_pos, 0.5 / (i + 1))
    # upper-triangle zeros never count
    w_full = torch.ones(1, 1, N, N)
    assert S.exact_zero_fraction_of(w_full.tril()) == 0.0


# --- sinks --------------------------------------------------------------------------------------------


def test_hand_built_sink_gives_full_sink_share():
    B, H, N = 2, 3, 16
    w = torch.zeros(B, H, N, N)
    w[..., 0] = 1.0                          # every row puts all its mass on the first token
    st = S.stats_from_weights([w, w])
    torch.testing.assert_close(st.alpha_1, torch.ones(2, H, dtype=torch.float64))
    assert st.sink_share() == 1.0
    torch.testing.assert_close(S.sink_alpha(w), torch.ones(B, H))
    assert st.summary()["first_token_sink_ratio"] > 3


def test_silent_heads_abstain_in_at_least_99_percent_of_rows():
    """A head silent in every row counts, one with a live row in 1 of 200 counts (99.5% zero rows), one with
    3 live rows of 200 (98.5%) does not, and a dense head does not."""
    N = 200
    w = torch.zeros(1, 4, N, N)
    w[0, 1, 50, 3] = 0.7
    w[0, 2, [10, 60, 120], 0] = 1.0
    w[0, 3] = uniform_causal(1, 1, N)[0, 0]
    st = S.stats_from_weights([w])
    torch.testing.assert_close(st.zero_row_frac[0], torch.tensor([1.0, 199 / 200, 197 / 200, 0.0], dtype=torch.float64))
    assert st.summary()["silent_head_fraction"] == pytest.approx(2 / 4)


def test_uniform_weights_first_token_share_is_one_over_i_plus_one():
    B, H, N = 1, 2, 64
    w = uniform_causal(B, H, N)
    share = S.first_token_share(w)
    i = torch.arange(N, dtype=torch.float32)
    torch.testing.assert_close(share, 1.0 / (i + 1))
    st = S.stats_from_weights([w])
    torch.testing.assert_close(st.first_share_pos, 1.0 / (i.double() + 1))
    assert st.summary()["first_token_sink_ratio"] == pytest.approx(1.0)
    assert st.sink_share() == 0.0
    # α_1 of uniform weights: mean over rows of 1/(i+1) = H_N / N
    harmonic = sum(1.0 / k for k in range(1, N + 1))
    torch.testing.assert_close(st.alpha_1, torch.full((1, H), harmonic / N, dtype=torch.float64))


def test_signed_weights_are_normalised_by_abs_mass_and_zero_rows_skipped():
    N = 4
    w = torch.zeros(1, 1, N, N)
    w[0, 0, 1, 0], w[0, 0, 1, 1] = -0.3, 0.1     # row 1: |.| mass 0.4, first-token share 0.75
    w[0, 0, 3, 0], w[0, 0, 3, 2] = 0.2, -0.2     # row 3: share 0.5; rows 0 and 2 are all zero
    st = S.stats_from_weights([w])
    assert st.signed
    assert st.zero_row_frac.item() == pytest.approx(0.5)
    assert st.alpha_1.item() == pytest.approx((0.75 + 0.5) / 2)
    assert math.isnan(st.first_share_pos[0]) and math.isnan(st.first_share_pos[2])
    assert st.first_share_pos[1].item() == pytest.approx(0.75)
    assert st.entropy_pos[3].item() == pytest.approx(math.log(2))
    # baseline over the same rows: (1/2 + 1/4) / 2
    assert st.uniform_first_token_share_mean() == pytest.approx(0.375)
    assert math.isnan(S.row_entropy(w)[0, 0, 0])


# --- dispersion ----------------------------------------------------------------------------------------


def test_one_hot_diagonal_has_zero_entropy_and_full_top1_mass():
    N = 32
    w = torch.eye(N).expand(1, 2, N, N)
    assert S.row_entropy(w).abs().max().item() == 0.0
    torch.testing.assert_close(S.topk_mass(w, 1), torch.ones(1, 2, N))
    st = S.stats_from_weights([w], topk=(1, 4))
    assert st.entropy.abs().max().item() == 0.0
    assert st.topk[1].min().item() == pytest.approx(1.0)


def test_uniform_rows_entropy_is_log_i_plus_one_and_chunking_is_exact():
    N = 50
    w = uniform_causal(1, 1, N)
    i = torch.arange(N, dtype=torch.float32)
    torch.testing.assert_close(S.row_entropy(w)[0, 0], torch.log(i + 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S.topk_mass(w, 4)[0, 0], torch.clamp(4 / (i + 1), max=1.0))
    a = S.stats_from_weights([w], row_chunk=7)
    b = S.stats_from_weights([w], row_chunk=1000)
    torch.testing.assert_close(a.entropy, b.entropy)
    torch.testing.assert_close(a.entropy_pos, torch.log(i.double() + 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["tda", "softmax"])
def test_hook_path_matches_materialised_weights(attention):
    m = tiny_model(attention)
    ids = torch.randint(0, 257, (3, 40), generator=torch.Generator().manual_seed(1))
    hooked = S.collect_attention_stats(m, ids, batch_size=2, row_chunk=16)
    m.record_attention(True)
    m(ids)
    ref = S.stats_from_weights(m.attention_weights())
    m.record_attention(False)
    for name in ("zero_frac", "alpha_1", "entropy", "zero_row_frac", "first_share_pos"):
        torch.testing.assert_close(getattr(hooked, name), getattr(ref, name), equal_nan=True)
    assert all(b.attn.last_weights is None for b in m.blocks)   # nothing left behind
    if attention == "tda":
        assert hooked.signed and hooked.exact_zero_fraction > 0.5
    else:
        assert not hooked.signed and hooked.exact_zero_fraction == 0.0


# --- survivor theory ---------------------------------------------------------------------------------


def test_cosine_tail_matches_quadrature_and_cap_bound():
    t = np.linspace(0.0, 0.8, 9)
    for d in (4, 16, 64, 128):
        exact = V.cosine_tail(t, d)
        quad = V._cosine_tail_quad(t, d)
        np.testing.assert_allclose(quad, exact, rtol=1e-4, atol=1e-12)
        assert np.all(exact <= np.exp(-d * t * t / 2) + 1e-15)
    assert V.cosine_tail(0.0, 64) == pytest.approx(0.5)


def test_exact_expectations_obey_theorems_4_3_and_4_6():
    """Thm 4.3: E[S_i] <= κ^{β²}(i+1)^{1−β²}; Thm 4.6: E[C_i] <= κ^{2β²}(i+1)^{1−2β²} (exact Beta law)."""
    pos = V.default_positions(65535)
    for d in (16, 64, 128):
        for beta in (0.8, 1.0, 1.5):
            for kappa in (1.0, 4.0):
                es, ec = V.expected_survivors(pos, d, beta, kappa), V.expected_consensus(pos, d, beta, kappa)
                assert np.all(es <= V.survivor_bound(pos, beta, kappa) * (1 + 1e-9))
                assert np.all(ec <= V.consensus_bound(pos, beta, kappa) * (1 + 1e-9))
    # κ-level at β = 1 and consensus decaying at least like κ²/(i+1)
    es = V.expected_survivors(pos, 64)
    assert es.max() <= 1.0 and es[-1] < 0.02
    ec = V.expected_consensus(pos, 64)
    assert np.all(ec * (pos + 1) <= 1.0 + 1e-9)


def test_direct_monte_carlo_matches_exact_expectation_and_bound():
    """Direct simulation of random unit vectors: the measured means lie within 4 standard errors
    (+0.02) of the exact expectation, and below the Theorem 4.3 / 4.6 bounds plus the same slack."""
    pos = np.array([0, 3, 15, 63, 255, 1023])
    d, trials = 16, 300
    for kappa in (1.0, 4.0):
        r = V.simulate_direct(pos, d, 1.0, kappa, trials=trials, seed=1)
        es, ec = V.expected_survivors(pos, d, 1.0, kappa), V.expected_consensus(pos, d, 1.0, kappa)
        tol_s = 4 * np.maximum(r["single_sem"], np.sqrt(es / trials)) + 0.02
        tol_c = 4 * np.maximum(r["consensus_sem"], np.sqrt(ec / trials)) + 0.02
        assert np.all(np.abs(r["single_mean"] - es) <= tol_s), (r["single_mean"], es)
        assert np.all(np.abs(r["consensus_mean"] - ec) <= tol_c), (r["consensus_mean"], ec)
        assert np.all(r["single_mean"] <= V.survivor_bound(pos, 1.0, kappa) + tol_s)
        assert np.all(r["consensus_mean"] <= V.consensus_bound(pos, 1.0, kappa) + tol_c)


def test_binomial_sampler_at_64k_within_tolerance():
    pos = V.default_positions(65535)
    r = V.simulate_binomial(pos, 64, 1.0, 1.0, trials=4000, seed=0)
    es = V.expected_survivors(pos, 64)
    assert np.all(np.abs(r["single_mean"] - es) <= 5 * np.sqrt(np.maximum(es, 1e-4) / 4000) + 1e-3)
    assert np.all(r["single_mean"] <= 1.0 + 0.05)                # κ = 1 level
    assert r["consensus_mean"][-1] <= 1.0 / 65536 + 5e-3          # κ²/(i+1) at i = 65535


# --- passkey -----------------------------------------------------------------------------------------


def test_passkey_prompt_places_needle_at_depth():
    p = build_prompt(40, ["12345"], [0.25])
    before, after = p.text.split("The pass key is 12345.")
    assert before.count(FILLER) == 10 and after.count(FILLER) == 30
    assert p.text.endswith("What is the pass key? The pass key is")
    assert p.answer == "12345"
    for depth, units in ((0.0, 0), (1.0, 40), (0.5, 20)):
        q = build_prompt(40, ["777"], [depth])
        assert q.text.split("The pass key is 777.")[0].count(FILLER) == units
    multi = build_prompt(20, ["111", "222", "333"], [0.1, 0.5, 0.9], query=1)
    assert multi.answer == "222"
    assert multi.text.endswith("What is the pass key number 2? The pass key number 2 is")
    assert multi.text.index("number 1 is 111") < multi.text.index("number 2 is 222") < multi.text.index("number 3 is 333")
    with pytest.raises(ValueError, match="depths"):
        build_prompt(10, ["1"], [1.5])


def test_passkey_answer_parser_is_exact_match():
    assert parse_answer(" 12345. Remember") == "12345"
    assert is_correct(" 12345.", "12345")
    assert not is_correct(" 123456", "12345")
    assert not is_correct(" 1234", "12345")
    assert not is_correct(" no idea", "12345")
    assert not is_correct(" the key 12345", "12345")      # the answer must come first
    assert parse_answer("none") is None


def test_units_for_length_fits_the_budget():
    tok = ByteTokenizer()
    u = units_for_length(tok, 1000)
    assert len(tok.encode(build_prompt(u, ["12345"], [0.5]).text)) <= 1000
    assert len(tok.encode(build_prompt(u + 1, ["12345"], [0.5]).text)) > 1000


def test_passkey_accuracy_runs_on_tiny_model():
    m, tok = tiny_model("softmax"), ByteTokenizer()
    r = passkey_accuracy(m, tok, [400], trials=2, max_new_tokens=3)
    assert r["lengths"] == [400] and len(r["per_trial"][0]) == 2
    assert 0.0 <= r["accuracy"][0] <= 1.0
    assert all(row["n_tokens"] <= 400 for row in r["per_trial"][0])


# --- extrapolation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["tda", "softmax"])
def test_extrapolation_perplexity_is_finite(attention):
    m = tiny_model(attention, block_size=16)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 257, (300,), generator=g).tolist() for _ in range(2)]
    for ntk in (False, True):
        r = extrapolation_perplexity(m, docs, 16, factors=(1, 2, 4, 8), rope_scaling=ntk, max_windows=2)
        assert [x["length"] for x in r["results"]] == [16, 32, 64, 128]
        for x in r["results"]:
            assert x["n_windows"] >= 1 and math.isfinite(x["ppl"]) and math.isfinite(x["ppl_tail"])
            assert 1.0 < x["ppl"] < 1e4
    assert float(m.rope.inv_freq[1]) == pytest.approx(1.0 / 10000 ** (2 / 16))   # scaling restored
    r = extrapolation_perplexity(m, [[1, 2, 3]], 16, factors=(1,))
    assert r["results"][0]["n_windows"] == 0


# --- tda analyze end to end ----------------------------------------------------------------------------


def _save_ckpt(path, model, tok):
    from tda.train.checkpoint import save_checkpoint
    save_checkpoint({"model": model.state_dict(), "model_config": model.config.to_dict(),
                     "tokenizer": tok.to_dict()}, path)


def test_analyze_end_to_end(tmp_path):
    pytest.importorskip("tokenizers")  # the bundled BPE needs it
    from tda.data import load_tokenizer
    from tda.cli import main

    tok = load_tokenizer("bundled")
    for att in ("tda", "softmax"):
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=len(tok), block_size=32, n_layer=2, n_head=2, n_embd=32, attention=att))
        _save_ckpt(tmp_path / f"{att}.pt", m, tok)
    text = tmp_path / "text.txt"
    text.write_text(" ".join([FILLER] * 40))
    out = tmp_path / "report"
    rc = main(["analyze", str(tmp_path / "tda.pt"), str(tmp_path / "softmax.pt"), "--names", "TDA", "softmax",
               "--out", str(out), "--text", str(text), "--max-len", "128", "--lengths", "64", "128",
               "--map-len", "16"])
    assert rc == 0
    md = (out / "report.md").read_text()
    assert "| exact zeros (causal entries) |" in md and "TDA" in md and "softmax" in md
    for f in ("sparsity_heatmap.png", "sink_alpha1_heatmap.png", "first_token_share.png",
              "entropy_vs_length.png", "attention_maps_TDA.png", "attention_maps_softmax.png"):
        assert (out / f).stat().st_size > 1000, f
        assert f in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["softmax"]["main"]["exact_zero_fraction"] == 0.0
    assert summary["TDA"]["main"]["exact_zero_fraction"] > 0.5
    assert set(summary["TDA"]["lengths"]) == {"32", "64", "128"}
    assert summary["softmax"]["main"]["silent_head_fraction"] == 0.0
    assert "| silent heads (all-zero in >= 99% of rows) | " in md


def test_passkey_early_stop_never_changes_the_verdict():
    from tda.eval.passkey import _stop_when_decided
    tok = ByteTokenizer()
    stop = _stop_when_decided(tok, "12345")
    assert not stop(tok.encode(" 123"))          # still a prefix of the answer
    assert stop(tok.encode(" 124"))              # diverged: wrong whatever follows
    assert stop(tok.encode(" 12345."))           # complete
    assert not stop(tok.encode(" 12345"))        # might still grow into 123456
    assert stop(tok.encode(" t"))                # not a number: already wrong
    assert not stop(tok.encode("  "))


def test_multi_needle_passkey_runs_and_asks_for_one_key():
    m, tok = tiny_model("tda"), ByteTokenizer()
    r = passkey_accuracy(m, tok, [500], trials=2, n_needles=3, max_new_tokens=2, seed=3)
    assert r["n_needles"] == 3 and len(r["per_trial"][0]) == 2
    for row in r["per_trial"][0]:
        assert len(row["answer"]) == 5 and row["n_tokens"] <= 500


# --- a fixed first token (checkpoints trained with data.bos) --------------------------------------------


def test_bos_id_comes_from_the_stored_train_config():
    from tda.eval.bos import bos_id_of
    tok = ByteTokenizer()
    assert bos_id_of(None, tok) is None and bos_id_of({}, tok) is None
    assert bos_id_of({"data": {"bos": False}}, tok) is None
    assert bos_id_of({"data": {"bos": True}}, tok) == 256
    with pytest.raises(ValueError, match="bos"):
        bos_id_of({"data": {"bos": True}}, None)


def _old_make_windows(docs, L, n):
    """The windows of a model trained without a first token: L+1 consecutive document tokens."""
    out = []
    for doc in docs:
        for s in range(0, len(doc) - L, L + 1):
            if len(out) < n and len(doc[s:s + L + 1]) == L + 1:
                out.append(list(doc[s:s + L + 1]))
    return out


def test_window_builders_put_bos_first_only_when_asked():
    from tda.eval.extrapolation import make_windows
    from tda.eval.report import _windows
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (70, 9, 45)]
    assert make_windows(docs, 16, 5) == _old_make_windows(docs, 16, 5)
    wins = make_windows(docs, 16, 5, bos_id=256)
    assert len(wins) == 5 and all(len(w) == 17 and w[0] == 256 for w in wins)
    # targets are consecutive, non-overlapping document chunks of L tokens
    assert [w[1:] for w in wins] == [docs[0][s:s + 16] for s in (0, 16, 32, 48)] + [docs[2][:16]]
    stream = torch.randint(0, 256, (100,), generator=g).tolist()
    plain = _windows(stream, 20, 3)
    assert plain.tolist() == [stream[s:s + 20] for s in np.linspace(0, 80, 3).round().astype(int)]
    w = _windows(stream, 20, 3, bos_id=256)
    assert w.shape == (3, 20) and (w[:, 0] == 256).all()
    assert torch.equal(w[:, 1:], _windows(stream, 19, 3))


def _tiny_ckpt(tmp_path, tok, bos):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=len(tok), block_size=32, n_layer=2, n_head=2, n_embd=32, attention="tda"))
    from tda.train.checkpoint import save_checkpoint
    ck = {"model": m.state_dict(), "model_config": m.config.to_dict(), "tokenizer": tok.to_dict()}
    if bos is not None:
        ck["train_config"] = {"data": {"bos": bos}, "seed": 0}
    path = tmp_path / f"bos-{bos}.pt"
    save_checkpoint(ck, path)
    return path


@pytest.mark.parametrize("bos", [True, False, None])
def test_analyze_and_eval_windows_follow_the_checkpoint(tmp_path, monkeypatch, bos):
    pytest.importorskip("tokenizers")
    from tda.data import load_tokenizer
    from tda.eval import extrapolation, passkey, report, tasks
    from tda.eval.analyze import AnalyzeSettings, analyze_checkpoints

    tok = load_tokenizer("bundled")
    eot = tok.eot_id
    path = _tiny_ckpt(tmp_path, tok, bos)
    seen = {"stats": [], "maps": [], "nll": [], "passkey": []}
    real_stats, real_maps, real_nll, real_decode = (report.collect_attention_stats, report.attention_maps,
                                                     extrapolation.window_nll, passkey.greedy_decode)
    monkeypatch.setattr(report, "collect_attention_stats",
                        lambda m, x, **k: seen["stats"].append(x.tolist()) or real_stats(m, x, **k))
    monkeypatch.setattr(report, "attention_maps", lambda m, x: seen["maps"].append(x.tolist()) or real_maps(m, x))
    monkeypatch.setattr(extrapolation, "window_nll", lambda m, w: seen["nll"].append(list(w)) or real_nll(m, w))
    monkeypatch.setattr(passkey, "greedy_decode",
                        lambda m, ids, n, stop=None: seen["passkey"].append(list(ids)) or real_decode(m, ids, n, stop))
    text = tmp_path / "text.txt"
    text.write_text(" ".join([FILLER] * 20))
    ids = tok.encode(text.read_text())
    analyze_checkpoints([path], tmp_path / "an", AnalyzeSettings(text=str(text), max_len=32, lengths=(16,),
                                                                   n_seqs=2, map_len=8))
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, len(tok), (200,), generator=g).tolist()]  # no eot inside
    monkeypatch.setattr(tasks, "long_document_tokens", lambda t, d=None: (docs, "synthetic"))
    res = json.loads(tasks.evaluate_checkpoint(path, tmp_path / "ev", tasks.EvalSettings(
        lengths=(128,), trials=1, rope_scaling="none", max_windows=2)).read_text())
    assert seen["stats"] and seen["maps"] and seen["nll"] and seen["passkey"]
    windows = [w for batch in seen["stats"] + seen["maps"] for w in batch] + seen["nll"] + seen["passkey"]
    if bos:
        assert res["bos_id"] == eot
        assert all(w[0] == eot for w in windows)
        assert seen["stats"][0][0] == [eot] + ids[:31] and seen["maps"][0] == [[eot] + ids[:7]]
        assert seen["nll"][0] == [eot] + docs[0][:128]
        assert tok.decode(seen["passkey"][0][1:]).startswith(passkey.PREFIX) and len(seen["passkey"][0]) <= 128
    else:  # as before: windows are plain text / document tokens
        assert res["bos_id"] is None
        assert seen["stats"][0][0] == ids[:32] and seen["maps"][0] == [ids[:8]]
        assert seen["nll"][0] == docs[0][:129]
        assert tok.decode(seen["passkey"][0]).startswith(passkey.PREFIX) and len(seen["passkey"][0]) <= 128


# --- passkey fine-tune (the length-generalisation form of the test) ------------------------------------


@pytest.mark.parametrize("bos_id", [None, 256])
def test_passkey_batch_targets_only_the_answer(bos_id):
    import random
    from tda.eval.passkey_finetune import passkey_batch
    tok = ByteTokenizer()
    L = 400
    units = units_for_length(tok, L - 4 - (bos_id is not None))
    x, y = passkey_batch(tok, units, L, 3, random.Random(0), bos_id=bos_id, pad_id=256)
    assert x.shape == y.shape == (3, L)
    for b in range(3):
        hit = (y[b] != -1).nonzero().flatten()
        answer = tok.decode(y[b, hit].tolist())
        assert len(answer) == 6 and answer[0] == " " and answer[1:].isdigit()
        assert (hit == torch.arange(int(hit[0]), int(hit[0]) + 6)).all()         # one contiguous answer
        text = tok.decode(x[b, : int(hit[0]) + 1].tolist())
        assert text.endswith("The pass key is") and f"The pass key is{answer}." in text  # the needle's key
        assert (x[b, int(hit[0]) + 1 + 5:] == 256).all()                          # padding after it
        assert (x[b, 0] == 256) == (bos_id is not None)


def test_passkey_finetune_lowers_the_answer_loss_and_leaves_eval_mode():
    from tda.eval.passkey_finetune import FinetuneSettings, finetune_passkey
    m, tok = tiny_model("tda", block_size=320), ByteTokenizer()
    before = [p.detach().clone() for p in m.parameters()]
    curve = finetune_passkey(m, tok, FinetuneSettings(steps=40, batch_size=4, lr=3e-3, warmup=5), log=lambda s: None)
    assert [s for s, _ in curve] == list(range(1, 41))
    first, last = np.mean([v for _, v in curve[:5]]), np.mean([v for _, v in curve[-5:]])
    assert last < first - 1.0, (first, last)          # at least: answers are digits, not any byte
    assert not m.training
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    with pytest.raises(ValueError, match="steps"):
        FinetuneSettings(steps=0)
    with pytest.raises(ValueError, match="exceeds"):
        finetune_passkey(m, tok, FinetuneSettings(steps=1, length=640))
    short = tiny_model("tda", block_size=64)       # the byte prompt without filler is ~250 tokens
    with pytest.raises(ValueError, match="--passkey-finetune: a passkey prompt needs at least"):
        finetune_passkey(short, tok, FinetuneSettings(steps=1))


def test_eval_passkey_finetune_end_to_end(tmp_path):
    pytest.importorskip("tokenizers")
    from tda.cli import main
    from tda.data import load_tokenizer
    from tda.eval.claims import passkey_at

    tok = load_tokenizer("bundled")
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=len(tok), block_size=128, n_layer=2, n_head=2, n_embd=32, attention="tda"))
    _save_ckpt(tmp_path / "m.pt", m, tok)
    before = (tmp_path / "m.pt").read_bytes()
    out = tmp_path / "ev"
    rc = main(["eval", str(tmp_path / "m.pt"), "--task", "passkey", "--out", str(out), "--lengths", "128", "256",
               "--trials", "2", "--rope-scaling", "none", "--passkey-finetune", "3", "--finetune-batch", "2"])
    assert rc == 0
    res = json.loads((out / "eval_passkey.json").read_text())
    ft = res["passkey_finetuned"]
    assert ft["finetune"]["steps"] == 3 and len(ft["finetune"]["loss_curve"]) == 3
    assert ft["runs"]["needles=1"]["lengths"] == [128, 256] == res["passkey"]["runs"]["needles=1"]["lengths"]
    assert (out / "passkey_accuracy.png").is_file() and (out / "passkey_finetuned_accuracy.png").is_file()
    assert (tmp_path / "m.pt").read_bytes() == before                  # the checkpoint is never written
    assert passkey_at(res, 256, section="passkey_finetuned") == (round(ft["runs"]["needles=1"]["accuracy"][1] * 2), 2)
    with pytest.raises(SystemExit):  # argparse names the flag: "--passkey-finetune: must be >= 0"
        main(["eval", str(tmp_path / "m.pt"), "--out", str(out), "--passkey-finetune", "-1"])
