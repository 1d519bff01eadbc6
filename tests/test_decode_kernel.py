"""The split-KV decode kernel (tda.ops.triton.decode) against the torch path of tda.ops.kvcache, under the
Triton interpreter on a CPU (tests/conftest.py sets TRITON_INTERPRET=1): random inputs, grouped-query heads,
per-sequence lengths, M = 1 and M > 1, several split counts, and the skip of survivor-free V blocks."""
import math
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

from conftest import has_ptxas, run_compiled  # noqa: E402
from tda.ops import kvcache, reference  # noqa: E402
from tda.ops.triton import decode  # noqa: E402

# The kernel's logic on CPU tensors: these skip on a GPU machine without TRITON_INTERPRET=1, where
# benchmarks/check_decode.py checks the kernel on CUDA.
INTERPRETED = pytest.mark.usefixtures("interpreter")
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def _caches(g, B, Hk, S, D, Dv, lens, dtype, fill=0.0):
    """Unit-key caches and a value cache whose first lens[b] positions hold random data; the rest `fill`."""
    k1 = torch.full((B, Hk, S, D), fill, dtype=dtype)
    k2 = torch.full((B, Hk, S, D), fill, dtype=dtype)
    v = torch.full((B, Hk, S, Dv), fill, dtype=dtype)
    for b, L in enumerate(lens):
        k1[b, :, :L] = reference.l2_normalize(torch.randn(Hk, L, D, generator=g, dtype=torch.float64)).to(dtype)
        k2[b, :, :L] = reference.l2_normalize(torch.randn(Hk, L, D, generator=g, dtype=torch.float64)).to(dtype)
        v[b, :, :L] = torch.randn(Hk, L, Dv, generator=g, dtype=torch.float64).to(dtype)
    return k1, k2, v


def _plant(q, k_cache, lens, g):
    """Aim each query row at a random visible key of its sequence (plus noise), so survivors exist even at
    beta = 1: q[b, h, r] = k[b, h // G, j] + 0.3 * noise for a random j <= L_b - M + r."""
    B, H, M, D = q.shape
    G = H // k_cache.shape[1]
    out = q.clone()
    for b, L in enumerate(lens):
        for h in range(H):
            for r in range(M):
                j = int(torch.randint(0, L - M + r + 1, (1,), generator=g))
                out[b, h, r] = k_cache[b, h // G, j].to(q.dtype) + 0.3 * q[b, h, r] / math.sqrt(D)
    return out


def _run(two, q1, q2, k1, k2, v, beta, lam, lens, backend, **kw):
    seqlens = torch.tensor(lens, dtype=torch.int32)
    if two:
        return kvcache.threshold_differential_attention_with_kvcache(
            q1, q2, k1, k2, v, beta, lam, cache_seqlens=seqlens, backend=backend, **kw)
    return kvcache.threshold_rectified_attention_with_kvcache(q1, k1, v, beta, cache_seqlens=seqlens,
                                                              backend=backend, **kw)


def _launch(two, q1, q2, k1, k2, v, beta, lam, lens, splits, p=2.0, kappa=1.0):
    """The kernel's launcher with a forced split count."""
    H = q1.shape[1]
    beta_h = torch.as_tensor(beta, dtype=torch.float32).reshape(-1).expand(H)
    lam_h = torch.as_tensor(lam, dtype=torch.float32).reshape(-1).expand(H) if two else None
    lengths = torch.tensor(lens, dtype=torch.int64)
    return decode.decode_attention(q1, q2 if two else None, k1, k2 if two else None, v, beta_h, lam_h, lengths,
                                   max(lens), kappa=kappa, p=p, splits=splits)


@INTERPRETED
@pytest.mark.parametrize("two", [True, False])
@pytest.mark.parametrize("H,Hk,M", [(4, 4, 1), (4, 2, 3), (6, 2, 1), (4, 1, 5)])
@pytest.mark.parametrize("splits", [1, 3, None])
def test_kernel_matches_reference_fp64(two, H, Hk, M, splits):
    g = torch.Generator().manual_seed(100 * H + 10 * Hk + M + (splits or 0))
    B, S, D, Dv = 3, 72, 16, 32
    lens = [M + 2, 37, 70]  # lengths not multiples of the 16-key interpreter block; one shorter than a block
    dt = torch.float64
    k1, k2, v = _caches(g, B, Hk, S, D, Dv, lens, dt)
    q1 = _plant(torch.randn(B, H, M, D, generator=g, dtype=dt), k1, lens, g)
    q2 = _plant(torch.randn(B, H, M, D, generator=g, dtype=dt), k2, lens, g)
    beta = torch.rand(H, generator=g, dtype=dt) * 0.8 + 0.6
    lam = torch.rand(H, generator=g, dtype=dt) * 0.8 + 0.1
    want = _run(two, q1, q2, k1, k2, v, beta, lam, lens, "reference")
    got = decode.decode_attention(q1, q2 if two else None, k1, k2 if two else None, v, beta,
                                  lam if two else None, torch.tensor(lens), max(lens), kappa=1.0, p=2.0,
                                  splits=splits)
    assert want.abs().max() > 0.05  # survivors exist, so the comparison has something to compare
    torch.testing.assert_close(got, want, **TOL[dt])


@INTERPRETED
@pytest.mark.parametrize("G,M", [(1, 40), (3, 13)])
def test_rows_spanning_several_tiles_fp64(G, M):
    """G * M rows beyond one tile (32 rows under the interpreter): the row tiles of one kv head each scan only
    the keys their rows see."""
    g = torch.Generator().manual_seed(12 + M)
    B, Hk, S, D = 2, 2, 90, 16
    H = G * Hk
    lens = [45, 88]
    dt = torch.float64
    k1, k2, v = _caches(g, B, Hk, S, D, D, lens, dt)
    q1 = _plant(torch.randn(B, H, M, D, generator=g, dtype=dt), k1, lens, g)
    q2 = _plant(torch.randn(B, H, M, D, generator=g, dtype=dt), k2, lens, g)
    want = _run(True, q1, q2, k1, k2, v, 0.8, 0.4, lens, "reference")
    for splits in (1, 3):
        got = _launch(True, q1, q2, k1, k2, v, 0.8, 0.4, lens, splits)
        torch.testing.assert_close(got, want, **TOL[dt])
    assert decode.plan(G, M, B, Hk, 88, decode.decode_config(D, dt, G * M, True), 8).row_tiles == 2


@INTERPRETED
@pytest.mark.parametrize("two", [True, False])
@pytest.mark.parametrize("p,kappa", [(1.0, 1.0), (1.5, 0.7), (3.0, 2.0)])
def test_kernel_exponents_and_kappa_fp32(two, p, kappa):
    g = torch.Generator().manual_seed(int(p * 10 + kappa * 100))
    B, H, Hk, M, S, D, Dv = 2, 4, 2, 2, 50, 32, 16
    lens = [20, 49]
    dt = torch.float32
    k1, k2, v = _caches(g, B, Hk, S, D, Dv, lens, dt)
    q1 = _plant(torch.randn(B, H, M, D, generator=g, dtype=dt), k1, lens, g)
    q2 = _plant(torch.randn(B, H, M, D, generator=g, dtype=dt), k2, lens, g)
    beta, lam = 0.8, 0.35
    want = _run(two, q1, q2, k1, k2, v, beta, lam, lens, "reference", p=p, kappa=kappa)
    got = _run(two, q1, q2, k1, k2, v, beta, lam, lens, "triton", p=p, kappa=kappa)
    assert want.abs().max() > 0.01
    torch.testing.assert_close(got, want, **TOL[dt])


@INTERPRETED
def test_kernel_fp16_within_reference_error():
    """fp16: the kernel's error against the fp64 reference within 2x the fp16 reference's own (plus a floor)."""
    if not decode.interpreter_dot_ok(torch.float16):
        pytest.skip("this Triton interpreter multiplies fp16 tiles wrongly")
    g = torch.Generator().manual_seed(5)
    B, H, Hk, M, S, D, Dv = 2, 4, 2, 1, 64, 32, 32
    lens = [33, 64]
    k1, k2, v = _caches(g, B, Hk, S, D, Dv, lens, torch.float16)
    q1 = _plant(torch.randn(B, H, M, D, generator=g), k1, lens, g).half()
    q2 = _plant(torch.randn(B, H, M, D, generator=g), k2, lens, g).half()
    args = (0.9, 0.3, lens)
    ref64 = _run(True, q1.double(), q2.double(), k1.double(), k2.double(), v.double(), *args, "reference")
    ref16 = _run(True, q1, q2, k1, k2, v, *args, "reference")
    got = _run(True, q1, q2, k1, k2, v, *args, "triton")
    assert got.dtype == torch.float16 and ref64.abs().max() > 0.05
    err = (got.double() - ref64).norm()
    assert err <= 2 * (ref16.double() - ref64).norm() + 1e-3 * ref64.norm()


@INTERPRETED
def test_bf16_refused_or_run_by_interpreter():
    """bf16 under the interpreter: run where its products are right, else a ValueError naming the dtype."""
    g = torch.Generator().manual_seed(6)
    k1, k2, v = _caches(g, 1, 2, 32, 16, 16, [20], torch.bfloat16)
    q = torch.randn(1, 2, 1, 16, generator=g).bfloat16()
    if decode.interpreter_dot_ok(torch.bfloat16):
        out = _run(False, q, None, k1, k2, v, 0.5, None, [20], "triton")
        assert out.dtype == torch.bfloat16
    else:
        with pytest.raises(ValueError, match="bfloat16"):
            _run(False, q, None, k1, k2, v, 0.5, None, [20], "triton")
        # auto on a CPU takes the torch path whatever the interpreter does
        _run(False, q, None, k1, k2, v, 0.5, None, [20], "auto")


@INTERPRETED
@pytest.mark.parametrize("two", [True, False])
def test_nothing_survives_gives_exact_zero(two):
    """Large beta: tau > 1 >= every cosine past position 0, so every V block is skipped: exactly zero."""
    g = torch.Generator().manual_seed(8)
    B, H, Hk, M, S, D = 2, 4, 2, 2, 64, 16
    lens = [40, 64]
    k1, k2, v = _caches(g, B, Hk, S, D, D, lens, torch.float32)
    q1 = _plant(torch.randn(B, H, M, D, generator=g), k1, lens, g)
    q2 = _plant(torch.randn(B, H, M, D, generator=g), k2, lens, g)
    out = _launch(two, q1, q2, k1, k2, v, 1e4, 0.5, lens, splits=2)
    assert torch.equal(out, torch.zeros_like(out))
    assert _launch(two, q1, q2, k1, k2, v, 0.5, 0.5, lens, splits=2).abs().max() > 0  # not vacuous


@INTERPRETED
@pytest.mark.parametrize("two", [True, False])
@pytest.mark.parametrize("splits", [1, 4])
def test_survivor_free_value_block_is_never_loaded(two, splits):
    """Keys 16..31 (one interpreter block) are orthogonal to every query (cosine exactly 0 <= tau) and their
    values are NaN: the kernel skips that V block, so the output is finite and equals the reference computed
    with those values zeroed. NaN past each sequence's length must not leak in either."""
    g = torch.Generator().manual_seed(9)
    B, H, Hk, M, S, D = 2, 4, 2, 2, 80, 16
    lens = [48, 70]
    k1, k2, v = _caches(g, B, Hk, S, D, D, lens, torch.float64, fill=float("nan"))
    for k in (k1, k2):
        k[:, :, :, -1] = 0.0
        k[:, :, :lens[0]] = reference.l2_normalize(k[:, :, :lens[0]])
        k[:, :, 16:32] = 0.0
        k[:, :, 16:32, -1] = 1.0  # e_{D-1}: orthogonal to every query below
    for b, L in enumerate(lens):
        for k in (k1, k2):
            k[b, :, :L] = reference.l2_normalize(k[b, :, :L])
    q1 = _plant(torch.randn(B, H, M, D, generator=g, dtype=torch.float64), k1, lens, g)
    q2 = _plant(torch.randn(B, H, M, D, generator=g, dtype=torch.float64), k2, lens, g)
    q1[..., -1] = 0.0
    q2[..., -1] = 0.0
    v_clean = torch.nan_to_num(v, nan=0.0)
    v[:, :, 16:32] = float("nan")
    beta, lam = 0.7, 0.4
    want = _run(two, q1, q2, k1, k2, v_clean, beta, lam, lens, "reference")
    got = _launch(two, q1, q2, k1, k2, v, beta, lam, lens, splits=splits)
    assert torch.isfinite(got).all()
    assert want.abs().max() > 0.05
    torch.testing.assert_close(got, want, **TOL[torch.float64])


@INTERPRETED
def test_auto_split_count_and_append():
    """backend='triton' with new keys appended in place and the automatic split count matches the torch path
    over a copy of the caches (and writes the same caches)."""
    g = torch.Generator().manual_seed(10)
    B, H, Hk, M, S, D = 2, 4, 2, 2, 96, 16
    lens = [30, 81]
    dt = torch.float64
    caches = _caches(g, B, Hk, S, D, D, lens, dt)
    new = [torch.randn(B, n, M, D, generator=g, dtype=dt) for n in (Hk, Hk, Hk)]
    q1, q2 = (torch.randn(B, H, M, D, generator=g, dtype=dt) for _ in range(2))
    beta = torch.full((H,), 0.5, dtype=dt)
    lam = torch.full((H,), 0.3, dtype=dt)
    seqlens = torch.tensor(lens, dtype=torch.int32)
    outs, written = [], []
    for backend in ("reference", "triton"):
        c = [t.clone() for t in caches]
        outs.append(kvcache.threshold_differential_attention_with_kvcache(
            q1, q2, *c, beta, lam, cache_seqlens=seqlens, k1=new[0], k2=new[1], v=new[2], backend=backend))
        written.append(c)
    torch.testing.assert_close(outs[1], outs[0], **TOL[dt])
    for a, b in zip(*written):  # the append kernel's writes: the torch path's, to rounding
        torch.testing.assert_close(b, a, rtol=1e-14, atol=1e-15)
    cfg = decode.decode_config(D, dt, H // Hk * M, True)
    pl = decode.plan(H // Hk, M, B, Hk, max(lens) + M, cfg, decode.sm_count(q1.device))
    assert pl.splits > 1 and pl.chunk % 16 == 0


def test_plan_fills_the_gpu():
    """On an H100 (132 SMs) one sequence of 16 kv heads and 4K keys gets enough splits for every SM; a large
    batch gets one split; no split is shorter than min_split_blocks."""
    cfg = decode.decode_config(64, torch.bfloat16)
    one = decode.plan(1, 1, 1, 16, 4096, cfg, 132)
    assert one.splits * 16 >= 132 and one.chunk >= cfg.min_split_blocks * cfg.block_n
    many = decode.plan(1, 1, 64, 16, 4096, cfg, 132)
    assert many.splits == 1
    cfg = decode.decode_config(128, torch.bfloat16, 32)
    gqa = decode.plan(8, 4, 1, 2, 1 << 16, cfg, 132)
    assert gqa.block_r == 32 and gqa.row_tiles == 1 and gqa.splits * 2 >= 132


@INTERPRETED
def test_triton_backend_refuses_gradients():
    g = torch.Generator().manual_seed(11)
    k1, k2, v = _caches(g, 1, 2, 32, 16, 16, [20], torch.float32)
    q = torch.randn(1, 2, 1, 16, generator=g, requires_grad=True)
    with pytest.raises(ValueError, match="backward"):
        _run(False, q, None, k1, k2, v, 0.5, None, [20], "triton")
    with torch.no_grad():
        _run(False, q, None, k1, k2, v, 0.5, None, [20], "triton")


COMPILE = """
import json, torch, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tda.ops.triton import decode

def compile_split(cfg, D, two, rows, out_dtype):
    fn = decode.decode_split_kernel
    names = list(fn.arg_names)
    block_r = decode.plan(rows, 1, 1, 1, 4096, cfg, 132).block_r
    consts = dict(TWO=two, P=2, NORM_Q=True, HEAD_D=D, HEAD_DV=D, BLOCK_R=block_r, BLOCK_N=cfg.block_n,
                  EPS2=1e-12, TAU_F64=False, ACC=tl.float32, PREC="tf32")
    ptr = dict(LENS="i64", BETA="fp32", LAM="fp32", SCALE="fp32", OUT=out_dtype)
    sig = {}
    for n in names:
        if n in consts:
            sig[n] = "constexpr"
        elif n[:1].isupper() and n not in ("Hk", "M", "G"):
            sig[n] = "*" + ptr.get(n, "bf16")
        elif n == "p_val":
            sig[n] = "fp32"
        elif n in ("sq1d", "sq2d", "sk1d", "sk2d", "svd", "so_d"):  # unit strides: the JIT makes them constants
            sig[n], consts[n] = "constexpr", 1
        else:
            sig[n] = "i32"
    # pointers and the strides of contiguous caches are 16-divisible, as the JIT specialises them (s_beta,
    # s_lam: 0 or 1)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n].startswith("*") or (sig[n] == "i32" and n[0] == "s" and n not in ("s_beta", "s_lam"))}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))

def usage(c):
    try:
        from tda.ops.triton.sm90 import resource_usage
        return resource_usage(c)
    except ImportError:
        return dict(shared=c.metadata.shared, stack_local=0)

res = {}
for D in (64, 128):
    for rows in (1, 32):
        cfg = decode.decode_config(D, torch.bfloat16, rows)
        for two in (True, False):
            c = compile_split(cfg, D, two, rows, "fp32" if two else "bf16")
            res[f"d{D}-rows{rows}-{'tda' if two else 'tra'}"] = usage(c)
for Dv in (64, 128):  # the split reduction, into bf16
    fn = decode.decode_reduce_kernel
    names = list(fn.arg_names)
    consts = dict(HEAD_DV=Dv, BLOCK_S=16, so_d=1, NORM=True)
    sig = {n: "constexpr" if n in consts else "*fp32" if n == "PART" else "*bf16" if n in ("OUT", "GAIN")
           else "*i64" if n == "LENS" else "fp32" if n == "norm_eps" else "i32" for n in names}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=1, num_stages=2))
    res[f"reduce-d{Dv}"] = usage(c)
for D in (64, 128):  # the fused append of new keys (normalised) and values
    fn = decode.decode_append_kernel
    names = list(fn.arg_names)
    consts = dict(TWO=True, HEAD_D=D, HEAD_DV=D, EPS2=1e-12, ACC=tl.float32)
    sig = {n: "constexpr" if n in consts else "*i32" if n == "SEQ" else "*bf16" if n[:1].isupper() and n not in ("Hk", "M")
           else "i32" for n in names}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=1, num_stages=1))
    res[f"append-d{D}"] = usage(c)
print("RESULT " + json.dumps(res))
"""


@pytest.mark.slow
@pytest.mark.skipif(not has_ptxas(), reason="this Triton build ships no ptxas (no NVIDIA backend)")
def test_gpu_table_compiles_for_sm90():
    """The GPU block table's split kernel compiles for sm_90 (H100/H200) with Triton's bundled ptxas, without
    register spills and within shared memory for two programs per SM (in a subprocess without the
    interpreter)."""
    res = run_compiled(COMPILE, timeout=900)
    assert len(res) == 12
    for name, use in res.items():
        assert use["stack_local"] == 0, (name, use)
        assert use["shared"] <= 232448 // 2, (name, use)


@INTERPRETED
def test_gpu_check_script_runs_on_the_interpreter():
    """benchmarks/check_decode.py's draw / criterion path on a few tiny CPU configurations."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import check_decode
    lines = []
    summary = check_decode.check_decode(4, seed=1, device="cpu", log=lines.append)
    assert summary["n"] == 4 and len(lines) == 4
    assert not summary["fails"], lines


@INTERPRETED
@pytest.mark.parametrize("two", [True, False])
def test_max_seqlen_k_bound_gives_the_same_output(two):
    """max_seqlen_k (the caller's host-side bound, no sync): exact or loose up to the cache size, the kernel
    plans its splits over more keys but masks each sequence at its own length -- the same output."""
    g = torch.Generator().manual_seed(5)
    B, H, Hk, M, S, D = 3, 4, 2, 2, 96, 16
    lens = [M + 3, 41, 70]
    k1, k2, v = _caches(g, B, Hk, S, D, D, lens, torch.float64, fill=float("nan"))
    q1, q2 = (torch.randn(B, H, M, D, generator=g, dtype=torch.float64) for _ in range(2))
    q1, q2 = _plant(q1, k1, lens, g), _plant(q2, k2, lens, g)
    want = _run(two, q1, q2, k1, k2, v, 0.6, 0.3, lens, "reference")
    for backend in ("triton", "reference"):
        for bound in (max(lens), S):
            got = _run(two, q1, q2, k1, k2, v, 0.6, 0.3, lens, backend, max_seqlen_k=bound)
            torch.testing.assert_close(got, want, **TOL[torch.float64])
    assert want.abs().sum() > 0


def test_max_seqlen_k_bad_values_name_the_argument():
    g = torch.Generator().manual_seed(6)
    k1, k2, v = _caches(g, 1, 2, 32, 16, 16, [10], torch.float64)
    q = torch.randn(1, 2, 2, 16, generator=g, dtype=torch.float64)
    for bad, match in ((1, "max_seqlen_k must be an int >= 2"), (10.0, "max_seqlen_k must be an int"),
                       (True, "max_seqlen_k must be an int"), (33, "allocate a longer cache")):
        with pytest.raises(ValueError, match=match):
            _run(True, q, q, k1, k2, v, 1.0, 0.5, [10], "triton", max_seqlen_k=bad)


@INTERPRETED
@pytest.mark.parametrize("dt", [torch.float64, torch.float32])
@pytest.mark.parametrize("two", [True, False])
def test_append_kernel_writes_unit_keys_and_values_at_each_length(dt, two):
    """decode.append_kv against reference.l2_normalize + a scatter: per-sequence positions (including rows
    that differ in length), M > 1, grouped kv heads, non-contiguous new tensors; nothing else is touched."""
    g = torch.Generator().manual_seed(21)
    B, Hk, M, S, D, Dv = 3, 2, 3, 40, 16, 32
    lens = torch.tensor([0, 7, 33], dtype=torch.int64)
    caches = [torch.randn(B, Hk, S, d, generator=g, dtype=dt) for d in (D, D, Dv)]
    new = [torch.randn(B, M, Hk, d, generator=g, dtype=dt).transpose(1, 2) for d in (D, D, Dv)]  # strided
    want = [c.clone() for c in caches]
    for b in range(B):
        L = int(lens[b])
        want[0][b, :, L:L + M] = reference.l2_normalize(new[0][b])
        want[1][b, :, L:L + M] = reference.l2_normalize(new[1][b])
        want[2][b, :, L:L + M] = new[2][b]
    keys = new[:2] if two else new[:1]
    kc = caches[:2] if two else caches[:1]
    decode.append_kv(keys, new[2], kc, caches[2], lens)
    tol = dict(rtol=1e-14, atol=1e-15) if dt == torch.float64 else dict(rtol=2e-7, atol=1e-7)
    for i, (got, exp) in enumerate(zip(caches, want)):
        if i == 1 and not two:
            exp = want[1].clone()
            for b in range(B):  # one view: the second cache keeps its old contents
                L = int(lens[b])
                exp[b, :, L:L + M] = caches[1][b, :, L:L + M]
        torch.testing.assert_close(got, exp, **tol)
    assert (caches[0][2, :, 33:36].norm(dim=-1) - 1).abs().max() < 1e-6


@INTERPRETED
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("two", [True, False])
def test_head_norm_is_fused_into_the_kernel_that_writes_the_output(two, splits):
    """norm_weight: the reduction kernel applies the per-head RMSNorm (after one split or several); equal to the
    torch path's output normalised by the layers' RMSNorm, and an all-zero row stays zero."""
    g = torch.Generator().manual_seed(22)
    B, H, Hk, M, S, D = 2, 4, 2, 1, 80, 16
    lens = [37, 80]
    dt = torch.float64
    k1, k2, v = _caches(g, B, Hk, S, D, D, lens, dt)
    q1, q2 = (_plant(torch.randn(B, H, M, D, generator=g, dtype=dt), k, lens, g) for k in (k1, k2))
    beta, lam = 1.0, 0.4
    w = torch.rand(H, D, generator=g, dtype=dt) + 0.5
    plain = _run(two, q1, q2, k1, k2, v, beta, lam, lens, "reference")
    want = torch.nn.functional.rms_norm(plain, (D,), None, 1e-6) * w[None, :, None, :]
    H_ = q1.shape[1]
    beta_h = torch.full((H_,), beta, dtype=torch.float32)  # as the op makes of a Python float
    lam_h = torch.full((H_,), lam, dtype=torch.float32) if two else None
    got = decode.decode_attention(q1, q2 if two else None, k1, k2 if two else None, v, beta_h, lam_h,
                                  torch.tensor(lens), max(lens), kappa=1.0, p=2.0, splits=splits,
                                  norm_weight=w, norm_eps=1e-6)
    torch.testing.assert_close(got, want, **TOL[dt])
    via_op = _run(two, q1, q2, k1, k2, v, beta, lam, lens, "triton", head_norm=(w, 1e-6))
    torch.testing.assert_close(via_op, want, **TOL[dt])
    torch.testing.assert_close(_run(two, q1, q2, k1, k2, v, beta, lam, lens, "reference", head_norm=(w, 1e-6)),
                               want, **TOL[dt])
    # nothing survives at beta = 100: exact zeros, normalised or not
    zero = _run(two, q1, q2, k1, k2, v, 100.0, lam, lens, "triton", head_norm=(w, 1e-6))
    assert torch.equal(zero, torch.zeros_like(zero))


def test_head_norm_bad_values_name_the_argument():
    g = torch.Generator().manual_seed(23)
    k1, k2, v = _caches(g, 1, 2, 8, 16, 16, [4], torch.float32)
    q = torch.randn(1, 2, 1, 16, generator=g)
    for bad, msg in (((torch.ones(3, 16), 1e-6), "head_norm weight must be"), ((torch.ones(2, 16), 0.0), "eps"),
                     (torch.ones(2, 16), "tuple")):
        with pytest.raises(ValueError, match=msg):
            kvcache.threshold_differential_attention_with_kvcache(q, q, k1, k2, v, 1.0, 0.5, cache_seqlens=4,
                                                                  head_norm=bad)
