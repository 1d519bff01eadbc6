"""Do the compile modes train the same model? From one initialisation and the same batches, K training steps
of the GPU comparison model (configs/compare-gpu.yaml's shape: 8 x 512, context 1024, bf16 autocast, AdamW) per
mode -- eager twice (its own run-to-run spread), torch.compile default, torch.compile "reduce-overhead" (CUDA
graphs) -- printing each step's loss and the largest difference from the first eager run.

    PYTHONPATH=src python3 benchmarks/check_compile_modes.py [--variants softmax,tda] [--steps 8] [--grads]

--grads first compares one step's gradients, compiled (default mode) against eager, parameter by parameter.
"""
import argparse

import torch

from tda.models.config import GPTConfig
from tda.models.params import matched_config
from tda.models.gpt import GPT


def run(cfg, mode, steps, batch):
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    opt = model.configure_optimizer(0.1, 1e-3, device_type="cuda")
    step_model = model if mode == "eager" else torch.compile(model, mode=None if mode == "default" else mode)
    g = torch.Generator(device="cuda").manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), device="cuda", generator=g)
        torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            _, loss = step_model(x, x)
        with torch.autograd.set_multithreading_enabled(False):
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def grads(cfg, mode, batch):
    """{parameter name: gradient} of one step from the seed-0 initialisation, in fp32."""
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    step_model = model if mode == "eager" else torch.compile(model, mode=None if mode == "default" else mode)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), device="cuda",
                      generator=torch.Generator(device="cuda").manual_seed(1))
    torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        _, loss = step_model(x, x)
    loss.backward()
    return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def grad_table(cfg, variant, batch):
    """Relative L2 difference of each gradient, compiled (default mode) against eager, the largest ones and the
    threshold parameters' (beta, lam)."""
    e, c = grads(cfg, "eager", batch), grads(cfg, "default", batch)
    rel = {n: float((c[n] - e[n]).norm() / e[n].norm().clamp_min(1e-30)) for n in e}
    top = sorted(rel.items(), key=lambda kv: -kv[1])[:4]
    scal = {n: v for n, v in rel.items() if n.endswith(("beta", "lam_logit"))}
    med = sorted(rel.values())[len(rel) // 2]
    print(f"{variant:8s} one step, |g_compiled - g_eager| / |g_eager|: median {med:.2e}; "
          "largest " + ", ".join(f"{n} {v:.2e}" for n, v in top), flush=True)
    if scal:
        print(f"{variant:8s}   beta / lam: " + ", ".join(f"{n} {v:.2e}" for n, v in scal.items()), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="softmax,tda")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--grads", action="store_true", help="also each gradient of one step, compiled vs eager")
    args = ap.parse_args()
    base = GPTConfig(vocab_size=50304, block_size=1024, n_layer=8, n_head=8, n_embd=512, attn_backend="auto")
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; batch {args.batch} x 1024", flush=True)
    for variant in args.variants.split(","):
        cfg = matched_config(base, variant, multiple_of=32)
        if args.grads:
            grad_table(cfg, variant, args.batch)
        ref = None
        for mode in ("eager", "eager", "default", "reduce-overhead"):
            losses = run(cfg, mode, args.steps, args.batch)
            ref = ref or losses
            diff = max(abs(a - b) for a, b in zip(losses, ref))
            print(f"{variant:8s} {mode:16s} " + " ".join(f"{v:.4f}" for v in losses) + f"   max |diff| {diff:.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
