#!/usr/bin/env bash
# One device call: the inference forward's block at 8K and 16K keys (random and planted, d 64 and 128), with
# the table's unit-key forward, kernel only (benchmarks/sweep_modes.py --inference-only --fwds). Output under
# $OUT. DIMS picks the head dims, ROW the row screen (sweep_modes.py --row-screen table|1|0).
#     run(command="bash benchmarks/gpu_sweep_infer.sh", timeout_s=300)
#     run(command="DIMS=64 ROW=1 bash benchmarks/gpu_sweep_infer.sh", timeout_s=300)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-sweep-infer}
mkdir -p "$OUT"
F64=${F64:-"64,64,4,3;128,64,8,3;128,128,8,2;64,128,4,3;128,64,4,3"}
F128=${F128:-"128,64,8,3;64,64,4,3;128,32,4,3;64,128,4,3"}
for d in ${DIMS:-64 128}; do
    f=$F64; [ $d = 128 ] && f=$F128
    for i in 0 1 2 3; do
        timeout 150 python3 benchmarks/sweep_modes.py --shape 1,16,8192 --dims $d --inference-only --fwds "$f" \
            --screens 1 --row-screen ${ROW:-table} --warm-only --shard $i/4 > /dev/null 2>&1 &
    done
done
wait
for s in 1,16,8192 1,16,16384; do for kind in random planted; do for d in ${DIMS:-64 128}; do
    f=$F64; [ $d = 128 ] && f=$F128
    timeout 60 python3 benchmarks/sweep_modes.py --shape $s --kind $kind --dims $d --inference-only --fwds "$f" \
        --screens 1 --row-screen ${ROW:-table} >> "$OUT/sweep-infer-row${ROW:-table}.log" 2>&1
done; done; done
grep -h "best\|failed" "$OUT/sweep-infer-row${ROW:-table}.log"
