#!/usr/bin/env bash
# One prepared GPU check (issue #22): at most 8 minutes on one H200 from a cold start. Sections, in order,
# each written to $OUT as soon as it ends (8 files: the device tool brings back at most 8):
#   01_ceilings.json     device-to-device copy GB/s and bf16 GEMM TFLOP/s
#   02_decode.json       beam-5 and sampling at 640 / 5,120 / 10,240 rows (OPT-125m shape, random weights, 64 + 64
#                        tokens): tok/s and ms per step through generate(), and each step split into forward /
#                        selection / cache from one eager chunk with every op timed (scripts/roofline.py's classes)
#   03_profile.txt       torch.profiler table of a warmed chunk of 5,120 rows: prefill + two beam steps
#   04_train_cold.json   training, OPT-125m shape, batch 128: first step (compilation) and steady-state tok/s,
#                        with an empty inductor cache
#   05_train_warm.json   the same in a second process that keeps that cache
#   06_bench.json        bench.py's shumailov-cycle against the naive reference (2% / 1% of the workload)
#   07_gpu_tests.txt     pytest -m gpu
#   gpu_check.log        everything printed, and one "section NAME rc=N S s" line per section
# A section that fails or runs out of its time is logged and the next one runs.
#
# Staging a bare GPU machine (torch 2.11, transformers 5.17, Triton; no hydra/omegaconf, no network):
#   here, once, from the project root:   bash ../shared/tools/gpu-stage.sh
#     (hydra-core, omegaconf, antlr4 wheels and the shared tokenizer + WikiText-2 into .gpu-carry/, git-ignored)
#   then the device tool's `run`, carry [".gpu-carry"], timeout_s 600, command:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-carry/whl/*.whl
#       && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && mkdir -p ../shared
#       && ln -sfn $PWD/.gpu-carry/data ../shared/data && bash scripts/gpu_check.sh
#
# bash scripts/gpu_check.sh --cpu-dry   runs every section on the CPU with the `tiny` model and tiny sizes, through
# the same code and into the same files (tests/test_roofline.py runs it); its figures mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
BUDGET_S=${BUDGET_S:-480}
if [ "${1:-}" = "--cpu-dry" ]; then
  common=(--device cpu --tiny); rows=10,20,40; profile_rows=20; steps=6
  bench=(--device cpu --fraction 0.02)
else
  common=(--device cuda); rows=640,5120,10240; profile_rows=5120; steps=60
  bench=(--device cuda --fraction 0.02 --reference-fraction 0.01)
fi
cache=$(mktemp -d)  # the inductor cache that the warm training run finds
started=$(date +%s)

# section NAME CAP_S COMMAND...: runs COMMAND under min(CAP_S, what is left of BUDGET_S), logs its exit code.
section() {
  local name=$1 cap=$2 left
  shift 2
  left=$((BUDGET_S - ($(date +%s) - started)))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -le 0 ]; then echo "section $name skipped: the ${BUDGET_S} s budget is spent" | tee -a "$LOG"; return; fi
  local t0 rc
  t0=$(date +%s)
  timeout "$cap" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "section $name rc=$rc $(($(date +%s) - t0)) s" | tee -a "$LOG"
}

section ceilings 45 "$PYTHON" scripts/bench.py "${common[@]}" --section ceilings --out "$OUT/01_ceilings.json"
section decode 150 "$PYTHON" scripts/bench.py "${common[@]}" --section decode --rows "$rows" \
  --out "$OUT/02_decode.json"
section profile 45 "$PYTHON" scripts/bench.py "${common[@]}" --section profile --rows "$profile_rows" \
  --out "$OUT/03_profile.txt"
section train_cold 100 env TORCHINDUCTOR_CACHE_DIR="$cache" "$PYTHON" scripts/bench.py "${common[@]}" \
  --section train --steps "$steps" --out "$OUT/04_train_cold.json"
section train_warm 60 env TORCHINDUCTOR_CACHE_DIR="$cache" "$PYTHON" scripts/bench.py "${common[@]}" \
  --section train --steps "$steps" --out "$OUT/05_train_warm.json"
section bench 150 env TORCHINDUCTOR_CACHE_DIR="$cache" "$PYTHON" scripts/bench.py "${bench[@]}" --out "$OUT/06_bench.json"
section gpu_tests 60 bash -c "'$PYTHON' -m pytest -q -m gpu tests/ > '$OUT/07_gpu_tests.txt' 2>&1"
rm -rf "$cache"
echo "gpu_check: $(($(date +%s) - started)) s in all; files in $OUT" | tee -a "$LOG"
