#!/usr/bin/env bash
# Search a surrogate loss, as the official Auto Seg-Loss scripts do.
#
#   ./ASL_search.sh CONFIG [GPUS] [SEED] [extra tools/search.py arguments...]
#
# CONFIG is a path or a config name looked up under configs/search/ (recursively).
# GPUS (default 8) is the number of GPUs the search spreads its proxy trainings over
# (search.gpus_per_trial each). On a machine without CUDA the trials run on the CPU,
# one at a time (pass --workers N to run N at once). SEED defaults to 1.
# The work directory is work_dirs/search/<config>/ (or $ASL_WORK_DIR); running the same
# command again resumes an interrupted search. Environment: PYTHON (default:
# .venv/bin/python if present, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { echo "usage: $0 CONFIG [GPUS] [SEED] [extra search.py args...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
CONFIG_NAME=$1
GPUS=${2:-8}
SEED=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
[[ "$GPUS" =~ ^[0-9]+$ ]] || { echo "error: GPUS must be a non-negative integer, got '$GPUS'" >&2; exit 2; }
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "error: SEED must be a non-negative integer, got '$SEED'" >&2; exit 2; }

cd "$ROOT"
CONFIG=$("$PYTHON" -m asl.mmseg.configs find "$CONFIG_NAME" configs/search) || exit 2
NAME=$(basename "$CONFIG" .py)
WORK_DIR="${ASL_WORK_DIR:-work_dirs/search/$NAME}"

DEVICES=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
GPU_ARGS=()
if (( DEVICES == 0 )); then
    echo "[ASL_search] no CUDA device: proxy trainings run on the CPU"
    GPU_ARGS=(--gpus 0)
elif (( GPUS > DEVICES )); then
    echo "error: GPUS=$GPUS but only $DEVICES CUDA device(s) are present" >&2
    exit 2
else
    GPU_ARGS=(--gpus "$GPUS")
fi

echo "[ASL_search] config $CONFIG, seed $SEED, work dir $WORK_DIR"
exec "$PYTHON" tools/search.py "$CONFIG" --work-dir "$WORK_DIR" --seed "$SEED" \
    "${GPU_ARGS[@]}" "$@"
