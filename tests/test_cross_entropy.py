"""The chunked linear cross-entropy (tda.ops.cross_entropy) against F.cross_entropy over full logits: loss and
both gradients, through torch's row pass and the Triton kernel's (under TRITON_INTERPRET=1 on a CPU), with
ignored rows, several chunks, autocast, and the model's return_logits=False path."""
import pytest
import torch
import torch.nn.functional as F

from tda.models import GPT, GPTConfig
from tda.ops import cross_entropy as lce

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(R, C, V, dtype, seed, ignore=0.2):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(R, C, generator=g) * 2).to(DEV, dtype).requires_grad_(True)
    w = (torch.randn(V, C, generator=g) / C ** 0.5).to(DEV, dtype).requires_grad_(True)
    t = torch.randint(0, V, (R,), generator=g)
    t[torch.rand(R, generator=g) < ignore] = -1
    return h, w, t.to(DEV)


def _reference(h, w, t):
    hd, wd = h.detach().double().requires_grad_(True), w.detach().double().requires_grad_(True)
    loss = F.cross_entropy(hd @ wd.t(), t, ignore_index=-1)
    return loss, *torch.autograd.grad(loss, (hd, wd))


# the kernel takes bf16 / fp32 logits (fp64 goes through torch's row pass)
@pytest.mark.parametrize("row_pass,dtype,tol", [("torch", torch.float64, 1e-10), ("torch", torch.float32, 1e-5),
                                                ("triton", torch.float32, 1e-5)])
@pytest.mark.parametrize("R,C,V,chunk", [(37, 16, 101, None), (64, 8, 3000, 24), (5, 4, 7, 1)])
def test_linear_cross_entropy_matches_full_logits(monkeypatch, row_pass, dtype, tol, R, C, V, chunk):
    """Loss, dh and dW equal F.cross_entropy's over the full logits (fp64 reference), one chunk or several, V
    past the kernel's block (3000 > 1024) or not a power of two."""
    if row_pass == "triton":
        if lce.fused is None:
            pytest.skip("triton not installed")
        if DEV == "cpu":
            monkeypatch.setattr(lce, "_row_pass", lambda *a: lce.fused.row_pass(*a))
    elif DEV == "cuda":
        monkeypatch.setattr(lce, "_row_pass", lce._row_pass_torch)
    h, w, t = _inputs(R, C, V, dtype, R + V)
    loss = lce.linear_cross_entropy(h, w, t, chunk_rows=chunk)
    dh, dw = torch.autograd.grad(loss * 3.0, (h, w))  # the incoming gradient scales the saved ones
    ref, rdh, rdw = _reference(h, w, t)
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(dh.double(), 3 * rdh, rtol=tol, atol=tol)
    torch.testing.assert_close(dw.double(), 3 * rdw, rtol=tol, atol=tol)
    assert dh.dtype == h.dtype and dw.dtype == w.dtype


@pytest.mark.parametrize("launch", ["default", "small-block", "large-block"])
def test_triton_row_pass_edge_rows(launch):
    """The kernel's rows: an ignored row has loss 0 and a zero gradient; a target outside [0, V) a NaN loss;
    the gradient rows sum to zero (softmax minus one-hot) over n_valid; bf16 logits are read and written. The
    default block, one that splits V into five loads, and one past V (lanes that never see a logit)."""
    if lce.fused is None:
        pytest.skip("triton not installed")
    cfg = {"default": lce.fused.DEFAULT, "small-block": lce.fused.RowPassConfig(512, 4),
           "large-block": lce.fused.RowPassConfig(4096, 8)}[launch]
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 2500, generator=g) * 4).to(DEV, torch.bfloat16)
    t = torch.tensor([3, -1, 2499, 2500], device=DEV)
    n = torch.tensor(3, device=DEV)
    x0 = x.float()
    ref = F.cross_entropy(x0[[0, 2]], t[[0, 2]], reduction="none")
    loss = lce.fused.row_pass(x, t, n, -1, True, cfg)  # x now holds the gradient
    torch.testing.assert_close(loss[[0, 2]], ref, rtol=1e-5, atol=1e-5)
    assert loss[1] == 0 and torch.isnan(loss[3])
    assert (x[1] == 0).all()
    for r in (0, 2):
        want = (torch.softmax(x0[r], -1) - F.one_hot(t[r], 2500)) / 3
        assert abs(float(x[r].float().sum())) < 1e-3
        torch.testing.assert_close(x[r].float(), want, rtol=1e-2, atol=1e-4)  # one bf16 rounding


def test_loss_only_without_grad_and_bad_input():
    """Under no_grad nothing is computed for a backward (no saved gradients); bad shapes raise and name the
    argument."""
    h, w, t = _inputs(20, 8, 50, torch.float32, 0)
    with torch.no_grad():
        loss = lce.linear_cross_entropy(h, w, t)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss.double(), _reference(h, w, t)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="targets"):
        lce.linear_cross_entropy(h, w, t[:5])
    with pytest.raises(ValueError, match="weight"):
        lce.linear_cross_entropy(h, w[:, :4], t)
    with pytest.raises(ValueError, match="chunk_rows"):
        lce.linear_cross_entropy(h, w, t, chunk_rows=0)


def test_autocast_bf16_and_fp16_refused():
    """Under bf16 autocast the GEMMs run in bf16 (as the head's Linear would) and the gradients come back in
    the fp32 parameters' dtype; fp16 autocast is not taken (supported() says so)."""
    h, w, t = _inputs(48, 16, 300, torch.float32, 2)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        assert lce.supported(h, w)
        loss = lce.linear_cross_entropy(h, w, t, chunk_rows=16)
        full = F.cross_entropy((h @ w.t()).float(), t, ignore_index=-1)
    dh, dw = torch.autograd.grad(loss, (h, w))
    rdh, rdw = torch.autograd.grad(full, (h, w))
    assert dh.dtype == dw.dtype == torch.float32
    torch.testing.assert_close(loss, full, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(dh, rdh, rtol=3e-2, atol=3e-3)
    torch.testing.assert_close(dw, rdw, rtol=3e-2, atol=3e-3)
    if DEV == "cuda":
        with torch.autocast(DEV, dtype=torch.float16):
            assert not lce.supported(h, w)


@pytest.mark.parametrize("attention", ["tda", "softmax"])
def test_model_return_logits_false_matches_plain_loss(attention):
    """model(x, y, return_logits=False) gives (None, loss) with the plain loss and the same gradients for every
    parameter (the tied embedding too), ignored targets included."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32, attention=attention)
    model = GPT(cfg).to(DEV)
    x = torch.randint(0, 97, (3, 32), device=DEV)
    y = torch.randint(0, 97, (3, 32), device=DEV)
    y[0, :5] = -1
    logits, plain = model(x, y)
    want = torch.autograd.grad(plain, list(model.parameters()))
    none, loss = model(x, y, return_logits=False)
    got = torch.autograd.grad(loss, list(model.parameters()))
    assert none is None and logits.shape == (3, 32, 97)
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_row_kernel_compiles_for_sm90():
    """The row kernel lowers for sm_90 (H100/H200) through Triton's bundled ptxas, loss only and with the
    gradient, bf16 and fp32 logits (a subprocess with TRITON_INTERPRET unset: the interpreter compiles nothing)."""
    from conftest import has_ptxas, run_compiled
    if not has_ptxas():
        pytest.skip("this Triton build ships no ptxas")
    code = ("import json\n"
            "from tda.ops.triton.sm90 import compile_kernel, resource_usage\n"
            "from tda.ops.triton.cross_entropy import _ce_row_kernel\n"
            "types = dict(T='*i64', LOSS='*fp32', NVALID='*i64', V='i32', ignore_index='i32')\n"
            "out = []\n"
            "for dtype in ('bf16', 'fp32'):\n"
            "    for grad in (False, True):\n"
            "        k = compile_kernel(_ce_row_kernel, dict(BLOCK_V=1024, GRAD=grad), 8, 1, dtype, types=types)\n"
            "        out.append(resource_usage(k)['stack_local'] == 0 and 'st.global' in k.asm['ptx'])\n"
            "print('RESULT ' + json.dumps(out))\n")
    assert run_compiled(code, timeout=300) == [True] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a full-size chunk's warps racing)")
def test_row_kernel_full_size_chunk_on_cuda():
    """A chunk of the GPU comparison model (4,096 rows over the GPT-2 vocabulary): every row's loss and gradient
    against torch's row pass, over several launches. Small shapes cannot show a warp writing the row's gradient
    before another warp has read the target's logit."""
    if lce.fused is None:
        pytest.skip("triton not installed")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(4096, 50304, device="cuda", generator=g) * 3).to(torch.bfloat16)
    t = torch.randint(0, 50304, (4096,), device="cuda", generator=g)
    t[::5] = -1
    n = (t != -1).sum()
    ref = x.clone()
    want = lce._row_pass_torch(ref, t, n, -1, True)
    for cfg in (lce.fused.DEFAULT, lce.fused.RowPassConfig(512, 4), lce.fused.RowPassConfig(2048, 4)):
        y = x.clone()
        loss = lce.fused.row_pass(y, t, n, -1, True, cfg)
        torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=1e-5)
