#!/usr/bin/env bash
# One device call: register caps (maxnreg) and blocks that fit more programs per SM, measured with
# benchmarks/ab_fwd.py (kernel-only, alternating variants). Compiles every variant in parallel first.
#     run(command="bash benchmarks/gpu_occupancy.sh", timeout_s=560)
# 1. d = 128 inference forward: the table's 128 x 64 (8 warps, one program per SM) against 64 x 32 blocks
#    capped at 168 registers (two or three 4-warp programs per SM), with and without TMA loads.
# 2. 4K fwd+bwd: the backward capped at 168 / 128 registers (three / four programs per SM, with spills).
# 3. 4K d = 128 training forward: 64 x 32 blocks capped at 168 registers, 2 or 3 stages.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-occupancy}
mkdir -p "$OUT"
V1='default;infer=64:32:4:2,maxnreg=0:168,tma=0:2;infer=64:32:4:3,maxnreg=0:168,tma=0:2;infer=64:32:4:2,maxnreg=0:168'
V2='default;BWD_MAXNREG=168;BWD_MAXNREG=128'
V3='default;fwd=64:32:4:2,maxnreg=168:0;fwd=64:32:4:3,maxnreg=168:0'
A1=(--shapes "2,16,4096;1,16,8192;1,16,16384" --dims 128 --variants "$V1")
A2=(--shapes "2,16,4096" --dims 64,128 --variants "$V2" --bwd)
A3=(--shapes "2,16,4096" --dims 128 --variants "$V3" --bwd)
for s in 2,16,4096 1,16,8192; do
    timeout 200 python3 benchmarks/ab_fwd.py --shapes "$s" --dims 128 --kinds random --variants "$V1" --warm-only >/dev/null 2>&1 &
done
for d in 64 128; do
    timeout 200 python3 benchmarks/ab_fwd.py --shapes 2,16,4096 --dims $d --kinds random --variants "$V2" --bwd --warm-only >/dev/null 2>&1 &
done
timeout 200 python3 benchmarks/ab_fwd.py --shapes 2,16,4096 --dims 128 --kinds random --variants "$V3" --bwd --warm-only >/dev/null 2>&1 &
wait
echo "warm done $SECONDS s"
timeout ${A1_S:-150} python3 benchmarks/ab_fwd.py "${A1[@]}" > "$OUT/ab-d128-infer-blocks.log" 2>&1; echo "a1 rc $?"
timeout ${A2_S:-120} python3 benchmarks/ab_fwd.py "${A2[@]}" > "$OUT/ab-4k-bwd-cap.log" 2>&1; echo "a2 rc $?"
timeout ${A3_S:-100} python3 benchmarks/ab_fwd.py "${A3[@]}" > "$OUT/ab-4k-d128-train-fwd.log" 2>&1; echo "a3 rc $?"
cat "$OUT"/ab-*.log
