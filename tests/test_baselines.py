"""Baseline attention layers: each against a naive per-formula implementation, plus causality, gradient
flow and parameter matching for every registered variant."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tda.models.config import GPTConfig
from tda.layers import ATTENTION, RotaryEmbedding, build_attention
from tda.layers.diff import lambda_init_fn
from tda.models.params import count_params, matched_config
from tda.models.gpt import GPT

B, N = 2, 11


def make(attention, **kw):
    cfg = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, attention=attention)
    cfg.update(kw)
    c = GPTConfig(**cfg)
    torch.manual_seed(0)
    layer = build_attention(c, layer_idx=1)
    rope = RotaryEmbedding(c.head_dim)
    x = torch.randn(B, N, c.n_embd)
    return c, layer, rope, x


def heads(t, h, d):
    return t.view(B, N, h, d).transpose(1, 2)


def mask(n=N):
    return torch.ones(n, n, dtype=torch.bool).tril()


def softmax_probs(q, k):
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return F.softmax(s.masked_fill(~mask(), float("-inf")), -1)


def rms(x, w, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def proj_qkv(layer, rope, x, H, Hk, D):
    q = rope(heads(layer.q_proj(x), H, D))
    k, v = heads(layer.kv_proj(x), 2 * Hk, D).chunk(2, dim=1)
    g = H // Hk
    return q, rope(k).repeat_interleave(g, 1), v.repeat_interleave(g, 1)


def merge(t):
    return t.transpose(1, 2).reshape(B, N, -1)


@pytest.mark.parametrize("kv", [4, 2])
def test_gated_softmax_matches_manual(kv):
    c, layer, rope, x = make("gated_softmax", n_kv_head=kv)
    D = c.head_dim
    q, k, v = proj_qkv(layer, rope, x, 4, kv, D)
    o = softmax_probs(q, k) @ v
    gate = torch.sigmoid(heads(layer.gate_proj(x), 4, D))
    ref = layer.c_proj(merge(o * gate))
    layer.record_weights = True
    torch.testing.assert_close(layer(x, rope), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.last_weights, softmax_probs(q, k), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kv", [4, 1])
def test_rela_matches_manual(kv):
    c, layer, rope, x = make("rela", n_kv_head=kv)
    D = c.head_dim
    q, k, v = proj_qkv(layer, rope, x, 4, kv, D)
    a = torch.relu(q @ k.transpose(-1, -2) / math.sqrt(D)) * mask()
    z = merge(a @ v)
    ref = layer.c_proj(rms(z, layer.norm.weight) * torch.sigmoid(layer.gate * z))
    layer.record_weights = True
    torch.testing.assert_close(layer(x, rope), ref, atol=1e-5, rtol=1e-4)
    w = layer.last_weights
    torch.testing.assert_close(w, a)
    assert (w == 0).float().mean() > 0.5   # ReLU + causal mask: exact zeros


def test_rela_switched_off_row_is_zero_not_nan():
    c, layer, rope, x = make("rela")
    with torch.no_grad():
        layer.q_proj.weight.zero_()        # every score 0 -> ReLU 0 -> all rows empty
    out = layer(x, rope)
    assert torch.isfinite(out).all() and out.abs().max() == 0


@pytest.mark.parametrize("kv,layer_idx", [(4, 0), (2, 3)])
def test_diff_matches_manual(kv, layer_idx):
    c = GPTConfig(vocab_size=97, block_size=32, n_layer=4, n_head=4, n_kv_head=kv, n_embd=32, attention="diff")
    torch.manual_seed(0)
    layer = build_attention(c, layer_idx)
    with torch.no_grad():
        layer.q_proj.weight.mul_(20)     # peaked maps, so p1 - lam * p2 has negative entries
    rope, x = RotaryEmbedding(c.head_dim), torch.randn(B, N, c.n_embd)
    D, Hd, Hkd = c.head_dim, 2, kv // 2
    q1, q2 = rope(heads(layer.q_proj(x), 2 * Hd, D)).chunk(2, 1)
    k1, k2, va, vb = heads(layer.kv_proj(x), 4 * Hkd, D).chunk(4, 1)
    g = Hd // Hkd
    k1, k2 = rope(k1).repeat_interleave(g, 1), rope(k2).repeat_interleave(g, 1)
    v = torch.cat([va, vb], -1).repeat_interleave(g, 1)                   # (B, Hd, N, 2D)
    lam_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)                     # paper: l - 1 with l 1-based
    assert layer.lambda_init == pytest.approx(lam_init) == lambda_init_fn(layer_idx)
    lam = (torch.exp(torch.dot(layer.lambda_q1, layer.lambda_k1))
           - torch.exp(torch.dot(layer.lambda_q2, layer.lambda_k2)) + lam_init)
    w = softmax_probs(q1, k1) - lam * softmax_probs(q2, k2)
    y = rms((w @ v).transpose(1, 2), layer.head_norm.weight) * (1 - lam_init)   # (B, N, Hd, 2D)
    ref = layer.c_proj(y.reshape(B, N, -1))
    layer.record_weights = True
    torch.testing.assert_close(layer(x, rope), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.last_weights, w.detach(), atol=1e-6, rtol=1e-5)
    assert (layer.last_weights < 0).any()                                 # signed weights


def test_diff_parameter_alignment_and_bad_heads():
    c = GPTConfig(vocab_size=97, n_layer=1, n_head=4, n_embd=32)
    sm = build_attention(dataclasses.replace(c, attention="softmax"))
    df = build_attention(dataclasses.replace(c, attention="diff"))
    proj = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.endswith("proj.weight"))
    assert proj(sm) == proj(df)          # paper: half the heads, v twice as wide -> same projections
    with pytest.raises(ValueError, match="n_head"):
        build_attention(GPTConfig(vocab_size=97, n_layer=1, n_head=3, n_embd=24, attention="diff"))
    with pytest.raises(ValueError, match="n_kv_head"):
        build_attention(GPTConfig(vocab_size=97, n_layer=1, n_head=4, n_kv_head=1, n_embd=32, attention="diff"))


@pytest.mark.parametrize("offset", [0, 5])
def test_ssmax_matches_manual(offset):
    c, layer, rope, x = make("ssmax", n_kv_head=2)
    with torch.no_grad():
        layer.s.copy_(torch.tensor([0.3, 0.5, 1.0, 2.0]))
    D = c.head_dim
    q = rope(heads(layer.q_proj(x), 4, D), offset)
    k, v = heads(layer.kv_proj(x), 4, D).chunk(2, dim=1)
    k, v = rope(k, offset).repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    n = torch.arange(offset + 1, offset + N + 1, dtype=torch.float32)     # keys visible (absolute)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(D) * (layer.s[:, None, None] * n.log()[:, None])
    p = F.softmax(s.masked_fill(~mask(), float("-inf")), -1)
    ref = layer.c_proj(merge(p @ v))
    layer.record_weights = True
    torch.testing.assert_close(layer(x, rope, offset), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.last_weights, p, atol=1e-6, rtol=1e-5)


def test_entmax_rows_sum_to_one_with_exact_zeros():
    entmax15 = pytest.importorskip("entmax").entmax15
    c, layer, rope, x = make("entmax", n_kv_head=2)
    with torch.no_grad():
        layer.q_proj.weight.mul_(30)     # peaked scores -> sparse rows
    layer.record_weights = True
    out = layer(x, rope)
    p = layer.last_weights
    torch.testing.assert_close(p.sum(-1), torch.ones(B, 4, N))
    assert (p[..., ~mask()] == 0).all()                  # causal
    assert (p[..., mask()] == 0).any()                   # exact zeros among visible keys
    # each row equals entmax15 applied to its visible scores alone
    D = c.head_dim
    q, k, v = proj_qkv(layer, rope, x, 4, 2, D)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    for i in (0, 3, N - 1):
        torch.testing.assert_close(p[..., i, : i + 1], entmax15(s[..., i, : i + 1], dim=-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, layer.c_proj(merge(p @ v)), atol=1e-5, rtol=1e-4)


def test_entmax_missing_package_error(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **kw):
        if name == "entmax":
            raise ImportError("no entmax")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="pip install"):
        make("entmax")


@pytest.mark.parametrize("attention", sorted(ATTENTION))
@pytest.mark.parametrize("kv", [4, 2])
def test_causal_every_variant(attention, kv):
    c, layer, rope, x = make(attention, n_kv_head=kv, attn_backend="reference")
    layer.eval()
    out = layer(x, rope)
    assert out.shape == x.shape and torch.isfinite(out).all()
    x2 = x.clone()
    x2[:, 6:] = torch.randn_like(x2[:, 6:]) * 3
    out2 = layer(x2, rope)
    torch.testing.assert_close(out2[:, :6], out[:, :6], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out2[:, 6:], out[:, 6:])


@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_record_weights_shape(attention):
    c, layer, rope, x = make(attention, attn_backend="reference")
    layer.record_weights = True
    layer(x, rope)
    w = layer.last_weights
    assert w is not None and w.dim() == 4 and w.shape[0] == B and w.shape[-2:] == (N, N)
    assert not w.requires_grad
    assert (w[..., ~mask()] == 0).all()


@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_gradients_reach_every_parameter(attention):
    c = GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=4, n_embd=32, attention=attention,
                  attn_backend="reference")
    torch.manual_seed(0)
    model = GPT(c)
    idx = torch.randint(0, 61, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{attention}: no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"{attention}: non-finite gradient for {name}"
        assert p.grad.abs().sum() > 0, f"{attention}: zero gradient for {name}"


@pytest.mark.parametrize("attention", sorted(ATTENTION))
@pytest.mark.parametrize("size", ["tiny", "gpu"])
def test_parameter_matching_within_one_percent(attention, size):
    if size == "tiny":
        c = GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=64)
    else:
        c = GPTConfig(vocab_size=50304, block_size=1024, n_layer=8, n_head=8, n_embd=512)
    ref = count_params(dataclasses.replace(c, attention="softmax"))
    m = matched_config(c, attention, multiple_of=8 if size == "gpu" else 1)
    assert m.attention == attention
    assert abs(count_params(m) / ref - 1) < 0.01
