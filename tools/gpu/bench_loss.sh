#!/usr/bin/env bash
# The surrogate on a GPU, in one go (about 8 minutes on one H200), from the repository root
# of a machine that has torch and Triton (no MMSeg, mmcv or package index needed):
#   1. the Triton engine's tests, unmodified, compiled on CUDA tensors
#      (tests/test_engine_triton.py, tests/test_ir.py);
#   2. torch.compile of a small plain torch model trained with the surrogate
#      (tools/gpu/compile_model.py; eager and compiled losses must agree);
#   3. the loss benchmark: cross-entropy, the plain PyTorch path, its torch.compile and the
#      Triton engine for the six metrics, N=8, C=21, 512x512 (tools/benchmark_loss.py).
# Usage: bash tools/gpu/bench_loss.sh [OUT_DIR]   (default: work_dirs/gpu_loss)
# Writes OUT_DIR/{tests.log,compile_model.md,benchmark.md,summary.md}; prints the summary.
# Environment: PYTHON (default python3), BENCH_ARGS (extra benchmark arguments), DEVICE
# (default cuda; DEVICE=cpu with TRITON_INTERPRET=1 is a dry run of this script on a CPU).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
OUT="${1:-work_dirs/gpu_loss}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ASL_TRITON_CACHE="${ASL_TRITON_CACHE:-$OUT/kernels}"
status=0
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step 'machine'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name())' \
    || exit 2

step 'Triton engine tests on CUDA'
xdist=()
"$PY" -c 'import xdist' 2>/dev/null && xdist=(-n 8)
timeout 240 "$PY" -m pytest -q -p no:cacheprovider "${xdist[@]}" tests/test_engine_triton.py \
    tests/test_ir.py 2>&1 | tee "$OUT/tests.log" | tail -15
tests_rc=${PIPESTATUS[0]}
[ "$tests_rc" -eq 0 ] || status=1

step 'torch.compile of a small model with the surrogate'
timeout 150 "$PY" tools/gpu/compile_model.py --device "$DEVICE" --backends auto torch \
    2>&1 | tee "$OUT/compile_model.md" | grep -v -i warn
model_rc=${PIPESTATUS[0]}
[ "$model_rc" -eq 0 ] || status=1

step 'loss benchmark'
# shellcheck disable=SC2086
timeout 300 "$PY" tools/benchmark_loss.py --device "$DEVICE" --out "$OUT/benchmark.md" \
    ${BENCH_ARGS:-} > "$OUT/benchmark.log" 2>&1
bench_rc=$?
[ "$bench_rc" -eq 0 ] || status=1
tail -5 "$OUT/benchmark.log"

{
    echo "# GPU check of the surrogate ($(date -u +%F))"
    echo
    echo "- tests: exit $tests_rc: $(grep -E '(passed|failed|error)' "$OUT/tests.log" | tail -1)"
    echo "- compile_model: exit $model_rc"
    echo "- benchmark: exit $bench_rc"
    echo
    [ -f "$OUT/compile_model.md" ] && grep '^|' "$OUT/compile_model.md" && echo
    [ -f "$OUT/benchmark.md" ] && cat "$OUT/benchmark.md"
} > "$OUT/summary.md"
step 'summary'
cat "$OUT/summary.md"
exit $status
