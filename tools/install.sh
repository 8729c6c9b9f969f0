#!/usr/bin/env bash
# Create (or update) the project's virtual environment in ./.venv with everything
# asl needs on a CPU machine: torch 2.13.0 (CPU), mmcv 2.1.0 with its ops (built
# once from source into a wheel cache outside the checkout and reused afterwards),
# mmengine 0.10.7, mmsegmentation 1.2.2, Triton (its interpreter runs the GPU engine's
# kernels on the CPU in the tests) and the test tools, then asl itself in editable mode.
#
# Environment:
#   PYTHON           interpreter used to create the venv (default: python3.11, else python3)
#   VENV             venv directory (default: <repo>/.venv)
#   ASL_WHEEL_CACHE  where the built mmcv wheel is kept (default: ~/.cache/asl/wheels)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
MMCV_VERSION="2.1.0"
TRITON_VERSION="${TRITON_VERSION:-3.6.0}"  # the version of the GPU machines we check on
PYTAG="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
CACHE="${ASL_WHEEL_CACHE:-$HOME/.cache/asl/wheels}/mmcv-${MMCV_VERSION}-torch-${TORCH_VERSION}-${PYTAG}-$(uname -m)"
STAMP="$VENV/.asl-installed"

log() { printf '[install] %s\n' "$*"; }

up_to_date() {  # the stamp is newer than the installer, setup.py and every C++ source
    [ -f "$STAMP" ] || return 1
    local f
    for f in "$ROOT/tools/install.sh" "$ROOT/setup.py" "$ROOT"/asl/engines/cpp/csrc/*; do
        [ "$STAMP" -nt "$f" ] || return 1
    done
}

if up_to_date; then
    log "environment in $VENV is up to date"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

log "installing build tools and torch==$TORCH_VERSION"
"${PIP[@]}" --upgrade pip wheel
"${PIP[@]}" "torch==$TORCH_VERSION" numpy scipy
# mmcv's setup.py imports pkg_resources, which setuptools dropped in 70+ (torch may pull a newer one).
"${PIP[@]}" 'setuptools<70'

shopt -s nullglob
wheels=("$CACHE"/mmcv-"$MMCV_VERSION"-*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    log "building mmcv $MMCV_VERSION with ops into $CACHE (about 13 minutes on 2 cores; done once)"
    mkdir -p "$CACHE"
    tmp="$(mktemp -d "$CACHE/.build.XXXXXX")"
    "${PIP[@]}" ninja psutil packaging
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
        "$PY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps \
        "mmcv==$MMCV_VERSION" -w "$tmp"
    mv "$tmp"/mmcv-*.whl "$CACHE"/
    rmdir "$tmp" 2>/dev/null || true
    wheels=("$CACHE"/mmcv-"$MMCV_VERSION"-*.whl)
else
    log "reusing cached mmcv wheel ${wheels[0]}"
fi
"${PIP[@]}" "${wheels[0]}"

log "installing mmengine, mmsegmentation, triton==$TRITON_VERSION and test tools"
"${PIP[@]}" "mmengine==0.10.7" "mmsegmentation==1.2.2" ftfy regex "triton==$TRITON_VERSION" \
    pytest pytest-xdist filelock hypothesis matplotlib build
"${PIP[@]}" --no-build-isolation -e "$ROOT"

"$PY" -c 'import asl, mmseg, mmcv.ops, triton; print("asl", asl.__version__, "mmseg", mmseg.__version__, "mmcv", mmcv.__version__, "triton", triton.__version__)'
touch "$STAMP"
log "done: $VENV"
