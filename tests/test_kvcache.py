"""The cached-decode entry against the plain op over the same tokens."""
import pytest
import torch

from conftest import needs_interpreter
from tda.ops import reference
from tda.ops.kvcache import (threshold_differential_attention_with_kvcache,
                             threshold_rectified_attention_with_kvcache)


def _full(q1, k1, q2, k2, v, beta, lam, L, M):
    """The plain op over one sequence's first L tokens, last M query rows."""
    if q2 is None:
        return reference.threshold_rectified_attention(q1[:, :, L - M:L], k1[:, :, :L], v[:, :, :L], beta,
                                                       position_offset=L - M)
    return reference.threshold_differential_attention(q1[:, :, L - M:L], k1[:, :, :L], q2[:, :, L - M:L],
                                                      k2[:, :, :L], v[:, :, :L], beta, lam,
                                                      position_offset=L - M)


@pytest.mark.parametrize("two_views", [True, False])
@pytest.mark.parametrize("Hk", [4, 2])
@pytest.mark.parametrize("M", [1, 3])
def test_append_and_attend_matches_full_op(two_views, Hk, M):
    g = torch.Generator().manual_seed(7 + M + Hk)
    B, H, S, D = 3, 4, 40, 16
    lens = [5, 17, 30]  # cached positions per sequence before the call
    full = [torch.randn(B, h, S, D, generator=g, dtype=torch.float64) for h in (H, Hk, H, Hk, Hk)]
    q1, k1, q2, k2, v = full
    beta, lam = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    caches = [torch.zeros(B, Hk, S, D, dtype=torch.float64) for _ in range(3)]
    for b, c in enumerate(lens):
        caches[0][b, :, :c] = reference.l2_normalize(k1[b, :, :c])
        caches[1][b, :, :c] = reference.l2_normalize(k2[b, :, :c])
        caches[2][b, :, :c] = v[b, :, :c]
    seqlens = torch.tensor(lens, dtype=torch.int32)
    qn = torch.stack([q1[b, :, c:c + M] for b, c in enumerate(lens)])
    kn = [torch.stack([t[b, :, c:c + M] for b, c in enumerate(lens)]) for t in (k1, k2, v)]
    if two_views:
        q2n = torch.stack([q2[b, :, c:c + M] for b, c in enumerate(lens)])
        out = threshold_differential_attention_with_kvcache(
            qn, q2n, caches[0], caches[1], caches[2], beta, lam, cache_seqlens=seqlens,
            k1=kn[0], k2=kn[1], v=kn[2])
    else:
        out = threshold_rectified_attention_with_kvcache(qn, caches[0], caches[2], beta, cache_seqlens=seqlens,
                                                         k=kn[0], v=kn[2])
    for b, c in enumerate(lens):
        want = _full(q1[b:b + 1], k1[b:b + 1], q2[b:b + 1] if two_views else None, k2[b:b + 1], v[b:b + 1],
                     beta, lam, c + M, M)
        torch.testing.assert_close(out[b:b + 1], want, rtol=1e-10, atol=1e-12)
        # the new keys were written normalised, the values as given
        torch.testing.assert_close(caches[0][b, :, c:c + M], reference.l2_normalize(k1[b, :, c:c + M]))
        torch.testing.assert_close(caches[2][b, :, c:c + M], v[b, :, c:c + M])
    assert out.abs().sum() > 0


def test_bad_input_names_the_argument():
    B, H, S, D = 2, 2, 8, 8
    q = torch.randn(B, H, 1, D)
    kc, vc = torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    with pytest.raises(ValueError, match="allocate a longer cache"):
        threshold_rectified_attention_with_kvcache(q, kc, vc, 1.0, cache_seqlens=S, k=q, v=q)
    with pytest.raises(ValueError, match="cache_seqlens"):
        threshold_rectified_attention_with_kvcache(q, kc, vc, 1.0, cache_seqlens=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="k must have shape"):
        threshold_rectified_attention_with_kvcache(q, kc, vc, 1.0, cache_seqlens=2, k=torch.randn(B, H, 2, D),
                                                   v=q)
    with pytest.raises(ValueError, match="come together"):
        threshold_rectified_attention_with_kvcache(q, kc, vc, 1.0, cache_seqlens=2, k=q)
    with pytest.raises(ValueError, match="kappa"):
        threshold_rectified_attention_with_kvcache(q, kc, vc, 1.0, cache_seqlens=2, kappa=0.0)
    with pytest.raises(ValueError, match="v_cache"):
        threshold_rectified_attention_with_kvcache(q, kc, vc[:, :, :4], 1.0, cache_seqlens=2)
    with pytest.raises(ValueError, match=">= 0"):
        threshold_rectified_attention_with_kvcache(q, kc, vc, 1.0, cache_seqlens=torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="backend"):
        threshold_rectified_attention_with_kvcache(q, kc, vc, 1.0, cache_seqlens=2, backend="cuda")


def test_append_writes_only_each_sequence_slots():
    """The in-place append touches positions cache_seqlens[b] .. + M - 1 of each sequence and nothing else."""
    g = torch.Generator().manual_seed(3)
    B, Hk, S, D, M = 3, 2, 12, 8, 2
    caches = [torch.randn(B, Hk, S, D, generator=g, dtype=torch.float64) for _ in range(3)]
    before = [c.clone() for c in caches]
    new = [torch.randn(B, Hk, M, D, generator=g, dtype=torch.float64) for _ in range(3)]
    lens = [0, 5, 10]
    q = torch.randn(B, Hk, M, D, generator=g, dtype=torch.float64)
    threshold_differential_attention_with_kvcache(q, q, *caches, 0.5, 0.3, cache_seqlens=torch.tensor(lens),
                                                  k1=new[0], k2=new[1], v=new[2], backend="reference")
    for c, c0, t, is_v in zip(caches, before, new, (False, False, True)):
        for b, L in enumerate(lens):
            want = t[b] if is_v else reference.l2_normalize(t[b])
            torch.testing.assert_close(c[b, :, L:L + M], want)
            assert torch.equal(c[b, :, :L], c0[b, :, :L]) and torch.equal(c[b, :, L + M:], c0[b, :, L + M:])


@pytest.mark.parametrize("two_views", [True, False])
def test_torch_path_ignores_what_lies_past_each_length(two_views):
    """Cache positions past a sequence's length (stale steps, or an empty-allocated cache) never reach the
    output, even when they hold NaN or inf: the full-cache path masks weights and values there."""
    g = torch.Generator().manual_seed(11)
    B, H, Hk, S, D, M = 2, 4, 2, 24, 16, 2
    caches = [torch.randn(B, Hk, S, D, generator=g, dtype=torch.float64) for _ in range(3)]
    lens = torch.tensor([6, 15])
    q1, q2 = (torch.randn(B, H, M, D, generator=g, dtype=torch.float64) for _ in range(2))
    kw = dict(cache_seqlens=lens, backend="reference")

    def call(cs, **extra):
        if two_views:
            return threshold_differential_attention_with_kvcache(q1, q2, *cs, 0.2, 0.4, **kw, **extra)
        return threshold_rectified_attention_with_kvcache(q1, cs[0], cs[2], 0.2, **kw, **extra)

    clean = call(caches)
    dirty = [c.clone() for c in caches]
    for b, L in enumerate(lens.tolist()):
        dirty[0][b, :, L:] = float("nan")
        dirty[1][b, :, L:] = float("inf")
        dirty[2][b, :, L:] = float("nan")
    got = call(dirty, max_seqlen_k=S)  # over the whole cache, as static decoding runs it
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, clean, rtol=1e-12, atol=1e-12)


def test_torch_path_reads_nothing_on_the_host():
    """With max_seqlen_k given and check_finite=False, the torch path needs no value of any tensor on the
    host, so a CUDA graph can capture it (CUDA-graph decoding of models whose head dim the kernel lacks).
    Fake tensors carry no data: any host read (int(), .item(), .tolist()) raises."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    B, H, S, D, M = 2, 4, 20, 8, 1
    with FakeTensorMode():
        q1, q2 = torch.randn(B, H, M, D), torch.randn(B, H, M, D)
        caches = [torch.randn(B, H, S, D) for _ in range(3)]
        new = [torch.randn(B, H, M, D) for _ in range(3)]
        out = threshold_differential_attention_with_kvcache(
            q1, q2, *caches, torch.full((H,), 0.3), torch.full((H,), 0.2), cache_seqlens=torch.tensor([3, 9]),
            k1=new[0], k2=new[1], v=new[2], max_seqlen_k=S, backend="reference", check_finite=False)
        assert out.shape == (B, H, M, D)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("two_views", [True, False])
def test_unchecked_call_gives_the_checked_result(two_views, backend):
    """check_inputs=False (the layers' decode step) skips the argument checks and nothing else: same output,
    same cache writes (the unchecked path hands the int32 lengths to the kernels as they are); without
    max_seqlen_k it refuses."""
    if backend == "triton":
        needs_interpreter()  # fp64 CPU tensors
    g = torch.Generator().manual_seed(5)
    B, H, Hk, S, D, M = 2, 4, 2, 16, 16, 1
    lens = torch.tensor([3, 9], dtype=torch.int32)
    q1, q2 = (torch.randn(B, H, M, D, generator=g, dtype=torch.float64) for _ in range(2))
    new = [torch.randn(B, Hk, M, D, generator=g, dtype=torch.float64) for _ in range(3)]
    base = [torch.randn(B, Hk, S, D, generator=g, dtype=torch.float64) for _ in range(3)]
    beta, lam = torch.full((H,), 0.3, dtype=torch.float64), torch.full((H,), 0.4, dtype=torch.float64)
    norm = (torch.rand(H, D, generator=g, dtype=torch.float64) + 0.5, 1e-6)
    results = []
    for check in (True, False):
        caches = [c.clone() for c in base]
        kw = dict(cache_seqlens=lens, max_seqlen_k=10, head_norm=norm, check_inputs=check, backend=backend)
        if two_views:
            out = threshold_differential_attention_with_kvcache(q1, q2, *caches, beta, lam, k1=new[0], k2=new[1],
                                                                v=new[2], **kw)
        else:
            out = threshold_rectified_attention_with_kvcache(q1, caches[0], caches[2], beta, k=new[0], v=new[2],
                                                             **kw)
        results.append((out, caches))
    (a, ca), (b, cb) = results
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ca, cb))
    with pytest.raises(ValueError, match="check_inputs=False needs max_seqlen_k"):
        threshold_rectified_attention_with_kvcache(q1, base[0], base[2], beta, cache_seqlens=lens,
                                                   check_inputs=False)
