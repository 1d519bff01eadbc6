#!/usr/bin/env bash
# One device call for the kernel issue: host/thread profile, block-config sweep + full benchmark table,
# then the randomised correctness check, each under a time guard, all output under $OUT (<= 8 files):
#     run(command="bash benchmarks/gpu_kernel_session.sh", timeout_s=600)
# The check runs the code's default configs: when the sweep picks different ones (block sizes, the flags'
# grain), set them as the defaults in src/tda/ops/triton/attention.py and run the check again.
# Guards (seconds): PROFILE_S (default 60), BENCH_S (260), CHECK_S (200: the check stops drawing new
# configurations then; in-flight ones finish), CG_S (120). SWEEP=0: the benchmark table with the default
# configs, no sweep. PROFILE=0 / BENCH=0 / CHECK=0 leave a step out; CG=1 adds bench_cudagraphs.py.
# BENCH_ARGS / CHECK_ARGS: extra options, e.g. BENCH_ARGS="--set SCREEN_HAT=1" CHECK_ARGS="--fwd-keys unit"
# to measure and check an off-by-default kernel variant.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu-kernel-session}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/hardware.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$OUT/hardware.txt"
# (no commit id here: the device's copy of the tree carries a stale .git -- note the commit by hand)

if [ "${PROFILE:-1}" = 1 ]; then
    timeout "${PROFILE_S:-60}" python3 benchmarks/profile_op.py --host-only --threads > "$OUT/profile_host.txt" 2>&1
    echo "profile rc $?"
fi
if [ "${BENCH:-1}" = 1 ]; then
    sweep=--sweep
    [ "${SWEEP:-1}" = 0 ] && sweep=
    timeout "${BENCH_S:-260}" python3 benchmarks/bench_attention.py $sweep --kinds random,planted ${BENCH_ARGS:-} \
        --out "$OUT/benchmarks.md" --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
    echo "bench rc $?"
fi
if [ "${CG:-0}" = 1 ]; then
    timeout "${CG_S:-120}" python3 benchmarks/bench_cudagraphs.py > "$OUT/cudagraphs.md" 2>&1
    echo "cudagraphs rc $?"
fi
if [ "${CHECK:-1}" = 1 ]; then
    tmp=$(mktemp -d)
    for i in 0 1 2 3 4 5 6 7; do
        python3 benchmarks/check_kernels.py --n 1000 --seed "${CHECK_SEED:-13}" --shard "$i/8" ${CHECK_ARGS:-} \
            --budget-s "${CHECK_S:-200}" --log "$tmp/c$i.log" > /dev/null 2>&1 &
    done
    wait
    cat "$tmp"/c*.log > "$OUT/check.log"
    grep -h "^check_kernels" "$tmp"/c*.log
    grep -h -B2 "near-tie" "$tmp"/c*.log | head -20
fi
