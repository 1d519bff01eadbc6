"""Which loop shapes Triton's automatic warp specialisation takes on Hopper (sm_90), compiled here with the
bundled ptxas -- no GPU. A first look for a warp-specialised TDA forward (docs/benchmarks.md, "What would close
the rest"): the forward's key loop would need the same shape.

Each case compiles a small attention-like kernel whose key loop is `tl.range(..., warp_specialize=True)` and
reports whether the compiled module holds a warp-specialised region (and how many warps it then runs), or how
the compile failed. The cases add, one at a time, what the TDA forward has and the minimal loop lacks:

    base      descriptor loads of k and v, one QK and one PV product per key block
    two       a second view (second QK product)
    elem      the exceedances (s - tau)_+^2 between the products
    qptr      the query block loaded by pointers (the forward masks its ragged rows that way)
    loop2     a second, pointer-based key loop after the first (the forward's masked diagonal stage)
    branch    a data-dependent `if` around the PV product (the forward's survivor screen)
    qnorm     the query rows' inverse norms computed from the loaded q block (the forward computes them so)
    d128      head dim 128, with 8 warps (the forward's d = 128 block) and with 4

    TRITON_DEFAULT_FP_FUSION=1 python benchmarks/probe_ws_sm90.py   (TRITON_INTERPRET unset)

Triton 3.9 (this machine) gave, with 4 warps: base / two / elem specialised (12 warps: a producer warpgroup and
two consumers); qptr, loop2 and qnorm crashed in NVGPUWarpSpecialization ("unsupported load type for producer
commit", cf. triton-lang/triton#9728); branch compiled without specialising; at 8 warps nothing specialised
(d128, or elem + two), at 4 warps d128 did (docs/results/kernels/tma/probe-ws-sm90-triton3.9.log). The
device's Triton 3.6 was not probed.

A TDA forward built to these rules (no screen, 4 warps, descriptor loads; commit 7abdf28, fwd_ws.py) measured
1.6-3.2x SDPA's forward on the H200 (Triton 3.6), against 0.75-1.41x for the table's forward, and slower with
the hint than without it at d = 64 (docs/results/kernels/ws/); it was removed.
"""
import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def _probe(Q, K, V, O, N, lo, TWO: tl.constexpr, ELEM: tl.constexpr, QPTR: tl.constexpr, LOOP2: tl.constexpr,
           BRANCH: tl.constexpr, QNORM: tl.constexpr, D: tl.constexpr):
    kd = tl.make_tensor_descriptor(K, shape=[N, D], strides=[D, 1], block_shape=[64, D])
    vd = tl.make_tensor_descriptor(V, shape=[N, D], strides=[D, 1], block_shape=[64, D])
    if QPTR:
        q = tl.load(Q + (tl.program_id(0) * 64 + tl.arange(0, 64))[:, None] * D + tl.arange(0, D)[None, :])
    else:
        qd = tl.make_tensor_descriptor(Q, shape=[N, D], strides=[D, 1], block_shape=[64, D])
        q = qd.load([tl.program_id(0) * 64, 0])
    tau = tl.full([64], 0.3, tl.float32)
    if QNORM:
        rq = tl.rsqrt(tl.sum(q.to(tl.float32) * q.to(tl.float32), 1))
    else:
        rq = tl.full([64], 1.0, tl.float32)
    acc = tl.zeros([64, D], dtype=tl.float32)
    for n in tl.range(0, lo, 64, warp_specialize=True):
        s = tl.dot(q, tl.trans(kd.load([n, 0])))
        if QNORM:
            s = s * rq[:, None]
        if ELEM:
            e = tl.maximum(s - tau[:, None], 0.0)
            w = e * e
        else:
            w = s
        if TWO:
            e2 = tl.maximum(tl.dot(q, tl.trans(kd.load([n + 1, 0]))) - tau[:, None], 0.0)
            w = w - 0.5 * e2 * e2
        if BRANCH:
            if tl.max(tl.max(w, 1), 0) > 0:
                acc += tl.dot(w.to(tl.bfloat16), vd.load([n, 0]))
        else:
            acc += tl.dot(w.to(tl.bfloat16), vd.load([n, 0]))
    if LOOP2:
        for n in range(lo, N, 64):
            kk = tl.load(K + (n + tl.arange(0, 64))[:, None] * D + tl.arange(0, D)[None, :])
            acc += tl.dot(tl.dot(q, tl.trans(kk)).to(tl.bfloat16), kk)
    tl.store(O + tl.arange(0, 64)[:, None] * D + tl.arange(0, D)[None, :], acc)


FLAGS = ("TWO", "ELEM", "QPTR", "LOOP2", "BRANCH", "QNORM")


def probe(num_warps=4, D=64, **on):
    """'specialised (W warps)', 'not specialised', or 'failed: ...' for one case."""
    names = list(_probe.arg_names)
    consts = dict({f: bool(on.get(f.lower(), False)) for f in FLAGS}, D=D)
    sig = {n: "constexpr" if n in consts else ("i32" if n in ("N", "lo") else "*fp32" if n == "O" else "*bf16")
           for n in names}
    src = ASTSource(_probe, sig, constexprs={(names.index(n),): v for n, v in consts.items()},
                    attrs={(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in consts})
    try:
        c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=3))
    except Exception as e:  # noqa: BLE001 (a failed compile is a finding)
        return f"failed: {str(e).splitlines()[0][:120]}"
    if c.asm["ttgir"].count("ttg.warp_specialize"):
        return f"specialised ({c.metadata.num_warps} warps)"
    return "not specialised"


def main():
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run with TRITON_INTERPRET unset")
    print(f"triton {triton.__version__}, sm_90")
    cases = [("base", {}), ("two", dict(two=True)), ("elem", dict(elem=True)), ("qptr", dict(qptr=True)),
             ("loop2", dict(loop2=True)), ("branch", dict(branch=True)), ("qnorm", dict(qnorm=True)),
             ("d128 (8 warps)", dict(D=128, num_warps=8)), ("d128 (4 warps)", dict(D=128)),
             ("elem+two, 8 warps", dict(elem=True, two=True, num_warps=8))]
    for name, kw in cases:
        print(f"{name:16s} {probe(**kw)}", flush=True)


if __name__ == "__main__":
    main()
