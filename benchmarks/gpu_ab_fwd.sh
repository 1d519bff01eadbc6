#!/usr/bin/env bash
# One device call: compile a forward switch's variants in parallel, then the A/B (benchmarks/ab_fwd.py) in one
# process. Output under $OUT.
#     run(command="FLAG=HEAVY_FIRST VALUES=1,0 bash benchmarks/gpu_ab_fwd.sh", timeout_s=400)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-ab-fwd}
mkdir -p "$OUT"
FLAG=${FLAG:-HEAVY_FIRST}
VALUES=${VALUES:-1,0}
for s in 2,16,4096 1,16,8192; do for d in 64 128; do
    timeout 240 python3 benchmarks/ab_fwd.py --shapes "$s" --dims $d --kinds random --flag $FLAG --values "$VALUES" \
        --warm-only > /dev/null 2>&1 &
done; done
wait
timeout 300 python3 benchmarks/ab_fwd.py --flag $FLAG --values "$VALUES" ${AB_ARGS:-} > "$OUT/ab-fwd-$FLAG.log" 2>&1
echo "ab rc $?"
cat "$OUT/ab-fwd-$FLAG.log"
