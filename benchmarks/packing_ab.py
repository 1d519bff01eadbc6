"""GPU A/B of packed documents: TDA and softmax, each trained with plain windows and with packed documents
(`pack_documents`), every final model then evaluated on the same validation windows both ways.

    tda data prepare --tokenizer gpt2 --out data/gpt2
    python benchmarks/packing_ab.py --seeds 0 1 2                      # 12 runs of configs/packing-ab-*.yaml
    python benchmarks/packing_ab.py --seeds 0 --steps 300 --out runs/packing-ab-smoke   # a quick smoke run
    python benchmarks/packing_ab.py --steps 3 --data-dir bundled --eval-iters 1 --out /tmp/ab --set device=cpu \
        --set model.n_layer=1 --set model.block_size=64 --set batch_size=2 --set model.vocab_size=4096  # CPU plumbing

"plain" validation: windows that cross document boundaries, one causal context, positions from the window
start (what unpacked training sees). "packed" validation: the same windows, each document alone with
positions from 0 (what a packed model sees; the loss of each document given only itself). Writes
OUT/results.json and OUT/results.md (mean and seed-to-seed spread per arm).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from tda.train.config import load_config
from tda.train.distributed import DistContext
from tda.train.loop import Data, autocast_dtype, evaluate, train

EVAL_SEED = 0   # every model is scored on the same validation windows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attentions", nargs="+", default=["softmax", "tda"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=None, help="override max_steps of the configs")
    ap.add_argument("--data-dir", default=None, help="override data_dir of the configs")
    ap.add_argument("--eval-iters", type=int, default=50)
    ap.add_argument("--out", default="runs/packing-ab")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run (e.g. model.n_layer=2)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for att in args.attentions:
        for pack in (False, True):
            for seed in args.seeds:
                name = f"{att}-{'packed' if pack else 'plain'}-s{seed}"
                over = [f"pack_documents={pack}", f"seed={seed}", f"out_dir={out / name}"]
                over += [f"max_steps={args.steps}"] if args.steps else []
                over += [f"data_dir={args.data_dir}"] if args.data_dir else []
                over += args.overrides
                cfg = load_config(f"configs/packing-ab-{att}.yaml", over)
                res = train(cfg)
                model, ctx = res["model"], DistContext(device=cfg.device)
                cfg.eval_iters = args.eval_iters
                amp = autocast_dtype(cfg, ctx.device_type)
                row = dict(attention=att, packed_training=pack, seed=seed, steps=res["step"],
                           elapsed_s=round(res["elapsed"], 1))
                for mode in ("plain", "packed"):
                    data = Data(cfg.data_dir, cfg.model.block_size, cfg.batch_size, ctx, EVAL_SEED, cfg.data,
                                pack=(False, mode == "packed"))
                    row[f"val_{mode}"] = round(evaluate(model, data, cfg, amp, ctx), 5)
                rows.append(row)
                print(json.dumps(row), flush=True)
                (out / "results.json").write_text(json.dumps(rows, indent=1))
                del model, res
                torch.cuda.empty_cache()
    lines = ["| attention | training | val loss, plain windows | val loss, packed documents | runs |",
             "|---|---|---:|---:|---:|"]
    for att in args.attentions:
        for pack in (False, True):
            rs = [r for r in rows if r["attention"] == att and r["packed_training"] == pack]
            cells = []
            for mode in ("plain", "packed"):
                v = [r[f"val_{mode}"] for r in rs]
                sd = f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else " (one seed)"
                cells.append(f"{statistics.mean(v):.4f}{sd}")
            lines.append(f"| {att} | {'packed' if pack else 'plain'} | {cells[0]} | {cells[1]} | {len(rs)} |")
    (out / "results.md").write_text("\n".join(lines) + "\n\n± = seed-to-seed standard deviation\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
