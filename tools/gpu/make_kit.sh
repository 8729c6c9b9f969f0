#!/usr/bin/env bash
# Gather what MMSeg needs on a bare GPU machine that has its own Python 3.12, torch and Triton
# but no package index: run here (with access to the package index), carry the folder there,
# then run tools/gpu/run.sh there.
#
#   bash tools/gpu/make_kit.sh [KIT_DIR]        (default: .gpukit, ignored by git)
#
# KIT_DIR/wheels: mmengine, mmsegmentation and the dependencies of theirs and of mmcv that the
#                 GPU machine lacks, as wheels for CPython 3.12 on x86_64 Linux, at the
#                 versions of this checkout's environment (.venv) where it has them (about
#                 5 MB; KIT_FULL=1: every dependency, about 140 MB); torch, triton and their
#                 CUDA packages are never included (the machine has them).
# KIT_DIR/src:    the mmcv 2.1.0 source, built there by run.sh (its CPU ops: the proxy
#                 models use no mmcv CUDA op).
# KIT_DIR/MANIFEST: the files and their sizes.
#
# Environment: PIP (default: .venv/bin/python -m pip, else python3 -m pip), PY_VERSION
# (default 3.12), KIT_FULL, KIT_PACKAGES (more requirement specifiers to include).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KIT="${1:-$ROOT/.gpukit}"
PY_VERSION="${PY_VERSION:-3.12}"
if [ -x "$ROOT/.venv/bin/python" ]; then VPY="$ROOT/.venv/bin/python"; else VPY=python3; fi
read -r -a PIP <<< "${PIP:-$VPY -m pip}"
ABI="cp${PY_VERSION/./}"
MMCV_VERSION=2.1.0

# What MMSeg, MMEngine and mmcv import that the GPU machine's image does not have (its
# package list holds numpy, scipy, opencv-python-headless, matplotlib, pillow, pyyaml, rich,
# regex, packaging, psutil, ninja, pytest...), and setuptools<70, which mmcv's setup.py
# needs for building (it imports pkg_resources; run.sh uses it for the build only).
# KIT_FULL=1 adds those too, for a machine that has nothing but torch (about 140 MB).
PACKAGES=(
    mmengine==0.10.7 mmsegmentation==1.2.2
    addict yapf platformdirs termcolor prettytable wcwidth ftfy 'setuptools<70'
)
if [ "${KIT_FULL:-0}" = 1 ]; then
    PACKAGES+=(rich markdown-it-py mdurl pygments pyyaml opencv-python-headless numpy scipy
               matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing
               python-dateutil six packaging regex ninja psutil wheel pytest pluggy iniconfig)
fi
# shellcheck disable=SC2206
PACKAGES+=(${KIT_PACKAGES:-})

pinned() {  # "name==version" from this environment where it has the package
    local spec="$1" name ver
    case "$spec" in *[=\<\>]*) echo "$spec"; return;; esac
    name="$spec"
    ver="$("$VPY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$name" 2>/dev/null || true)"
    if [ -n "$ver" ]; then echo "$name==$ver"; else echo "$name"; fi
}

mkdir -p "$KIT/wheels" "$KIT/src"
echo "[kit] downloading wheels for CPython $PY_VERSION ($ABI, x86_64 Linux) into $KIT/wheels"
specs=()
for p in "${PACKAGES[@]}"; do specs+=("$(pinned "$p")"); done
failed=()
DL=("${PIP[@]}" download -q --disable-pip-version-check --no-deps --only-binary=:all:
    --python-version "$PY_VERSION" --implementation cp --abi "$ABI" --abi abi3 --abi none
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux_2_28_x86_64 --platform any -d "$KIT/wheels")
for spec in "${specs[@]}"; do
    if ! "${DL[@]}" "$spec" > "$KIT/.download.log" 2>&1; then
        # a version of this environment may have no wheel for that Python: take the newest
        name="${spec%%[=<>]*}"
        if [ "$name" != "$spec" ] && [[ "$spec" != *"<"* ]] \
                && "${DL[@]}" "$name" > "$KIT/.download.log" 2>&1; then
            echo "[kit] $spec has no $ABI wheel; took the newest $name"
        else
            failed+=("$spec")
            tail -3 "$KIT/.download.log"
        fi
    fi
done
echo "[kit] downloading the mmcv $MMCV_VERSION source into $KIT/src"
"${PIP[@]}" download -q --disable-pip-version-check --no-deps --no-binary=:all: \
    --no-build-isolation -d "$KIT/src" "mmcv==$MMCV_VERSION" > "$KIT/.download.log" 2>&1 \
    || { tail -3 "$KIT/.download.log"; failed+=("mmcv==$MMCV_VERSION (source)"); }
rm -f "$KIT/.download.log"
(cd "$KIT" && find wheels src -type f -printf '%s\t%p\n' | sort -k2) > "$KIT/MANIFEST"
total=$(du -sm "$KIT" | cut -f1)
echo "[kit] $(wc -l < "$KIT/MANIFEST") files, $total MB in $KIT"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "[kit] error: could not download: ${failed[*]}" >&2
    exit 1
fi
echo "[kit] next, on the GPU machine, from the repository root: KIT=$KIT bash tools/gpu/run.sh OUT_DIR"
