#!/usr/bin/env bash
# One device call: compile a forward switch's variants in parallel, then the A/B (benchmarks/ab_fwd.py) in one
# process. Output under $OUT. VARIANTS (ab_fwd.py --variants) replaces FLAG/VALUES; AB_ARGS adds options; DIMS
# (default 64,128) picks the head dims; TAG names the log (default: the flag, or "variants").
#     run(command="FLAG=HEAVY_FIRST VALUES=1,0 bash benchmarks/gpu_ab_fwd.sh", timeout_s=400)
#     run(command="VARIANTS='SCREEN_HAT=0,UNIT_KEYS=0;SCREEN_HAT=1,UNIT_KEYS=0;SCREEN_HAT=1,UNIT_KEYS=1' \
#                  AB_ARGS=--bwd bash benchmarks/gpu_ab_fwd.sh", timeout_s=500)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-ab-fwd}
mkdir -p "$OUT"
FLAG=${FLAG:-HEAVY_FIRST}
VALUES=${VALUES:-1,0}
DIMS=${DIMS:-64,128}
if [ -n "${VARIANTS:-}" ]; then SEL=(--variants "$VARIANTS"); NAME=variants; else SEL=(--flag "$FLAG" --values "$VALUES"); NAME=$FLAG; fi
NAME=${TAG:-$NAME}
for s in 2,16,4096 1,16,8192; do for d in ${DIMS//,/ }; do
    timeout 240 python3 benchmarks/ab_fwd.py --shapes "$s" --dims $d --kinds random "${SEL[@]}" ${AB_ARGS:-} \
        --warm-only > /dev/null 2>&1 &
done; done
wait
timeout ${AB_S:-300} python3 benchmarks/ab_fwd.py --dims "$DIMS" "${SEL[@]}" ${AB_ARGS:-} > "$OUT/ab-fwd-$NAME.log" 2>&1
echo "ab rc $?"
cat "$OUT/ab-fwd-$NAME.log"
