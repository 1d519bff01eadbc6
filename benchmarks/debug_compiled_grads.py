"""Which gradients of the GPU comparison model does torch.compile change, and is it the TDA op? Per parameter,
|g - g_ref| / |g_ref| against the eager model on the reference op (attn_backend="reference"), for the eager
model on the kernels, the compiled one (backward on autograd's device thread, and on the calling thread); then
the op alone, with the model's input layout (two views chunked from one rotated tensor), compiled against eager.

    PYTHONPATH=src python3 benchmarks/debug_compiled_grads.py

On the H200 (docs/results/compare-gpu/compile-modes/debug-compiled-grads.log): the op alone agrees bitwise,
compiled against eager; the models differ from the reference model by 60-70% (median over parameters) whichever
op and mode they use, the compiled model on the reference op included. The TDA model's gradient is
ill-conditioned under bf16 rounding (benchmarks/grad_sensitivity.py finds the cause: the per-head RMSNorm's eps).
"""
import dataclasses

import torch

import tda.ops as ops
from tda.models.config import GPTConfig
from tda.models.params import matched_config
from tda.models.gpt import GPT


def model_grads(cfg, compiled, threads=True, batch=4):
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    run = torch.compile(model) if compiled else model
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), device="cuda",
                      generator=torch.Generator(device="cuda").manual_seed(1))
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        _, loss = run(x, x)
    with torch.autograd.set_multithreading_enabled(threads):
        loss.backward()
    return {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def rel(a, b):
    return {n: float((a[n] - b[n]).norm() / b[n].norm().clamp_min(1e-30)) for n in b}


def summary(name, r):
    med = sorted(r.values())[len(r) // 2]
    top = sorted(r.items(), key=lambda kv: -kv[1])[:3]
    last = {n: v for n, v in r.items() if n.startswith("blocks.7.attn")}
    print(f"{name:34s} median {med:.2e}; largest " + ", ".join(f"{n} {v:.1e}" for n, v in top), flush=True)
    print(f"{'':34s} blocks.7.attn: " + ", ".join(f"{n[14:]} {v:.1e}" for n, v in last.items()), flush=True)


def op_alone():
    B, H, N, D = 4, 8, 1024, 64
    g = torch.Generator(device="cuda").manual_seed(2)
    base = torch.randn(B, N, 2 * H, D, device="cuda", generator=g).bfloat16()
    kbase = torch.randn(B, N, 2 * H, D, device="cuda", generator=g).bfloat16()
    v0 = torch.randn(B, N, H, D, device="cuda", generator=g).bfloat16()
    dout = torch.randn(B, H, N, D, device="cuda", generator=g).bfloat16()
    beta0 = torch.ones(H, device="cuda")
    lam0 = torch.zeros(H, device="cuda")

    def f(qb, kb, v, beta, lam_logit):
        qs = (qb * 1.0).transpose(1, 2).chunk(2, dim=1)
        ks = (kb * 1.0).transpose(1, 2).chunk(2, dim=1)
        return ops.threshold_differential_attention(qs[0], ks[0], qs[1], ks[1], v.transpose(1, 2), beta,
                                                    torch.sigmoid(lam_logit))

    res = {}
    for name, fn in (("eager", f), ("compiled", torch.compile(f))):
        leaves = [t.clone().requires_grad_(True) for t in (base, kbase, v0, beta0, lam0)]
        out = fn(*leaves)
        out.backward(dout)
        res[name] = [out.float()] + [t.grad.float() for t in leaves]
    names = ["out", "dq", "dk", "dv", "dbeta", "dlam_logit"]
    print("op alone, compiled vs eager: " + ", ".join(
        f"{n} {float((c - e).norm() / e.norm()):.1e}" for n, c, e in zip(names, res["compiled"], res["eager"])),
        flush=True)


def main():
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    op_alone()
    base = GPTConfig(vocab_size=50304, block_size=1024, n_layer=8, n_head=8, n_embd=512, attn_backend="auto")
    cfg = matched_config(base, "tda", multiple_of=32)
    ref = model_grads(dataclasses.replace(cfg, attn_backend="reference"), False)
    summary("eager, kernels", rel(model_grads(cfg, False), ref))
    summary("compiled, kernels, device thread", rel(model_grads(cfg, True), ref))
    summary("compiled, kernels, calling thread", rel(model_grads(cfg, True, threads=False), ref))
    summary("compiled, reference op", rel(model_grads(dataclasses.replace(cfg, attn_backend="reference"), True), ref))


if __name__ == "__main__":
    main()
