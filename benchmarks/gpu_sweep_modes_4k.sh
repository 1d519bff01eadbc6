#!/usr/bin/env bash
# One device call: the forward block x flags grain sweep (benchmarks/sweep_modes.py, screen on) at the 4K
# benchmark rows, planted and random inputs, d 64 and 128, kernel-only fwd + bwd with the table's backward.
#     run(command="bash benchmarks/gpu_sweep_modes_4k.sh", timeout_s=400)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-sweep-modes-4k}
mkdir -p "$OUT"
for i in 0 1 2 3 4 5 6 7; do
    timeout 200 python3 benchmarks/sweep_modes.py --shape 2,16,4096 --screens 1 --warm-only --shard $i/8 \
        > /dev/null 2>&1 &
done
wait
for kind in planted random; do
    timeout 150 python3 benchmarks/sweep_modes.py --shape 2,16,4096 --screens 1 --kind $kind \
        > "$OUT/modes-2x16x4096-$kind.log" 2>&1
    echo "sweep $kind rc $?"
done
cat "$OUT"/*.log
