#!/usr/bin/env bash
# One device call: a short correctness check of the current kernels, then the kernel-only sweep of the
# forward's block / flags grain / screen at the 1K benchmark row (training and inference), and the
# inference forward modes at 4K and 16K. Output under $OUT.
#     run(command="bash benchmarks/gpu_sweep_modes.sh", timeout_s=420)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-sweep-modes}
mkdir -p "$OUT"
tmp=$(mktemp -d)
# compile every variant first, 15 processes side by side (fills Triton's cache), while a short check runs
for d in 64 128; do for i in 0 1 2 3 4 5; do
    timeout 200 python3 benchmarks/sweep_modes.py --dims $d --warm-only --shard $i/6 > "$tmp/w$d-$i.log" 2>&1 &
done; done
for s in 4,16,1024 2,16,4096 1,16,16384; do
    timeout 200 python3 benchmarks/sweep_modes.py --shape $s --inference-only --warm-only > "$tmp/wi$s.log" 2>&1 &
done
for i in 0 1 2 3; do
    python3 benchmarks/check_kernels.py --n 400 --seed "${CHECK_SEED:-41}" --shard "$i/4" \
        --budget-s "${CHECK_S:-60}" --log "$tmp/c$i.log" > /dev/null 2>&1 &
done
wait
cat "$tmp"/w*.log | grep -i "fail" | head -20
cat "$tmp"/c*.log > "$OUT/check.log"
grep -h "^check_kernels" "$tmp"/c*.log
timeout "${SWEEP_S:-150}" python3 benchmarks/sweep_modes.py --shape 4,16,1024 > "$OUT/sweep-1k.log" 2>&1
echo "sweep rc $?"
for s in 2,16,4096 1,16,16384; do
    timeout 60 python3 benchmarks/sweep_modes.py --shape $s --inference-only >> "$OUT/inference-modes.log" 2>&1
done
grep -h "best" "$OUT"/*.log
