"""The launch cache's key (tda.ops.triton.launch_cache): a cached compiled kernel may only be reused by calls that
Triton would have specialised the same way. The direct launches themselves need a GPU (benchmarks/
check_kernels.py runs every configuration through them); here, the key on CPU tensors."""
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from triton.runtime.jit import JITFunction  # noqa: E402

from tda.ops.triton.launch import FastKernel  # noqa: E402


def _kernel(X, Y, s_x, n, p_val, BLOCK: tl.constexpr, FLAG: tl.constexpr):
    pass


def _fast():
    # a real JITFunction (not the interpreter's wrapper, which has no parameter list)
    fk = FastKernel(JITFunction(_kernel, do_not_specialize=["n", "p_val"]))
    return fk


def _key(fk, args, **kw):
    if fk._sig is None:
        fk._sig = fk._signature(args)
    return fk.key(args, kw)


def test_key_separates_what_triton_specialises_on():
    fk = _fast()
    x, y = torch.randn(64, 16), torch.randn(64, 16)
    base = _key(fk, (x, y, 16, 100, 2.0), BLOCK=32, FLAG=True, num_warps=4)
    # fresh tensors of the same kind, other unspecialised values: the same key (a cache hit)
    assert _key(fk, (torch.randn(64, 16), torch.randn(64, 16), 16, 7, 3.0), BLOCK=32, FLAG=True,
                num_warps=4) == base
    others = [
        ((x.double(), y, 16, 100, 2.0), dict(BLOCK=32, FLAG=True, num_warps=4)),        # dtype
        ((x.view(-1)[1:].view(-1)[:1008].view(63, 16), y, 16, 100, 2.0),                  # 4-byte aligned only
         dict(BLOCK=32, FLAG=True, num_warps=4)),
        ((x, y, 1, 100, 2.0), dict(BLOCK=32, FLAG=True, num_warps=4)),                   # stride == 1
        ((x, y, 24, 100, 2.0), dict(BLOCK=32, FLAG=True, num_warps=4)),                  # stride % 16 != 0
        ((x, y, 16, 2 ** 31, 2.0), dict(BLOCK=32, FLAG=True, num_warps=4)),              # needs int64
        ((x, y, 16, 100, 2.0), dict(BLOCK=64, FLAG=True, num_warps=4)),                  # a constexpr
        ((x, y, 16, 100, 2.0), dict(BLOCK=32, FLAG=True, num_warps=8)),                  # an option
    ]
    keys = [_key(fk, a, **kw) for a, kw in others]
    assert all(k is not None and k != base for k in keys)
    assert len(set(keys)) == len(keys)
    assert keys[1][3][0] is False  # the misaligned pointer is recorded as such


def test_key_none_when_argument_types_change():
    fk = _fast()
    x = torch.randn(8, 16)
    _key(fk, (x, x, 16, 5, 2.0), BLOCK=16, FLAG=False)
    assert fk.key((x, x, 16, 5, 2), dict(BLOCK=16, FLAG=False)) is None  # p_val an int now


def test_constexpr_parameters_must_come_last():
    def bad(X, BLOCK: tl.constexpr, n):
        pass
    fk = FastKernel(JITFunction(bad))
    with pytest.raises(TypeError, match="constexpr parameters last"):
        fk._signature((torch.randn(4), 3))


def _intercepted_launches(monkeypatch, n_keys):
    """The GPU table's bf16 d = 64 training config for n_keys keys, and a dict that collects each launch
    (grid, runtime args, constexprs) of the key-norm, forward and backward kernels instead of running it."""
    from tda.ops.triton import config as kc
    from tda.ops.triton import launch

    monkeypatch.setattr(kc, "interpreting", lambda: False)
    seen = {}
    for name in ("_inv_norm", "_fwd", "_bwd"):
        monkeypatch.setattr(getattr(launch, name), "_launch",
                            lambda grid, args, kw, name=name: seen.setdefault(name, (tuple(grid), args, kw)))
    return kc.block_config(64, torch.bfloat16, n_keys, True), seen


def test_table_training_launches_at_2k_keys(monkeypatch):
    """What a d = 64, 2K-key bf16 training call launches with the GPU table's config (kernels intercepted,
    meta tensors): the grids, the program-order and scratch sizes, and the options that pick the compiled
    kernel -- the launches the GPU benchmark times at this shape."""
    from tda.ops.triton import launch

    cfg, seen = _intercepted_launches(monkeypatch, 2048)
    B, H, N, D = 4, 16, 2048, 64
    q1, k1, q2, k2, v, do = (torch.empty(B, H, N, D, device="meta", dtype=torch.bfloat16) for _ in range(6))
    beta, lam, scale = torch.empty(H, device="meta"), torch.empty(H, device="meta"), torch.empty(N, device="meta")
    out, flags, rq, rk = launch.forward(q1, k1, q2, k2, v, beta, scale, lam, 2.0, True, cfg, True)
    launch.backward(do, q1, k1, q2, k2, v, beta, scale, lam, flags, rq, rk, 2.0, True, cfg)

    grid, args, kw = seen["_inv_norm"]
    assert grid == (2048, 2) and kw["BLOCK_R"] == 64 and not kw["WRITE_HAT"] and kw["num_warps"] == 4
    grid, args, kw = seen["_fwd"]
    assert flags.shape == (B * H, 32, 64)
    # H, G, M, N, flags, p, heads, group, row length
    assert grid == (2048,) and args[-10:] == (16, 1, N, N, 32, 64, 2.0, B * H, 8, N)
    assert not kw["VARLEN"]
    assert {k: kw[k] for k in ("BLOCK_M", "BLOCK_N", "FLAG_M", "FLAG_N", "num_warps", "num_stages", "maxnreg")} == dict(
        BLOCK_M=64, BLOCK_N=64, FLAG_M=64, FLAG_N=32, num_warps=4, num_stages=3, maxnreg=168)
    assert (kw["SCREEN"], kw["FOR_BWD"], kw["UNIT_KEYS"], kw["MASK_SCREEN"], kw["ROW_SCREEN"], kw["TMA"]) == (
        True, True, False, False, False, 0)
    grid, args, kw = seen["_bwd"]
    # 64 dK/dV programs per head (64 x 32 blocks) and 32 dQ programs; one list scratch row of 64 entries each
    assert grid == (64 * B * H + 32 * B * H,)
    assert args[-13:] == (16, 1, N, N, 32, 64, 2.0, 64, 64 * B * H, 32, 64 * B * H * 32, 1, N)
    assert not kw["VARLEN"]
    assert args[21].dtype == torch.int32 and args[21].numel() == 64 * B * H * 32 + 32 * B * H * 64  # SCR
    assert {k: kw[k] for k in ("KV_BLOCK_M", "KV_BLOCK_N", "Q_BLOCK_M", "Q_BLOCK_N", "MT", "NT", "KV_LISTS",
                               "Q_LISTS", "CHUNK", "LIST_ROW", "num_warps", "num_stages", "maxnreg")} == dict(
        KV_BLOCK_M=64, KV_BLOCK_N=32, Q_BLOCK_M=64, Q_BLOCK_N=32, MT=64, NT=32, KV_LISTS=True, Q_LISTS=True,
        CHUNK=64, LIST_ROW=256, num_warps=4, num_stages=2, maxnreg=168)


def test_packed_launches_size_by_the_documents(monkeypatch):
    """With the document table (VARLEN), a call's grids, flags and scratch are sized by the number of
    documents and the longest one, while outputs and per-token buffers keep the rows' layout."""
    from tda.ops.triton import launch

    cfg, seen = _intercepted_launches(monkeypatch, 300)
    B, H, N, D, n_docs, longest = 2, 4, 1024, 64, 7, 300
    q1, k1, q2, k2, v, do = (torch.empty(B, H, N, D, device="meta", dtype=torch.bfloat16) for _ in range(6))
    beta, lam, scale = torch.empty(H, device="meta"), torch.empty(H, device="meta"), torch.empty(N, device="meta")
    docs = (torch.empty(n_docs, 3, device="meta", dtype=torch.int32), longest)
    out, flags, rq, rk = launch.forward(q1, k1, q2, k2, v, beta, scale, lam, 2.0, True, cfg, True, docs=docs)
    launch.backward(do, q1, k1, q2, k2, v, beta, scale, lam, flags, rq, rk, 2.0, True, cfg, docs=docs)
    assert out.shape == (B, H, N, D) and rq.shape == (2, B, H, N) and rk.shape == (2, B, H, N)
    FM, FN = cfg.flags
    assert flags.shape == (n_docs * H, -(-longest // FM), -(-longest // FN))
    grid, args, kw = seen["_fwd"]
    assert kw["VARLEN"] and args[16] is docs[0] and args[-1] == N
    assert grid == (-(-longest // cfg.block_m) * n_docs * H,)
    grid, args, kw = seen["_bwd"]
    (KBM, KBN), (QBM, QBN) = cfg.dkdv_block, cfg.dq_block
    assert kw["VARLEN"] and args[22] is docs[0] and args[-1] == N
    assert grid == (-(-longest // KBN) * n_docs * H + -(-longest // QBM) * n_docs * H,)
