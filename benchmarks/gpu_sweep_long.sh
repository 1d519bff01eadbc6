#!/usr/bin/env bash
# One device call: the kernel-only sweep of forward block x flags grain (screen on) at the 4K and 16K rows
# of the benchmark, training and inference, to place the short/long config boundary. Output under $OUT.
#     run(command="bash benchmarks/gpu_sweep_long.sh", timeout_s=300)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-sweep-long}
mkdir -p "$OUT"
FW="128,64,8,3;64,32,4,3;64,64,4,3"
tmp=$(mktemp -d)
for d in 64 128; do for i in 0 1 2 3 4 5; do
    timeout 200 python3 benchmarks/sweep_modes.py --shape 2,16,2048 --dims $d --fwds "$FW" --screens 1 \
        --warm-only --shard $i/6 > "$tmp/w$d-$i.log" 2>&1 &
done; done
wait
cat "$tmp"/w*.log | grep -i "fail" | head
for s in 2,16,4096 1,16,16384 8,16,2048; do
    timeout 100 python3 benchmarks/sweep_modes.py --shape $s --fwds "$FW" --screens 1 > "$OUT/sweep-${s//,/x}.log" 2>&1
    echo "sweep $s rc $?"
done
grep -h "best\|shape" "$OUT"/*.log
