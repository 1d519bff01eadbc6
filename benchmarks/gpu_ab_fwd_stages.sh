#!/usr/bin/env bash
# One device call: compile the forward's LOOP_STAGES variants in parallel, then the A/B
# (benchmarks/ab_fwd_stages.py) in one process. Output under $OUT.
#     run(command="STAGES=none,2,3 bash benchmarks/gpu_ab_fwd_stages.sh", timeout_s=400)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-ab-fwd-stages}
mkdir -p "$OUT"
STAGES=${STAGES:-none,2,3}
for s in 2,16,4096 1,16,8192; do for d in 64 128; do
    timeout 240 python3 benchmarks/ab_fwd_stages.py --shapes "$s" --dims $d --kinds random --stages "$STAGES" \
        --warm-only > /dev/null 2>&1 &
done; done
wait
timeout 300 python3 benchmarks/ab_fwd_stages.py --stages "$STAGES" ${AB_ARGS:-} > "$OUT/ab-fwd-stages.log" 2>&1
echo "ab rc $?"
cat "$OUT/ab-fwd-stages.log"
