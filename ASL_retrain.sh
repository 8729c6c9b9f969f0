#!/usr/bin/env bash
# Re-train a segmentor with a (searched) loss, as the official Auto Seg-Loss scripts do.
#
#   ./ASL_retrain.sh CONFIG [GPUS] [SEED] [extra tools/train.py arguments...]
#
# CONFIG is a path or a config name looked up under configs/retrain/ (recursively).
# GPUS (default 4) processes are started with torchrun, one per GPU; GPUS=1 runs one
# plain process. SEED defaults to 1. The work directory is work_dirs/retrain/<config>/
# (or $ASL_WORK_DIR).
# On a machine without CUDA, GPUS=1 trains on the CPU; GPUS>1 needs
# ASL_ALLOW_CPU_PROCS=1 (that many gloo processes share the CPU).
# Environment: PYTHON (default: .venv/bin/python if present, else python3),
# PORT (torchrun master port, default 29500).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { echo "usage: $0 CONFIG [GPUS] [SEED] [extra train.py args...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
CONFIG_NAME=$1
GPUS=${2:-4}
SEED=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || { echo "error: GPUS must be a positive integer, got '$GPUS'" >&2; exit 2; }
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "error: SEED must be a non-negative integer, got '$SEED'" >&2; exit 2; }

cd "$ROOT"
CONFIG=$("$PYTHON" -m asl.mmseg.configs find "$CONFIG_NAME" configs/retrain) || exit 2
NAME=$(basename "$CONFIG" .py)
WORK_DIR="${ASL_WORK_DIR:-work_dirs/retrain/$NAME}"

DEVICES=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
if (( DEVICES == 0 )); then
    if (( GPUS > 1 )) && [[ "${ASL_ALLOW_CPU_PROCS:-0}" != 1 ]]; then
        echo "error: GPUS=$GPUS but this machine has no CUDA device; use GPUS=1 to train on" \
             "the CPU, or set ASL_ALLOW_CPU_PROCS=1 to run $GPUS gloo processes on the CPU" >&2
        exit 2
    fi
elif (( GPUS > DEVICES )); then
    echo "error: GPUS=$GPUS but only $DEVICES CUDA device(s) are present" >&2
    exit 2
fi

echo "[ASL_retrain] config $CONFIG, $GPUS process(es), seed $SEED, work dir $WORK_DIR"
if (( GPUS == 1 )); then
    exec "$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" --seed "$SEED" \
        --launcher none "$@"
fi
exec "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc_per_node="$GPUS" \
    --master_port="${PORT:-29500}" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" \
    --seed "$SEED" --launcher pytorch "$@"
