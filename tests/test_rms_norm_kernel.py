"""The fused RMSNorm kernel (tda.ops.triton.rms_norm) against RMSNorm written as torch ops in fp64, forward
and both gradients: the model's norms (a gain over the last dim) and TDA's per-head norm on the transposed
view the layer passes. On a CPU it runs under TRITON_INTERPRET=1 (conftest.py)."""
import os

import pytest
import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
norm_k = pytest.importorskip("tda.ops.triton.rms_norm")

from conftest import has_ptxas, run_compiled  # noqa: E402
from tda.layers.common import RMSNorm  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _ref(x, w, eps):
    """fp64 RMSNorm over the last dim, gain broadcast over the leading dims."""
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def _check(x, w, eps, dtype):
    g = torch.Generator().manual_seed(x.numel())
    xd = x.detach().double().requires_grad_(True)
    wd = w.detach().double().requires_grad_(True)
    assert norm_k.supported(x, w)
    y = norm_k.rms_norm(x, w, eps)
    assert y.dtype == x.dtype and y.is_contiguous() and y.shape == x.shape
    ref = _ref(xd, wd, eps)
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(DEV, dtype)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    rdx, rdw = torch.autograd.grad(ref, (xd, wd), dy.double())
    torch.testing.assert_close(dx.double(), rdx, rtol=tol, atol=tol)
    # the gain's gradient sums over every row: its error grows with the row count
    torch.testing.assert_close(dw.double(), rdw, rtol=tol, atol=tol * x[..., 0].numel() ** 0.5)
    assert dx.stride() == x.stride() and dw.shape == w.shape and dw.dtype == w.dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 37, 48), (53, 64), (1, 3, 256)])
def test_rms_norm_kernel_matches_torch(dtype, shape):
    """A gain (D,) over the last dim of (B, N, D) and (R, D) inputs; D need not be a power of two."""
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 3).to(DEV, dtype).requires_grad_(True)
    w = (1 + 0.5 * torch.randn(shape[-1], generator=g)).to(DEV).requires_grad_(True)
    _check(x, w, 1e-6, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,H,N,D", [(2, 3, 37, 16), (1, 2, 70, 64), (3, 1, 5, 8)])
def test_per_head_rms_norm_kernel_matches_torch(dtype, B, H, N, D):
    """A gain (H, D) on the (B, N, H, D) transposed view of an attention output (B, H, N, D), as TDA's layer
    passes it; the output comes out contiguous (ready for the output projection's reshape) and the gradient in
    the view's layout. Rows of very different scales, and an all-zero row, which stays zero."""
    g = torch.Generator().manual_seed(B * N + D)
    o = torch.randn(B, H, N, D, generator=g) * torch.logspace(-4, 1, N)[:, None]
    o[0, 0, 1] = 0.0
    x = o.to(DEV, dtype).transpose(1, 2).requires_grad_(True)
    assert not x.is_contiguous() or H == 1
    w = (1 + 0.5 * torch.randn(H, D, generator=g)).to(DEV).requires_grad_(True)
    _check(x, w, 1e-4, dtype)
    assert norm_k.rms_norm(x, w, 1e-4)[0, 1, 0].abs().max() == 0  # the zero row


def test_rms_norm_kernel_bf16_gain_and_support():
    """A bf16 model's bf16 gain is read in the kernel (its gradient comes back in bf16); shapes the kernel does
    not take are refused, so the module falls back to torch."""
    x = torch.randn(4, 5, 32, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    w = torch.rand(32, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    _check(x, w, 1e-5, torch.bfloat16)
    assert not norm_k.supported(x.double(), w)                                   # fp64: torch's
    assert not norm_k.supported(x, torch.ones(16, device=DEV))                   # wrong D
    assert not norm_k.supported(torch.randn(2, 3, 4, 32, device=DEV), w)         # 4-D with a (D,) gain
    assert not norm_k.supported(torch.randn(8, 64, device=DEV)[:, ::2], w)       # gapped rows
    assert not norm_k.supported(torch.randn(2, 4, 32, device=DEV), torch.ones(4, 32, device=DEV).t())


def test_rms_norm_module_dispatch(monkeypatch):
    """RMSNorm runs the fused kernel on CUDA (both gain shapes), torch's rms_norm elsewhere, with the same
    numbers."""
    calls = []
    real = norm_k.rms_norm
    monkeypatch.setattr(norm_k, "rms_norm", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(0)
    for shape, x in (((24,), torch.randn(2, 7, 24, generator=g)), ((3, 8), torch.randn(2, 5, 3, 8, generator=g))):
        m = RMSNorm(shape, eps=1e-5).to(DEV)
        with torch.no_grad():
            m.weight.copy_(torch.rand(shape, generator=g) + 0.5)
        x = x.to(DEV)
        torch.testing.assert_close(m(x).double(), _ref(x, m.weight, 1e-5), rtol=1e-5, atol=1e-5)
    assert len(calls) == (2 if DEV == "cuda" else 0)


def test_rms_norm_kernel_compiles_for_sm90():
    """Both kernels lower for sm_90 (H100/H200) through Triton's bundled ptxas at the model's shapes: the
    per-head norm (D = 64, 128) and the model's norms (D = 512, 768, masked past a power of two)."""
    if not has_ptxas():
        pytest.skip("this Triton build ships no ptxas")
    code = ("import json, torch\n"
            "from tda.ops.triton.sm90 import compile_kernel\n"
            "from tda.ops.triton.rms_norm import _blocks, _rms_norm_fwd_kernel, _rms_norm_bwd_kernel\n"
            "out = {}\n"
            "for D in (64, 128, 512, 768):\n"
            "    bd, bn, w = _blocks(D, torch.device('cuda'))\n"
            "    f = compile_kernel(_rms_norm_fwd_kernel, dict(EPS=1e-4, D=D, BLOCK_D=bd, BLOCK_N=bn), w, 1)\n"
            "    b = compile_kernel(_rms_norm_bwd_kernel, dict(D=D, BLOCK_D=bd, BLOCK_N=bn), w, 1)\n"
            "    out[D] = [k.metadata.num_warps for k in (f, b)] + ['st.global' in k.asm['ptx'] for k in (f, b)]\n"
            "print('RESULT ' + json.dumps(out))\n")
    res = run_compiled(code, timeout=300)
    assert all(v[2] and v[3] for v in res.values()) and len(res) == 4


def test_model_with_fused_norms_matches_plain(monkeypatch):
    """A whole TDA model (loss and every parameter's gradient) with every RMSNorm through the kernel (the
    model's norms and the per-head norm, as eager CUDA runs them; the device test lifted so the interpreter
    runs it) equals the torch expression's."""
    from tda.models import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=32, attention="tda")
    model = GPT(cfg).to(DEV)
    x = torch.randint(0, 61, (2, 16), device=DEV)
    _, plain = model(x, x)
    want = torch.autograd.grad(plain, list(model.parameters()))
    calls = []
    monkeypatch.setattr(RMSNorm, "forward", lambda self, t: calls.append(self.weight.dim()) or
                        norm_k.rms_norm(t, self.weight, self.eps))
    _, loss = model(x, x)
    got = torch.autograd.grad(loss, list(model.parameters()))
    assert sorted(calls) == [1] * (2 * cfg.n_layer + 1) + [2] * cfg.n_layer
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
