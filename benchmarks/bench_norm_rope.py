"""GPU time of the elementwise layers around attention in the GPU comparison model (batch 16 x 1024, bf16
autocast), forward + backward, eager: the RMSNorm (block norms over n_embd 512, and TDA's per-head norm over
(8 heads, 64)) as a chain of elementwise ops (tda.layers.common.RMSNorm until it moved to F.rms_norm), as
RMSNorm computes it now, and as F.rms_norm on the bf16 input; RoPE over q of one view (softmax) and of two
(TDA), as torch ops and as the fused kernel (tda.ops.triton.rope). Accuracy of each norm against float64,
relative to each row's largest output; the fused RoPE against the torch ops in float64.

    PYTHONPATH=src python3 benchmarks/bench_norm_rope.py
"""
import torch
import torch.nn.functional as F
import triton

from tda.layers import common
from tda.layers.common import RMSNorm, RotaryEmbedding, split_heads


def fb_ms(fn, x, w):
    dy = torch.randn_like(fn(x, w).float()).to(x.dtype)

    def step():
        x.grad = None
        w.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(x, w)
        y.backward(dy)
    return triton.testing.do_bench(step, warmup=20, rep=200, return_mode="median")


def chain(x, w, eps=1e-6):
    """RMSNorm as tda.layers.common.RMSNorm computed it before F.rms_norm: four elementwise ops over fp32."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def main():
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), torch.__version__)
    for name, shape, norm_shape in (("block norm (16, 1024, 512)", (16, 1024, 512), (512,)),
                                    ("head norm (16, 1024, 8, 64)", (16, 1024, 8, 64), (8, 64))):
        # rows of very different sizes, as sparse attention's outputs have
        x = (torch.randn(*shape, device="cuda") * torch.rand(*shape[:-1], 1, device="cuda") ** 4).bfloat16()
        x.requires_grad_(True)
        w = (1 + 0.1 * torch.randn(*norm_shape, device="cuda")).requires_grad_(True)
        mod = RMSNorm(norm_shape).cuda()
        with torch.no_grad():
            mod.weight.copy_(w)

        def ours(x, w):
            return mod(x)

        def fused_bf16(x, w):  # torch's rms_norm on the bf16 input (fp32 statistics inside), per last dim
            y = F.rms_norm(x, (x.shape[-1],), None, eps=1e-6)
            return y * w.to(x.dtype)
        xd = x.double()
        ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
        for label, fn in (("four-op chain", chain), ("RMSNorm (now)", ours), ("F.rms_norm bf16", fused_bf16)):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = fn(x, w)
            err = ((y.double() - ref).abs() / ref.abs().amax(-1, keepdim=True).clamp_min(1e-30)).max().item()
            print(f"{name:28s} {label:16s} fwd+bwd {fb_ms(fn, x, mod.weight if fn is ours else w) * 1e3:7.1f} us"
                  f"  out {y.dtype}, max error / row max {err:.1e}")
    rope = RotaryEmbedding(64, 10000.0, 1.0, 1024).cuda()
    for views in (1, 2):
        # q as the layers pass it: a transposed head view of the projection's output (B, N, H * D)
        proj = torch.randn(16, 1024, 8 * views * 64, device="cuda", dtype=torch.bfloat16)
        q = split_heads(proj, 8 * views, 64).detach().requires_grad_(True)
        dy = torch.randn(q.shape, device="cuda", dtype=torch.bfloat16)
        for label, fused in (("torch ops", False), ("fused kernel", True)):
            common.FUSED_ROPE = fused

            def step():
                q.grad = None
                rope(q).backward(dy)
            ms = triton.testing.do_bench(step, warmup=20, rep=200, return_mode="median")
            print(f"RoPE over (16, {8 * views}, 1024, 64) {label:13s} fwd+bwd {ms * 1e3:7.1f} us (x2: q and k)")
    # the kernel against the torch expression in fp64 on this GPU, forward and gradient, offset positions
    x = split_heads(torch.randn(2, 300, 3 * 64, device="cuda", dtype=torch.float64), 3, 64).requires_grad_(True)
    xd = x.detach().clone().requires_grad_(True)
    dy = torch.randn(x.shape, device="cuda", dtype=torch.float64)
    common.FUSED_ROPE = True
    y = rope(x, 17)
    common.FUSED_ROPE = False
    yd = rope(xd, 17)
    y.backward(dy)
    yd.backward(dy)
    print(f"fused RoPE against torch ops, fp64: forward max diff {(y - yd).abs().max().item():.1e}, "
          f"gradient {(x.grad - xd.grad).abs().max().item():.1e}")
    common.FUSED_ROPE = True
    model_check()


def model_check():
    """A whole TDA GPT (fp32 weights, eager) with the fused RoPE against the torch-op RoPE: logits, loss and
    every parameter's gradient, in fp32 and under bf16 autocast, at position offset 0 and 5."""
    from tda.models.config import GPTConfig
    from tda.models.gpt import GPT
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=256, n_layer=2, n_head=4, n_embd=256)).cuda()
    ids = torch.randint(0, 512, (2, 200), device="cuda")
    for amp in (False, True):
        for offset in (0, 5):
            res = {}
            for fused in (True, False):
                common.FUSED_ROPE = fused
                model.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    logits, loss = model(ids, ids, position_offset=offset)
                loss.backward()
                res[fused] = (logits.float(), loss.item(),
                              torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
            (la, ea, ga), (lb, eb, gb) = res[True], res[False]
            print(f"GPT, fused RoPE vs torch ops ({'bf16 autocast' if amp else 'fp32'}, offset {offset}): "
                  f"logits max diff {(la - lb).abs().max().item():.1e}, loss {ea:.6f} vs {eb:.6f}, "
                  f"grads rel diff {((ga - gb).norm() / gb.norm()).item():.1e}")
    common.FUSED_ROPE = True


if __name__ == "__main__":
    main()
