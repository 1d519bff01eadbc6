#!/usr/bin/env bash
# The kernels on one GPU: correctness of the working tree, then speed before and after.
#   1. benchmarks/check_kernels.py: >= 200 random configurations against the reference (FlashAttention
#      criterion, forward and every gradient), in SHARDS (default 16) processes side by side: their
#      compilations overlap, and each stops drawing configurations after CHECK_BUDGET_S seconds;
#   2. benchmarks/bench_attention.py (bf16, causal, d = 64 and 128, N = 1K..16K, forward and forward +
#      backward, against SDPA's default backend and flash) with PYTHONPATH on an old source tree ($OLD_SRC)
#      and on this tree, taken in turn ROUNDS times (default 2) on the same machine;
#   3. a table with new / old per row, each side's fastest median over its rounds.
# Results (logs, JSON, table.md) go to $OUT (default: ./gpu-kernels-out). CHECK_N=0 skips step 1,
# ROUNDS=0 steps 2 and 3; CHECK_SEED (0) draws other configurations.
#
#   git archive e94c6c2 src | (mkdir -p .old && tar -x -C .old)
#   OLD_SRC=.old/src OUT=/tmp/out bash benchmarks/gpu_kernels.sh
#
# About 8-9 minutes on an H100 (most of it Triton compiling the kernel variants).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-kernels-out}"
CHECK_N="${CHECK_N:-400}"
SHARDS="${SHARDS:-16}"
ROUNDS="${ROUNDS:-2}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt" || true

check_rc=0
if [ "$CHECK_N" -gt 0 ]; then
  echo "== 1. check_kernels.py: $CHECK_N configurations in $SHARDS shards"
  pids=()
  for i in $(seq 0 $((SHARDS - 1))); do
    PYTHONPATH=src python benchmarks/check_kernels.py --n "$CHECK_N" --seed "${CHECK_SEED:-0}" --shard "$i/$SHARDS" \
      --budget-s "${CHECK_BUDGET_S:-240}" --log "$OUT/check-$i.log" > "$OUT/check-$i.out" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || check_rc=1; done
  grep -h "^check_kernels shard" "$OUT"/check-*.out | tee "$OUT/check-summary.txt" || true
  grep -h -A2 "CRASH\|!" "$OUT"/check-*.out | head -40 || true
  python - "$OUT" <<'EOF'
import glob, re, sys
runs = packed = fails = 0
for f in glob.glob(sys.argv[1] + "/check-*.out"):
    for m in re.finditer(r"(\d+) of \d+ configs(?: \((\d+) packed\))?, (\d+) failures", open(f).read()):
        runs += int(m.group(1)); packed += int(m.group(2) or 0); fails += int(m.group(3))
print(f"check_kernels: {runs} configurations ({packed} packed), {fails} failures")
EOF
fi

if [ "$ROUNDS" -gt 0 ]; then
  : "${OLD_SRC:?set OLD_SRC to the src folder of the old tree (see the header), or ROUNDS=0 for the check alone}"
  echo "== 2. bench_attention.py: old tree ($OLD_SRC) and this tree in turn, $ROUNDS rounds"
  olds=() news=()
  for r in $(seq 1 "$ROUNDS"); do
    PYTHONPATH="$OLD_SRC" python benchmarks/bench_attention.py --out "$OUT/bench-old-$r.json" | tee "$OUT/bench-old-$r.txt"
    PYTHONPATH=src python benchmarks/bench_attention.py --out "$OUT/bench-new-$r.json" | tee "$OUT/bench-new-$r.txt"
    olds+=("$OUT/bench-old-$r.json") news+=("$OUT/bench-new-$r.json")
  done

  echo "== 3. new / old (each row: the fastest of the rounds)"
  join() { local IFS=,; echo "$*"; }
  python benchmarks/bench_attention.py --compare "$(join "${olds[@]}")" "$(join "${news[@]}")" --table "$OUT/table.md"
fi
exit $check_rc
