#!/usr/bin/env bash
# Re-train with a (searched) loss as one Slurm job step, like MMSeg's slurm_train.sh.
#
#   [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#   ./ASL_retrain_slurm.sh PARTITION CONFIG [GPUS] [SEED] [extra tools/train.py args...]
#
# Starts GPUS tasks (default 4; one per GPU, GPUS_PER_NODE per node, so GPUS > 8 spans
# several nodes) running tools/train.py --launcher slurm: one MMSeg training across all
# tasks of the allocation. CONFIG is a path or a name under configs/retrain/; SEED
# defaults to 1; the work directory is work_dirs/retrain/<config>/ (or $ASL_WORK_DIR).
# On a cluster without GPUs set GPUS_PER_NODE=0: the tasks train on CPUs with gloo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { echo "usage: $0 PARTITION CONFIG [GPUS] [SEED] [extra train.py args...]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
PARTITION=$1
CONFIG_NAME=$2
GPUS=${3:-4}
SEED=${4:-1}
shift $(( $# < 4 ? $# : 4 ))
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || { echo "error: GPUS must be a positive integer, got '$GPUS'" >&2; exit 2; }
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "error: SEED must be a non-negative integer, got '$SEED'" >&2; exit 2; }
[[ "$GPUS_PER_NODE" =~ ^[0-9]+$ ]] || { echo "error: GPUS_PER_NODE must be an integer, got '$GPUS_PER_NODE'" >&2; exit 2; }
command -v srun >/dev/null || { echo "error: srun not found: is this a Slurm cluster?" >&2; exit 2; }

cd "$ROOT"
CONFIG=$("$PYTHON" -m asl.mmseg.configs find "$CONFIG_NAME" configs/retrain) || exit 2
NAME=$(basename "$CONFIG" .py)
WORK_DIR="${ASL_WORK_DIR:-work_dirs/retrain/$NAME}"
GRES=()
TASKS_PER_NODE=$GPUS
if (( GPUS_PER_NODE > 0 )); then
    GRES=(--gres="gpu:$GPUS_PER_NODE")
    TASKS_PER_NODE=$GPUS_PER_NODE
fi
echo "[ASL_retrain_slurm] partition $PARTITION, config $CONFIG, $GPUS task(s), seed $SEED," \
     "work dir $WORK_DIR"
# shellcheck disable=SC2086
exec srun -p "$PARTITION" --job-name="asl-retrain-$NAME" "${GRES[@]}" --ntasks="$GPUS" \
    --ntasks-per-node="$TASKS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 \
    $SRUN_ARGS "$PYTHON" -u tools/train.py "$CONFIG" --work-dir "$WORK_DIR" --seed "$SEED" \
    --launcher slurm "$@"
