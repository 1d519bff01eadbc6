"""The fused RoPE kernel (tda.ops.triton.rope) against RoPE written as torch ops, forward and gradient, on
strided head views as the layers pass them. On a CPU it runs under TRITON_INTERPRET=1 (conftest.py)."""
import os

import pytest
import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
rope_k = pytest.importorskip("tda.ops.triton.rope")

from conftest import has_ptxas, run_compiled, torch_rope  # noqa: E402
from tda.layers.common import RotaryEmbedding, split_heads  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("B,H,N,D,offset", [(2, 3, 37, 16, 0), (1, 2, 5, 8, 11), (2, 1, 64, 32, 3)])
def test_rope_kernel_matches_torch(dtype, B, H, N, D, offset):
    g = torch.Generator().manual_seed(N + D)
    rope = RotaryEmbedding(D, 500.0, 1.0, 128).to(DEV)
    cos, sin = rope._cos_sin(offset + N, DEV, dtype)
    cos, sin = cos[offset:offset + N], sin[offset:offset + N]
    # a transposed head view of a projection's output, as split_heads makes it
    proj = torch.randn(B, N, H * D, generator=g, dtype=torch.float64).to(DEV, dtype)
    x = split_heads(proj, H, D).detach().requires_grad_(True)
    assert (H == 1 or not x.is_contiguous()) and rope_k.supported(x, cos, sin)
    y = rope_k.rope(x, cos, sin)
    assert y.stride() == x.stride()  # the view's layout kept
    xd = x.detach().double().requires_grad_(True)
    ref = torch_rope(xd, cos.double(), sin.double())
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(DEV, dtype)
    y.backward(dy)
    ref.backward(dy.double())
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=tol, atol=tol)
    # the gradient in the view's layout too, though dy is contiguous (autograd.grad: no AccumulateGrad re-layout)
    assert dy.is_contiguous() and torch.autograd.grad(rope_k.rope(x, cos, sin), x, dy)[0].stride() == x.stride()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rope_kernel_with_positions_matches_gathered_tables(dtype):
    """Per-token positions (packed documents restarting at 0): each row rotated by its own table row, forward
    and gradient, against the torch expression over gathered tables; tables longer than N are fine."""
    g = torch.Generator().manual_seed(3)
    B, H, N, D = 2, 3, 40, 16
    rope = RotaryEmbedding(D, 500.0, 1.0, 128).to(DEV)
    cos, sin = rope._cos_sin(64, DEV, dtype)
    positions = torch.cat([torch.cat([torch.arange(n) for n in lens]) for lens in ([7, 1, 32], [40])])
    positions = positions.view(B, N).to(DEV)
    proj = torch.randn(B, N, H * D, generator=g, dtype=torch.float64).to(DEV, dtype)
    x = split_heads(proj, H, D).detach().requires_grad_(True)
    assert rope_k.supported(x, cos, sin, positions) and not rope_k.supported(x, cos, sin)
    y = rope_k.rope(x, cos, sin, positions)
    xd = x.detach().double().requires_grad_(True)
    ref = torch_rope(xd, cos.double()[positions][:, None], sin.double()[positions][:, None])
    tol = {torch.float64: 1e-12, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(DEV, dtype)
    y.backward(dy)
    ref.backward(dy.double())
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=tol, atol=tol)
    assert not torch.allclose(y.double(), torch_rope(xd, cos.double()[:N], sin.double()[:N]))  # positions matter
    assert not rope_k.supported(x, cos, sin, positions[:, :5])


def test_rope_kernel_support_and_layer_dispatch(monkeypatch):
    cos, sin = torch.ones(4, 12), torch.zeros(4, 12)
    assert not rope_k.supported(torch.randn(1, 1, 4, 12), cos, sin)  # D not a power of two
    x = torch.randn(1, 2, 4, 16)
    # the layer takes the kernel on CUDA only (CPU tensors: the torch expression)
    calls = []
    monkeypatch.setattr(rope_k, "rope", lambda x, c, s, pos=None: calls.append(1) or torch_rope(
        x, *((c, s) if pos is None else (c[pos][:, None], s[pos][:, None]))))
    rope = RotaryEmbedding(16, 10000.0, 1.0, 32).to(DEV)
    rope(x.to(DEV), 2)
    rope(x.to(DEV), positions=torch.tensor([[0, 1, 0, 1]], device=DEV))  # packed documents too
    assert len(calls) == (2 if DEV == "cuda" else 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rope_kernel_takes_gapped_and_expanded_views(dtype):
    """Views that are not dense: softmax's k (half of the heads of one k|v projection, as SoftmaxAttention.qkv
    splits it) and a broadcast one. Read in place, rotated into a dense tensor in the view's order of dims,
    forward and gradient equal to the torch expression; paired with a dense q in one launch."""
    g = torch.Generator().manual_seed(11)
    B, N, H, D = 2, 19, 3, 16
    cos, sin = (t[:N] for t in RotaryEmbedding(D, 500.0, 1.0, 64).to(DEV)._cos_sin(N, DEV, dtype))
    kv = torch.randn(B, N, 2 * H * D, generator=g, dtype=dtype).to(DEV).requires_grad_()
    k, _ = split_heads(kv, 2 * H, D).chunk(2, dim=1)
    assert not rope_k._dense(k) and rope_k.supported(k, cos, sin)
    y = rope_k.rope(k, cos, sin)
    assert y.stride() == (N * H * D, D, H * D, 1)  # (B, N, H, D) memory, as k's own view orders it
    ref = torch_rope(k.double(), cos.double(), sin.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)
    dy = torch.randn(y.shape, generator=g, dtype=dtype).to(DEV)
    got, = torch.autograd.grad(y, kv, dy)
    want, = torch.autograd.grad(ref, kv, dy.double())
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-6, atol=1e-6)
    assert got[..., H * D:].abs().max() == 0  # v's half of the projection gets nothing from k's rotation
    q = split_heads(torch.randn(B, N, 2 * H * D, generator=g, dtype=dtype).to(DEV), 2 * H, D).requires_grad_()
    yq, yk = rope_k.rope_pair(q, k, cos, sin)
    assert torch.equal(yk, y) and torch.equal(yq, rope_k.rope(q, cos, sin))
    e = torch.randn(1, 1, N, D, generator=g, dtype=dtype).to(DEV).expand(B, H, N, D)  # stride 0 over b, h
    assert rope_k.supported(e, cos, sin)
    ye = rope_k.rope(e, cos, sin)
    assert ye.is_contiguous()  # broadcast dims outermost: rows of D stay unit-stride
    torch.testing.assert_close(ye.double(), torch_rope(e.double(), cos.double(), sin.double()), rtol=1e-6, atol=1e-6)


def test_rope_kernel_compiles_for_sm90():
    """The kernel lowers for sm_90 (H100/H200) through Triton's bundled ptxas, both directions, bf16 and fp64,
    with and without per-token positions, one tensor or a pair (a subprocess with TRITON_INTERPRET unset: the
    interpreter compiles nothing)."""
    if not has_ptxas():
        pytest.skip("this Triton build ships no ptxas")
    code = ("import json\n"
            "from tda.ops.triton.sm90 import compile_kernel\n"
            "from tda.ops.triton.rope import _rope_kernel\n"
            "n = 0\n"
            "for sign in (1.0, -1.0):\n"
            "    for f64 in (False, True):\n"
            "        for pos in (False, True):\n"
            "            for two in (False, True):\n"
            "                meta = dict(SIGN=sign, HALF=32, BLOCK_N=32, F64=f64, HAS_POS=pos, TWO=two)\n"
            "                k = compile_kernel(_rope_kernel, meta, 4, 1, dtype='fp64' if f64 else 'bf16')\n"
            "                n += 'st.global' in k.asm['ptx']\n"
            "print('RESULT ' + json.dumps(n))\n")
    assert run_compiled(code, timeout=300) == 16


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_positions", [False, True])
def test_rope_pair_equals_two_single_launches(dtype, with_positions):
    """rope_pair (q and k of other head counts, strided head views, one launch each way) gives exactly what
    two rope calls give, forward and both gradients, the gradients in the inputs' layouts."""
    g = torch.Generator().manual_seed(7)
    B, N, D = 2, 21, 16
    cos, sin = RotaryEmbedding(D, 500.0, 1.0, 64).to(DEV)._cos_sin(64, DEV, dtype)
    if not with_positions:
        cos, sin = cos[:N], sin[:N]
    q = torch.randn(B, N, 6, D, generator=g, dtype=dtype).to(DEV).transpose(1, 2).requires_grad_()
    k = torch.randn(B, N, 2, D, generator=g, dtype=dtype).to(DEV).transpose(1, 2).requires_grad_()
    pos = torch.randint(0, 64, (B, N), generator=g).to(DEV) if with_positions else None
    yq, yk = rope_k.rope_pair(q, k, cos, sin, pos)
    rq, rk = rope_k.rope(q, cos, sin, pos), rope_k.rope(k, cos, sin, pos)
    assert torch.equal(yq, rq) and torch.equal(yk, rk)
    dq_out, dk_out = torch.randn_like(yq), torch.randn_like(yk)
    got = torch.autograd.grad((yq * dq_out).sum() + (yk * dk_out).sum(), (q, k))
    want = torch.autograd.grad((rq * dq_out).sum() + (rk * dk_out).sum(), (q, k))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert got[0].stride() == q.stride() and got[1].stride() == k.stride()
    ref = torch_rope(k.detach().double(), *((cos.double(), sin.double()) if pos is None else
                                             (cos.double()[pos][:, None], sin.double()[pos][:, None])))
    torch.testing.assert_close(yk.double(), ref, rtol=1e-6, atol=1e-6)


def test_rope_pair_layer_dispatch(monkeypatch):
    """RotaryEmbedding.pair: one fused launch on CUDA for q and k (int offsets or positions); two plain calls
    elsewhere, with the same numbers."""
    calls = []
    real = rope_k.rope_pair
    monkeypatch.setattr(rope_k, "rope_pair", lambda *a: calls.append(1) or real(*a))
    rope = RotaryEmbedding(16, 10000.0, 1.0, 32).to(DEV)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 5, 4, 16, generator=g).to(DEV).transpose(1, 2)
    k = torch.randn(2, 5, 2, 16, generator=g).to(DEV).transpose(1, 2)
    pos = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]], device=DEV)
    for off, p in ((3, None), (0, pos)):
        yq, yk = rope.pair(q, k, off, p)
        torch.testing.assert_close(yq, rope(q, off, p), rtol=0, atol=0)
        torch.testing.assert_close(yk, rope(k, off, p), rtol=0, atol=0)
    assert len(calls) == (2 if DEV == "cuda" else 0)


def test_kernels_refuse_batch_times_heads_past_the_grid():
    """Batch x heads beyond CUDA's 65,535 on a grid's second axis: RoPE (single and paired), the fused
    projection and the per-head RMSNorm say unsupported, so the layers take their torch paths."""
    from tda.ops.triton import project_rope, rms_norm
    cos, sin = torch.ones(1, 8, device=DEV), torch.zeros(1, 8, device=DEV)
    one, two = torch.randn(33000, 1, 1, 8, device=DEV), torch.randn(33000, 2, 1, 8, device=DEV)
    assert rope_k.supported(one, cos, sin) and not rope_k.supported(two, cos, sin)
    assert not rope_k.pair_supported(one, one, cos, sin) and rope_k.pair_supported(one[:2], one[:2], cos, sin)
    h, w = torch.randn(33000, 1, 16, device=DEV), torch.randn(3 * 8, 16, device=DEV)
    assert project_rope.supported(h[:100], w, (1, 1, 1), 8, cos, sin)
    assert not project_rope.supported(h, w, (1, 1, 1), 8, cos, sin)
    heads, gain = torch.randn(33000, 1, 2, 8, device=DEV), torch.ones(2, 8, device=DEV)
    assert rms_norm.supported(heads[:100], gain) and not rms_norm.supported(heads, gain)
    rows, g = torch.randn(70000, 1, 8, device=DEV), torch.ones(8, device=DEV)  # (A, N, D), a gain over D: A rows
    assert not rms_norm.supported(rows, g) and rms_norm.supported(rows[:100], g)
    assert rms_norm.supported(torch.randn(70000, 2, 8, device=DEV), gain)  # (N, H, D) per head: H on the grid
