#!/usr/bin/env bash
# One device call for a backward switch: A/B of FLAG (MERGED_BWD, LISTS or HEAVY_FIRST; default LISTS) on
# against off at the benchmark shapes (benchmarks/ab_bwd_launch.py), then a short randomised correctness
# check (8 shards, CHECK_S seconds; PROFILE=1 adds the host profile). Output under $OUT.
#     run(command="FLAG=LISTS bash benchmarks/gpu_ab_bwd.sh", timeout_s=420)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-ab-bwd}
FLAG=${FLAG:-LISTS}
mkdir -p "$OUT"
timeout "${AB_S:-200}" python3 benchmarks/ab_bwd_launch.py --flag "$FLAG" > "$OUT/ab-$FLAG.md" 2>&1
echo "ab rc $?"
if [ "${PROFILE:-0}" = 1 ]; then
    timeout "${PROFILE_S:-60}" python3 benchmarks/profile_op.py --host-only --threads > "$OUT/profile_host.txt" 2>&1
    echo "profile rc $?"
fi
tmp=$(mktemp -d)
for i in 0 1 2 3 4 5 6 7; do
    python3 benchmarks/check_kernels.py --n 1000 --seed "${CHECK_SEED:-51}" --shard "$i/8" \
        --budget-s "${CHECK_S:-60}" --log "$tmp/c$i.log" > /dev/null 2>&1 &
done
wait
cat "$tmp"/c*.log > "$OUT/check.log"
grep -h "^check_kernels" "$tmp"/c*.log
grep -h -B2 "near-tie" "$tmp"/c*.log | head -20
cat "$OUT/ab-$FLAG.md"
