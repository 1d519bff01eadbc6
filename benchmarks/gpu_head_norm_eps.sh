#!/usr/bin/env bash
# GPU comparison runs (configs/compare-gpu.yaml, 200 steps, eager, bf16 autocast) of softmax and TDA at two
# per-head RMSNorm eps, for each seed in SEEDS (default 1338): the evidence behind GPTConfig.head_norm_eps.
#   run(command="SEEDS=1338 bash benchmarks/gpu_head_norm_eps.sh", carry=["data/gpt2", "data/pylib"])
# Prints one line per run (variant, eps, seed, final validation loss, exact zeros); results tables in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/head-norm-eps-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/data/pylib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for seed in ${SEEDS:-1338}; do
    for eps in ${EPS:-1e-6 1e-4}; do
        variants=tda
        [[ "$eps" == "${EPS_SOFTMAX:-1e-6}" ]] && variants=softmax,tda  # softmax has no head norm: run it once
        name=eps$eps-seed$seed
        timeout 200 python3 -m tda.train.compare configs/compare-gpu.yaml --variants "$variants" --no-progress \
            --set out_dir=runs/$name --set seed=$seed --set model.head_norm_eps=$eps \
            --results-dir "runs/$name/results" 2>&1 | grep -E "^\[compare\] .*val loss|Error|Traceback" \
            | sed "s/^/eps $eps seed $seed: /"
        cp "runs/$name/results/results.md" "$OUT/compare-$name.md" 2>/dev/null || true
    done
done
