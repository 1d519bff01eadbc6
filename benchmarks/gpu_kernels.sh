#!/usr/bin/env bash
# The kernels on one GPU: correctness of the working tree, then speed before and after.
#   1. benchmarks/check_kernels.py: >= 200 random configurations against the reference (FlashAttention
#      criterion, forward and every gradient), in 8 processes side by side (their compilations overlap);
#   2. benchmarks/bench_attention.py (bf16, causal, d = 64 and 128, N = 1K..16K, forward and forward +
#      backward, against SDPA's default backend and flash) with PYTHONPATH on an old source tree ($OLD_SRC)
#      and then on this tree, one after the other on the same machine;
#   3. a table of both runs with new / old per row.
# Results (logs, JSON, table.md) go to $OUT (default: ./gpu-kernels-out).
#
#   git archive e94c6c2 src | (mkdir -p .old && tar -x -C .old)
#   OLD_SRC=.old/src OUT=/tmp/out bash benchmarks/gpu_kernels.sh
#
# About 6-8 minutes on an H100 (most of it Triton compiling the kernel variants).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OLD_SRC:?set OLD_SRC to the src folder of the old tree (see the header)}"
OUT="${OUT:-gpu-kernels-out}"
CHECK_N="${CHECK_N:-240}"
SHARDS="${SHARDS:-8}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt" || true

echo "== 1. check_kernels.py: $CHECK_N configurations in $SHARDS shards"
pids=()
for i in $(seq 0 $((SHARDS - 1))); do
  PYTHONPATH=src python benchmarks/check_kernels.py --n "$CHECK_N" --seed 0 --shard "$i/$SHARDS" \
    --budget-s "${CHECK_BUDGET_S:-240}" --log "$OUT/check-$i.log" > "$OUT/check-$i.out" 2>&1 &
  pids+=($!)
done
check_rc=0
for p in "${pids[@]}"; do wait "$p" || check_rc=1; done
grep -h "^check_kernels shard" "$OUT"/check-*.out | tee "$OUT/check-summary.txt" || true
grep -h -A2 "CRASH\|!" "$OUT"/check-*.out | head -40 || true
python - "$OUT" <<'EOF'
import glob, re, sys
runs = fails = 0
for f in glob.glob(sys.argv[1] + "/check-*.out"):
    for m in re.finditer(r"(\d+) of \d+ configs, (\d+) failures", open(f).read()):
        runs += int(m.group(1)); fails += int(m.group(2))
print(f"check_kernels: {runs} configurations, {fails} failures")
EOF

echo "== 2. bench_attention.py: old tree ($OLD_SRC), then this tree"
PYTHONPATH="$OLD_SRC" python benchmarks/bench_attention.py --out "$OUT/bench-old.json" | tee "$OUT/bench-old.txt"
PYTHONPATH=src python benchmarks/bench_attention.py --out "$OUT/bench-new.json" | tee "$OUT/bench-new.txt"

echo "== 3. new / old"
python benchmarks/bench_attention.py --compare "$OUT/bench-old.json" "$OUT/bench-new.json" --table "$OUT/table.md"
exit $check_rc
