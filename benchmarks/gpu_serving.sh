#!/usr/bin/env bash
# Serving on one GPU: correctness first, then speed, in one run.
#   1. benchmarks/check_decode.py: DECODE_N (default 200) random configurations of the split-KV decode
#      kernel against the reference;
#   2. benchmarks/check_generate_cuda.py: cached step logits against full forwards, greedy tokens with and
#      without the cache, and with decode steps replayed from a CUDA graph (every variant, fp32 and bf16);
#   3. the CUDA-only tests (CUDA-graph generation, packed documents through the fused kernel), which skip
#      on CPU-only CI, and the RoPE kernel's tests (single and paired launches) on the GPU;
#   4. benchmarks/bench_generate.py --cuda-graph: end-to-end tokens/s of the 51M comparison model, TDA
#      against softmax, eager and CUDA-graph decoding, batch 1 and 32.
#   5. with DECODE_BENCH=1, benchmarks/bench_decode.py: the decode-step table of docs/decode.md (under 4 more
#      minutes);
#   6. with DECODE_PROFILE=1, bench_generate.py --profile-steps: where an eager decode step's host time goes,
#      TDA and softmax at batch 1 (cProfile and torch.profiler tables, decode-profile.txt).
# Results (logs, generate.json) go to $OUT (default: ./gpu-serving-out). About 3-4 minutes on an H100.
#
#   OUT=/tmp/out bash benchmarks/gpu_serving.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-serving-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
rc=0
python benchmarks/check_decode.py --n "${DECODE_N:-200}" --log "$OUT/decode-check.log" > "$OUT/decode-check.out" 2>&1 || rc=1
tail -n 1 "$OUT/decode-check.out"
python benchmarks/check_generate_cuda.py 2>&1 | tee "$OUT/check_generate_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python -m pytest -q -p no:cacheprovider tests/test_generate.py tests/test_packing.py -k cuda 2>&1 | tee "$OUT/pytest-cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python -m pytest -q -p no:cacheprovider tests/test_rope_kernel.py 2>&1 | tee -a "$OUT/pytest-cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
python benchmarks/bench_generate.py --device cuda --cuda-graph --out "$OUT/generate.json" 2>&1 | tee "$OUT/generate.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
if [ "${DECODE_BENCH:-0}" = 1 ]; then
  python benchmarks/bench_decode.py --out "$OUT/decode.md" --json "$OUT/decode.json" > "$OUT/bench_decode.log" 2>&1 || rc=1
fi
if [ "${DECODE_PROFILE:-0}" = 1 ]; then
  python benchmarks/bench_generate.py --device cuda --batch 1 --repeats 1 --profile-steps 20 \
      > "$OUT/decode-profile.txt" 2>&1 || rc=1
fi
exit $rc
