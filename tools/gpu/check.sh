#!/usr/bin/env bash
# MMSeg and the search on a bare GPU machine (its own Python 3.12, torch and Triton, no
# package index), in one call of at most 9 minutes, from the repository root:
#
#   bash tools/gpu/check.sh [KIT_DIR] [OUT_DIR]   (defaults: .gpukit, work_dirs/gpu_check)
#
# KIT_DIR comes from tools/gpu/make_kit.sh. Steps:
#   1. install the kit's wheels into a private folder on PYTHONPATH (the machine's torch and
#      packages are not touched), build mmcv 2.1.0 with its CPU ops on every core (the GPU
#      hidden from the build: mmcv's setup builds CUDA ops whenever torch sees a GPU,
#      whatever FORCE_CUDA says; the proxy models use no mmcv CUDA op); asl runs from the
#      checkout (its C++ engine for CPU tensors is built only with ASL_BUILD_EXT=1: the
#      GPU uses the Triton engine);
#   2. the GPU tests (tests/test_gpu_search.py): a training on CUDA, forked AMP trials
#      packed two per GPU, a 2-process NCCL training if there is a second GPU;
#   3. tools/gpu/bench_search.py: the paper's proxy shape (R50-DeepLabV3+, 128x128, batch
#      32, 21 classes): it/s with cross-entropy, AutoSegLoss mIoU and BF1, fp32 and AMP; a
#      short search with 1, 2 and 4 trials per GPU; the paper's 384-trial search projected.
# Writes OUT_DIR/summary.md (printed at the end) and the logs beside it.
# Environment: PYTHON (default python3), ASL_KIT_SITE (default /tmp/asl_kit_site),
# SEARCH_ARGS (more bench_search.py arguments, e.g. "--iters 60").
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
KIT="$(cd "${1:-.gpukit}" && pwd)" || { echo "no kit folder ${1:-.gpukit}: run tools/gpu/make_kit.sh first" >&2; exit 2; }
OUT="${2:-work_dirs/gpu_check}"
PY="${PYTHON:-python3}"
SITE="${ASL_KIT_SITE:-/tmp/asl_kit_site}"
BUILD_TOOLS="/tmp/asl_kit_buildtools"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONUNBUFFERED=1
start=$(date +%s)
step() { printf '\n== %s (%s, %ds)\n' "$1" "$(date +%T)" "$(( $(date +%s) - start ))"; }
status=0

step 'machine'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "gpus", torch.cuda.device_count())' || exit 2

step 'install the kit'
mkdir -p "$SITE" "$BUILD_TOOLS"
wheels=()
for w in "$KIT"/wheels/*.whl; do
    case "$(basename "$w")" in setuptools-*) ;; *) wheels+=("$w");; esac
done
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --upgrade --target "$SITE" "${wheels[@]}" || exit 2
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --upgrade --target "$BUILD_TOOLS" "$KIT"/wheels/setuptools-*.whl || exit 2
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"

step 'build mmcv with its CPU ops'
if "$PY" -c 'import mmcv.ops' 2>/dev/null; then
    echo "mmcv with ops already installed"
else
    src="$(ls "$KIT"/src/mmcv-*.tar.gz | head -1)"
    rm -rf /tmp/asl_kit_mmcv && mkdir -p /tmp/asl_kit_mmcv && tar xzf "$src" -C /tmp/asl_kit_mmcv
    (cd /tmp/asl_kit_mmcv/mmcv-* && CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1 FORCE_CUDA=0 \
        MAX_JOBS="$(nproc)" PYTHONPATH="$BUILD_TOOLS:$PYTHONPATH" \
        timeout 360 "$PY" setup.py build_ext --inplace > "$OUT/mmcv_build.log" 2>&1) \
        || { tail -20 "$OUT/mmcv_build.log"; echo "mmcv build failed" >&2; exit 2; }
    mmcv_dir="$(ls -d /tmp/asl_kit_mmcv/mmcv-*)"
    export PYTHONPATH="$mmcv_dir:$PYTHONPATH"
fi
"$PY" -c 'import mmcv, mmcv.ops, mmengine, mmseg; print("mmcv", mmcv.__version__, "mmengine",
mmengine.__version__, "mmseg", mmseg.__version__)' || exit 2

if [ "${ASL_BUILD_EXT:-0}" = 1 ]; then
    step "build asl's C++ engine"
    CUDA_VISIBLE_DEVICES= PYTHONPATH="$BUILD_TOOLS:$PYTHONPATH" timeout 240 "$PY" setup.py \
        build_ext --inplace > "$OUT/asl_build.log" 2>&1 \
        && echo "built" || echo "not built (see $OUT/asl_build.log): CPU tensors use PyTorch"
fi

step 'GPU tests'
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_gpu_search.py \
    2>&1 | tee "$OUT/tests.log" | tail -15
tests_rc=${PIPESTATUS[0]}
[ "$tests_rc" -eq 0 ] || status=1

step 'proxy shape: speed, trials per GPU, projection'
# shellcheck disable=SC2086
timeout 420 "$PY" tools/gpu/bench_search.py --out "$OUT/bench" ${SEARCH_ARGS:-} \
    > "$OUT/bench.log" 2>&1
bench_rc=$?
[ "$bench_rc" -eq 0 ] || status=1
grep -E '^\[(speed|search)\]' "$OUT/bench.log" | tail -12

{
    echo "# GPU check of the search ($(date -u +%F), $(( $(date +%s) - start )) s)"
    echo
    echo "- tests: exit $tests_rc: $(grep -E '(passed|failed|error)' "$OUT/tests.log" | tail -1)"
    echo "- bench_search: exit $bench_rc"
    echo
    [ -f "$OUT/bench/summary.md" ] && cat "$OUT/bench/summary.md"
} > "$OUT/summary.md"
step 'summary'
cat "$OUT/summary.md"
exit $status
