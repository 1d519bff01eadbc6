"""KV-cached generation against full forwards: every attention variant, with and without grouped-query heads."""
import importlib.util
import io
import os

import pytest
import torch

from tda.layers import ATTENTION
from tda.models import GPT, GPTConfig, KVCache, sample_loop
from tda.models.generate import sample

VARIANTS = sorted(ATTENTION)


def tiny(attention, n_kv_head=4, seed=0, **kw):
    if attention == "entmax":
        pytest.importorskip("entmax")
    torch.manual_seed(seed)
    # beta 0.3: the TDA/TRA thresholds keep enough survivors that the cache matters at these lengths
    cfg = GPTConfig(vocab_size=61, block_size=48, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32,
                    attention=attention, beta_init=0.3, **kw)
    return GPT(cfg).eval()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("n_kv_head", [4, 2])
@pytest.mark.parametrize("attention", VARIANTS)
def test_cached_logits_match_full_forward(attention, n_kv_head):
    """Two sequences of different prompt lengths in one cache; every decode step's logits equal the full
    forward over the same tokens."""
    model = tiny(attention, n_kv_head)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 61, (n,), generator=g) for n in (17, 24)]
    prompt_lens = [5, 11]
    full = [model(s[None])[0] for s in seqs]
    cache = model.new_cache(2, 40)
    for b, (s, n) in enumerate(zip(seqs, prompt_lens)):
        logits = model(s[None, :n], cache=cache.row(b))[0]
        assert rel(logits, full[b][:n]) < 1e-5
    assert cache.seqlens.tolist() == prompt_lens
    for t in range(12):
        step = torch.stack([s[n + t] for s, n in zip(seqs, prompt_lens)])[:, None]
        logits = model(step, cache=cache)[:, 0]
        for b, n in enumerate(prompt_lens):
            assert rel(logits[b], full[b][n + t]) < 1e-5, (attention, b, t)
    # the cache is what made these equal: the same step without its past gives other logits
    alone = model(step)[:, 0]
    assert rel(alone[1], full[1][prompt_lens[1] + 11]) > 1e-3


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("attention", ["tda", "tra"])
def test_decode_kernels_in_the_model_match_full_forward(attention, static, monkeypatch):
    """The CUDA path of a TDA/TRA decode step, under the interpreter: new keys and values through the append
    kernel, the split-KV kernel, the per-head RMSNorm in its reduction kernel (the layer skips its own), with
    per-sequence lengths and grouped kv heads; every step's logits equal a full forward's."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":  # a GPU machine: the CUDA tests and check_decode.py run it
        pytest.skip("the CPU run of the CUDA decode path needs TRITON_INTERPRET=1")
    from tda.ops.triton import decode
    calls = {"append": 0, "attend": 0}
    real_append, real_attend = decode.append_kv, decode.decode_attention

    def append(*a, **kw):
        calls["append"] += 1
        return real_append(*a, **kw)

    def attend(*a, **kw):
        calls["attend"] += 1
        assert kw.get("norm_weight") is not None  # the head norm goes into the kernel
        return real_attend(*a, **kw)
    monkeypatch.setattr(decode, "append_kv", append)
    monkeypatch.setattr(decode, "decode_attention", attend)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                          attention=attention, beta_init=0.3, attn_backend="triton")).eval()  # head dim 16
    g = torch.Generator().manual_seed(6)
    seqs = [torch.randint(0, 61, (n,), generator=g) for n in (15, 21)]
    prompt_lens = [4, 10]
    with torch.no_grad():
        full = [model(s[None])[0] for s in seqs]
        cache = model.new_cache(2, 40)
        for b, (s, n) in enumerate(zip(seqs, prompt_lens)):
            model(s[None, :n], cache=cache.row(b))
        cache.static = static
        for t in range(6):
            step = torch.stack([s[n + t] for s, n in zip(seqs, prompt_lens)])[:, None]
            logits = model(step, cache=cache)[:, 0]
            for b, n in enumerate(prompt_lens):
                assert rel(logits[b], full[b][n + t]) < 1e-5, (attention, b, t)
    assert calls == {"append": 6 * 2, "attend": 6 * 2}  # every layer of every step


@pytest.mark.parametrize("attention", ["softmax", "gated_softmax", "ssmax"])
def test_equal_length_softmax_decode_runs_sdpa_unmasked(attention, monkeypatch):
    """Equal lengths, one new row each: every row sees the whole cache, so the softmax layers call SDPA with
    no mask and not causal (its unmasked decode kernels, what a user's softmax would run); the logits still
    equal the full forward's. Ragged lengths keep the per-sequence mask."""
    import torch.nn.functional as F
    model = tiny(attention, 2)
    g = torch.Generator().manual_seed(8)
    seqs = torch.randint(0, 61, (2, 14), generator=g)
    full = model(seqs)
    seen = []
    real = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, is_causal=False, **kw):
        seen.append((attn_mask is None, is_causal, q.shape[-2], k.shape[-2]))
        return real(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    cache = model.new_cache(2, 20)
    model(seqs[:, :8], cache=cache)
    for t in range(8, 14):
        logits = model(seqs[:, t:t + 1], cache=cache)[:, 0]
        assert rel(logits, full[:, t]) < 1e-5, t
    decode = [x for x in seen if x[2] == 1]
    assert decode and all(no_mask and not causal for no_mask, causal, _, _ in decode)
    seen.clear()
    ragged = model.new_cache(2, 20)
    for b, n in enumerate((5, 8)):
        model(seqs[b:b + 1, :n], cache=ragged.row(b))
    seen.clear()
    model(seqs[:, 8:9], cache=ragged)
    assert seen and all(not no_mask for no_mask, _, _, _ in seen)


@pytest.mark.parametrize("attention", ["tda", "softmax"])
def test_ragged_decode_step_computes_rope_angles_once(attention, monkeypatch):
    """Sequences of different lengths: the (B,) offsets' RoPE angles are computed once per model call and
    shared by every layer's q and k (the logits are checked against full forwards above)."""
    model = tiny(attention, 2)
    cache = model.new_cache(2, 40)
    for b, n in enumerate((5, 9)):
        model(torch.randint(0, 61, (1, n)), cache=cache.row(b))
    calls = []
    real = torch.Tensor.cos
    monkeypatch.setattr(torch.Tensor, "cos", lambda self: calls.append(1) or real(self))
    model(torch.randint(0, 61, (2, 1)), cache=cache)
    assert len(calls) == 1                      # 2 layers x (q, k) without sharing
    model(torch.randint(0, 61, (2, 1)), cache=cache)
    assert len(calls) == 2                      # a new call computes its own (the offsets moved)
    assert model.rope._shared is None


@pytest.mark.parametrize("attention", VARIANTS)
def test_static_decoding_matches_full_forward_without_host_reads(attention, monkeypatch):
    """cache.static = True (what a CUDA graph of the decode step runs): every layer attends over the whole
    cache with device-side lengths; the step logits equal the full forward's, and no call reads the lengths
    on the host (Tensor.tolist / item would sync a CUDA stream)."""
    model = tiny(attention, 2)
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, 61, (n,), generator=g) for n in (20, 26)]
    prompt_lens = [6, 13]
    full = [model(s[None])[0] for s in seqs]
    cache = model.new_cache(2, 40)
    for b, (s, n) in enumerate(zip(seqs, prompt_lens)):
        model(s[None, :n], cache=cache.row(b))
    cache.static = True
    seqlens = cache.seqlens

    def no_host_read(self, *a, **kw):
        if self is seqlens or self.data_ptr() == seqlens.data_ptr():
            raise AssertionError("static decoding read the cache lengths on the host")
        return real_tolist(self, *a, **kw)
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", no_host_read)
    for t in range(10):
        step = torch.stack([s[n + t] for s, n in zip(seqs, prompt_lens)])[:, None]
        logits = model(step, cache=cache)[:, 0]
        for b, n in enumerate(prompt_lens):
            assert rel(logits[b], full[b][n + t]) < 1e-5, (attention, b, t)
    monkeypatch.undo()
    assert cache.seqlens.tolist() == [n + 10 for n in prompt_lens]


@pytest.mark.parametrize("attention", VARIANTS)
def test_greedy_tokens_equal_uncached_and_per_prompt(attention):
    model = tiny(attention, 2, seed=3)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 61, (n,), generator=g) for n in (9, 1)]
    batched = model.generate(prompts, 10, temperature=0)
    for p, got in zip(prompts, batched):
        alone = model.generate(p[None], 10, temperature=0)[0]
        uncached = model.generate(p[None], 10, temperature=0, use_cache=False)[0]
        assert torch.equal(got, alone) and torch.equal(got, uncached)
        assert torch.equal(got[:len(p)], p) and len(got) == len(p) + 10


def test_tda_cache_holds_unit_keys_and_raw_values():
    model = tiny("tda", 2)
    cache = model.new_cache(1, 20)
    model(torch.randint(0, 61, (1, 7)), cache=cache)
    model(torch.randint(0, 61, (1, 1)), cache=cache)
    layer = cache.layers[0]
    assert set(layer) == {"k1", "k2", "v"} and layer["k1"].shape == (1, 2, 20, 8)
    for name in ("k1", "k2"):
        norms = layer[name][0, :, :8].norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
    assert layer["v"][0, :, :8].norm(dim=-1).std() > 0  # values are kept as they are
    assert cache.bytes_per_token() == 2 * 3 * 2 * 8 * 4  # layers x buffers x heads x dim x fp32


def test_sampling_settings():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    greedy = logits.argmax(-1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample(logits, 1.0, top_k=1, generator=g), greedy)
    assert torch.equal(sample(logits, 1.0, top_p=1e-6, generator=g), greedy)
    # top_p keeps the smallest set of most likely tokens whose probability reaches p
    probs = torch.softmax(logits, -1)
    order = probs.sort(-1, descending=True)
    n_keep = int((order.values[0].cumsum(-1) < 0.5).sum()) + 1
    allowed = set(order.indices[0, :n_keep].tolist())
    drawn = {int(sample(logits, 1.0, top_p=0.5, generator=g)[0]) for _ in range(60)}
    assert drawn <= allowed and len(drawn) > 1
    drawn_k = {int(sample(logits, 1.0, top_k=3, generator=g)[0]) for _ in range(60)}
    assert drawn_k == set(logits[0].topk(3).indices.tolist())


def test_seeded_sampling_is_reproducible_and_cache_matches_uncached():
    model = tiny("tda", 2)
    x = torch.randint(0, 61, (2, 6))
    kw = dict(temperature=0.9, top_k=20, top_p=0.9)
    a = model.generate(x, 12, generator=torch.Generator().manual_seed(5), **kw)
    b = model.generate(x, 12, generator=torch.Generator().manual_seed(5), **kw)
    c = model.generate(x, 12, generator=torch.Generator().manual_seed(5), use_cache=False, **kw)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_eos_stops_each_sequence():
    model = tiny("softmax")
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    free = model.generate(prompts, 10, temperature=0)
    eos = int(free[0][3 + 2])  # the third new token of the first sequence
    out = model.generate(prompts, 10, temperature=0, eos_id=eos)
    first_eos = [(r[len(p):] == eos).nonzero() for r, p in zip(free, prompts)]
    for r, f, p, fe in zip(out, free, prompts, first_eos):
        stop = int(fe[0]) + 1 if len(fe) else 10
        assert torch.equal(r, f[:len(p) + stop])
    as_tensor = model.generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), 10, temperature=0, eos_id=eos)
    row = as_tensor[0, 3:]
    k = int((row == eos).nonzero()[0])
    assert (row[k:] == eos).all()


def test_bad_input_names_the_problem():
    model = tiny("tda")
    x = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="max_new_tokens=46 .* exceed the 48"):
        model.generate(x, 46)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(x, 2, top_p=0.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(x, 2, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(x, 2, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(x, 2, top_k=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        model.generate([[1, 2], []], 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(x, 0)
    cache = model.new_cache(2, 16)
    with pytest.raises(ValueError, match="batch size 2"):
        model(x, cache=cache)
    with pytest.raises(ValueError, match="batch size 2"):
        model.generate(x, 2, cache=cache)
    with pytest.raises(ValueError, match="allocate a longer cache"):
        model(torch.zeros(2, 17, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cache's 16 positions"):
        model.generate(torch.zeros(2, 3, dtype=torch.long), 4, cache=cache, max_seqlen=20)
    # a preallocated cache is reset and reused
    y1 = model.generate(torch.ones(2, 3, dtype=torch.long), 4, temperature=0, cache=cache)
    y2 = model.generate(torch.ones(2, 3, dtype=torch.long), 4, temperature=0, cache=cache)
    assert torch.equal(y1, y2)


def test_max_seqlen_extends_past_block_size():
    model = tiny("tda")
    x = torch.randint(0, 61, (1, 40))
    y = model.generate(x, 20, temperature=0, max_seqlen=60)
    assert y.shape == (1, 60)
    cache = KVCache.for_model(model, 1, 60)
    assert cache.max_seqlen == 60 and cache.dtype == torch.float32


class _CharTokenizer:
    eot_id = 0

    def encode(self, s):
        return [ord(c) % 61 for c in s]

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_sample_loop_streams_and_reports_tokens_per_second():
    model = tiny("tda").train()
    out, err = io.StringIO(), io.StringIO()
    texts = sample_loop(model, _CharTokenizer(), "hi", max_new_tokens=7, temperature=0, top_k=None,
                        num_samples=2, out=out, err=err)
    assert model.training  # mode restored
    assert len(texts) == 2 and texts[0] == texts[1] and len(texts[0]) == 2 + 7
    assert out.getvalue().count("--- sample") == 2 and texts[0] in out.getvalue()
    assert err.getvalue().count("tokens/s") == 2 and "7 tokens in" in err.getvalue()


def test_bench_generate_smoke(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_generate

    out = tmp_path / "gen.json"
    res = bench_generate.main(["--device", "cpu", "--smoke", "--variants", "tda,softmax", "--batch", "1,2",
                               "--prompt", "5", "--new", "3", "--repeats", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [(r["variant"], r["batch"]) for r in saved["rows"]] == [("tda", 1), ("tda", 2), ("softmax", 1),
                                                                   ("softmax", 2)]
    assert all(r["tokens_per_s"] > 0 for r in res["rows"])
    # TDA keeps two unit-key views and v: 3/2 of softmax's k, v
    assert saved["cache_bytes_per_token"]["tda"] * 2 == saved["cache_bytes_per_token"]["softmax"] * 3
    installed = {a for a in ATTENTION if a != "entmax" or importlib.util.find_spec("entmax") is not None}
    assert set(saved["cache_bytes_per_token"]) == installed  # every variant whose package is installed


def test_bench_generate_profile_steps_smoke(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_generate

    bench_generate.main(["--device", "cpu", "--smoke", "--variants", "tda", "--batch", "1", "--prompt", "5",
                         "--new", "2", "--repeats", "1", "--profile-steps", "2"])
    out = capsys.readouterr().out
    assert "2 eager decode steps" in out and "tottime" in out and "Self CPU" in out


def test_host_decode_step_runs_the_real_wrappers(monkeypatch):
    """The host benchmark stubs only the Triton launches: TDA's decode steps go through the decode entry and
    the kernels' Python wrappers (append, split, reduce: three launches per layer and step)."""
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    from tda.ops import kvcache
    from tda.ops.triton import decode, launch_cache

    for mod, name in ((launch_cache.FastKernel, "_launch"), (decode, "unsupported_reason"),
                      (kvcache, "_decode_kernel")):
        monkeypatch.setattr(mod, name, getattr(mod, name))  # restored after the test
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import host_decode_step

    seen = []
    key_only = host_decode_step._key_only
    monkeypatch.setattr(host_decode_step, "_key_only", lambda self, grid, args, kw: seen.append(self.fn.__name__)
                        or key_only(self, grid, args, kw))
    res = host_decode_step.main(["--layers", "2", "--steps", "2", "--repeats", "1"])
    assert set(res) == {"softmax", "tda"} and all(v > 0 for v in res.values())
    assert {"decode_append_kernel", "decode_split_kernel", "decode_reduce_kernel"} <= set(seen)


def test_sample_loop_slides_past_the_context_without_the_cache():
    model = tiny("softmax")
    out, err = io.StringIO(), io.StringIO()
    texts = sample_loop(model, _CharTokenizer(), "", max_new_tokens=60, temperature=0, top_k=None, out=out,
                        err=err)
    assert len(texts[0]) == 60 and "without the KV cache" in err.getvalue()
    with pytest.raises(ValueError, match="use_cache=False"):
        model.generate(torch.zeros(1, 1, dtype=torch.long), 60)


def test_cuda_graph_needs_cuda_and_the_cache():
    model = tiny("tda", 2)
    ids = torch.randint(0, 61, (1, 4))
    if not torch.cuda.is_available():
        for n in (1, 3):
            with pytest.raises(ValueError, match="cuda_graph=True needs the model and its KV cache on a CUDA device"):
                model.generate(ids, n, temperature=0, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True needs use_cache=True"):
        model.generate(ids, 3, temperature=0, cuda_graph=True, use_cache=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (graph capture)")
@pytest.mark.parametrize("attention", ["tda", "tra", "softmax"])
def test_cuda_graph_gives_the_eager_tokens(attention):
    model = tiny(attention, 2).cuda()
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 61, (n,), generator=g).cuda() for n in (7, 12)]
    eager = model.generate(prompts, 16, temperature=0)
    graphed = model.generate(prompts, 16, temperature=0, cuda_graph=True)
    for a, b in zip(eager, graphed):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (graph capture)")
def test_sample_loop_cuda_graph_streams_the_eager_text():
    model = tiny("tda", 2).cuda()
    texts = [sample_loop(model, _CharTokenizer(), "hi", max_new_tokens=9, temperature=0, top_k=None,
                         cuda_graph=graph, out=io.StringIO(), err=io.StringIO())[0] for graph in (False, True)]
    assert texts[0] == texts[1] and len(texts[0]) == 2 + 9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (graph capture)")
def test_cuda_graph_refuses_a_cache_without_room_for_its_warm_up():
    from tda.models.generate import GraphedDecodeStep, prefill
    model = tiny("tda", 2).cuda()
    cache = model.new_cache(1, 12)
    prefill(model, cache, [torch.arange(11, device="cuda")])
    with pytest.raises(ValueError, match="needs 2 free positions"):
        GraphedDecodeStep(model, cache)


@pytest.mark.parametrize("attention", ["tda", "softmax"])
def test_gpu_generation_check_runs_on_the_cpu(attention):
    """benchmarks/check_generate_cuda.py's precision criterion (cached error within twice the full forward's
    error against float64) and greedy check, on a small CPU configuration in fp32 and bf16."""
    mod = _check_generate_module()
    for dtype in (torch.float32, torch.bfloat16):
        diff, ratio, same, graph = mod.check(attention, dtype, device="cpu", steps=6, sizes=(64, 40, 50, 20, 31))
        assert 0 < ratio <= 1.0 and same and graph is None, (dtype, diff, ratio)


def _check_generate_module():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "check_generate_cuda.py"
    spec = importlib.util.spec_from_file_location("check_generate_cuda", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_generation_check_tells_a_near_tie_from_a_fault():
    """Where greedy tokens with and without the cache part, the check passes the step only if the cached
    logits there are within the precision bound: a faithful cache gives "tie at N", a cache path whose
    logits are off gives False."""
    import copy
    mod = _check_generate_module()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, block_size=48, n_layer=2, n_head=4, n_embd=64, attention="tda")).eval()
    model = model.to(torch.bfloat16)
    x = torch.randint(0, 61, (1, 10))
    eager = model.generate(x, 8, temperature=0)
    plain = eager.clone()
    plain[0, 14] = (plain[0, 14] + 1) % 61          # the paths "part" at decode step 4
    assert mod._near_tie(model, copy.deepcopy(model).double(), x, eager, plain).startswith("tie at 4")

    class FaultyCache(torch.nn.Module):  # the same model, with noise on every cached call's logits
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.new_cache = inner.new_cache

        def forward(self, ids, cache=None):
            out = self.inner(ids, cache=cache)
            return out if cache is None else out + 0.5 * out.abs().max() * torch.randn_like(out)

    faulty = FaultyCache(model)
    assert mod._near_tie(faulty, copy.deepcopy(model).double(), x, eager, plain) is False
