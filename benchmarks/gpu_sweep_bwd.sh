#!/usr/bin/env bash
# One device call: the backward block sweep (benchmarks/sweep_bwd.py) at the 1K, 4K (random and planted)
# and 16K benchmark rows, after compiling every candidate in parallel. Output under $OUT. KERNELS picks the
# candidate lists: e.g. KERNELS=lists (d = 64: which programs use the live-block lists, with which blocks).
#     run(command="KERNELS=lists bash benchmarks/gpu_sweep_bwd.sh", timeout_s=300)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-sweep-bwd}
mkdir -p "$OUT"
KERNELS=${KERNELS:-dkdv,dq,both}  # candidate lists (benchmarks/sweep_bwd.py --kernels)
for s in 4x16x1024 2x16x4096; do for i in 0 1 2 3 4 5; do
    timeout 200 python3 benchmarks/sweep_bwd.py --shape ${s//x/,} --kernels $KERNELS --warm-only --shard $i/6 \
        > /dev/null 2>&1 &
done; done
wait
for job in "4x16x1024 random" "2x16x4096 random" "2x16x4096 planted" "1x16x16384 random"; do
    set -- $job
    timeout 120 python3 benchmarks/sweep_bwd.py --shape ${1//x/,} --kind $2 --kernels $KERNELS \
        > "$OUT/sweep-bwd-$1-$2.log" 2>&1
    echo "sweep $1 $2 rc $?"
done
cat "$OUT"/*.log
