#!/usr/bin/env bash
# The GPU check of issue 14, for when a GPU is lent: `make gpu-check` (or bash scripts/gpu_check.sh).
#   1. tests/test_cuda.py: bf16 training steps of every method, channels_last, E2MC in float32 under
#      autocast, a one-rank NCCL group with E2MC's gather path;
#   2. benchmarks/train_step.py on CUDA: mini and ResNet-50 (batch 256, bf16) scales, every method with
#      and without E2MC -> results/benchmarks/train_step-cuda.json (target: E2MC overhead <= 5 % at ResNet-50);
#   3. benchmarks/criterion.py on CUDA beside the reference D x D form -> results/benchmarks/criterion-cuda.json.
# Each step runs under `timeout`; together they are bounded by 8 minutes (about 3 to 4 expected on one H200).
# Environment: E2MC_PYTHON (default .venv/bin/python), E2MC_BENCH_DIR (default results/benchmarks),
# E2MC_TRAIN_STEPS (timed steps per configuration, default 20), E2MC_WARMUP_STEPS (default 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${E2MC_PYTHON:-.venv/bin/python}
BENCH_DIR=${E2MC_BENCH_DIR:-results/benchmarks}
STEPS=${E2MC_TRAIN_STEPS:-20}
WARMUP=${E2MC_WARMUP_STEPS:-5}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "gpu-check: no CUDA device ($PY: torch.cuda.is_available() is False or torch is missing); run it on a machine with a GPU" >&2
  exit 2
fi

began=$SECONDS
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== gpu-check: $name (at most ${limit} s; $((SECONDS - began)) s so far)"
  local rc=0
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      echo "gpu-check: $name ran past its ${limit} s limit" >&2
    else
      echo "gpu-check: $name failed (exit status $rc)" >&2
    fi
    exit "$rc"
  fi
}

"$PY" -c "import torch; print('gpu-check:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
mkdir -p "$BENCH_DIR"
step "CUDA tests" 140 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step "training step benchmark" 240 "$PY" benchmarks/train_step.py --device cuda --steps "$STEPS" --warmup "$WARMUP" \
  --out "$BENCH_DIR/train_step-cuda.json"
step "criterion benchmark" 90 "$PY" benchmarks/criterion.py --device cuda --out "$BENCH_DIR/criterion-cuda.json"

echo "== gpu-check: done in $((SECONDS - began)) s; results:"
echo "   $BENCH_DIR/train_step-cuda.json"
echo "   $BENCH_DIR/criterion-cuda.json"
