"""Packed documents: the varlen ops against a dense oracle (forward and every gradient), cu_seqlens
validation, RoPE at per-token positions, document boundaries from the data pipeline, and the model: a packed
window gives each document exactly the logits it gets alone."""
import numpy as np
import pytest
import torch

from conftest import needs_interpreter
from tda.models.config import GPTConfig
from tda.data.dataset import ShardedBatchSampler, TokenDataset, cu_seqlens_from_starts, document_starts
from tda.layers import ATTENTION, RotaryEmbedding
from tda.models.gpt import GPT
from tda.ops import threshold_differential_attention
from tda.ops.varlen import (PackedDocuments, check_cu_seqlens, positions_from_cu_seqlens,
                            threshold_differential_attention_varlen, threshold_rectified_attention_varlen,
                            varlen_reference)

pytestmark = pytest.mark.usefixtures("one_thread")


def cu(lengths):
    return torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)


def inputs(B, H, Hk, N, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q1, q2 = (torch.randn(B, H, N, D, generator=g, dtype=dtype).requires_grad_() for _ in range(2))
    k1, k2, v = (torch.randn(B, Hk, N, D, generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    # small beta: tau stays below many scores, so the weights are far from all-zero
    beta = (0.2 + 0.4 * torch.rand(H, generator=g, dtype=dtype)).requires_grad_()
    lam = (0.2 + 0.6 * torch.rand(H, generator=g, dtype=dtype)).requires_grad_()
    return q1, k1, q2, k2, v, beta, lam


def grads(out, args, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    return torch.autograd.grad(out, args, g)


# lengths per row (B rows of N tokens each), with length-1 and empty documents
CASES = [
    (1, 4, 2, [1, 5, 0, 7, 1, 2]),      # one packed row (flash-attn's (1, H, T, D)), GQA 4:2
    (2, 2, 2, [3, 1, 4], [8]),          # two rows, each row start a boundary
    (1, 3, 1, [16]),                    # one document: the plain op
]


@pytest.mark.parametrize("case", CASES, ids=["packed-gqa", "two-rows", "one-doc"])
@pytest.mark.parametrize("views", [2, 1], ids=["tda", "tra"])
def test_varlen_matches_dense_reference_fwd_bwd(case, views):
    B, H, Hk, *rows = case
    N = sum(rows[0])
    lengths = [n for r in rows for n in r]
    cus = cu(lengths)
    q1, k1, q2, k2, v, beta, lam = inputs(B, H, Hk, N, 8)
    if views == 2:
        args = (q1, k1, q2, k2, v, beta, lam)
        out = threshold_differential_attention_varlen(*args, cu_seqlens=cus, max_seqlen=max(lengths))
        ref = varlen_reference(*args, cu_seqlens=cus)
    else:
        args = (q1, k1, v, beta)
        out = threshold_rectified_attention_varlen(*args, cu_seqlens=cus, max_seqlen=max(lengths))
        ref = varlen_reference(q1, k1, None, None, v, beta, None, cu_seqlens=cus)
    assert out.shape == (B, H, N, 8)
    assert (ref != 0).float().mean() > 0.3 and (ref == 0).any()   # neither all-zero nor dense
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads(out, args), grads(ref, args)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# documents spanning several length buckets (16, 32, 64), in two rows, grouped-query
BUCKET_ROWS = [[1, 20, 3, 40, 16], [17, 33, 2, 0, 28]]


@pytest.mark.parametrize("views", [2, 1], ids=["tda", "tra"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_length_buckets_match_dense_reference_fwd_bwd(views, causal):
    """Padded buckets (causal) or equal-length groups (non-causal), one op call per bucket, scattered back:
    forward and every gradient equal the dense oracle, which never pads."""
    lengths = [n for r in BUCKET_ROWS for n in r]
    N = sum(BUCKET_ROWS[0])
    q1, k1, q2, k2, v, beta, lam = inputs(2, 4, 2, N, 8, seed=3)
    kw = dict(cu_seqlens=cu(lengths), causal=causal)
    if views == 2:
        args = (q1, k1, q2, k2, v, beta, lam)
        out = threshold_differential_attention_varlen(*args, max_seqlen=max(lengths), **kw)
        ref = varlen_reference(*args, **kw)
    else:
        args = (q1, k1, v, beta)
        out = threshold_rectified_attention_varlen(*args, max_seqlen=max(lengths), **kw)
        ref = varlen_reference(q1, k1, None, None, v, beta, None, **kw)
    assert (ref != 0).float().mean() > 0.3 and (ref == 0).any()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads(out, args), grads(ref, args)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_one_op_call_per_bucket(monkeypatch):
    """The documents of a bucket share one call of the op: 9 documents of 5 distinct bucket sizes -> 3 calls
    when causal (16, 32, 64), one per distinct length when not."""
    import tda.ops.varlen as varlen
    calls = []
    real = varlen.threshold_rectified_attention

    def counting(q, *a, **kw):
        calls.append(tuple(q.shape))
        return real(q, *a, **kw)
    monkeypatch.setattr(varlen, "threshold_rectified_attention", counting)
    lengths = [n for r in BUCKET_ROWS for n in r]
    q, k, _, _, v, beta, _ = inputs(2, 2, 2, sum(BUCKET_ROWS[0]), 8)
    threshold_rectified_attention_varlen(q, k, v, beta, cu_seqlens=cu(lengths), max_seqlen=40)
    assert sorted(calls) == [(2, 2, 64, 8), (3, 2, 32, 8), (4, 2, 16, 8)]
    calls.clear()
    threshold_rectified_attention_varlen(q, k, v, beta, cu_seqlens=cu(lengths), max_seqlen=40, causal=False)
    assert len(calls) == len({n for n in lengths if n})


def test_bucket_gathers_run_backward_without_scatter_add():
    """Into and out of the buckets is one gather per tensor each way, forward and backward: no index_add /
    scatter-add (atomics on a GPU), and the gradients still equal the dense oracle's (test above)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    lengths = [n for r in BUCKET_ROWS for n in r]
    args = inputs(2, 2, 2, sum(BUCKET_ROWS[0]), 8)
    out = threshold_differential_attention_varlen(*args, cu_seqlens=cu(lengths), max_seqlen=40,
                                                  backend="reference")
    with Ops() as ops:
        grads(out, args)
    assert not [n for n in ops.names if "index_add" in n or "scatter_add" in n or "index_put" in n], ops.names
    assert any("index_select" in n for n in ops.names) and any("index_copy" in n for n in ops.names)
    from tda.ops.varlen import _plan
    N = sum(BUCKET_ROWS[0])
    plan = _plan(check_cu_seqlens(cu(lengths), 40, 2 * N, N), True, out.device, N)
    assert "_table" not in plan.__dict__  # the bucket path builds no kernels' document table


def test_each_document_restarts_positions_and_sees_only_itself():
    """Document k of the packed output = the plain op on that document alone (position 0 at its start), up
    to fp64 summation order (the packed path runs it padded, with others of its length bucket); the unpacked
    op on the same tokens differs (tau and the keys of earlier documents)."""
    lengths = [4, 1, 9, 6]
    q1, k1, q2, k2, v, beta, lam = inputs(1, 2, 2, sum(lengths), 8)
    out = threshold_differential_attention_varlen(q1, k1, q2, k2, v, beta, lam, cu_seqlens=cu(lengths),
                                                  max_seqlen=9)
    s = 0
    for n in lengths:
        sl = (slice(None), slice(None), slice(s, s + n))
        alone = threshold_differential_attention(q1[sl], k1[sl], q2[sl], k2[sl], v[sl], beta, lam)
        torch.testing.assert_close(out[sl], alone, rtol=1e-12, atol=1e-14)
        s += n
    whole = threshold_differential_attention(q1, k1, q2, k2, v, beta, lam)
    assert not torch.allclose(out[:, :, 5:], whole[:, :, 5:])


def test_varlen_triton_backend_matches_reference():
    """backend="triton" runs the fused kernel once per length bucket (under TRITON_INTERPRET=1 on a CPU): here
    buckets 16 and 32, each padded."""
    pytest.importorskip("triton")
    lengths = [1, 20, 0, 7]
    args = inputs(1, 2, 1, sum(lengths), 16, dtype=torch.float32)
    if torch.cuda.is_available():
        args = tuple(t.detach().cuda().requires_grad_() for t in args)
    out = threshold_differential_attention_varlen(*args, cu_seqlens=cu(lengths), max_seqlen=20, backend="triton")
    ref = varlen_reference(*args, cu_seqlens=cu(lengths))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads(out, args), grads(ref, args)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("views", [2, 1], ids=["tda", "tra"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_kernel_one_launch_matches_dense_reference(views, dtype, monkeypatch):
    """The fused kernels over the document table (no buckets, no gathers): one forward launch and one
    backward launch, forward and every gradient against the dense oracle. Rows of 48 tokens with documents of
    several blocks, length-1 and empty ones, grouped-query heads (test_packed_kernel_block_configs: the
    kernels' switches)."""
    needs_interpreter()  # CPU tensors
    import tda.ops.triton.attention as fused
    from tda.ops.triton import launch
    calls = {"packed": 0, "fwd": 0, "bwd": 0}
    real = {n: getattr(launch, n) for n in ("forward", "backward")}
    monkeypatch.setattr(launch, "forward", lambda *a, **k: calls.__setitem__("fwd", calls["fwd"] + 1)
                        or real["forward"](*a, **k))
    monkeypatch.setattr(launch, "backward", lambda *a, **k: calls.__setitem__("bwd", calls["bwd"] + 1)
                        or real["backward"](*a, **k))
    real_packed = fused.packed_attention
    monkeypatch.setattr(fused, "packed_attention", lambda *a, **k: calls.__setitem__("packed", 1)
                        or real_packed(*a, **k))
    rows = [[17, 1, 0, 30], [48], [5, 38, 5]]
    lengths = [n for r in rows for n in r]
    args = inputs(3, 4, 2, 48, 16, dtype=dtype, seed=4)
    if torch.cuda.is_available():
        args = tuple(t.detach().cuda().requires_grad_() for t in args)
    if views == 1:
        q, k, _, _, v, beta, _ = args
        args = (q, k, v, beta)
        out = threshold_rectified_attention_varlen(*args, cu_seqlens=cu(lengths), max_seqlen=48, backend="triton")
        ref = varlen_reference(q, k, None, None, v, beta, None, cu_seqlens=cu(lengths))
    else:
        out = threshold_differential_attention_varlen(*args, cu_seqlens=cu(lengths), max_seqlen=48,
                                                      backend="triton")
        ref = varlen_reference(*args, cu_seqlens=cu(lengths))
    assert calls["packed"] == 1 and calls["fwd"] == 1
    from tda.ops.varlen import _plan
    plan = _plan(check_cu_seqlens(cu(lengths), 48, 3 * 48, 48), True, out.device, 48)
    assert "_bucket_indices" not in plan.__dict__  # the kernels' path builds no bucket indices
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(out, ref, **tol)
    for a, b in zip(grads(out, args), grads(ref, args)):
        torch.testing.assert_close(a, b, **tol)
    assert calls["bwd"] == 1  # the packed output's gradients: one backward launch
    assert out.abs().sum() > 0 and (out[0, :, 17] - ref[0, :, 17]).abs().max() < 1e-4  # a 1-token document


def _packed_cfg(**kw):
    from tda.ops.triton.config import KernelConfig
    base = dict(flag_m=0, flag_n=0, dkdv_block=(16, 16), dq_block=(16, 16), bwd_stages=1)
    bm, bn = kw.pop("blocks", (16, 16))
    return KernelConfig(bm, bn, 4, 1, **{**base, **kw})


@pytest.mark.parametrize("config", [
    dict(),                                                            # the small default tiles
    dict(blocks=(32, 32), flag_m=16, flag_n=16),                       # flags finer than the forward blocks
    dict(blocks=(32, 16), dkdv_block=(16, 32), dq_block=(32, 16)),     # backward blocks spanning flag tiles
    dict(dkdv_lists=False, dq_lists=False),                            # flag tests in the loops, no lists
    dict(unit_keys=True, tma=True),                                    # unit keys through tensor descriptors
    dict(survivor_test=False),                                         # inference: every pair accumulated
], ids=["small", "finer-flags", "mixed", "no-lists", "unit-keys-tma", "no-screen"])
def test_packed_kernel_block_configs(config):
    """The document table through the kernels' switches (the block table's), forward and every gradient
    against the dense oracle, and the inference forward equal to the training one."""
    pytest.importorskip("triton")
    from tda.ops.triton.attention import packed_attention
    from tda.ops.varlen import _plan
    rows = [[20, 1, 0, 27], [48], [5, 38, 5]]
    lengths = [n for r in rows for n in r]
    args = inputs(3, 4, 2, 48, 16, seed=7)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        args = tuple(t.detach().cuda().float().requires_grad_() for t in args)
    plan = _plan(check_cu_seqlens(cu(lengths), 48, 3 * 48, 48), True, args[0].device, 48)
    cfgk = _packed_cfg(**config)
    out = packed_attention(*args, docs=plan.docs, longest=plan.longest, config=cfgk)
    ref = varlen_reference(*args, cu_seqlens=cu(lengths))
    tol = dict(rtol=1e-9, atol=1e-11) if dev == "cpu" else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, ref, **tol)
    for a, b in zip(grads(out, args), grads(ref, args)):
        torch.testing.assert_close(a, b, **tol)
    with torch.no_grad():
        infer = packed_attention(*args, docs=plan.docs, longest=plan.longest, config=cfgk)
    torch.testing.assert_close(infer, out, **tol)


@pytest.mark.parametrize("bad, max_seqlen, match", [
    (torch.tensor([0, 3, 8], dtype=torch.int64), 5, "cu_seqlens must have dtype int32"),
    (torch.tensor([[0, 8]], dtype=torch.int32), 8, "cu_seqlens must be 1-D"),
    (torch.tensor([0], dtype=torch.int32), 8, "cu_seqlens must be 1-D"),
    (torch.tensor([1, 3, 8], dtype=torch.int32), 5, "cu_seqlens must start at 0"),
    (torch.tensor([0, 5, 3, 8], dtype=torch.int32), 5, "cu_seqlens must be non-decreasing"),
    (torch.tensor([0, 3, 7], dtype=torch.int32), 5, "cu_seqlens must end at the 8"),
    (torch.tensor([0, 3, 8], dtype=torch.int32), 4, "max_seqlen must be an int >= the longest document .5."),
    (torch.tensor([0, 3, 8], dtype=torch.int32), 5.0, "max_seqlen"),
    ([0, 3, 8], 5, "cu_seqlens must be a torch.Tensor"),
])
def test_bad_cu_seqlens_names_the_argument(bad, max_seqlen, match):
    q1, k1, q2, k2, v, beta, lam = inputs(1, 2, 2, 8, 4)
    with pytest.raises(ValueError, match=match):
        threshold_differential_attention_varlen(q1, k1, q2, k2, v, beta, lam, cu_seqlens=bad, max_seqlen=max_seqlen)
    with pytest.raises(ValueError, match=match):
        threshold_rectified_attention_varlen(q1, k1, v, beta, cu_seqlens=bad, max_seqlen=max_seqlen)


def test_varlen_shape_errors():
    q1, k1, q2, k2, v, beta, lam = inputs(2, 2, 2, 8, 4)
    with pytest.raises(ValueError, match="row start"):  # a document spanning rows 0 and 1
        threshold_differential_attention_varlen(q1, k1, q2, k2, v, beta, lam, cu_seqlens=cu([4, 8, 4]),
                                                max_seqlen=8)
    with pytest.raises(ValueError, match="k1 must have as many tokens as q1"):
        threshold_differential_attention_varlen(q1, k1[:, :, :4], q2, k2[:, :, :4], v[:, :, :4], beta, lam,
                                                cu_seqlens=cu([8, 8]), max_seqlen=8)
    with pytest.raises(ValueError, match="q2 and k2"):
        threshold_differential_attention_varlen(q1, k1, None, None, v, beta, lam, cu_seqlens=cu([8, 8]),
                                                max_seqlen=8)
    with pytest.raises(ValueError, match="kappa"):
        threshold_rectified_attention_varlen(q1, k1, v, beta, cu_seqlens=cu([8, 8]), max_seqlen=8, kappa=0.0)
    assert check_cu_seqlens(cu([8, 8]), 9, 16, 8) == [0, 8, 16]   # max_seqlen is an upper bound


def test_positions_and_mask_from_first_principles():
    lengths = [3, 0, 1, 4, 4, 4]     # rows of N = 8: [3, 0, 1, 4] and [4, 4]
    B, N = 2, 8
    docs = PackedDocuments.build(cu(lengths), 4, B, N, "cpu")
    want_pos, want_doc = [], []
    for k, n in enumerate(lengths):
        want_pos += list(range(n))
        want_doc += [k] * n
    assert docs.positions.tolist() == torch.tensor(want_pos).view(B, N).tolist()
    assert positions_from_cu_seqlens(cu(lengths), 16).tolist() == want_pos
    doc = torch.tensor(want_doc).view(B, N)
    i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
    want = (doc[:, :, None] == doc[:, None, :]) & (j <= i)
    assert torch.equal(docs.mask, want[:, None])


def test_rope_positions_restart_per_document():
    rope = RotaryEmbedding(8).double()
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 0, 1, 2, 3], list(range(10))])
    y = rope(x, positions=pos)
    torch.testing.assert_close(y[:1, :, :4], rope(x[:1, :, :4]))
    torch.testing.assert_close(y[:1, :, 4:6], rope(x[:1, :, 4:6]))
    torch.testing.assert_close(y[:1, :, 6:], rope(x[:1, :, 6:]))
    torch.testing.assert_close(y[1:], rope(x[1:]))
    assert not torch.allclose(y[:1, :, 6:], rope(x[:1, :, 6:], 6))


# --- data ------------------------------------------------------------------------------------------
def test_document_starts_and_cu_seqlens():
    x = torch.tensor([[5, 0, 3, 0, 0, 4], [1, 2, 3, 4, 0, 6]])
    starts = document_starts(x, sep_id=0)
    assert starts.tolist() == [[True, True, False, True, True, False], [True, False, False, False, True, False]]
    cus, max_seqlen = cu_seqlens_from_starts(starts)
    assert cus.dtype == torch.int32 and cus.tolist() == [0, 1, 3, 4, 6, 10, 12] and max_seqlen == 4
    with pytest.raises(ValueError, match="x must be"):
        document_starts(x[0], 0)
    with pytest.raises(ValueError, match="starts: column 0"):
        cu_seqlens_from_starts(torch.zeros(1, 4, dtype=torch.bool))


def test_sampler_packed_batch_boundaries_are_the_documents(tmp_path):
    """A token file of known documents, each followed by the separator: every boundary inside a window sits
    at a separator, and the tokens between boundaries are one separator + a piece of one document."""
    rng = np.random.default_rng(0)
    sep = 0
    docs = [rng.integers(1, 50, size=int(n)) for n in rng.integers(1, 12, size=60)]
    stream = np.concatenate([np.append(d, sep) for d in docs]).astype(np.uint16)
    path = tmp_path / "train.bin"
    stream.tofile(path)
    # document id of every stream token; a separator belongs to the document after it
    doc_of = np.concatenate([np.full(docs[0].size, 0), np.repeat(np.arange(1, len(docs) + 1),
                                                                 [d.size + 1 for d in docs[1:]] + [1])])
    sampler = ShardedBatchSampler(TokenDataset(path, "uint16", 24), batch_size=3, seed=1)
    x, y, cus, max_seqlen = sampler.packed_batch(5, sep_id=sep)
    x0, y0 = sampler.batch(5)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    starts = sampler.starts(5)
    bounds = cus.tolist()
    assert bounds[0] == 0 and bounds[-1] == x.numel() and max_seqlen == max(np.diff(bounds))
    for s, e in zip(bounds, bounds[1:]):
        b, lo, hi = s // 24, s % 24, s % 24 + (e - s)
        assert hi <= 24                                          # never spans rows
        ids = doc_of[starts[b] + lo:starts[b] + hi]
        assert len(set(ids.tolist())) == 1                       # one document
        assert lo == 0 or int(x[b, lo]) == sep                   # opened by a separator or the window start
        assert (x[b, lo + 1:hi] != sep).all()


# --- model -----------------------------------------------------------------------------------------
def _tiny(attention, **kw):
    return GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                     attention=attention, **kw)


@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_packed_window_logits_equal_each_document_alone(attention):
    if attention == "entmax":
        pytest.importorskip("entmax")
    torch.manual_seed(0)
    model = GPT(_tiny(attention)).double().eval()
    rows, N = [[5, 1, 10], [3, 13]], 16
    x = torch.randint(0, 64, (2, N))
    cus = cu([n for r in rows for n in r])
    packed = model(x, cu_seqlens=cus, max_seqlen=13)
    for b, r in enumerate(rows):
        s = 0
        for n in r:
            torch.testing.assert_close(packed[b:b + 1, s:s + n], model(x[b:b + 1, s:s + n]), rtol=1e-6, atol=1e-7)
            s += n
    # a single document per row is the ordinary forward
    torch.testing.assert_close(model(x, cu_seqlens=cu([N, N]), max_seqlen=N), model(x), rtol=1e-9, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the fused kernels over the document table)")
@pytest.mark.parametrize("attention", ["tda", "tra", "softmax"])
def test_packed_model_on_cuda_matches_documents_alone(attention):
    torch.manual_seed(0)
    model = GPT(_tiny(attention, head_dim=16)).cuda().eval()
    rows, N = [[5, 1, 58], [31, 33]], 64
    x = torch.randint(0, 64, (2, N), device="cuda")
    packed = model(x, cu_seqlens=cu([n for r in rows for n in r]), max_seqlen=58)
    for b, r in enumerate(rows):
        s = 0
        for n in r:
            torch.testing.assert_close(packed[b:b + 1, s:s + n], model(x[b:b + 1, s:s + n]), rtol=1e-4, atol=1e-4)
            s += n


@pytest.mark.parametrize("attention", ["tda", "softmax"])
def test_packed_loss_gradients_equal_separate_documents(attention):
    """Training signal: d(packed loss)/d(params) = d(token-weighted per-document losses)/d(params)."""
    torch.manual_seed(1)
    model = GPT(_tiny(attention)).double()
    lengths = [7, 1, 12]
    x = torch.randint(0, 64, (1, 20))
    y = torch.randint(0, 64, (1, 20))
    _, loss = model(x, y, cu_seqlens=cu(lengths), max_seqlen=12)
    g_packed = torch.autograd.grad(loss, list(model.parameters()))
    total, s = 0, 0
    for n in lengths:
        _, l_doc = model(x[:, s:s + n], y[:, s:s + n])
        total = total + l_doc * n / 20
        s += n
    torch.testing.assert_close(loss, total)
    g_sep = torch.autograd.grad(total, list(model.parameters()))
    for a, b in zip(g_packed, g_sep):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)   # RMSNorm runs in fp32
    if attention == "tda":
        beta = dict(model.named_parameters())["blocks.0.attn.beta"]
        assert g_packed[[p is beta for p in model.parameters()].index(True)].abs().sum() > 0


@pytest.mark.parametrize("attention", ["tda", "tra"])
def test_packed_model_through_the_kernels_equals_the_reference_model(attention, monkeypatch):
    """The model end to end, layers -> varlen op -> the fused kernels over the document table (under the
    interpreter on a CPU), against the same weights on the reference backend: the packed loss and every
    parameter's gradient, RoPE at per-token positions included."""
    needs_interpreter()  # CPU tensors
    import copy
    import tda.ops.triton.attention as fused
    calls = []
    real = fused.packed_attention
    monkeypatch.setattr(fused, "packed_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(2)
    ref = GPT(_tiny(attention, head_dim=16, attn_backend="reference")).double()
    ker = copy.deepcopy(ref)
    for m in ker.modules():
        if hasattr(m, "backend"):
            m.backend = "triton"
    rows, N = [[9, 1, 22], [32]], 32
    x, y = torch.randint(0, 64, (2, N)), torch.randint(0, 64, (2, N))
    kw = dict(cu_seqlens=cu([n for r in rows for n in r]), max_seqlen=32)
    losses, grads_ = [], []
    for model in (ref, ker):
        _, loss = model(x, y, **kw)
        losses.append(loss)
        grads_.append(torch.autograd.grad(loss, list(model.parameters())))
    assert len(calls) == 2  # one per layer of the kernel model, none for the reference one
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-9, atol=1e-11)
    for (name, _), a, b in zip(ref.named_parameters(), grads_[1], grads_[0]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=name)   # RMSNorm runs in fp32


def test_model_packing_errors():
    model = GPT(_tiny("tda"))
    x = torch.randint(0, 64, (2, 8))
    with pytest.raises(ValueError, match="position_offset"):
        model(x, cu_seqlens=cu([8, 8]), max_seqlen=8, position_offset=3)
    with pytest.raises(ValueError, match="max_seqlen"):
        model(x, max_seqlen=8)
    with pytest.raises(ValueError, match="row start"):
        model(x, cu_seqlens=cu([4, 12]), max_seqlen=12)
    model.record_attention(True)
    with pytest.raises(ValueError, match="docs"):
        model(x, cu_seqlens=cu([8, 8]), max_seqlen=8)


@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_packing_and_kv_cache_exclude_each_other(attention):
    """Packed documents and a KV cache together: every layer raises a ValueError naming docs before it
    writes the cache, the model one naming cu_seqlens; each alone runs."""
    if attention == "entmax":
        pytest.importorskip("entmax")
    torch.manual_seed(0)
    model = GPT(_tiny(attention)).eval()
    x = torch.randint(0, 64, (2, 8))
    cache = model.new_cache(2, 16)
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(x, cache=cache, cu_seqlens=cu([3, 5, 8]), max_seqlen=8)
    assert cache.seqlens.tolist() == [0, 0]
    attn, h = model.blocks[0].attn, torch.randn(2, 8, 32)
    docs = PackedDocuments.build(cu([3, 5, 8]), 8, 2, 8, x.device)
    with pytest.raises(ValueError, match="docs"):
        attn(h, model.rope, docs=docs, cache=cache.layer(0, (0, 0), 8))
    assert all(not t.any() for t in cache.layers[0].values())   # refused before writing
    assert attn(h, model.rope, docs=docs).shape == h.shape
    assert attn(h, model.rope, cache=cache.layer(0, (0, 0), 8)).shape == h.shape
    assert any(t.any() for t in cache.layers[0].values())


# --- training --------------------------------------------------------------------------------------
def test_ab_configs_differ_only_in_attention():
    from tda.train.config import load_config
    a, b = (load_config(f"configs/packing-ab-{n}.yaml") for n in ("softmax", "tda"))
    assert not a.pack_documents and not b.pack_documents
    assert a.model.attention == "softmax" and b.model.attention == "tda"
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        del d["out_dir"], d["model"]["attention"], d["model"]["mlp_hidden"]
    assert da == db


def test_train_config_switch(tmp_path):
    from tda.train.config import TrainConfig, load_config
    assert TrainConfig().pack_documents is False and TrainConfig().eval_pack_documents is None
    cfg = load_config(None, ["pack_documents=true"])
    assert cfg.pack_documents is True
    assert TrainConfig(pack_documents=True, compile=True).compile  # compiles too (test below)


def test_packed_training_runs_and_feeds_boundaries(tmp_path, monkeypatch):
    """A few packed steps on the bundled corpus; every forward gets documents (cu_seqlens) whose boundaries
    sit at the end-of-text token; validation follows pack_documents unless eval_pack_documents says otherwise."""
    import gzip
    import json

    from tda.data.prepare import BUNDLED_CORPUS, prepare_documents
    from tda.data.sources import Document
    from tda.data.tokenizer import BUNDLED_TOKENIZER, load_tokenizer
    from tda.train.config import TrainConfig
    from tda.train.loop import train
    # short documents (the bundled corpus holds few, long ones): paragraphs of its first texts
    with gzip.open(BUNDLED_CORPUS, "rt") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(3), f)]
    paras = [p.strip() for t in texts for p in t.split("\n\n") if len(p.strip()) > 20][:400]
    docs = [Document("test", f"p{i}", p) for i, p in enumerate(paras)]
    data_dir = tmp_path / "short"
    prepare_documents(data_dir, docs, load_tokenizer(BUNDLED_TOKENIZER), val_fraction=0.1, num_long_docs=0,
                      progress=False)
    seen = []
    forward = GPT.forward

    def spy(self, input_ids, targets=None, position_offset=0, **kw):
        docs = kw.get("docs")  # the trainer builds the batch's PackedDocuments on the host
        seen.append((self.training, input_ids.clone(), None if docs is None else docs.cu_seqlens))
        return forward(self, input_ids, targets, position_offset, **kw)

    monkeypatch.setattr(GPT, "forward", spy)
    cfg = TrainConfig.from_dict({
        "data_dir": str(data_dir), "out_dir": str(tmp_path / "run"), "pack_documents": True,
        "eval_pack_documents": False,
        "model": {"vocab_size": 4096, "block_size": 64, "n_layer": 1, "n_head": 2, "n_embd": 32},
        "batch_size": 4, "max_steps": 3, "eval_interval": 3, "eval_iters": 1, "log_interval": 1,
        "ckpt_interval": 0, "device": "cpu", "progress": False})
    out = train(cfg)
    assert np.isfinite(out["val_loss"])
    eot = json.loads((data_dir / "meta.json").read_text())["eot_id"]
    train_calls = [s for s in seen if s[0]]
    assert len(train_calls) == 3 and all(s[2] is not None for s in train_calls)
    assert any(len(s[2]) > 5 for s in train_calls)   # windows of 64 tokens hold several short documents
    for _, x, cus in train_calls:
        flat = x.reshape(-1)
        inner = [b for b in cus.tolist()[1:-1] if b % 64]
        assert all(int(flat[b]) == eot for b in inner)
        assert int((flat == eot).sum()) == sum(1 for b in cus.tolist()[:-1] if int(flat[b]) == eot)
    assert all(s[2] is None for s in seen if not s[0])   # eval_pack_documents=False: plain validation


@pytest.mark.parametrize("attention", ["tda", "softmax"])
def test_packed_model_compiles_without_graph_breaks(attention):
    """A compiled packed forward and backward (docs prebuilt on the host, as the trainer does): the same loss
    and gradients as eager, with no graph break; a second batch with other documents reuses or recompiles the
    graph but never breaks it. TDA runs the fused kernels (interpreter) through the custom ops with the
    document table; softmax passes SDPA the block-diagonal mask."""
    needs_interpreter()  # CPU tensors
    import copy
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch.manual_seed(3)
    eager = GPT(_tiny(attention, head_dim=16, attn_backend="triton" if attention == "tda" else "auto")).double()
    model = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    N = 32
    for rows in ([[9, 1, 22], [32]], [[5, 27], [3, 3, 26]]):
        x, y = torch.randint(0, 64, (2, N)), torch.randint(0, 64, (2, N))
        docs = PackedDocuments.build(cu([n for r in rows for n in r]), N, 2, N, "cpu")
        (_, l_eager), (_, l_comp) = eager(x, y, docs=docs), compiled(x, y, docs=docs)
        torch.testing.assert_close(l_comp, l_eager, rtol=1e-9, atol=1e-11)
        g_e = torch.autograd.grad(l_eager, list(eager.parameters()))
        g_c = torch.autograd.grad(l_comp, list(model.parameters()))
        for a, b in zip(g_c, g_e):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)   # RMSNorm runs in fp32
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
