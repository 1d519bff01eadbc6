#!/usr/bin/env bash
# Multi-GPU scaling of the trainer: DDP and FSDP (parallel=ddp|fsdp) of the GPU comparison model on 1 and
# K GPUs of one host under torchrun, the same per-GPU batch (weak scaling). Scaling efficiency =
# tokens/s on K GPUs / (K x tokens/s on 1 GPU), from the trainer's own metrics.jsonl (tokens_per_s rows
# after the first third of the steps, so start-up and compilation are left out).
#
#     bash benchmarks/bench_scaling.sh                      (K = all GPUs; ~4 x (start-up + 60 steps))
#     K=4 ATTN=softmax COMPILE=true STEPS=100 bash benchmarks/bench_scaling.sh
#
# Settings (environment): K, CONFIG (configs/compare-gpu.yaml), DATA (bundled: no preparation needed; the
# model's GPT-2-sized vocabulary is larger than the bundled tokenizer's, which is allowed), ATTN (tda),
# STEPS (60), BATCH (per-GPU batch, the config's when unset), COMPILE (false), OUT (runs/bench-scaling).
# Writes OUT/scaling.md and OUT/scaling.json.
set -euo pipefail
cd "$(dirname "$0")/.."
K=${K:-$(nvidia-smi -L | wc -l)}
CONFIG=${CONFIG:-configs/compare-gpu.yaml}
DATA=${DATA:-bundled}
ATTN=${ATTN:-tda}
STEPS=${STEPS:-60}
COMPILE=${COMPILE:-false}
OUT=${OUT:-runs/bench-scaling}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
counts="1"
[ "$K" -gt 1 ] && counts="1 $K"
for par in ddp fsdp; do
  for n in $counts; do
    run="$OUT/$par-$n"
    rm -rf "$run"
    extra=()
    [ -n "${BATCH:-}" ] && extra+=(--set "batch_size=$BATCH")
    echo "== $par on $n GPU(s)"
    python3 -m torch.distributed.run --standalone --nproc_per_node="$n" -m tda.cli train "$CONFIG" \
      --set parallel="$par" --set out_dir="$run" --set data_dir="$DATA" --set model.attention="$ATTN" \
      --set max_steps="$STEPS" --set log_interval=5 --set eval_interval=0 --set eval_iters=1 \
      --set ckpt_interval=0 --set compile="$COMPILE" --set progress=false "${extra[@]}" \
      || echo "$par on $n GPU(s) failed (rc $?)"
  done
done
python3 - "$OUT" "$STEPS" "$counts" <<'PY'
import json, os, statistics, sys
out, steps, counts = sys.argv[1], int(sys.argv[2]), [int(c) for c in sys.argv[3].split()]
res = {}
for par in ("ddp", "fsdp"):
    for n in counts:
        path = os.path.join(out, f"{par}-{n}", "metrics.jsonl")
        if not os.path.isfile(path):
            continue
        rows = [json.loads(line) for line in open(path)]
        tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > steps // 3]
        if tps:
            res[par, n] = statistics.median(tps)
lines = ["| parallel | GPUs | tokens/s | tokens/s per GPU | scaling efficiency |", "|---|---:|---:|---:|---:|"]
for (par, n), tps in sorted(res.items()):
    base = res.get((par, 1))
    eff = f"{tps / (n * base):.0%}" if base else "-"
    lines.append(f"| {par} | {n} | {tps:,.0f} | {tps / n:,.0f} | {eff} |")
table = "\n".join(lines)
print(table)
open(os.path.join(out, "scaling.md"), "w").write(table + "\n")
json.dump([{"parallel": p, "gpus": n, "tokens_per_s": t} for (p, n), t in sorted(res.items())],
          open(os.path.join(out, "scaling.json"), "w"), indent=1)
PY
