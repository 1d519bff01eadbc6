"""The reference op against an independent per-element loop and autograd; its explicit backward against
autograd; the edge cases of the maths and the API."""
import math

import pytest
import torch

import tda
from tda.ops import reference

D64 = torch.float64


def naive_tda(q1, k1, q2, k2, v, beta, lam, kappa, p, position_offset, causal=True, key_padding_mask=None):
    """Deliberately naive: one Python loop per output element, straight from the paper's formulas."""
    B, H, M, D = q1.shape
    Hk, N = k1.shape[1], k1.shape[2]
    g = H // Hk
    out = torch.zeros(B, H, M, v.shape[-1], dtype=D64)
    betas = [float(beta)] * H if torch.as_tensor(beta).numel() == 1 else [float(b) for b in beta]
    lams = None
    if q2 is not None:
        lams = [float(lam)] * H if torch.as_tensor(lam).numel() == 1 else [float(x) for x in lam]
    for b in range(B):
        for h in range(H):
            kh = h // g
            for r in range(M):
                i = position_offset + r
                t = betas[h] * math.sqrt(2 * max(math.log((i + 1) / kappa), 0.0) / D)
                for j in range(N):
                    if causal and j > r + (N - M):
                        continue
                    if key_padding_mask is not None and not key_padding_mask[b, j]:
                        continue

                    def view(q, k):
                        qv, kv = q[b, h, r].double(), k[b, kh, j].double()
                        s = float(qv @ kv) / math.sqrt(float(qv @ qv) + 1e-12) / math.sqrt(float(kv @ kv) + 1e-12)
                        return max(s - t, 0.0) ** p

                    w = view(q1, k1)
                    if q2 is not None:
                        w -= lams[h] * view(q2, k2)
                    out[b, h, r] += w * v[b, kh, j].double()
    return out


def rand(*shape, dtype=D64, requires_grad=False, gen=None):
    return torch.randn(*shape, dtype=dtype, generator=gen).requires_grad_(requires_grad)


def planted(B, H, Hk, M, N, D, gen, strength=2.0):
    """Random views where some keys copy a query's direction, so rows have survivors at any i."""
    q1, q2 = rand(B, H, M, D, gen=gen), rand(B, H, M, D, gen=gen)
    k1, k2 = rand(B, Hk, N, D, gen=gen), rand(B, Hk, N, D, gen=gen)
    g = H // Hk  # kv head h serves query heads h*g .. h*g+g-1: plant the first of them
    for j in range(0, N, 3):
        r = min(M - 1, max(0, j - (N - M)))
        k1[:, :, j] += strength * q1[:, ::g, r]
        k2[:, :, j] += 0.5 * strength * q2[:, ::g, r]
    return q1, k1, q2, k2


CASES = [  # (B, H, Hk, M, N, D, Dv, kappa, p, offset)
    (1, 2, 2, 7, 7, 8, 8, 1.0, 2.0, 0),
    (2, 4, 2, 5, 9, 6, 4, 0.5, 1.0, 4),
    (1, 4, 1, 6, 6, 16, 8, 2.0, 3.0, 0),
    (2, 2, 2, 3, 11, 8, 5, 1.5, 2.0, 8),
    (1, 3, 3, 9, 9, 4, 4, 0.25, 1.5, 0),
]


@pytest.mark.parametrize("B,H,Hk,M,N,D,Dv,kappa,p,off", CASES)
def test_matches_naive_loop(B, H, Hk, M, N, D, Dv, kappa, p, off):
    gen = torch.Generator().manual_seed(hash((B, H, M, N, D)) % 2**31)
    q1, k1, q2, k2 = planted(B, H, Hk, M, N, D, gen)
    v = rand(B, Hk, N, Dv, gen=gen)
    beta = torch.rand(H, dtype=D64, generator=gen) * 0.4 + 0.3
    lam = torch.rand(H, dtype=D64, generator=gen) * 0.8 + 0.1
    got, w = tda.threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, kappa=kappa, p=p,
                                                  position_offset=off, backend="reference", return_weights=True)
    want = naive_tda(q1, k1, q2, k2, v, beta, lam, kappa, p, off)
    assert got.dtype == D64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # planted keys make sure the comparison sees survivors, and the threshold makes exact zeros
    assert (w != 0).any() and (w == 0).any()
    # single view (TRA) against the same loop with no second view
    got1 = tda.threshold_rectified_attention(q1, k1, v, beta, kappa=kappa, p=p, position_offset=off,
                                             backend="reference")
    torch.testing.assert_close(got1, naive_tda(q1, k1, None, None, v, beta, None, kappa, p, off),
                               rtol=1e-10, atol=1e-12)


def test_non_causal_matches_naive():
    gen = torch.Generator().manual_seed(3)
    q1, k1, q2, k2 = planted(1, 2, 2, 5, 8, 6, gen)
    v = rand(1, 2, 8, 3, gen=gen)
    got = tda.threshold_differential_attention(q1, k1, q2, k2, v, 0.7, 0.4, causal=False, position_offset=3)
    torch.testing.assert_close(got, naive_tda(q1, k1, q2, k2, v, 0.7, 0.4, 1.0, 2.0, 3, causal=False))


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_gradcheck_all_inputs(p):
    gen = torch.Generator().manual_seed(int(p) + 10)
    B, H, Hk, M, N, D = 1, 2, 1, 5, 6, 4
    q1, k1, q2, k2 = [t.detach().requires_grad_() for t in planted(B, H, Hk, M, N, D, gen, strength=3.0)]
    v = rand(B, Hk, N, 3, requires_grad=True, gen=gen)
    beta = torch.tensor([0.8, 1.2], dtype=D64, requires_grad=True)
    lam = torch.tensor([0.3, 0.6], dtype=D64, requires_grad=True)

    def f(q1, k1, q2, k2, v, beta, lam):
        return tda.threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, kappa=0.7, p=p,
                                                    position_offset=2, backend="reference")

    # survivors must exist, otherwise the gradients checked would be trivially zero
    assert f(q1, k1, q2, k2, v, beta, lam).abs().sum() > 0
    assert torch.autograd.gradcheck(f, (q1, k1, q2, k2, v, beta, lam), eps=1e-6, atol=1e-5)


def test_beta_and_lam_get_true_gradients():
    gen = torch.Generator().manual_seed(5)
    q1, k1, q2, k2 = planted(2, 2, 2, 8, 8, 8, gen)
    v = rand(2, 2, 8, 4, gen=gen)
    beta = torch.tensor(1.0, dtype=D64, requires_grad=True)
    lam = torch.tensor(0.5, dtype=D64, requires_grad=True)
    out = tda.threshold_differential_attention(q1, k1, q2, k2, v, beta, lam)
    (out * torch.linspace(-1, 1, out.numel(), dtype=D64).view_as(out)).sum().backward()
    assert beta.grad is not None and beta.grad != 0
    assert lam.grad is not None and lam.grad != 0


def test_row_zero_has_tau_zero():
    t = reference.tau(torch.arange(5), torch.tensor([1.0, 2.0]), kappa=1.0, d=16)
    assert torch.all(t[:, 0] == 0)
    assert torch.all(t[:, 1:] > 0)
    # kappa > 1 keeps tau at zero while log((i + 1) / kappa) <= 0
    t3 = reference.tau(torch.arange(5), torch.tensor([1.0]), kappa=3.0, d=16)
    assert torch.all(t3[0, :3] == 0) and t3[0, 3] > 0
    torch.testing.assert_close(t[1, 4], torch.tensor(2.0 * math.sqrt(2 * math.log(5) / 16)))


def test_zero_rows_give_zero_output_and_finite_grads():
    gen = torch.Generator().manual_seed(7)
    q1, k1, q2, k2 = [t.detach() for t in planted(1, 2, 2, 6, 6, 8, gen)]
    q1[0, 0, 2] = 0.0  # an all-zero query vector
    q2[0, 0, 2] = 0.0
    k1[0, 1, 0] = 0.0  # an all-zero key
    params = [t.requires_grad_() for t in (q1, k1, q2, k2)]
    v = rand(1, 2, 6, 4, requires_grad=True, gen=gen)
    beta = torch.tensor(1.0, dtype=D64, requires_grad=True)
    lam = torch.tensor(0.5, dtype=D64, requires_grad=True)
    # beta large: every later row's threshold is above any cosine -> all-zero rows
    out, w = tda.threshold_differential_attention(*params[:2], *params[2:], v, beta, lam, return_weights=True)
    assert torch.all(out[0, 0, 2] == 0) and torch.all(w[0, 0, 2] == 0)
    out.sum().backward()
    for t in (*params, v, beta, lam):
        assert torch.isfinite(t.grad).all()
    big = torch.tensor(50.0, dtype=D64, requires_grad=True)
    out2 = tda.threshold_differential_attention(*params[:2], *params[2:], v, big, lam)
    assert torch.all(out2[:, :, 1:] == 0)  # row 0 has tau = 0 and can survive; the rest cannot
    out2.sum().backward()
    assert torch.isfinite(big.grad)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_suffix_with_offset_equals_last_rows(chunk):
    gen = torch.Generator().manual_seed(11)
    N, M = 13, 5
    q1, k1, q2, k2 = planted(2, 2, 1, N, N, 8, gen)
    v = rand(2, 1, N, 4, gen=gen)
    full = reference.threshold_differential_attention(q1, k1, q2, k2, v, 1.0, 0.5, chunk_size=chunk)
    tail = reference.threshold_differential_attention(q1[:, :, -M:], k1, q2[:, :, -M:], k2, v, 1.0, 0.5,
                                                      position_offset=N - M, chunk_size=chunk)
    torch.testing.assert_close(tail, full[:, :, -M:], rtol=1e-12, atol=1e-12)


def test_gqa_equals_repeated_kv():
    gen = torch.Generator().manual_seed(13)
    q1, k1, q2, k2 = planted(2, 6, 2, 9, 9, 8, gen)
    v = rand(2, 2, 9, 5, gen=gen)
    gqa = tda.threshold_differential_attention(q1, k1, q2, k2, v, 0.9, 0.3, kappa=0.5)
    rep = [t.repeat_interleave(3, 1) for t in (k1, k2, v)]
    mha = tda.threshold_differential_attention(q1, rep[0], q2, rep[1], rep[2], 0.9, 0.3, kappa=0.5)
    torch.testing.assert_close(gqa, mha, rtol=0, atol=0)


def test_padding_mask_excludes_keys_exactly():
    gen = torch.Generator().manual_seed(17)
    q1, k1, q2, k2 = planted(2, 2, 2, 8, 8, 8, gen, strength=4.0)
    v = rand(2, 2, 8, 4, gen=gen)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, [1, 4]] = False
    mask[1, 0] = False
    out, w = tda.threshold_differential_attention(q1, k1, q2, k2, v, 0.5, 0.5, key_padding_mask=mask,
                                                  return_weights=True)
    assert torch.all(w[0, :, :, [1, 4]] == 0) and torch.all(w[1, :, :, 0] == 0)
    torch.testing.assert_close(out, naive_tda(q1, k1, q2, k2, v, 0.5, 0.5, 1.0, 2.0, 0, key_padding_mask=mask))
    # changing the masked keys' values and directions cannot change the output
    v2, k1b = v.clone(), k1.clone()
    v2[0, :, [1, 4]] = 100.0
    k1b[1, :, 0] = q1[1, :, 0] * 10
    out2 = tda.threshold_differential_attention(q1, k1b, q2, k2, v2, 0.5, 0.5, key_padding_mask=mask)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)


def test_chunked_equals_unchunked_with_grads():
    gen = torch.Generator().manual_seed(19)
    base = [t.detach() for t in planted(1, 2, 2, 20, 20, 8, gen)]
    v0 = rand(1, 2, 20, 4, gen=gen)
    grads = []
    for chunk in (4, 1024):
        ts = [t.clone().requires_grad_() for t in (*base, v0)]
        beta = torch.tensor(1.0, dtype=D64, requires_grad=True)
        lam = torch.tensor(0.5, dtype=D64, requires_grad=True)
        out = reference.threshold_differential_attention(*ts, beta, lam, chunk_size=chunk)
        (out * out).sum().backward()
        grads.append([out.detach()] + [t.grad for t in ts] + [beta.grad, lam.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_low_precision_runs_in_input_dtype():
    gen = torch.Generator().manual_seed(23)
    q1, k1, q2, k2 = [t.float() for t in planted(1, 2, 2, 16, 16, 16, gen)]
    v = torch.randn(1, 2, 16, 16, generator=gen)
    ref = tda.threshold_differential_attention(q1.double(), k1.double(), q2.double(), k2.double(), v.double(),
                                               1.0, 0.5)
    for dt in (torch.bfloat16, torch.float32):
        out = tda.threshold_differential_attention(*(t.to(dt) for t in (q1, k1, q2, k2, v)), 1.0, 0.5)
        assert out.dtype == dt
        err = (out.double() - ref).norm() / ref.norm()
        assert err < (5e-2 if dt == torch.bfloat16 else 1e-5)


def test_long_sequence_runs_in_chunks():
    # 4K tokens: materialising 4K x 4K per head twice would be large; chunking keeps it O(chunk * N)
    gen = torch.Generator().manual_seed(29)
    N = 4096
    q1, k1, q2, k2 = (torch.randn(1, 2, N, 32, generator=gen) for _ in range(4))
    v = torch.randn(1, 2, N, 32, generator=gen)
    out = tda.threshold_differential_attention(q1, k1, q2, k2, v, 1.0, 0.5)
    assert out.shape == (1, 2, N, 32) and torch.isfinite(out).all()
    # spot-check the last rows against a direct single-chunk computation of just those rows
    tail = reference.threshold_differential_attention(q1[:, :, -8:], k1, q2[:, :, -8:], k2, v, 1.0, 0.5,
                                                      position_offset=N - 8, chunk_size=8)
    torch.testing.assert_close(out[:, :, -8:], tail)


BAD = [
    ("head-dim", lambda a: {**a, "q1": a["q1"][..., :4], "q2": a["q2"][..., :4]}, "k1 head dim 8 != q1 head dim 4"),
    ("k1", lambda a: {**a, "k1": torch.randn(2, 2, 6, 7)}, "k1"),
    ("v", lambda a: {**a, "v": torch.randn(2, 2, 5, 8)}, "v must"),
    ("q2", lambda a: {**a, "q2": torch.randn(2, 2, 3, 8)}, "q2"),
    ("k2", lambda a: {**a, "k2": torch.randn(2, 2, 7, 8)}, "k2"),
    ("heads", lambda a: {**a, "q1": torch.randn(2, 3, 6, 8), "q2": torch.randn(2, 3, 6, 8)}, "heads"),
    ("kappa", lambda a: {**a, "kappa": 0.0}, "kappa"),
    ("kappa-neg", lambda a: {**a, "kappa": -1.0}, "kappa"),
    ("p", lambda a: {**a, "p": 0.5}, "p must"),
    ("dtype", lambda a: {**a, "q1": a["q1"].long()}, "q1 must be a floating"),
    ("beta-nan", lambda a: {**a, "beta": torch.tensor(float("nan"))}, "beta"),
    ("lam-inf", lambda a: {**a, "lam": torch.tensor(float("inf"))}, "lam"),
    ("beta-shape", lambda a: {**a, "beta": torch.ones(3)}, "beta"),
    ("offset", lambda a: {**a, "position_offset": -1}, "position_offset"),
    ("mixed-dtype", lambda a: {**a, "v": a["v"].double()}, "dtype"),
    ("ndim", lambda a: {**a, "v": torch.randn(2, 6, 8)}, "v must have 4 dims"),
    ("backend", lambda a: {**a, "backend": "cuda"}, "backend"),
    # causal lengths: N_q <= N_k <= N_q + position_offset
    ("fewer-keys", lambda a: {**a, "k1": a["k1"][:, :, :4], "k2": a["k2"][:, :, :4], "v": a["v"][:, :, :4]},
     "at least as many keys as queries: k1 has 4 positions, q1 has 6"),
    ("cache-without-offset", lambda a: {**a, "k1": torch.randn(2, 2, 9, 8), "k2": torch.randn(2, 2, 9, 8),
                                        "v": torch.randn(2, 2, 9, 8), "position_offset": 2},
     "k1 is 3 positions longer than q1, but position_offset is 2"),
]


@pytest.mark.parametrize("name,mutate,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_raise_value_error_naming_them(name, mutate, msg):
    args = dict(q1=torch.randn(2, 2, 6, 8), k1=torch.randn(2, 2, 6, 8), q2=torch.randn(2, 2, 6, 8),
                k2=torch.randn(2, 2, 6, 8), v=torch.randn(2, 2, 6, 8), beta=1.0, lam=0.5)
    args = mutate(args)
    kw = {k: args.pop(k) for k in list(args) if k not in ("q1", "k1", "q2", "k2", "v", "beta", "lam")}
    with pytest.raises(ValueError, match=msg):
        tda.threshold_differential_attention(args["q1"], args["k1"], args["q2"], args["k2"], args["v"],
                                             args["beta"], args["lam"], **kw)


def test_non_causal_takes_any_lengths():
    """Cross-attention (causal=False): fewer or more keys than queries, any offset."""
    gen = torch.Generator().manual_seed(3)
    q1, q2 = rand(1, 2, 6, 8, gen=gen), rand(1, 2, 6, 8, gen=gen)
    for N in (3, 11):
        k1, k2, v = rand(1, 2, N, 8, gen=gen), rand(1, 2, N, 8, gen=gen), rand(1, 2, N, 8, gen=gen)
        got = tda.threshold_differential_attention(q1, k1, q2, k2, v, 0.7, 0.4, causal=False, position_offset=1)
        torch.testing.assert_close(got, naive_tda(q1, k1, q2, k2, v, 0.7, 0.4, 1.0, 2.0, 1, causal=False))


GRAD_CASES = [  # (two views, B, H, Hk, M, N, offset, causal, p, normalize, scalar beta/lam)
    (True, 2, 4, 2, 9, 9, 0, True, 2.0, True, False),
    (True, 1, 3, 1, 5, 12, 7, True, 1.0, True, True),     # MQA, KV cache
    (True, 1, 2, 2, 7, 10, 40, True, 1.5, False, False),  # a window of the latest keys, raw q/k
    (True, 2, 2, 1, 6, 4, 0, False, 3.0, True, False),    # non-causal, fewer keys
    (False, 2, 4, 2, 8, 8, 3, True, 2.0, True, True),     # TRA
]


@pytest.mark.parametrize("case", GRAD_CASES)
def test_explicit_backward_matches_autograd(case):
    """reference.attention_backward -- the gradients written out, the kernels' oracle -- equals autograd
    through the reference forward: every input, beta and lam included (per head, or summed for a scalar)."""
    two, B, H, Hk, M, N, off, causal, p, normalize, scalar = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    q1, k1, q2, k2 = planted(B, H, Hk, M, N, 8, gen)
    if not normalize:
        q1, k1, q2, k2 = (reference.l2_normalize(x) for x in (q1, k1, q2, k2))
    v = rand(B, Hk, N, 6, gen=gen)
    beta = torch.tensor(0.6, dtype=D64) if scalar else torch.rand(H, dtype=D64, generator=gen) * 0.4 + 0.3
    lam = torch.tensor(0.4, dtype=D64) if scalar else torch.rand(H, dtype=D64, generator=gen) * 0.8 + 0.1
    leaves = [x.requires_grad_(True) for x in (q1, k1, q2, k2, v, beta, lam)]
    kw = dict(kappa=0.8, p=p, causal=causal, position_offset=off, normalize_qk=normalize)
    if two:
        out = reference.threshold_differential_attention(*leaves, **kw)
        names, args = ["q1", "k1", "q2", "k2", "v", "beta", "lam"], leaves
    else:
        out = reference.threshold_rectified_attention(q1, k1, v, beta, **kw)
        names, args = ["q", "k", "v", "beta"], [q1, k1, v, beta]
    assert (out != 0).any()
    dout = rand(*out.shape, gen=gen)
    want = torch.autograd.grad(out, args, dout)
    got = reference.attention_backward(dout, q1.detach(), k1.detach(), q2.detach() if two else None,
                                       k2.detach() if two else None, v.detach(), beta.detach(),
                                       lam.detach() if two else None, **kw)
    for name, w in zip(names, want):
        g = got[name].sum() if w.dim() == 0 else got[name]
        assert w.abs().sum() > 0, name
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)


def test_tra_names_its_own_arguments():
    with pytest.raises(ValueError, match="k head dim"):
        tda.threshold_rectified_attention(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 6),
                                          torch.randn(1, 1, 4, 8), 1.0)
