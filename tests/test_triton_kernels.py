"""Fused Triton kernels (tda.ops.triton) against the reference op, forward and every gradient.

On a CPU the kernels run under TRITON_INTERPRET=1 (set here and in conftest.py before triton is
imported), in float64, with tiny tiles so that tiny shapes span several blocks."""
import os

if "triton" not in __import__("sys").modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import dataclasses

import pytest
import torch

import tda.ops as ops
from tda.ops import reference

tk = pytest.importorskip("tda.ops.triton.attention")
import triton  # noqa: E402 (after the interpreter switch above)
import triton.language as tl  # noqa: E402

from tda.ops.triton import config as kc, launch  # noqa: E402
from tda.ops.triton.common import grouped_order, live_list  # noqa: E402
from tda.ops.triton.config import KernelConfig  # noqa: E402

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
DEV = "cuda" if ON_GPU else "cpu"
DT = torch.float32 if ON_GPU else torch.float64
TOL = 1e-4 if ON_GPU else 1e-10


def cfg(bm=16, bn=16, flags=(0, 0), dkdv=(16, 16), dq=(16, 16), **kw):
    """A small-tile KernelConfig (one warp group, one stage) for the interpreter's tiny shapes."""
    return KernelConfig(bm, bn, 4, 1, flag_m=flags[0], flag_n=flags[1], dkdv_block=dkdv, dq_block=dq, bwd_stages=1,
                        **kw)


def _leaf(*shape, noncontig=False, scale=1.0):
    if noncontig:  # a transposed view: stride(-1) != 1
        t = (torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=DT, device=DEV) * scale).transpose(-1, -2)
    else:
        t = torch.randn(*shape, dtype=DT, device=DEV) * scale
    return t.requires_grad_(True)


def _make(B, H, Hk, M, N, D, Dv, two_views, noncontig=False):
    q1, k1 = _leaf(B, H, M, D, noncontig=noncontig), _leaf(B, Hk, N, D, noncontig=noncontig)
    v = _leaf(B, Hk, N, Dv, noncontig=noncontig)
    beta = (torch.rand(H, dtype=DT, device=DEV) * 0.8 + 0.2).requires_grad_(True)
    if not two_views:
        return dict(q=q1, k=k1, v=v, beta=beta)
    q2, k2 = _leaf(B, H, M, D), _leaf(B, Hk, N, D)
    lam = (torch.rand(H, dtype=DT, device=DEV) * 0.8 + 0.1).requires_grad_(True)
    return dict(q1=q1, k1=k1, q2=q2, k2=k2, v=v, beta=beta, lam=lam)


def _call(backend, inputs, config=None, **kw):
    """The public op (backend), or with `config` the kernel entry that takes one."""
    two = "q1" in inputs
    if config is not None:
        fn = tk.threshold_differential_attention if two else tk.threshold_rectified_attention
        return fn(**inputs, config=config, **kw)
    fn = ops.threshold_differential_attention if two else ops.threshold_rectified_attention
    return fn(**inputs, backend=backend, **kw)


def _run(backend, inputs, dout, config=None, **kw):
    out = _call(backend, inputs, config, **kw)
    grads = torch.autograd.grad(out, list(inputs.values()), dout(out), allow_unused=True)
    return out, dict(zip(inputs, grads))


def _oracle_grads(inputs, dout, **kw):
    """reference.attention_backward's explicit gradients, reduced to each input's shape (scalar beta/lam)."""
    two = "q1" in inputs
    d = {n: t.detach() for n, t in inputs.items()}
    args = ((d["q1"], d["k1"], d["q2"], d["k2"]) if two else (d["q"], d["k"], None, None))
    g = reference.attention_backward(dout, *args, d["v"], d["beta"], d.get("lam"), **kw)
    return {n: g[n].sum().reshape(d[n].shape) if d[n].dim() == 0 else g[n] for n in inputs}


def _compare(inputs, tol=TOL, config=None, **kw):
    """Kernel vs reference: output and the gradient of every input, for one fresh random dO, against
    autograd through the reference forward and against the reference's explicit backward."""
    cache = []
    dout = lambda out: cache[0] if cache else cache.append(torch.randn_like(out)) or cache[0]  # noqa: E731
    out_r, g_r = _run("reference", inputs, dout, **kw)
    out_k, g_k = _run("triton", inputs, dout, config, **kw)
    g_o = _oracle_grads(inputs, cache[0], **kw)
    assert out_k.shape == out_r.shape and out_k.dtype == out_r.dtype
    assert torch.isfinite(out_k).all()
    assert out_r.abs().sum() > 0, "degenerate test: reference output is all zero"
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-30)).item()  # noqa: E731
    assert rel(out_k, out_r) < tol, f"out rel err {rel(out_k, out_r):.2e}"
    for name in inputs:
        a, b, c = g_k[name], g_r[name], g_o[name]
        assert a is not None and b is not None, name
        assert torch.isfinite(a).all(), name
        assert rel(a, b) < tol, f"d{name} rel err {rel(a, b):.2e}"
        assert rel(a, c) < tol, f"d{name} rel err against the explicit backward {rel(a, c):.2e}"
    return out_k


# B, H, Hk, M, N, D, Dv, p, causal, position_offset, kappa, noncontig
TDA_CASES = [
    (1, 2, 2, 37, 37, 16, 16, 2.0, True, 0, 1.0, False),
    (2, 4, 2, 29, 29, 32, 16, 1.0, True, 0, 0.5, False),      # GQA, p = 1, Dv != D
    (1, 3, 1, 21, 50, 16, 32, 3.0, True, 29, 2.0, False),     # MQA, KV cache: k/v longer than q
    (1, 2, 2, 40, 33, 16, 16, 2.0, False, 5, 1.0, True),      # non-causal, non-contiguous, N < M
    (2, 2, 1, 18, 41, 16, 16, 1.5, True, 100, 0.3, True),     # general p, offset != N - M
]


@pytest.mark.parametrize("case", TDA_CASES)
def test_tda_matches_reference(case):
    torch.manual_seed(hash(case) % 2**31)
    B, H, Hk, M, N, D, Dv, p, causal, off, kappa, nc = case
    inputs = _make(B, H, Hk, M, N, D, Dv, True, noncontig=nc)
    _compare(inputs, kappa=kappa, p=p, causal=causal, position_offset=off)


@pytest.mark.parametrize("case", TDA_CASES)
def test_tda_finer_flags_match_reference(case):
    """Survivor flags at a finer grain than the forward blocks (16 x 16 flags in 32 x 32 blocks), read by
    16 x 16 backward blocks: same results, every case (GQA, KV cache, non-causal, N < M, general p)."""
    torch.manual_seed(hash(case) % 2**31 + 1)
    B, H, Hk, M, N, D, Dv, p, causal, off, kappa, nc = case
    inputs = _make(B, H, Hk, M, N, D, Dv, True, noncontig=nc)
    _compare(inputs, config=cfg(32, 32, flags=(16, 16)), kappa=kappa, p=p, causal=causal, position_offset=off)


@pytest.mark.parametrize("case", [
    (1, 2, 2, 35, 35, 16, 16, 2.0, True, 0, 1.0, False),
    (2, 4, 2, 19, 44, 32, 32, 1.0, True, 25, 0.7, True),
    (1, 2, 1, 26, 26, 16, 16, 3.0, False, 0, 1.0, False),
])
def test_tra_matches_reference(case):
    torch.manual_seed(hash(case) % 2**31)
    B, H, Hk, M, N, D, Dv, p, causal, off, kappa, nc = case
    inputs = _make(B, H, Hk, M, N, D, Dv, False, noncontig=nc)
    _compare(inputs, kappa=kappa, p=p, causal=causal, position_offset=off)


def test_scalar_beta_lam_and_no_normalize():
    torch.manual_seed(1)
    inputs = _make(1, 2, 2, 20, 20, 16, 16, True)
    inputs["beta"] = torch.tensor(0.6, dtype=DT, device=DEV, requires_grad=True)
    inputs["lam"] = torch.tensor(0.3, dtype=DT, device=DEV, requires_grad=True)
    with torch.no_grad():  # already near unit norm so that cosine-free scores stay in range
        for n in ("q1", "k1", "q2", "k2"):
            inputs[n].div_(inputs[n].norm(dim=-1, keepdim=True))
    _compare(inputs, normalize_qk=False)


def _vary_norms(inputs, gen):
    """Scale every q/k row by a random factor in [0.1, 10] (log-uniform); then, per view, make one q row
    and one k row exactly zero and one of each of norm ~eps (where the eps of the normalisation matters)."""
    with torch.no_grad():
        for n in [n for n in inputs if n[0] in "qk"]:
            x = inputs[n]
            x.mul_(10 ** (torch.rand(x.shape[:-1], generator=gen, dtype=DT).to(DEV) * 2 - 1)[..., None])
            x[:, :, 3] = 0.0
            x[:, :, 5] *= 1e-6 / x[:, :, 5].norm(dim=-1, keepdim=True)
    return inputs


@pytest.mark.parametrize("case", [
    (2, 4, 2, 37, 37, 16, 16, 2.0, True, 0, 1.0, False, True),    # GQA, TDA
    (1, 2, 1, 21, 45, 32, 16, 1.0, True, 24, 0.5, True, True),    # MQA, KV cache, non-contiguous, p = 1
    (1, 3, 3, 30, 30, 16, 32, 3.0, False, 0, 1.0, False, False),  # TRA, non-causal
])
def test_fused_normalization_varied_norms(case):
    """normalize_qk=True on rows of very different norms, zero rows and rows of norm ~eps: the kernels'
    fused normalisation (and its backward) must match reference.l2_normalize under autograd."""
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    torch.manual_seed(hash(case) % 2**31)
    B, H, Hk, M, N, D, Dv, p, causal, off, kappa, nc, two = case
    inputs = _vary_norms(_make(B, H, Hk, M, N, D, Dv, two, noncontig=nc), gen)
    _compare(inputs, kappa=kappa, p=p, causal=causal, position_offset=off, normalize_qk=True)


def test_no_normalize_raw_inputs():
    """normalize_qk=False on non-unit inputs: the kernels use the raw dot products (no scaling)."""
    torch.manual_seed(9)
    inputs = _make(1, 4, 2, 27, 27, 16, 16, True)
    tra = _make(1, 2, 1, 23, 23, 32, 16, False)
    with torch.no_grad():
        for d in (inputs, tra):
            for n in [n for n in d if n[0] in "qk"]:
                d[n].mul_(0.35)
    _compare(inputs, p=2.0, normalize_qk=False)
    _compare(tra, p=1.0, normalize_qk=False)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_causal_lengths_are_validated(backend):
    """Causal calls need N_q <= N_k <= N_q + position_offset: fewer keys than queries (rows that would see
    no key) and keys beyond the offset (a KV cache whose positions position_offset does not count) raise a
    ValueError naming the arguments; a KV cache with its offset, and a window of the latest keys, run and
    match the reference. Non-causal calls take any lengths."""
    torch.manual_seed(2)
    inputs = _make(1, 2, 2, 24, 10, 16, 16, True)
    with pytest.raises(ValueError, match="at least as many keys as queries: k1 has 10 positions, q1 has 24"):
        _call(backend, inputs)
    with pytest.raises(ValueError, match="at least as many keys"):
        _call(backend, inputs, position_offset=50)
    kv = _make(1, 2, 1, 12, 30, 16, 16, True)
    with pytest.raises(ValueError, match="k1 is 18 positions longer than q1, but position_offset is 0"):
        _call(backend, kv)
    with pytest.raises(ValueError, match="position_offset is 17"):
        _call(backend, kv, position_offset=17)
    tra = _make(1, 2, 1, 12, 30, 16, 16, False)
    with pytest.raises(ValueError, match="k is 18 positions longer than q"):
        _call(backend, tra)
    assert _call(backend, inputs, causal=False).shape == (1, 2, 24, 16)
    if backend == "triton":
        _compare(kv, position_offset=18)  # a KV cache of 18 positions
        _compare(kv, position_offset=40)  # a window: the latest 30 of 52 positions


@pytest.mark.parametrize("config", [
    cfg(32, 32, dkdv=(16, 16), dq=(16, 16)),                  # backward blocks inside flag tiles
    cfg(16, 16, dkdv=(32, 32), dq=(32, 32)),                  # backward blocks span 2x2 tiles
    cfg(32, 32, flags=(16, 16)),                              # flags finer than the forward blocks
    cfg(32, 32, flags=(16, 8), dkdv=(32, 16), dq=(16, 32)),   # mixed grains
])
def test_block_configs(config):
    torch.manual_seed(3)
    _compare(_make(1, 2, 1, 45, 45, 16, 16, True), config=config, p=2.0, causal=True)


@pytest.mark.parametrize("two_views,base", [
    (True, cfg(16, 16, dkdv=(16, 32), dq=(32, 16))),
    (True, cfg(32, 32, flags=(16, 16), dkdv=(16, 32), dq=(32, 16))),
    (False, cfg(16, 16, dkdv=(32, 16), dq=(16, 32))),
])
def test_backward_lists_change_nothing(two_views, base):
    """The backward's live-block lists (dkdv_lists / dq_lists, also with 2-block and 1-block chunks so that
    the compaction takes several chunks, and scratch rows shorter than the candidates so that it takes
    several rounds) give bit-identical gradients to the loops that test each block's flag; GQA (scratch rows
    reused across the group) and ragged shapes included. And they match the reference."""
    torch.manual_seed(11)
    inputs = _make(2, 4, 2, 37, 45, 16, 16, two_views)
    dout = torch.randn(2, 4, 37, 16, dtype=DT, device=DEV)
    res = {}
    variants = [{}, dict(dkdv_lists=False, dq_lists=False), dict(dkdv_lists=False, list_chunk=2),
                dict(dq_lists=False, list_row=1, list_chunk=1), dict(list_row=3, list_chunk=2)]
    for i, v in enumerate(variants):
        res[i] = _run("triton", inputs, lambda out: dout, dataclasses.replace(base, **v), position_offset=8)
    for key, (out, grads) in res.items():
        assert torch.equal(out, res[0][0]), variants[key]
        for name in inputs:
            assert torch.equal(grads[name], res[0][1][name]), (variants[key], name)
    _compare(inputs, config=base, position_offset=8)


def _flags(inputs, config, normalize=True, **kw):
    """The survivor flags the training forward writes with `config` (launch.forward, as the autograd op
    calls it)."""
    d = {n: t.detach() for n, t in inputs.items()}
    two = "q1" in d
    q1, k1 = (d["q1"], d["k1"]) if two else (d["q"], d["k"])
    M, D = q1.shape[2], q1.shape[3]
    scale = tk.tau_scale(M, kw.get("position_offset", 0), kw.get("kappa", 1.0), D, q1.device, DT)
    return launch.forward(q1, k1, d.get("q2"), d.get("k2"), d["v"], d["beta"], scale, d.get("lam"),
                          kw.get("p", 2.0), kw.get("causal", True), config, normalize)[1]


@pytest.mark.parametrize("grain", ["block", "finer", "rows"])
def test_survivor_flags_and_skipping(grain):
    """The forward's flags equal 'any exceedance in the 16 x 16 tile', computed from the reference. 'finer':
    32 x 32 forward blocks that record 16 x 16 flags (sub-tile grain), which the 16 x 16 backward reads;
    'rows': 32 x 16 blocks split into 16 x 16 flags along the rows only."""
    config = {"block": cfg(), "finer": cfg(32, 32, flags=(16, 16)), "rows": cfg(32, 16, flags=(16, 16))}[grain]
    torch.manual_seed(4)
    M = N = 48
    D = 16
    inputs = _make(1, 2, 2, M, N, D, D, True)
    with torch.no_grad():  # planted: everything orthogonal except a few matching (row, key) pairs
        for n in ("q1", "q2"):
            inputs[n].copy_(1e-3 * torch.randn_like(inputs[n]))
            inputs[n][..., 0] += 1.0
        for n in ("k1", "k2"):
            inputs[n].copy_(1e-3 * torch.randn_like(inputs[n]))
            inputs[n][..., 1] += 1.0
        inputs["k1"][:, :, 2] = inputs["q1"][:, :, 20]  # key 2 matches row 20 (flag tile (1, 0))
        inputs["k2"][:, :, 35] = inputs["q2"][:, :, 40]  # key 35 matches row 40 (flag tile (2, 2))
    kw = dict(kappa=1.0, p=2.0, causal=True, position_offset=0)
    out_skip = _compare(inputs, config=config, **kw)
    # the flags recorded by the forward equal "any exceedance > 0 in the tile", from the reference weights
    _, w = ops.threshold_differential_attention(**inputs, backend="reference", return_weights=True, **kw)
    taus = reference.tau(torch.arange(M, device=DEV), inputs["beta"].detach(), 1.0, D).to(DT)
    flags = []
    for n_q, n_k in (("q1", "k1"), ("q2", "k2")):
        qn, kn = reference.l2_normalize(inputs[n_q].detach()), reference.l2_normalize(inputs[n_k].detach())
        e = (qn @ kn.transpose(-1, -2) - taus[None, :, :, None]).clamp_min(0)
        flags.append(e)
    causal = torch.ones(M, N, dtype=torch.bool, device=DEV).tril()
    live = ((flags[0] + flags[1]) * causal > 0)[0]  # (H, M, N)
    expect = live.view(2, 3, 16, 3, 16).any(4).any(2).to(torch.int8)
    got_fused = _flags(inputs, config, **kw)  # normalisation in the kernel
    unit = {n: reference.l2_normalize(t.detach()) if n[0] in "qk" else t.detach() for n, t in inputs.items()}
    got = _flags(unit, config, normalize=False, **kw)
    assert torch.equal(got, got_fused)
    got = got.view(2, 3, 3)
    assert torch.equal(got.tril(), expect), (got, expect)
    assert not got.triu(1).any()  # never-visited pairs are written as zero by the kernel
    assert (expect == 0).any() and (expect == 1).any()
    assert (w != 0).any()
    # the screen of the masked stage (mask_screen) and, for inference, no survivor test at all must not
    # change the output
    for other in (dataclasses.replace(config, mask_screen=False), dataclasses.replace(config, survivor_test=False)):
        out_other = _compare(inputs, config=other, **kw)
        torch.testing.assert_close(out_skip, out_other, rtol=0, atol=1e-12)
        with torch.no_grad():
            out_other = _call("triton", inputs, other, **kw)
        torch.testing.assert_close(out_skip.detach(), out_other, rtol=0, atol=1e-12)


@triton.jit
def _grouped_order_probe(OUT, n_blk, n_bh, group):
    """One program per grid slot: common.grouped_order's (block, head) stored at its slot."""
    pid = tl.program_id(0)
    m, h = grouped_order(pid, n_blk, n_bh, group)
    tl.store(OUT + 2 * pid, m)
    tl.store(OUT + 2 * pid + 1, h)


def test_grouped_order_is_a_permutation():
    """common.grouped_order maps a flat grid onto every (block, head) pair once, in sections of `group` heads
    (the last one short) with block 0 first across a section's heads; group 1 is head by head."""
    def order(n_blk, n_bh, group):
        out = torch.full((n_blk * n_bh, 2), -1, dtype=torch.int32, device=DEV)
        _grouped_order_probe[(n_blk * n_bh,)](out, n_blk, n_bh, group)
        return [tuple(r) for r in out.tolist()]
    for n_blk, n_bh, group in ((1, 1, 1), (3, 5, 1), (3, 5, 2), (4, 8, 3), (7, 13, 4), (2, 6, 100)):
        got = order(n_blk, n_bh, group)
        assert sorted(got) == [(m, h) for m in range(n_blk) for h in range(n_bh)]
        g = min(group, n_bh)
        first = got[:n_blk * g]  # the first section: its heads' blocks, block 0 of each first
        assert {h for _, h in first} == set(range(g)) and [m for m, _ in first[:g]] == [0] * g
    assert order(3, 2, 1) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert order(2, 5, 2) == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3), (0, 4), (1, 4)]


@pytest.mark.parametrize("fwd_group,bwd_group", [(1, 1), (2, 5), (4, 3), (100, 100)])
def test_program_order_changes_nothing(fwd_group, bwd_group):
    """The sections the forward and the backward start their programs in (group, bwd_group) change no result:
    bit-identical output and gradients to the table's order, with 2 x 3 heads (short last sections), GQA and
    ragged shapes; and the reference agrees."""
    torch.manual_seed(8)
    inputs = _make(2, 3, 3, 45, 53, 16, 16, True)
    dout = torch.randn(2, 3, 45, 16, dtype=DT, device=DEV)
    kw = dict(causal=True, position_offset=8)
    # the base: the same blocks with the default sections (on a GPU the table would pick other blocks, and a
    # different summation order)
    out0, grads0 = _run("triton", inputs, lambda out: dout, kc.INTERPRETER_CONFIG, **kw)
    config = dataclasses.replace(kc.INTERPRETER_CONFIG, group=fwd_group, bwd_group=bwd_group)
    out, grads = _run("triton", inputs, lambda out: dout, config, **kw)
    assert out0.abs().sum() > 0 and torch.equal(out, out0)
    for name in inputs:
        assert torch.equal(grads[name], grads0[name]), name
    _compare(inputs, config=config, **kw)


def _grads_and_flags(inputs, config, **kw):
    """(output, gradients (dict), survivor flags) of a training call with `config`."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items()}
    out = _call("triton", leaves, config, **kw)
    grads = dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), torch.ones_like(out))))
    return out, grads, _flags(inputs, config, **kw)


@pytest.mark.parametrize("unit", [False, True])
def test_screen_keeps_every_survivor(unit):
    """fp32 scores planted within a few ulps of tau in pairs the forward screens: the screen must pass every
    pair the exact path finds alive. The unscreened reference: 16 x 64 forward blocks (every pair in the
    masked stage, N = 64) with mask_screen off, whose flags come from the exact exceedances. The screened
    forward's flags (from its conservative values) must be a superset of those, its output the same (up to
    the other blocks' summation order) and its gradients bit-identical (the extra flagged pairs add exact
    zeros). unit (unit_keys): the forward scores the fp32 unit keys, rounded copies -- close, not identical
    -- and the flags must still cover every pair the backward, which scores the raw keys, finds alive."""
    torch.manual_seed(12)
    M = N = 64
    D = 16
    beta = 1.3  # tau ~ 0.9: unplanted random pairs stay below it
    q = torch.randn(1, 1, M, D, device=DEV)
    k = torch.randn(1, 1, N, D, device=DEV)
    taus = reference.tau(torch.arange(M, device=DEV), torch.tensor([beta], device=DEV), 1.0, D).float()
    # two in diagonal (masked-stage) tiles, which the forward screens too (mask_screen): below and above tau
    diagonal = [(37, 34), (55, 49)]
    plants = [(40, 3), diagonal[0], (45, 17), (50, 20), (63, 33), (60, 5), (52, 30), (48, 12), (62, 40), diagonal[1]]
    hidden = (18, 29)  # above the diagonal inside a diagonal tile: a match the screen must not see
    for t, (i, j) in enumerate(plants + [hidden]):  # cos(q_i, k_j) = tau_i (1 + delta), delta -8e-7 .. 1e-6
        c = taus[0, i].double() * (1 + (t - 4) * 2e-7) if (i, j) != hidden else torch.tensor(0.99).double()
        qi = q[0, 0, i].double() / q[0, 0, i].double().norm()
        u = torch.randn(D, dtype=torch.float64, device=DEV)
        u = u - (u @ qi) * qi
        k[0, 0, j] = (3.0 * (c * qi + (1 - c * c).sqrt() * u / u.norm())).float()
    # view 2 random (no plants), so that view 1's screen alone decides the planted pairs
    inputs = dict(q1=q, k1=k, q2=torch.randn(1, 1, M, D, device=DEV), k2=torch.randn(1, 1, N, D, device=DEV),
                  v=torch.randn(1, 1, N, D, device=DEV), beta=torch.tensor([beta], device=DEV),
                  lam=torch.full((1,), 0.5, device=DEV))
    out_s, g_s, flags_s = _grads_and_flags(inputs, cfg(16, 16, unit_keys=unit))
    out_x, g_x, flags_x = _grads_and_flags(inputs, cfg(16, 64, flags=(16, 16), mask_screen=False))
    assert bool((flags_s >= flags_x).all()), (flags_s, flags_x)
    assert torch.allclose(out_s, out_x, rtol=1e-5, atol=1e-6)
    for name in inputs:
        assert torch.equal(g_s[name], g_x[name]), name
    planted = [flags_x[0, i // 16, j // 16].item() for i, j in plants]
    assert 0 < sum(planted) < len(plants), planted  # the plants land on both sides of tau
    assert [flags_x[0, i // 16, j // 16].item() for i, j in diagonal] == [0, 1]
    assert flags_s[0, 1, 1] == flags_x[0, 1, 1] == 0  # the hidden match flags nothing


@pytest.mark.parametrize("margin", [True, False])
def test_unit_key_flags_cover_the_raw_survivors_at_bf16_rounding(monkeypatch, margin):
    """The unit-key forward (unit_keys) scores round(k^), but the backward scores the raw keys, so the forward's
    flags must cover every raw survivor: its screen lowers tau by launch.hat_delta, which bounds k^'s rounding. The
    interpreter cannot run bf16 dots, so this emulates bf16's rounding in fp32: the pre-pass's unit keys
    go through bf16 and the margin is bf16's. Scores are planted within ~0.2% of tau (inside bf16's
    rounding of k^), so that many land on the other side of tau in the unit-key scores. With the margin the
    gradients equal the raw-key forward's bit for bit and its flags cover the raw ones; with the margin
    taken away (margin=False, the control) some raw survivor goes unflagged and the gradients differ."""
    torch.manual_seed(31)
    M = N = 64
    D = 16
    beta = 1.3  # tau ~ 0.9: unplanted random pairs stay below it
    q = torch.randn(1, 1, M, D, device=DEV)
    k = torch.randn(1, 1, N, D, device=DEV)
    taus = reference.tau(torch.arange(M, device=DEV), torch.tensor([beta], device=DEV), 1.0, D).float()
    # one plant per (16 x 16) tile below the diagonal, each raw score just above tau (0.01-0.2% relative)
    plants = [(i, j) for i in range(16, 64, 16) for j in range(0, i, 16)]
    plants = [(i + 3 + (t * 5) % 11, j + (t * 7) % 13) for t, (i, j) in enumerate(plants)]
    for t, (i, j) in enumerate(plants):
        c = taus[0, i].double() * (1 + 1e-4 + (t % 4) * 5e-4)
        qi = q[0, 0, i].double() / q[0, 0, i].double().norm()
        u = torch.randn(D, dtype=torch.float64, device=DEV)
        u = u - (u @ qi) * qi
        k[0, 0, j] = (2.0 * (c * qi + (1 - c * c).sqrt() * u / u.norm())).float()
    inputs = dict(q1=q, k1=k, q2=torch.randn(1, 1, M, D, device=DEV), k2=torch.randn(1, 1, N, D, device=DEV),
                  v=torch.randn(1, 1, N, D, device=DEV), beta=torch.tensor([beta], device=DEV),
                  lam=torch.full((1,), 0.5, device=DEV))
    inv_norms, hat_delta = launch.inv_norms, launch.hat_delta

    def bf16_unit_keys(x1, x2, hat=False):
        res = inv_norms(x1, x2, hat=hat)
        return (res[0], res[1].to(torch.bfloat16).to(res[1].dtype)) if hat else res
    monkeypatch.setattr(launch, "inv_norms", bf16_unit_keys)
    monkeypatch.setattr(launch, "hat_delta", lambda dtype, D: hat_delta(torch.bfloat16, D) if margin else 0.0)
    res = {unit: _grads_and_flags(inputs, cfg(unit_keys=unit)) for unit in (False, True)}
    (out_raw, g_raw, flags_raw), (out_unit, g_unit, flags_unit) = res[False], res[True]
    assert flags_raw.sum() >= len(plants)  # every plant survives in the raw scores
    assert torch.allclose(out_unit, out_raw, rtol=0.1, atol=0.02) and not torch.equal(out_unit, out_raw)
    same = all(torch.equal(g_unit[n], g_raw[n]) for n in g_raw)
    if margin:
        assert bool((flags_unit >= flags_raw).all())
        assert same
    else:  # the control: without the margin some raw survivors are missed, and the test above can fail
        assert not bool((flags_unit >= flags_raw).all()) and not same


@pytest.mark.parametrize("two_views,causal,M,N,config", [
    (True, True, 45, 53, cfg(16, 16)),
    (True, False, 40, 29, cfg(32, 16, flags=(16, 16))),
    (False, True, 50, 50, cfg(16, 32, flags=(16, 16))),
])
def test_unit_key_forward_matches_the_raw_key_screen(two_views, causal, M, N, config):
    """unit_keys (the screen and the exact path score the pre-pass's rounded unit keys) gives an output close
    to the raw-key forward's (training and inference), bit-identical gradients, and flags that are a superset
    of the raw-key screen's. Ragged shapes, GQA and finer flags included. Also: the pre-pass's unit keys are
    the keys times their inverse norms."""
    torch.manual_seed(21)
    inputs = _make(2, 4, 2, M, N, 16, 16, two_views)
    dout = torch.randn(2, 4, M, 16, dtype=DT, device=DEV)
    kw = dict(causal=causal, position_offset=max(5, N - M))  # causal: at least the keys' extra length
    k1 = inputs["k1" if two_views else "k"].detach()
    k2 = inputs["k2"].detach() if two_views else None
    res = {}
    for unit in (False, True):
        config_u = dataclasses.replace(config, unit_keys=unit)
        out, grads = _run("triton", inputs, lambda out: dout, config_u, **kw)
        with torch.no_grad():
            infer = _call("triton", inputs, config_u, **kw)
        res[unit] = out, grads, infer, _flags(inputs, config_u, **kw)
    out0, grads0, infer0, flags0 = res[False]
    out, grads, infer, flags = res[True]
    assert flags0.any() and not flags0.all()  # the screen had something to decide
    # the output from the rounded unit keys: close (at the inputs' precision), the gradients unchanged
    close = dict(rtol=1e-12, atol=1e-13) if DT == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    assert torch.allclose(out, out0, **close) and not torch.equal(out, out0)
    assert torch.allclose(infer, infer0, **close)
    _same_forward(infer0, out0.detach())
    for name in inputs:
        assert torch.equal(grads[name], grads0[name]), name
    assert bool((flags >= flags0).all())
    rk, kh = launch.inv_norms(k1, k2, hat=True)
    want = torch.stack([k1] + ([k2] if two_views else [])) * rk[..., None]
    assert kh.dtype == k1.dtype and torch.allclose(kh, want, rtol=1e-12 if DT == torch.float64 else 1e-6, atol=0)
    _compare(inputs, config=dataclasses.replace(config, unit_keys=True), **kw)


@pytest.mark.parametrize("two_views,noncontig_v,M,N", [(True, False, 45, 53), (True, True, 37, 37),
                                                      (False, False, 30, 61)])
def test_tma_loads_change_nothing(two_views, noncontig_v, M, N):
    """TMA (the unmasked stage's unit keys, and values, loaded through tensor descriptors) gives the
    bit-identical output (training and inference), flags and gradients of the pointer loads; values whose
    layout a descriptor cannot take (a transposed view) fall back to pointer loads. Ragged shapes and GQA."""
    torch.manual_seed(5)
    inputs = _make(2, 4, 2, M, N, 16, 16, two_views)
    if noncontig_v:
        v = inputs["v"].detach()
        inputs["v"] = v.transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_(True)
        assert not launch.tma_rows_ok(inputs["v"])
    else:
        assert launch.tma_rows_ok(inputs["v"])
    dout = torch.randn(2, 4, M, 16, dtype=DT, device=DEV)
    kw = dict(causal=True, position_offset=max(3, N - M))
    res = {}
    for tma in (False, True):
        config = cfg(unit_keys=True, tma=tma)
        out, grads = _run("triton", inputs, lambda out: dout, config, **kw)
        with torch.no_grad():
            infer = _call("triton", inputs, config, **kw)
        res[tma] = out, grads, infer
    out0, grads0, infer0 = res[False]
    assert out0.abs().sum() > 0
    out, grads, infer = res[True]
    assert torch.equal(out, out0) and torch.equal(infer, infer0)
    for name in inputs:
        assert torch.equal(grads[name], grads0[name]), name
    # and the TMA loads against the reference, forward and every gradient
    _compare(inputs, config=cfg(unit_keys=True, tma=True), **kw)


def test_tma_needs_a_hopper_class_device(monkeypatch):
    """TMA only where the device has it (compute capability >= 9.0) and Triton builds tensor descriptors;
    elsewhere the table's TMA falls back to pointer loads."""
    class FakeCuda:
        is_cuda = True
        device = torch.device("cuda", 7)
    launch._TMA_OK.clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev: (8, 0))
    assert not launch.tma_device_ok(FakeCuda())
    launch._TMA_OK.clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev: (9, 0))
    assert launch.tma_device_ok(FakeCuda())
    launch._TMA_OK.clear()
    assert launch.tma_device_ok(torch.zeros(1))  # the interpreter's CPU tensors
    monkeypatch.delattr(tl, "make_tensor_descriptor")
    assert not launch.tma_device_ok(torch.zeros(1))


def test_tma_rows_ok():
    """The descriptor's layout requirements: unit inner stride, 16-byte rows, heads and base."""
    x = torch.zeros(2, 3, 8, 16, dtype=torch.float16)
    assert launch.tma_rows_ok(x)
    assert not launch.tma_rows_ok(x.transpose(-1, -2))
    assert not launch.tma_rows_ok(torch.zeros(2, 3, 8, 20, dtype=torch.float16)[..., :12])  # 40-byte rows
    assert not launch.tma_rows_ok(x.view(-1)[1:1 + 2 * 3 * 8 * 8].view(2, 3, 8, 8))  # base off by 2 bytes


def _same_forward(infer, train):
    """The inference forward (FOR_BWD off) against the training forward with the same config: bit-identical
    under the interpreter, which runs both as the same sequence of numpy ops; on a GPU they are two compiled
    kernels, whose fp32 sums the compiler may order differently, so there they agree to fp32 rounding."""
    if ON_GPU:
        torch.testing.assert_close(infer, train, rtol=1e-4, atol=1e-6)
    else:
        assert torch.equal(infer, train)


@pytest.mark.parametrize("variant", ["tda", "tda_finer", "tda_raw", "tra", "tda_infer_dense", "tda_rows",
                                     "tda_raw_rows", "tra_rows", "tda_unit_rows"])
def test_inference_forward_equals_training_forward(variant):
    """Without a gradient to compute, the forward runs with FOR_BWD off (no flags, no stored inverse norms,
    no autograd node); with the same config its output must equal the training forward's (`_same_forward`).
    *_dense: the inference forward without a survivor test; *_rows: the inference screen decides from row
    maxima (row_screen), also with the unit-key forward (tda_unit_rows)."""
    torch.manual_seed(21)
    config = {"tda_finer": cfg(32, 32, flags=(16, 16)), "tda_infer_dense": cfg(32, 16, survivor_test=False),
              "tda_unit_rows": cfg(16, 16, unit_keys=True, row_screen=True)}.get(variant, cfg())
    if variant.endswith("_rows") and variant != "tda_unit_rows":
        config = cfg(32, 16, row_screen=True)  # rows of a 32 x 16 tile: the reductions differ in shape
    tra = variant.startswith("tra")
    inputs = _make(2, 2, 1, 45, 53, 16, 16, not tra)
    kw = dict(p=2.0, causal=True, position_offset=8, normalize_qk=not variant.startswith("tda_raw"))
    out_train = _call("triton", inputs, config, **kw)
    assert out_train.grad_fn is not None
    with torch.no_grad():
        out_inf = _call("triton", inputs, config, **kw)
    out_detached = _call("triton", {n: t.detach() for n, t in inputs.items()}, config, **kw)
    assert out_inf.grad_fn is None and not out_detached.requires_grad
    assert out_train.abs().sum() > 0
    _same_forward(out_inf, out_train.detach())
    assert torch.equal(out_detached, out_inf)
    # the launcher keeps nothing for a backward
    d = {n: t.detach() for n, t in inputs.items()}
    q1 = d.get("q1", d.get("q"))
    scale = tk.tau_scale(45, 8, 1.0, 16, q1.device, d["beta"].dtype)  # the op's (fp32, or fp64 for fp64 beta)
    q2, k2, lam = d.get("q2"), d.get("k2"), d.get("lam")
    out, flags, rq, rk = launch.forward(q1, d.get("k1", d.get("k")), q2, k2, d["v"], d["beta"], scale, lam,
                                        2.0, True, config, kw["normalize_qk"], for_bwd=False)
    assert flags is None and rq is None and (rk is not None) == kw["normalize_qk"]
    torch.testing.assert_close(out, out_inf, rtol=0, atol=0)


def test_config_table(monkeypatch):
    """The GPU block table's choices for representative shapes (what docs/kernels.md lists): every
    (head dim, dtype, key length, training) gives a valid config, short keys take smaller forward blocks and
    an inference forward without a survivor test, and the options land where the table puts them."""
    monkeypatch.setattr(kc, "interpreting", lambda: False)
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    T = lambda D, n, dt=bf16, training=True: kc.block_config(D, dt, n, training)  # noqa: E731
    for D in (16, 32, 64, 128):
        for dt in (bf16, fp16, fp32):
            for n in (1, 1024, 1025, 2048, 2049, 4096, 4097, 16384):
                for training in (True, False):
                    c = T(D, n, dt, training)
                    assert c.block_m % c.flags[0] == 0 and c.block_n % c.flags[1] == 0
                    assert c.bwd_warps == 4 and c.bwd_stages == 2  # the one-launch backward's programs
                    if dt != fp32:
                        assert T(D, n, fp16, training) == c  # fp16 as bf16
    # fp32: one config at every length and head dim
    assert T(64, 16384, fp32) == T(128, 1024, fp32) == KernelConfig(64, 32, 4, 2, dkdv_block=(32, 64),
                                                                     dq_block=(64, 32))
    assert T(64, 1024, fp32, False) == KernelConfig(64, 32, 4, 2)
    # d = 64 training: (forward block, stages, flags, dK/dV block, dQ block, lists, register caps, group)
    row = lambda c: (c.block_m, c.block_n, c.num_stages, c.flags, c.dkdv_block, c.dq_block,  # noqa: E731
                     (c.dkdv_lists, c.dq_lists), c.maxnreg, c.bwd_maxnreg, c.group)
    assert row(T(64, 1024)) == (64, 32, 3, (64, 32), (64, 64), (64, 32), (False, False), 0, 0, kc.ALL_HEADS)
    assert row(T(64, 1025)) == (64, 64, 3, (64, 32), (64, 32), (64, 32), (True, True), 168, 168, 8)
    assert row(T(64, 4096)) == row(T(64, 1025))
    assert row(T(64, 4097)) == (64, 64, 3, (64, 64), (64, 64), (64, 64), (True, True), 168, 0, 8)
    assert T(64, 16384) == T(64, 4097) and T(32, 16384) == T(64, 16384)
    # d = 128 training
    assert row(T(128, 1024)) == (64, 32, 3, (64, 32), (64, 32), (64, 32), (True, True), 0, 0, kc.ALL_HEADS)
    assert row(T(128, 4096)) == (64, 32, 3, (64, 32), (64, 32), (64, 32), (True, True), 0, 0, 4)
    assert row(T(128, 4097)) == (128, 64, 3, (32, 32), (64, 32), (64, 32), (True, True), 0, 0, 2)
    assert T(128, 4097).num_warps == 8 and T(128, 4096).num_warps == 4
    # training forward options: unit keys and TMA past 4K keys (TMA at d = 64 only), the masked stage screened
    # except at d = 64 up to 4K keys
    opts = lambda c: (c.unit_keys, c.tma, c.mask_screen, c.row_screen, c.survivor_test)  # noqa: E731
    assert [opts(T(64, n)) for n in (1024, 4096, 4097)] == [(False, False, False, False, True)] * 2 + [
        (True, True, True, False, True)]
    assert [opts(T(128, n)) for n in (1024, 4096, 4097)] == [(False, False, True, False, True)] * 2 + [
        (True, False, True, False, True)]
    # inference: no survivor test up to 2K keys; past it the unit keys and the row screen (and TMA at d = 64
    # past 4K keys); d = 128 with 8 warps and 4 stages past 2K keys
    inf = lambda c: (c.block_m, c.block_n, c.num_warps, c.num_stages, c.maxnreg, c.group) + opts(c)  # noqa: E731
    assert inf(T(64, 1024, training=False)) == (64, 32, 4, 3, 0, kc.ALL_HEADS, False, False, False, False, False)
    assert inf(T(64, 2048, training=False)) == (64, 32, 4, 3, 168, 8, False, False, False, False, False)
    assert inf(T(64, 4096, training=False)) == (64, 64, 4, 3, 168, 8, True, False, True, True, True)
    assert inf(T(64, 4097, training=False)) == (64, 64, 4, 3, 168, 8, True, True, True, True, True)
    assert inf(T(128, 2048, training=False)) == (128, 64, 8, 3, 0, 4, False, False, False, False, False)
    assert inf(T(128, 2049, training=False)) == (128, 64, 8, 4, 0, 4, True, False, True, True, True)
    assert inf(T(128, 16384, training=False)) == (128, 64, 8, 4, 0, 2, True, False, True, True, True)
    # long keys: the training and the inference forward share their blocks, so with the unit keys (which
    # score the unmasked blocks only) a no-grad call and a training call give the same output
    for D in (64, 128):
        a, b = T(D, 16384), T(D, 16384, training=False)
        assert (a.block_m, a.block_n, a.unit_keys) == (b.block_m, b.block_n, b.unit_keys)
    # under the interpreter: small tiles whatever the shape
    monkeypatch.setattr(kc, "interpreting", lambda: True)
    assert T(128, 16384) is kc.INTERPRETER_CONFIG and T(64, 10, fp32, False) is kc.INTERPRETER_CONFIG


def test_kernel_config_validation():
    """A KernelConfig rejects tiles that are not powers of two and a flags grain that does not divide the
    forward block."""
    with pytest.raises(ValueError, match="flags grain"):
        KernelConfig(32, 16, flag_m=16, flag_n=32)
    with pytest.raises(ValueError, match="flag_m must be a power of two"):
        KernelConfig(32, 32, flag_m=24)
    with pytest.raises(ValueError, match="block_n"):
        KernelConfig(32, 48)
    with pytest.raises(ValueError, match="dq_block"):
        KernelConfig(32, 32, dq_block=(16,))
    assert KernelConfig(32, 16).flags == (32, 16) and KernelConfig(32, 32, flag_m=16, flag_n=8).flags == (16, 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        KernelConfig(32, 32).block_m = 64
    q = torch.randn(1, 2, 8, 16, dtype=DT, device=DEV)
    with pytest.raises(ValueError, match="config must be a KernelConfig"):
        tk.threshold_rectified_attention(q, q, q, 1.0, config=dict(block_m=16))


@pytest.mark.skipif(ON_GPU, reason="the interpreter's half-precision products")
def test_half_precision_under_the_interpreter():
    """fp16 runs under the interpreter and meets the GPU check's criterion against a float64 reference
    (forward and every gradient): |kernel - ref64| <= 2 |ref_fp16 - ref64| + atol, with the raw-key and the
    unit-key forward (its unit keys rounded to fp16, its margin fp16's). bf16: Triton 3.9's
    interpreter computes bf16 products wrongly (values off by ~1e10), so backend='triton' refuses a bf16 call
    there with a clear error instead of returning garbage -- or, on an interpreter that gets them right,
    meets the same criterion."""
    torch.manual_seed(41)
    base = _make(1, 4, 2, 40, 40, 16, 16, True)
    dout = torch.randn(1, 4, 40, 16, dtype=torch.float64)
    ref64 = _run("reference", {k: v.detach().clone().requires_grad_(True) for k, v in base.items()},
                 lambda out: dout, position_offset=3)
    for dt in (torch.float16, torch.bfloat16):
        cast = {k: (v.detach().to(dt) if v.dim() == 4 else v.detach().float()).requires_grad_(True)
                for k, v in base.items()}
        if dt == torch.bfloat16 and not tk.interpreter_dot_ok(dt):
            with pytest.raises(ValueError, match="products wrongly"):
                _run("triton", cast, lambda out: dout.to(dt), position_offset=3)
            continue
        out_l, g_l = _run("reference", {k: v.detach().clone().requires_grad_(True) for k, v in cast.items()},
                          lambda out: dout.to(dt), position_offset=3)
        for unit in (False, True):  # the raw-key forward, and the unit-key one at this dtype's rounding
            out_k, g_k = _run("triton", {k: v.detach().clone().requires_grad_(True) for k, v in cast.items()},
                              lambda out: dout.to(dt), cfg(unit_keys=unit), position_offset=3)
            pairs = [("out", out_k, out_l, ref64[0])] + [(n, g_k[n], g_l[n], ref64[1][n]) for n in base]
            for name, ker, low, r64 in pairs:
                e_ker = (ker.double() - r64).norm().item()
                e_low = (low.double() - r64).norm().item()
                assert e_ker <= 2 * e_low + 1e-5 * r64.norm().item() + 1e-6, (dt, unit, name, e_ker, e_low)


def test_bad_input_raises():
    torch.manual_seed(5)
    x = torch.randn(1, 2, 8, 24, dtype=DT, device=DEV)
    with pytest.raises(ValueError, match="head dim 24"):
        ops.threshold_rectified_attention(x, x, x, 1.0, backend="triton")
    q = torch.randn(1, 2, 8, 16, dtype=DT, device=DEV)
    with pytest.raises(ValueError, match="p must be"):
        tk.threshold_rectified_attention(q, q, q, 1.0, p=0.5)
    with pytest.raises(ValueError, match="kappa"):
        tk.threshold_differential_attention(q, q, q, q, q, 1.0, 0.5, kappa=0.0)
    with pytest.raises(ValueError, match="k1"):
        tk.threshold_differential_attention(q, q[:, :, :, :8], q, q, q, 1.0, 0.5)
    with pytest.raises(ValueError, match="beta"):
        tk.threshold_rectified_attention(q, q, q, float("nan"))
    with pytest.raises(ValueError, match="lam"):
        tk.threshold_differential_attention(q, q, q, q, q, 1.0, torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="q2 and k2"):
        tk.threshold_differential_attention(q, q, None, q, q, 1.0, 0.5)


def test_unsupported_reason(monkeypatch):
    q = torch.randn(1, 2, 8, 16)
    assert tk.unsupported_reason(q, q, q, 2.0) is None or ON_GPU
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "cpu" in tk.unsupported_reason(q, q, q, 2.0)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "head dim 96" in tk.unsupported_reason(torch.randn(1, 1, 4, 96), q, q, 2.0)
    assert "dtype" in tk.unsupported_reason(q.half().int(), q, q, 2.0)


def test_torch_compile_fullgraph():
    torch.manual_seed(6)
    inputs = _make(1, 2, 1, 19, 19, 16, 16, True)

    def f(q1, k1, q2, k2, v, beta, lam):
        return ops.threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, kappa=0.8, p=2.0,
                                                    backend="triton")

    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    out_c = cf(**inputs)
    out_e = f(**inputs)
    torch.testing.assert_close(out_c, out_e)
    g_c = torch.autograd.grad(out_c.square().sum(), list(inputs.values()))
    g_e = torch.autograd.grad(out_e.square().sum(), list(inputs.values()))
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_torch_compile_inductor_noncontiguous():
    """Inductor (not only aot_eager) around the custom ops, with transposed q/k/v views as the model
    passes them: the fake kernels' strides must match the real ops' (an earlier mismatch broke
    `compile: true` on CUDA)."""
    torch.manual_seed(10)
    inputs = _make(1, 2, 1, 19, 19, 16, 16, True, noncontig=True)

    def f(q1, k1, q2, k2, v, beta, lam):
        return ops.threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, backend="triton").square().sum()

    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True, backend="inductor")
    a, b = cf(**inputs), f(**inputs)
    torch.testing.assert_close(a, b)
    for x, y in zip(torch.autograd.grad(a, list(inputs.values())), torch.autograd.grad(b, list(inputs.values()))):
        torch.testing.assert_close(x, y)


def test_custom_op_opcheck():
    torch.manual_seed(7)
    q = reference.l2_normalize(torch.randn(1, 2, 17, 16, dtype=DT, device=DEV))
    k = reference.l2_normalize(torch.randn(1, 1, 17, 16, dtype=DT, device=DEV))
    v = torch.randn(1, 1, 17, 16, dtype=DT, device=DEV)
    tau = torch.rand(2, 17, dtype=DT, device=DEV) * 0.3
    lam = torch.rand(2, dtype=DT, device=DEV)
    for normalize in (False, True):
        torch.library.opcheck(torch.ops.tda.threshold_attention_fwd.default,
                              (q, k, q.clone(), k.clone(), v, tau, lam, 2.0, True, normalize),
                              test_utils=("test_schema", "test_faketensor"))
    # the backward op, on transposed (non-contiguous) inputs as the model's q/k/v views are: the fake
    # kernel must report the real op's (contiguous) gradient strides, or torch.compile rejects it
    nc = lambda x: x.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731  same values, other strides
    qn, kn, vn = nc(q), nc(k), nc(v)
    out, flags, rq, rk = torch.ops.tda.threshold_attention_fwd(qn, kn, nc(q.clone()), nc(k.clone()), vn, tau, lam,
                                                               2.0, True, True)
    torch.library.opcheck(torch.ops.tda.threshold_attention_bwd.default,
                          (torch.randn_like(out), qn, kn, nc(q.clone()), nc(k.clone()), vn, tau, lam, flags, rq, rk,
                           2.0, True),
                          test_utils=("test_schema", "test_faketensor"))


def test_validation_cache_sees_in_place_changes():
    torch.manual_seed(8)
    q = torch.randn(1, 2, 8, 16, dtype=DT, device=DEV)
    beta = torch.full((2,), 0.5, dtype=DT, device=DEV)
    tk.threshold_rectified_attention(q, q, q, beta)
    tk.threshold_rectified_attention(q, q, q, beta)  # validated once, reused
    beta.fill_(float("nan"))  # an in-place change bumps the version: checked again
    with pytest.raises(ValueError, match="beta"):
        tk.threshold_rectified_attention(q, q, q, beta)
    with pytest.raises(ValueError, match="beta"):
        tk.threshold_rectified_attention(q, q, q, torch.full((2,), float("nan"), dtype=DT, device=DEV))


def test_cached_tau_equals_reference():
    """tau_i = beta_h * scale_i, formed in the kernels from the cached beta-free scale, has
    reference.tau's rounding: the fp32 product of the fp32-cast beta and the fp32 scale."""
    beta = torch.rand(3, device=DEV) + 0.5
    for M, off, kappa, D in ((17, 0, 1.0, 64), (5, 1000, 0.3, 128)):
        scale = tk.tau_scale(M, off, kappa, D, beta.device, torch.float32)
        assert tk.tau_scale(M, off, kappa, D, beta.device, torch.float32) is scale  # cached
        want = reference.tau(torch.arange(off, off + M, device=DEV), beta, kappa, D)
        assert torch.equal(beta[:, None] * scale[None, :], want)
        want16 = reference.tau(torch.arange(off, off + M, device=DEV), beta.bfloat16(), kappa, D)
        assert torch.equal(beta.bfloat16().float()[:, None] * scale[None, :], want16)


@pytest.mark.parametrize("scalar", [False, True])
def test_fp32_inputs_and_beta_gradients(scalar, monkeypatch):
    """fp32 inputs (the kernels' fp32 tau path, dbeta formed from the in-kernel scaled dtau rows), with
    per-head or 0-dim beta/lam, against the reference in fp32; the rows' dbeta / dlam shares are summed in
    fp64 (their reduction to a scalar cancels heavily), and the scalars agree with the float64 reference."""
    torch.manual_seed(9)
    inputs = _make(2, 2, 1, 33, 33, 16, 16, True)
    inputs = {n: t.detach().float().requires_grad_(True) for n, t in inputs.items()}
    if scalar:
        inputs["beta"] = torch.tensor(0.7, device=DEV).requires_grad_(True)
        inputs["lam"] = torch.tensor(0.3, device=DEV).requires_grad_(True)
    kw = dict(kappa=0.9, p=2.0, causal=True, position_offset=3)
    shares = []
    backward = launch.backward

    def spy(*a, **k):
        res = backward(*a, **k)
        shares.append(res[5])
        return res
    monkeypatch.setattr(launch, "backward", spy)
    _compare(inputs, tol=2e-5, **kw)
    assert shares and all(g.dtype == torch.float64 for g in shares)
    dout = torch.randn(2, 2, 33, 16, generator=torch.Generator().manual_seed(3)).to(DEV)
    got = torch.autograd.grad(ops.threshold_differential_attention(**inputs, backend="triton", **kw),
                              [inputs["beta"], inputs["lam"]], dout.float())
    ref_in = {n: t.detach().double().requires_grad_(True) for n, t in inputs.items()}
    want = torch.autograd.grad(ops.threshold_differential_attention(**ref_in, backend="reference", **kw),
                               [ref_in["beta"], ref_in["lam"]], dout.double())
    for a, b in zip(got, want):
        assert ((a.double() - b).norm() / b.norm()).item() < 1e-5


def test_check_finite_false_skips_only_the_value_test():
    """check_finite=False (what the layers pass for their learned beta/lam) skips the NaN test, a host
    sync on CUDA; it must not mark the tensor as validated for a later checked call."""
    q = torch.randn(1, 2, 8, 16, dtype=DT, device=DEV)
    beta = torch.full((2,), float("nan"), dtype=DT, device=DEV)
    for backend in ("reference", "triton"):
        out = ops.threshold_rectified_attention(q, q, q, beta, backend=backend, check_finite=False)
        # unchecked non-finite beta: undefined output (the reference propagates NaN; the kernel's max()
        # drops it and may return zeros), but no exception
        assert out.shape == q.shape and (backend == "triton" or torch.isnan(out).any())
        with pytest.raises(ValueError, match="beta must be finite"):
            ops.threshold_rectified_attention(q, q, q, beta, backend=backend)
    with pytest.raises(ValueError, match="beta must be a scalar"):  # shape checks still run
        ops.threshold_rectified_attention(q, q, q, torch.ones(3, dtype=DT), backend="triton", check_finite=False)


@triton.jit
def _live_list_probe(FLAGS, SCR, CNT, base, n_cand, fixed, n_mt, n_nt, STEP: tl.constexpr, MT: tl.constexpr,
                     NT: tl.constexpr, R: tl.constexpr, C: tl.constexpr, ALONG_M: tl.constexpr,
                     CHUNK: tl.constexpr):
    """One program: common.live_list, and its count stored."""
    cnt = live_list(FLAGS, SCR, base, n_cand, fixed, n_mt, n_nt, STEP, MT, NT, R, C, ALONG_M, CHUNK)
    tl.store(CNT, cnt)


@pytest.mark.parametrize("along_m,R,C,chunk", [(True, 1, 1, 4), (True, 2, 1, 2), (False, 1, 2, 4),
                                               (False, 2, 2, 64), (True, 1, 2, 1)])
def test_live_list_compacts_the_live_blocks_in_order(along_m, R, C, chunk):
    """common.live_list against a Python loop over pair_alive's definition: the same blocks, in order, and the
    count; flags of random density, candidate ranges that start mid-way and run past the flags' edge."""
    g = torch.Generator().manual_seed(R * 10 + C + chunk)
    MT, NT = 8, 8
    n_mt, n_nt = 13, 11
    STEP = (MT * R) if along_m else (NT * C)
    for density in (0.0, 0.15, 0.6, 1.0):
        flags = (torch.rand(n_mt, n_nt, generator=g) < density).to(torch.int8)
        base = STEP * 2
        n_cand = (n_mt * MT if along_m else n_nt * NT) // STEP  # the last candidate blocks overhang the flags
        fixed = (NT * C * 3) if along_m else (MT * R * 4)
        scr = torch.full((n_cand + 1,), -1, dtype=torch.int32, device=DEV)
        cnt = torch.zeros(1, dtype=torch.int32, device=DEV)
        flags_dev = flags.to(DEV)
        _live_list_probe[(1,)](flags_dev, scr, cnt, base, n_cand, fixed, n_mt, n_nt, STEP=STEP, MT=MT, NT=NT, R=R, C=C,
                    ALONG_M=along_m, CHUNK=chunk)
        want = []
        for i in range(n_cand):
            start = base + i * STEP
            r0, c0 = (start // MT, fixed // NT) if along_m else (fixed // MT, start // NT)
            cells = [flags[r, c].item() for r in range(r0, r0 + R) for c in range(c0, c0 + C)
                     if r < n_mt and c < n_nt]
            if any(cells):
                want.append(start)
        assert cnt.item() == len(want), (density, cnt.item(), len(want))
        assert scr[:len(want)].tolist() == want, density
