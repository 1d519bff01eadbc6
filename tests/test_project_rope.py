"""The fused q/k/v projection with RoPE (tda.ops.triton.project_rope) against three nn.Linear projections and
RoPE as torch ops: outputs and the gradients of x, the weight and the bias, with grouped kv heads, per-token
positions and bf16 autocast; and TDA's layer, whose views it computes on eager CUDA. On a CPU the RoPE kernel
runs under TRITON_INTERPRET=1 (conftest.py)."""
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
pr = pytest.importorskip("tda.ops.triton.project_rope")

from conftest import torch_rope  # noqa: E402
from tda.layers.common import RotaryEmbedding, split_heads  # noqa: E402
from tda.layers.tda import TDAAttention  # noqa: E402
from tda.models import GPTConfig  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _reference(x, w, b, heads, D, cos, sin):
    """Three projections, split heads, RoPE on q and k as torch ops (cos / sin broadcastable to (B, H, N, D))."""
    hq, hk, hv = heads
    y = F.linear(x, w, b)
    q, k, v = y.split([hq * D, hk * D, hv * D], dim=-1)
    return (torch_rope(split_heads(q, hq, D), cos, sin), torch_rope(split_heads(k, hk, D), cos, sin),
            split_heads(v, hv, D))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("heads,D,with_positions", [((4, 2, 1), 16, False), ((2, 2, 2), 8, True),
                                                     ((6, 6, 3), 32, False)])
def test_project_rope_matches_separate_projections(bias, heads, D, with_positions):
    """fp64 and fp32: (q, k, v) and the gradients of x, weight and bias equal the torch composition's."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        g = torch.Generator().manual_seed(sum(heads) * D)
        B, N, C = 2, 19, 24
        x = torch.randn(B, N, C, generator=g, dtype=dtype).to(DEV).requires_grad_(True)
        w = (torch.randn(sum(heads) * D, C, generator=g, dtype=dtype) / C ** 0.5).to(DEV).requires_grad_(True)
        b = torch.randn(sum(heads) * D, generator=g, dtype=dtype).to(DEV).requires_grad_(True) if bias else None
        rope = RotaryEmbedding(D, 500.0, 1.0, 64).to(DEV)
        pos = torch.randint(0, 40, (B, N), generator=g).to(DEV) if with_positions else None
        cos, sin = rope._tables(N, 0 if with_positions else 5, pos, DEV, dtype)
        if not with_positions:
            assert pr.supported(x, w, heads, D, cos, sin)
        got = pr.project_rope(x, w, b, heads, D, cos, sin, pos)
        tc, ts = (cos[pos][:, None], sin[pos][:, None]) if with_positions else (cos, sin)
        want = _reference(x, w, b, heads, D, tc, ts)
        for a, r in zip(got, want):
            assert a.shape == r.shape and a.dtype == dtype
            torch.testing.assert_close(a, r, rtol=tol, atol=tol)
        outs = [torch.randn(r.shape, generator=g, dtype=dtype).to(DEV) for r in want]
        params = [x, w] + ([b] if bias else [])
        ga = torch.autograd.grad(sum((a * o).sum() for a, o in zip(got, outs)), params)
        gr = torch.autograd.grad(sum((r * o).sum() for r, o in zip(want, outs)), params)
        for a, r in zip(ga, gr):
            torch.testing.assert_close(a, r, rtol=tol, atol=tol)


def test_project_rope_under_bf16_autocast():
    """Under bf16 autocast the GEMM runs in bf16 as nn.Linear's would (the outputs in bf16), and the gradients
    come back in the fp32 parameters' and input's dtypes, close to the autocast torch composition's."""
    g = torch.Generator().manual_seed(1)
    B, N, C, D, heads = 2, 12, 32, 16, (4, 4, 2)
    x = torch.randn(B, N, C, generator=g).to(DEV).requires_grad_(True)
    w = (torch.randn(sum(heads) * D, C, generator=g) / C ** 0.5).to(DEV).requires_grad_(True)
    rope = RotaryEmbedding(D, 500.0, 1.0, 64).to(DEV)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        cos, sin = rope._tables(N, 0, None, DEV, pr.compute_dtype(x, w))
        assert cos.dtype == torch.bfloat16 and pr.supported(x, w, heads, D, cos, sin)
        got = pr.project_rope(x, w, None, heads, D, cos, sin)
        want = _reference(x, w, None, heads, D, cos, sin)
    assert all(t.dtype == torch.bfloat16 for t in got)
    for a, r in zip(got, want):
        torch.testing.assert_close(a.float(), r.float(), rtol=2e-2, atol=2e-2)
    outs = [torch.randn(r.shape, generator=g).to(DEV) for r in want]
    ga = torch.autograd.grad(sum((a.float() * o).sum() for a, o in zip(got, outs)), (x, w))
    gr = torch.autograd.grad(sum((r.float() * o).sum() for r, o in zip(want, outs)), (x, w))
    assert ga[0].dtype == ga[1].dtype == torch.float32
    # against fp64 truth, the fused gradients' error is at most the autocast composition's (bf16 rounding)
    x64, w64 = x.detach().double().requires_grad_(True), w.detach().double().requires_grad_(True)
    ref = _reference(x64, w64, None, heads, D, cos.double(), sin.double())
    g64 = torch.autograd.grad(sum((r * o.double()).sum() for r, o in zip(ref, outs)), (x64, w64))
    for a, r, t in zip(ga, gr, g64):
        err = lambda u: float((u.double() - t).abs().max() / t.abs().max())  # noqa: E731
        assert err(a) <= 2 * err(r) + 1e-3, (err(a), err(r))


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_tda_layer_views_equal_the_fused_projection(n_kv_head):
    """TDA's layer: the fused projection over its three Linear layers gives the views its unfused path gives
    (what eager CUDA runs against what the CPU runs), gradients of every projection parameter included."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=4, n_kv_head=n_kv_head, n_embd=32,
                    attention="tda", bias=True)
    layer = TDAAttention(cfg).to(DEV).double()
    rope = RotaryEmbedding(cfg.head_dim, 500.0, 1.0, 64).to(DEV)
    x = torch.randn(2, 20, 32, dtype=torch.float64, device=DEV)
    qs, ks, v = _unfused_views(layer, x, rope, 3)
    projs = (layer.q_proj, layer.k_proj, layer.v_proj)
    w = torch.cat([p.weight for p in projs])
    b = torch.cat([p.bias for p in projs])
    heads = (2 * cfg.n_head, 2 * n_kv_head, n_kv_head)
    cos, sin = rope._tables(20, 3, None, DEV, torch.float64)
    q, k, fv = pr.project_rope(x, w, b, heads, cfg.head_dim, cos, sin)
    got = list(q.chunk(2, dim=1)) + list(k.chunk(2, dim=1)) + [fv]
    want = list(qs) + list(ks) + [v]
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    params = [p for m in projs for p in (m.weight, m.bias)]
    ga = torch.autograd.grad(sum(t.square().sum() for t in got), params)
    gr = torch.autograd.grad(sum(t.square().sum() for t in want), params)
    for a, r in zip(ga, gr):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def _unfused_views(layer, x, rope, offset):
    """The layer's views with the fused path refused (what a CPU tensor gets)."""
    real = rope.project
    rope.project = lambda *a, **k: None
    try:
        return layer._views(x, rope, offset)
    finally:
        rope.project = real


def test_layer_dispatch(monkeypatch):
    """TDA's layer takes the fused projection on eager CUDA (int offsets, packed positions) and not for a (B,)
    offsets tensor (batched decoding) or on a CPU."""
    calls = []
    real = pr.project_rope
    monkeypatch.setattr(pr, "project_rope", lambda *a: calls.append(1) or real(*a))
    cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32, attention="tda")
    layer = TDAAttention(cfg).to(DEV)
    rope = RotaryEmbedding(cfg.head_dim, 500.0, 1.0, 64).to(DEV)
    x = torch.randn(2, 8, 32, device=DEV)
    layer._views(x, rope, 0)
    layer._views(x, rope, 0, None)
    layer._views(x, rope, torch.tensor([0, 3], device=DEV))
    assert len(calls) == (2 if DEV == "cuda" else 0)


@pytest.mark.parametrize("attention", ["tda", "softmax", "gated_softmax", "ssmax"])
@pytest.mark.parametrize("packed", [False, True])
def test_model_with_fused_projection_matches_plain(monkeypatch, packed, attention):
    """A whole model (loss and every parameter's gradient) with its layers' q, k, v from the fused projection
    equals the plain path, plain windows and packed documents (per-token positions): what eager CUDA training
    runs, here with the device test lifted so the interpreter runs the kernel. TDA projects q1|q2, k1|k2 and v
    from three Linears, the softmax family q and k|v from two."""
    from tda.models import GPT
    from tda.ops.varlen import PackedDocuments

    calls = []

    def project_anywhere(self, x, linears, heads, position_offset=0, positions=None):
        calls.append(positions is not None)
        weight = torch.cat([lin.weight for lin in linears])
        cos, sin = self._tables(x.shape[1], position_offset, positions, x.device, pr.compute_dtype(x, weight))
        assert pr.supported(x, weight, heads, self.head_dim, cos, sin, positions)
        return pr.project_rope(x, weight, None, heads, self.head_dim, cos, sin, positions)

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=61, block_size=24, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, attention=attention)
    model = GPT(cfg).to(DEV).double()
    x = torch.randint(0, 61, (2, 24), device=DEV)
    kw = {}
    if packed:
        cu = torch.tensor([0, 10, 24, 31, 48], dtype=torch.int32, device=DEV)
        kw["docs"] = PackedDocuments.build(cu, 17, 2, 24, DEV)
    _, plain = model(x, x, **kw)
    want = torch.autograd.grad(plain, list(model.parameters()))
    monkeypatch.setattr(RotaryEmbedding, "project", project_anywhere)
    _, loss = model(x, x, **kw)
    got = torch.autograd.grad(loss, list(model.parameters()))
    assert calls == [packed] * cfg.n_layer
    torch.testing.assert_close(loss, plain, rtol=1e-10, atol=1e-10)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_hooked_or_replaced_projections_keep_their_forward(monkeypatch):
    """The fused projection reads the three Linears' weights and never calls them, so it must not take a layer
    whose projection has a forward hook or is not a plain nn.Linear (a LoRA adapter, a quantized Linear): that
    forward would be skipped. Such a layer projects through its modules, the others stay fused; the same for
    the chunked loss and a hooked or replaced LM head. Device test lifted: the interpreter runs the kernel."""
    import tda.layers.common as common
    from tda.models import GPT

    monkeypatch.setattr(common, "_eager_cuda_rows", lambda x, offset, positions: not isinstance(offset, torch.Tensor))
    calls = []
    real = pr.project_rope
    monkeypatch.setattr(pr, "project_rope", lambda *a: calls.append(1) or real(*a))

    class Scaled(torch.nn.Linear):  # an nn.Linear subclass with its own forward, as adapters have
        def forward(self, x):
            return 1.5 * super().forward(x)

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=61, block_size=16, n_layer=3, n_head=2, n_embd=32, attention="tda")
    model = GPT(cfg).to(DEV).double()
    x = torch.randint(0, 61, (2, 16), device=DEV)
    bump = lambda mod, inp, out: out + 0.25  # noqa: E731
    model.blocks[0].attn.q_proj.register_forward_hook(bump)
    old = model.blocks[1].attn.v_proj
    model.blocks[1].attn.v_proj = Scaled(old.in_features, old.out_features, bias=False).to(DEV).double()
    model.blocks[1].attn.v_proj.weight.data.copy_(old.weight)
    model.lm_head.register_forward_hook(lambda mod, inp, out: out * 0.5)

    # the reference: every module called (the fused paths refused outright)
    monkeypatch.setattr(RotaryEmbedding, "project", lambda *a, **k: None)
    logits = model(x)
    want = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 61), x.reshape(-1))  # as GPT's plain loss
    monkeypatch.undo()
    monkeypatch.setattr(common, "_eager_cuda_rows", lambda x, offset, positions: not isinstance(offset, torch.Tensor))
    monkeypatch.setattr(pr, "project_rope", lambda *a: calls.append(1) or real(*a))
    _, loss = model(x, x, return_logits=False)
    assert len(calls) == 1  # only the third block's plain Linears go fused
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
