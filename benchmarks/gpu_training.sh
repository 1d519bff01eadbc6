#!/usr/bin/env bash
# Training on one GPU: the measurements docs/training.md reports, in one run, cheapest first.
#   0. the tests of the step's fused parts on the GPU (RMSNorm, the chunked cross-entropy, the fused q/k/v
#      projection with RoPE, the RoPE kernel), which run under the Triton interpreter on CPU-only CI;
#   1. benchmarks/bench_train.py at 1K and 8K eager and 1K compiled (TDA against softmax on SDPA's default
#      backend and on flash) with a torch.profiler table of one TDA step at 1K: where the 1K step's time goes;
#      then TDA's eager step without the fused q/k/v projection (--without fused-projection), the A/B of
#      that part in the same run; TDA and softmax at 8K and 32K with every block recomputed
#      (--activation-checkpoint 1: speed and peak memory); benchmarks/step_over_training.py (the step's
#      speed at checkpoints while the model trains on the bundled corpus, 1K and 8K); the loss's row
#      kernel over its launch configs;
#   2. benchmarks/packing_step.py: training-step tokens/s, plain windows against packed documents, with the
#      top kernels of one packed step (mean document 1024) per attention; then the same compiled;
#   3. benchmarks/check_fsdp_gpu.py: FSDP2 on CUDA (nccl, bf16, eager and compiled, consolidate, resume).
# Logs and JSON go to $OUT (default ./gpu-training-out); TABLE=1 adds the full context table (1K-32K,
# compiled at COMPILE_CONTEXTS, default all five). About 6-7 minutes on an H100 without TABLE.
#
#   OUT=/tmp/out bash benchmarks/gpu_training.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-training-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
rc=0
python -m pytest -q -p no:cacheprovider tests/test_rms_norm_kernel.py tests/test_cross_entropy.py \
    tests/test_project_rope.py tests/test_rope_kernel.py 2>&1 | tee "$OUT/pytest-gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python benchmarks/bench_train.py --contexts 1024,8192 --compile-contexts 1024 --profile 1024 \
    --json "$OUT/train-step.json" 2>&1 | tee "$OUT/train-step.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python benchmarks/bench_train.py --contexts 1024,8192 --compile-contexts '' --variants tda \
    --without fused-projection --json "$OUT/train-without-projection.json" 2>&1 | tee -a "$OUT/train-step.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python benchmarks/bench_train.py --contexts 8192,32768 --compile-contexts '' --variants tda,softmax \
    --activation-checkpoint 1 2>&1 | tee -a "$OUT/train-step.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python benchmarks/step_over_training.py --plot "$OUT/over-training.png" 2>&1 | tee -a "$OUT/train-step.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python benchmarks/bench_cross_entropy.py 2>&1 | tee -a "$OUT/train-step.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python benchmarks/packing_step.py --profile 1024 2>&1 | tee "$OUT/packing_step.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python benchmarks/packing_step.py --compile 2>&1 | tee "$OUT/packing_step_compiled.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python benchmarks/check_fsdp_gpu.py 2>&1 | tee "$OUT/check_fsdp_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
if [ "${TABLE:-0}" = 1 ]; then
  python benchmarks/bench_train.py --compile-contexts "${COMPILE_CONTEXTS:-1024,4096,8192,16384,32768}" \
      --json "$OUT/train-table.json" 2>&1 | tee "$OUT/train-table.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
fi
exit $rc
