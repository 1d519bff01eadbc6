#!/usr/bin/env bash
# One device call: train TDA models on the GPU comparison config, then benchmark the kernels on attention
# inputs recorded from their layers (bench_attention.py --kinds trained), and report per-layer survivor
# density (trained_inputs.py).
#   run(command="bash benchmarks/gpu_trained_session.sh", carry=["data/gpt2", "data/pylib"], timeout_s=600)
# Models (configs/compare-gpu.yaml, 200 steps, eager):
#   d64   softmax and tda, 8 heads of 64 (the comparison's own; softmax for the loss reference)
#   eps4  tda with model.head_norm_eps=1e-4 (the gradient-conditioning question, docs/results/grad-sensitivity)
#   d128  tda with 4 heads of 128 (model.n_head=4)
# Switches: TRAIN_EPS4=0 skips eps4; BENCH=0 skips the benchmark; BENCH_ARGS adds to its arguments.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/trained-session-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/data/pylib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/trained-session.log"
exec > >(tee -a "$LOG") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
git log -1 --format='commit %h %s' 2>/dev/null || true
start=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - start )) s"; }

train() {  # name, variants, overrides...
    local name=$1 variants=$2
    shift 2
    stamp "train $name"
    timeout 200 python3 -m tda.train.compare configs/compare-gpu.yaml --variants "$variants" --no-progress \
        --set out_dir=runs/$name --results-dir "runs/$name/results" "$@" 2>&1 \
        | grep -v "Warning\|warn(" | grep -E "val loss|compare\]|Error|error|Traceback" || true
    cp "runs/$name/results/results.md" "$OUT/compare-$name.md" 2>/dev/null || true
}
train d64 softmax,tda
train d128 tda --set model.n_head=4
[[ "${TRAIN_EPS4:-1}" == 1 ]] && train eps4 tda --set model.head_norm_eps=1e-4

stamp "survivor density by layer"
timeout 120 python3 benchmarks/trained_inputs.py runs/d64/tda/last.pt --ns 1024,4096,8192,16384
timeout 60 python3 benchmarks/trained_inputs.py runs/d128/tda/last.pt --ns 1024,4096,16384

if [[ "${BENCH:-1}" == 1 ]]; then
    stamp "bench"
    timeout "${BENCH_S:-300}" python3 benchmarks/bench_attention.py --kinds trained --graphs --no-ref \
        --trained 64=runs/d64/tda/last.pt,128=runs/d128/tda/last.pt \
        --out "$OUT/bench-trained.md" --json "$OUT/bench-trained.json" ${BENCH_ARGS:-}
fi
stamp "done"
