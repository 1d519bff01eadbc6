"""One-GPU check of the FSDP trainer path on CUDA (nccl, bf16 all-gathers), eager and compiled, beside DDP's
one-process path: both train, the sharded checkpoint consolidates into the returned model, and an FSDP
run resumes from it. Prints one line per run; exits non-zero on a failed check.

    PYTHONPATH=src python3 benchmarks/check_fsdp_gpu.py          (~1-2 minutes on one H100)
"""
import sys
import tempfile
import time

import torch

from tda.data import ensure_bundled_data
from tda.models.checkpoint import load_checkpoint
from tda.train.config import TrainConfig
from tda.train.loop import train


def main():
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    tmp = tempfile.mkdtemp(prefix="check_fsdp_")
    data = ensure_bundled_data(f"{tmp}/bundled")
    ok = True
    for compile_ in (False, True):
        for parallel in ("ddp", "fsdp"):
            d = {"data_dir": str(data), "out_dir": f"{tmp}/{parallel}-{compile_}",
                 "model": {"vocab_size": 4096, "block_size": 256, "n_layer": 4, "n_head": 4, "n_embd": 256},
                 "batch_size": 16, "max_steps": 30, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5,
                 "eval_interval": 15, "eval_iters": 2, "log_interval": 10, "ckpt_interval": 15,
                 "device": "cuda", "progress": False, "parallel": parallel, "compile": compile_}
            t0 = time.time()
            s = train(TrainConfig.from_dict(d))
            line = f"{parallel} {'compiled' if compile_ else 'eager'}: val loss {s['val_loss']:.4f} ({time.time() - t0:.0f} s)"
            if parallel == "fsdp":
                model, _ = load_checkpoint(s["last"], device="cuda")
                ref = s["model"].state_dict()
                same = all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
                r = train(TrainConfig.from_dict(dict(d, max_steps=40)), resume=True)
                line += f"; consolidated == trained: {same}; resumed to step {r['step']}, val {r['val_loss']:.4f}"
                ok &= same and r["step"] == 40
            print(line, flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
