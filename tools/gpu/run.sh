#!/usr/bin/env bash
# The GPU check in one call, at most 8 minutes on one H200, from the repository root of a
# machine that has its own Python, torch and Triton but no MMSeg, mmcv or package index
# (the kit made here by tools/gpu/make_kit.sh is carried in the working tree, .gpukit/):
#
#   bash tools/gpu/run.sh OUT_DIR
#
# Time budget (seconds; every step runs under `timeout`, and none past the whole run's 480):
#   1. machine; the kit's wheels installed (a private folder)                      20
#   2. loss table: cross-entropy, the plain PyTorch path and the Triton engine, six
#      metrics, N=8 C=21 512x512, fewer repeats (10 after 3 warm-up runs); the two engines'
#      values and gradients compared; curve accuracy
#      (tools/analysis/benchmark_loss.py)                                         120
#   3. torch.compile of the plain path against the Triton engine: mIoU, then BF1 if time
#      is left (one benchmark run each)                                             70
#   4. mmcv's CPU ops built (started in the background after step 1, at the lowest CPU
#      priority, on every core with the GPU hidden from the build; about 2 minutes of
#      16 cores: 77 files of about 20 core-seconds each); this step waits for it until
#      250 s into the run                                                            40
#   5. MMSeg on the GPU: tests/test_gpu_search.py (a training with the Triton engine,
#      forked AMP trials packed two per GPU)                                          90
#   6. the search's throughput (tools/gpu/bench_search.py): R50-DeepLabV3+ proxy it/s
#      (cross-entropy, AutoSegLoss mIoU and BF1; fp32 and AMP), then a one-step search of
#      60-iteration trials with 1 trial per GPU (2 trials, the fewest a search takes)
#      and with 4 (one round of 4)                                                  140
#                                                                           total  480
#
# OUT_DIR gets at most 4 small files: summary.md (Markdown, rewritten after every step, so
# a run cut short keeps what it measured), loss.md (the loss benchmark's reports),
# steps.log (the last lines of every step's log) and search.json. Everything else (the
# kit's site, the mmcv build, the Triton, Inductor and generated-kernel caches, the
# search's data and work directories) goes to WORK (default /tmp/asl_gpu_run), which a
# second run on the same machine reuses (mmcv is then not built again).
#
# Environment: PYTHON (default python3), KIT (default .gpukit), WORK, BUDGET_S (default
# 480), DEVICE (default cuda; DEVICE=cpu with TRITON_INTERPRET=1 is a dry run on a CPU
# machine: tiny shapes, MMSeg taken from the environment when the kit's mmcv cannot be
# built there), BENCH_ARGS, COMPILE_METRICS (default "mIoU BF1"), SEARCH_ARGS.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
[ $# -ge 1 ] || { echo "usage: bash tools/gpu/run.sh OUT_DIR" >&2; exit 2; }
mkdir -p "$1" || exit 2
OUT="$(cd "$1" && pwd)"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
KIT="${KIT:-$ROOT/.gpukit}"
WORK="${WORK:-/tmp/asl_gpu_run}"
BUDGET_S="${BUDGET_S:-480}"
mkdir -p "$WORK" || exit 2
WORK="$(cd "$WORK" && pwd)"
case "$WORK/" in "$OUT"/*) echo "WORK must not be inside OUT_DIR" >&2; exit 2;; esac
SITE="$WORK/site"
BUILD_TOOLS="$WORK/buildtools"
MMCV_SRC="$WORK/mmcv"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export ASL_TRITON_CACHE="$WORK/kernels" TRITON_CACHE_DIR="$WORK/triton"
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" MPLCONFIGDIR="$WORK/mpl"
BASE_PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$BASE_PYTHONPATH"

if [ "$DEVICE" = cpu ]; then  # the dry run: tiny shapes, a few seconds per step
    LOSS_ARGS=(--device cpu --n 1 --c 5 --size 16 --repeat 1 --warmup 0 --only mIoU BF1
               --accuracy-points 500 --ref-points 50)
    COMPILE_ARGS=(--device cpu --n 1 --c 5 --size 16 --repeat 1 --warmup 0)
    COMPILE_METRICS="${COMPILE_METRICS:-gAcc}"
    SEARCH_BASE=(--device cpu --size 16 --batch 2 --num-train 8 --holdout 4 --speed-iters 1
                 --warmup 0 --iters 2 --ks 1 --waves 1)
else
    LOSS_ARGS=(--device "$DEVICE" --n 8 --c 21 --size 512 --repeat 10 --warmup 3)
    COMPILE_ARGS=(--device "$DEVICE" --n 8 --c 21 --size 512 --repeat 5 --warmup 2)
    COMPILE_METRICS="${COMPILE_METRICS:-mIoU BF1}"
    SEARCH_BASE=(--num-train 128 --speed-iters 10 --warmup 3 --iters 60 --ks 1 4 --waves 1)
fi

START=$(date +%s)
DEADLINE=$(( START + BUDGET_S ))
elapsed() { echo $(( $(date +%s) - START )); }
# seconds a step may run: its budget, never past the run's deadline
limit_for() { local left=$(( DEADLINE - $(date +%s) )); echo $(( $1 < left ? $1 : left )); }

STEPS=()   # "name|status|seconds|limit"
MACHINE=""
note() { printf '\n== %s (%s, %ds)\n' "$1" "$(date +%T)" "$(elapsed)"; }
record() { STEPS+=("$1|$2|$3|$4"); summary; }
tail_log() {  # the last lines of a step's log, into OUT/steps.log
    { echo "==== $1 (last ${3:-60} lines of $2)"; tail -n "${3:-60}" "$2" 2>/dev/null; echo; } \
        >> "$OUT/steps.log"
}

summary() {
    local tmp="$OUT/.summary.md.tmp"
    {
        echo "# GPU check ($(date -u '+%F %H:%M UTC'), $(elapsed) s of $BUDGET_S)"
        echo
        [ -n "$MACHINE" ] && echo "- machine: $MACHINE" && echo
        echo '| step | result | seconds | limit s |'
        echo '|---|---|---:|---:|'
        local s name st secs lim
        for s in "${STEPS[@]}"; do
            IFS='|' read -r name st secs lim <<< "$s"
            echo "| $name | $st | $secs | $lim |"
        done
        echo
        if [ -s "$WORK/loss_table.md" ]; then
            echo '## Loss table'
            echo
            sed -n '/^| loss |/,/^$/p' "$WORK/loss_table.md"
            grep -E '^- (PASS|FAIL) ' "$WORK/loss_table.md"
            echo
            awk '/^## Agreement/ {on = 1} on && /^\|/ {print; seen = 1} on && seen && !/^\|/ {exit}' \
                "$WORK/loss_table.md" | sed '1i ### Agreement with the plain PyTorch path\n'
            echo
        fi
        if [ -s "$WORK/loss_compile.md" ]; then
            echo '## torch.compile of the plain path against the Triton engine'
            echo
            echo '| loss | time ms | x CE | peak MB | x CE |'
            echo '|---|---:|---:|---:|---:|'
            grep -E '^\| [A-Za-z]+ \[(compile|triton)\] \| [0-9.]+ \| [0-9.]+ \|' \
                "$WORK/loss_compile.md" || true
            echo
            grep -E '^- (PASS|FAIL) .*torch\.compile' "$WORK/loss_compile.md" || true  # (GPU)
            grep -E '^\| [A-Za-z]+ \[compile\] \| [0-9.]+ \|$' "$WORK/loss_compile.md" \
                | sed 's/^| \(.*\) | \(.*\) |$/- \1: first call (compiles) \2 s/' || true
            echo
        fi
        if [ -s "$WORK/tests.log" ]; then
            echo "## MMSeg on the GPU (tests/test_gpu_search.py)"
            echo
            echo "    $(grep -E '(passed|failed|error|skipped)' "$WORK/tests.log" | tail -1)"
            echo
        fi
        [ -s "$WORK/search/summary.md" ] && sed 's/^# /## /' "$WORK/search/summary.md"
    } > "$tmp"
    mv "$tmp" "$OUT/summary.md"
}

# run_step NAME BUDGET LOG CMD...: the command under timeout, its status recorded
run_step() {
    local name="$1" budget="$2" log="$3"; shift 3
    local lim t0 rc st
    lim=$(limit_for "$budget")
    note "$name (limit ${lim}s)"
    if [ "$lim" -lt 5 ]; then
        record "$name" "not run: no time left" 0 "$lim"
        return 124
    fi
    t0=$(date +%s)
    timeout -k 10 "$lim" "$@" > "$log" 2>&1
    rc=$?
    case $rc in 0) st=ok;; 124|137) st="TIMEOUT (exit $rc)";; *) st="FAILED (exit $rc)";; esac
    tail -n 8 "$log"
    tail_log "$name" "$log"
    record "$name" "$st" $(( $(date +%s) - t0 )) "$lim"
    return $rc
}

: > "$OUT/steps.log"
rm -f "$OUT/summary.md" "$OUT/loss.md" "$OUT/search.json" "$WORK/loss_table.md" \
    "$WORK/loss_compile.md" "$WORK/tests.log" "$WORK/search/summary.md"
BUILD_PID=""
cleanup() { [ -n "$BUILD_PID" ] && kill "$BUILD_PID" 2>/dev/null; rm -f "$OUT/.summary.md.tmp"; }
trap cleanup EXIT
trap 'exit 143' TERM INT

# ------------------------------------------------------------------ 1. machine, kit
machine_and_kit() {
    echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        2>/dev/null | head -1)"
    echo "cores: $(getconf _NPROCESSORS_ONLN), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    "$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name())' \
        || return 2
    if [ ! -d "$KIT/wheels" ]; then
        echo "no kit in $KIT (tools/gpu/make_kit.sh)"
        "$PY" -c 'import mmseg' 2>/dev/null && { echo "MMSeg from the environment"; return 0; }
        return 2
    fi
    mkdir -p "$SITE" "$BUILD_TOOLS"
    local wheels=() w
    for w in "$KIT"/wheels/*.whl; do
        case "$(basename "$w")" in setuptools-*) ;; *) wheels+=("$w");; esac
    done
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --upgrade --target "$SITE" "${wheels[@]}" || return 2
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --upgrade --target "$BUILD_TOOLS" "$KIT"/wheels/setuptools-*.whl || return 2
    echo "kit installed into $SITE"
}
note 'machine, kit'
t0=$(date +%s)
machine_and_kit > "$WORK/machine.log" 2>&1
kit_rc=$?
cat "$WORK/machine.log"
tail_log 'machine, kit' "$WORK/machine.log"
MACHINE="$(grep -m1 '^gpu' "$WORK/machine.log"); $(grep -m1 '^torch' "$WORK/machine.log"); $(grep -m1 '^cores' "$WORK/machine.log")"
[ $kit_rc -eq 0 ] && st=ok || st="FAILED (exit $kit_rc)"
record 'machine, kit' "$st" $(( $(date +%s) - t0 )) 20
grep -q '^torch' "$WORK/machine.log" || exit 2

# ------------------------------------------- 4 (background). mmcv's CPU ops, built
mmcv_path() { ls -d "$MMCV_SRC"/mmcv-*/ 2>/dev/null | head -1; }
build_mmcv() {  # in the background: extract and build mmcv with its CPU ops
    local src
    src="$(ls "$KIT"/src/mmcv-*.tar.gz 2>/dev/null | head -1)"
    [ -n "$src" ] || { echo "no mmcv source in $KIT/src"; return 2; }
    rm -rf "$MMCV_SRC" && mkdir -p "$MMCV_SRC" && tar xzf "$src" -C "$MMCV_SRC" || return 2
    cd "$(mmcv_path)" || return 2
    local jobs
    jobs="$(getconf _NPROCESSORS_ONLN)"  # (nproc follows OMP_NUM_THREADS)
    echo "building mmcv's CPU ops with $jobs jobs ($(date +%T))"
    CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$jobs" \
        PYTHONPATH="$BUILD_TOOLS:$SITE:$BASE_PYTHONPATH" \
        nice -n 19 "$PY" setup.py build_ext --inplace || return 1
    echo "built ($(date +%T))"
    echo "build seconds: $SECONDS"
}
KIT_PYTHONPATH="$SITE:$BASE_PYTHONPATH"
have_mmcv_ops() { PYTHONPATH="$1" "$PY" -c 'import mmcv.ops' > /dev/null 2>&1; }
BUILD_STATE=none
if [ $kit_rc -ne 0 ]; then
    BUILD_STATE="no kit"
elif [ -d "$SITE" ] && [ -n "$(mmcv_path)" ] && have_mmcv_ops "$(mmcv_path):$KIT_PYTHONPATH"; then
    BUILD_STATE="built before (in $WORK)"
    KIT_PYTHONPATH="$(mmcv_path):$KIT_PYTHONPATH"
elif have_mmcv_ops "$KIT_PYTHONPATH"; then
    BUILD_STATE="mmcv with ops already installed"
else
    export PY KIT SITE BUILD_TOOLS MMCV_SRC BASE_PYTHONPATH
    blim=$(( $(limit_for 250) - 20 ))
    timeout -k 10 "$blim" bash -c "$(declare -f mmcv_path build_mmcv); build_mmcv" \
        > "$WORK/mmcv_build.log" 2>&1 &
    BUILD_PID=$!
    BUILD_STATE="building (limit ${blim}s)"
fi
echo "mmcv: $BUILD_STATE"

# ------------------------------------------------------------------ 2. loss table
# (MMSeg is not on the path yet: torch's cross-entropy; the same on a machine without it)
# shellcheck disable=SC2086
run_step 'loss table' 120 "$WORK/loss_table.log" \
    "$PY" tools/analysis/benchmark_loss.py "${LOSS_ARGS[@]}" --no-mmseg --engines torch triton \
    --out "$WORK/loss_table.md" ${BENCH_ARGS:-}
[ -s "$WORK/loss_table.md" ] && cp "$WORK/loss_table.md" "$OUT/loss.md"
summary

# ------------------------------------------------------- 3. torch.compile vs Triton
: > "$WORK/loss_compile.md"
first=1
for m in $COMPILE_METRICS; do
    # the first metric gets the step's budget; the next ones what is left of it
    if [ $first = 1 ]; then c_end=$(( $(date +%s) + 70 )); first=0; fi
    left=$(( c_end - $(date +%s) ))
    # shellcheck disable=SC2086
    run_step "torch.compile vs Triton: $m" "$left" "$WORK/loss_compile_$m.log" \
        "$PY" tools/analysis/benchmark_loss.py "${COMPILE_ARGS[@]}" --no-mmseg --engines compile triton \
        --only "$m" --no-accuracy --out "$WORK/loss_compile_$m.md" ${BENCH_ARGS:-}
    if [ -s "$WORK/loss_compile_$m.md" ]; then
        cat "$WORK/loss_compile_$m.md" >> "$WORK/loss_compile.md"
        { echo; cat "$WORK/loss_compile_$m.md"; } >> "$OUT/loss.md"
    fi
    summary
done

# ------------------------------------------------------------ 4. wait for mmcv
note 'mmcv CPU ops'
t0=$(date +%s)
if [ -n "$BUILD_PID" ]; then
    wait "$BUILD_PID"  # the build has its own limit: it ends by 250 s into the run
    build_rc=$?
    BUILD_PID=""
    tail -n 5 "$WORK/mmcv_build.log"
    tail_log 'mmcv build' "$WORK/mmcv_build.log" 30
    if [ $build_rc -eq 0 ] && have_mmcv_ops "$(mmcv_path):$KIT_PYTHONPATH"; then
        KIT_PYTHONPATH="$(mmcv_path):$KIT_PYTHONPATH"
        st="built in $(grep -m1 '^build seconds' "$WORK/mmcv_build.log" | cut -d: -f2 | xargs) s"
    else
        case $build_rc in 124|137) st="TIMEOUT (exit $build_rc)";; *) st="FAILED (exit $build_rc)";; esac
    fi
elif [ "$kit_rc" -ne 0 ]; then
    st="not built: no kit"
else
    st="$BUILD_STATE"
fi
export PYTHONPATH="$KIT_PYTHONPATH"
if PYTHONPATH="$KIT_PYTHONPATH" "$PY" -c 'import mmcv, mmcv.ops, mmengine, mmseg; print("mmcv",
mmcv.__version__, "mmengine", mmengine.__version__, "mmseg", mmseg.__version__)' \
        > "$WORK/mmseg_import.log" 2>&1; then
    MMSEG_OK=1
else
    MMSEG_OK=0
    st="$st; MMSeg not importable"
fi
cat "$WORK/mmseg_import.log"
tail_log 'MMSeg import' "$WORK/mmseg_import.log" 10
record "mmcv CPU ops (background since step 1; seconds waited here)" "$st" \
    $(( $(date +%s) - t0 )) "${blim:--}"

# ------------------------------------------------------------ 5. MMSeg on the GPU
if [ $MMSEG_OK = 1 ]; then
    # (without a GPU the file skips itself: pytest's exit 5, "no tests ran", is the dry
    # run's success)
    run_step 'MMSeg on the GPU (tests/test_gpu_search.py)' 90 "$WORK/tests.log" \
        bash -c '"$0" -m pytest -q -p no:cacheprovider -rs tests/test_gpu_search.py; rc=$?
                 [ $rc = 5 ] && [ "$1" = cpu ] && exit 0; exit $rc' "$PY" "$DEVICE"
else
    record 'MMSeg on the GPU (tests/test_gpu_search.py)' 'not run: no MMSeg' 0 -
fi

# -------------------------------------------------------- 6. the search's throughput
if [ $MMSEG_OK = 1 ]; then
    lim=$(limit_for 140)
    # bench_search stops its search itself (SIGTERM, which stops the trials) 15 s before
    # the step's limit, and saves its tables after every part
    # shellcheck disable=SC2086
    run_step "search throughput (bench_search.py)" "$lim" "$WORK/search.log" \
        "$PY" tools/gpu/bench_search.py --out "$WORK/search" "${SEARCH_BASE[@]}" \
        --time-limit $(( lim > 30 ? lim - 15 : 15 )) ${SEARCH_ARGS:-}
    [ -s "$WORK/search/bench.json" ] && cp "$WORK/search/bench.json" "$OUT/search.json"
else
    record 'search throughput (bench_search.py)' 'not run: no MMSeg' 0 -
fi

summary
note 'summary'
cat "$OUT/summary.md"
# exit 0 when every step ran to its end (the PASS/FAIL of the targets is in the summary)
for s in "${STEPS[@]}"; do
    IFS='|' read -r _ st _ _ <<< "$s"
    case "$st" in ok|"built "*|"mmcv with ops"*) ;; *) exit 1;; esac
done
exit 0
