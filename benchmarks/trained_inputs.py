"""Attention inputs taken from a trained TDA model: the realistic-sparsity inputs of bench_attention.py.

Runs a checkpoint's model over real text (the corpus's validation split for N <= 1024, its held-out long
documents beyond) and records what each TDA layer hands the attention op: q1, k1, q2, k2, v after RoPE, and
the layer's trained beta and lam (per head). `heads_for_bench` stacks consecutive layers' heads to the
benchmark's head count, so a (B, 16, N, d) case holds two layers of an 8-head model (four of a 4-head one).
Past the training context this is the length extrapolation TDA is built for (tau grows with log i).

    PYTHONPATH=src python3 benchmarks/trained_inputs.py CKPT --data data/gpt2 [--ns 1024,4096,8192,16384]

prints, per layer and length, the fraction of visited (query block, key block) pairs holding a survivor
(the forward's flags at the kernels' grain: what the backward must recompute) and the fraction of exact
zeros in the layer's weights (at N <= 4096, where the reference's weights fit).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from tda.data.dataset import load_long_documents, load_meta
from tda.layers.tda import TDAAttention


def token_batch(data_dir, N, B):
    """(B, N) int64 ids of real text: N <= 1024 from the validation split (B windows, evenly spaced);
    longer, the first N tokens of the B longest held-out documents holding >= N (a clear error if fewer)."""
    if N <= 1024:
        val = np.memmap(Path(data_dir) / "val.bin", dtype=np.dtype(load_meta(data_dir)["dtype"]), mode="r")
        if len(val) < B * N:
            raise ValueError(f"N={N}, B={B}: the validation split holds only {len(val)} tokens")
        step = len(val) // B
        rows = [val[i * step:i * step + N] for i in range(B)]
    else:
        docs = sorted(load_long_documents(data_dir, min_tokens=N), key=lambda d: -d["tokens"])
        if len(docs) < B:
            raise ValueError(f"N={N}, B={B}: only {len(docs)} held-out documents hold >= {N} tokens")
        rows = [np.asarray(d["ids"][:N]) for d in docs[:B]]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


@torch.no_grad()
def capture(model, input_ids, dtype=torch.bfloat16):
    """Per TDA layer, a dict of the op's inputs (q1, k1, q2, k2, v cast to dtype; beta and lam fp32, (H,))
    from one forward of model over input_ids. Only the blocks run (no logits: 16K x vocab would not fit)."""
    layers = [b.attn for b in model.blocks]
    if not all(isinstance(a, TDAAttention) and a.n_views == 2 for a in layers):
        raise ValueError("capture needs a model whose every layer is TDA (attention='tda')")
    got = []

    def recorder(layer, op):
        def wrapped(qs, ks, v, position_offset, return_weights):
            got.append(dict(q1=qs[0].to(dtype), k1=ks[0].to(dtype), q2=qs[1].to(dtype), k2=ks[1].to(dtype),
                            v=v.to(dtype), beta=layer.beta.detach().float().clone(),
                            lam=layer.lam.detach().float().clone(), kappa=layer.kappa, p=layer.p))
            return op(qs, ks, v, position_offset, return_weights)
        return wrapped

    saved = [vars(a).get("_op") for a in layers]  # an instance's own _op, if one was set (else None)
    try:
        for a in layers:
            a._op = recorder(a, a._op)  # an instance attribute: shadows the method for this forward only
        device = next(model.parameters()).device
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        with autocast:
            x = model.drop(model.wte(input_ids.to(device)))
            for block in model.blocks:
                x = block(x, model.rope, 0)
    finally:
        for a, op in zip(layers, saved):
            if op is None:
                del a._op  # the class's method again
            else:
                a._op = op
    return got


def heads_for_bench(layers, H):
    """Groups of consecutive layers stacked along the head axis to H heads: [(first layer, inputs)], where
    inputs = (q1, k1, q2, k2, v, beta, lam). Layers with GQA (fewer k/v heads) are not stacked."""
    h = layers[0]["q1"].shape[1]
    if H % h or layers[0]["k1"].shape[1] != h:
        raise ValueError(f"cannot stack {h}-head layers (k/v heads {layers[0]['k1'].shape[1]}) to {H} heads")
    per = H // h
    out = []
    for L in range(0, len(layers) - per + 1, per):
        group = layers[L:L + per]
        out.append((L, tuple(torch.cat([g[k] for g in group], dim=0 if k in ("beta", "lam") else 1).contiguous()
                             for k in ("q1", "k1", "q2", "k2", "v", "beta", "lam"))))
    return out


def tile_density(q1, k1, q2, k2, v, beta, lam, p=2.0, kappa=1.0):
    """Fraction of visited (query block, key block) pairs whose forward flag is set (CUDA, the kernels)."""
    from tda.ops import reference
    from tda.ops.triton.config import block_config  # (tda.ops imports the kernels: torch.ops.tda is registered)
    M, D = q1.shape[2], q1.shape[3]
    tau = reference.tau(torch.arange(M, device=q1.device), beta, kappa, D).float().contiguous()
    flags = torch.ops.tda.threshold_attention_fwd(q1, k1, q2, k2, v, tau, lam, p, True, True)[1]
    FM, FN = block_config(D, q1.dtype, k1.shape[2], True).flags
    n_mt, n_nt = flags.shape[1:]
    r = torch.arange(n_mt, device=q1.device)[:, None] * FM
    c = torch.arange(n_nt, device=q1.device)[None, :] * FN
    visited = c <= r + FM - 1
    return (flags.bool() & visited).sum().item() / (visited.sum().item() * flags.shape[0])


def exact_zero_fraction(q1, k1, q2, k2, v, beta, lam, p=2.0, kappa=1.0):
    """Exact zeros of the signed weights a1 - lam * a2 over the causal pairs (the reference op, fp32)."""
    from tda.ops import threshold_differential_attention
    _, w = threshold_differential_attention(*(t.float() for t in (q1, k1, q2, k2, v)), beta, lam, kappa=kappa,
                                            p=p, causal=True, backend="reference", return_weights=True)
    N = w.shape[-1]
    causal = torch.ones(N, N, dtype=torch.bool, device=w.device).tril()
    return ((w == 0) & causal).sum().item() / (causal.sum().item() * w.shape[0] * w.shape[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--data", default="data/gpt2")
    ap.add_argument("--ns", default="1024,4096,8192,16384")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)
    from tda import load_checkpoint
    model, _ = load_checkpoint(args.ckpt, device="cuda")
    print(f"{args.ckpt}: {model.config.n_layer} layers x {model.config.n_head} heads of {model.config.head_dim}")
    for N in [int(n) for n in args.ns.split(",")]:
        layers = capture(model, token_batch(args.data, N, args.batch))
        for L, g in enumerate(layers):
            ins = [g[k] for k in ("q1", "k1", "q2", "k2", "v", "beta", "lam")]
            dens = tile_density(*ins, g["p"], g["kappa"])
            zeros = exact_zero_fraction(*ins, g["p"], g["kappa"]) if N <= 4096 else float("nan")
            print(f"N={N:6d} layer {L}: tile density {dens:.3f}, exact zeros {zeros:.4f}, "
                  f"beta {g['beta'].min():.2f}..{g['beta'].max():.2f}, lam {g['lam'].min():.2f}..{g['lam'].max():.2f}",
                  flush=True)
        del layers
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
