#!/usr/bin/env bash
# The whole test suite on a GPU machine, where the kernels run compiled (no Triton interpreter), the
# CUDA-only tests run and the interpreter-only ones skip. Needs the dev install (pip install -e '.[dev]':
# the GPT-2 tokenizer files, entmax, transformers). With pytest-xdist the files run in WORKERS parallel
# processes sharing the GPU (default 8); with pytest-timeout each test has TEST_TIMEOUT seconds (default
# 300), so a stuck test is named instead of eating the run. The log, with every failure's traceback and
# the slowest tests, goes to $OUT/gpu-tests.txt.
#
#   OUT=/tmp/out bash benchmarks/gpu_tests.sh                   (all but the slow tests)
#   OUT=/tmp/out bash benchmarks/gpu_tests.sh tests/test_cli.py (only these files; extra pytest arguments)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-tests-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ "$#" -eq 0 ]; then set -- tests; fi
opts=()
python -c "import xdist" 2>/dev/null && opts+=(-n "${WORKERS:-8}")
python -c "import pytest_timeout" 2>/dev/null && opts+=(--timeout "${TEST_TIMEOUT:-300}")
python -m pytest -q -p no:cacheprovider -m "not slow" "${opts[@]}" -rfE --durations=25 "$@" 2>&1 \
    | tee "$OUT/gpu-tests.txt"
exit "${PIPESTATUS[0]}"
