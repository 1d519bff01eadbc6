#!/usr/bin/env bash
# One device call: training throughput of the GPU comparison model, softmax vs TDA (context 1024, where
# the short-sequence kernel configs apply), then eager vs CUDA-graphed single-op timings.
#     run(command="bash benchmarks/gpu_training_throughput.sh", carry=["data/gpt2", "data/pylib"], timeout_s=400)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-training-throughput}
mkdir -p "$OUT"
COMPARE_TIMEOUT_S=200 OUT="$OUT" bash benchmarks/replicate.sh compare --variants softmax,tda
echo "compare rc $?"
PYTHONPATH="$PWD/src" timeout 150 python3 benchmarks/bench_cudagraphs.py > "$OUT/cudagraphs.md" 2>&1
echo "cudagraphs rc $?"
cat "$OUT/cudagraphs.md"
