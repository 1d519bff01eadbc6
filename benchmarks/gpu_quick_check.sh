#!/usr/bin/env bash
# A short device call after host-side changes: host profile (direct vs JIT launches), the 1K/4K rows of the
# benchmark (random inputs, d 64), and a short randomised correctness check (8 shards, CHECK_S seconds).
#     run(command="bash benchmarks/gpu_quick_check.sh", timeout_s=300)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-quick-check}
mkdir -p "$OUT"
timeout 90 python3 benchmarks/profile_op.py --host-only --threads > "$OUT/profile_host.txt" 2>&1
echo "profile rc $?"
timeout 120 python3 benchmarks/bench_attention.py --quick --dims 64 --kinds random --no-ref \
    --out "$OUT/quick.md" > "$OUT/quick.log" 2>&1
echo "bench rc $?"
tmp=$(mktemp -d)
for i in 0 1 2 3 4 5 6 7; do
    python3 benchmarks/check_kernels.py --n 400 --seed "${CHECK_SEED:-21}" --shard "$i/8" \
        --budget-s "${CHECK_S:-45}" --log "$tmp/c$i.log" > /dev/null 2>&1 &
done
wait
cat "$tmp"/c*.log > "$OUT/check.log"
grep -h "^check_kernels" "$tmp"/c*.log
