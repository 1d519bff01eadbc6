#!/usr/bin/env bash
# One device call: the compiled training step of the GPU comparison model (8 x 512, context 1024, batch 16,
# bf16), softmax against TDA, under torch.compile's default mode and under "reduce-overhead" (the step's
# kernels replayed from CUDA graphs: no per-launch host work), then the host cost of one compiled op call.
#     run(command="bash benchmarks/gpu_compile_modes.sh", timeout_s=600)
# MODES picks the modes (default "default reduce-overhead"); TABLES=N prints the profiler's top N kernels and ops
# per variant; HOST=0 skips the op's host profile; TRAIN=1 also runs the trainer's 200-step comparison per mode
# (carry data/gpt2 and data/pylib); CHECK=1 first compares the modes' losses from one initialisation.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-compile-modes}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
if [[ "${CHECK:-0}" == 1 ]]; then  # the modes' losses from one initialisation (benchmarks/check_compile_modes.py)
    timeout 240 python3 benchmarks/check_compile_modes.py > "$OUT/check-compile-modes.log" 2>&1
    echo "check rc $?"
    grep -v Warning "$OUT/check-compile-modes.log" | tail -12
fi
for mode in ${MODES:-default reduce-overhead}; do
    timeout 260 python3 benchmarks/profile_train_step.py --compile --mode "$mode" --tables "${TABLES:-0}" --steps 20 \
        > "$OUT/train-step-$mode.log" 2>&1
    echo "$mode rc $?"
    grep "==\|warm after" "$OUT/train-step-$mode.log"
done
if [[ "${TRAIN:-0}" == 1 ]]; then
    for mode in ${MODES:-default reduce-overhead}; do
        COMPARE_TIMEOUT_S=200 OUT="$OUT/compare-$mode" bash benchmarks/replicate.sh compare --variants softmax,tda \
            --set compile=true --set compile_mode="$mode" > "$OUT/compare-$mode.log" 2>&1
        echo "compare $mode rc $?"
        grep "^| \(softmax\|tda\)" "$OUT/compare-$mode/compare-gpu/results.md"
    done
fi
if [[ "${HOST:-1}" == 1 ]]; then
    timeout 200 python3 benchmarks/profile_op.py --host-only --compiled > "$OUT/profile-compiled-host.txt" 2>&1
    echo "host rc $?"
    head -40 "$OUT/profile-compiled-host.txt"
fi
