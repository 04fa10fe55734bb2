#!/usr/bin/env bash
# Launch VMAs training with DeepSpeed's launcher (one process per GPU; CPU processes when there is no GPU).
#
#   bash train.sh CONFIG [key.sub=value ...] [--resume [CKPT_DIR]] [--synthetic]
#
# Environment (all optional):
#   GPUS_PER_NODE   processes per node (default: every visible GPU)
#   NPROC           processes on a machine without GPUs (default 1; gloo over loopback)
#   HOSTFILE        DeepSpeed hostfile ("node1 slots=8" lines): multi-node through pdsh/ssh from this node
#   NUM_NODES       nodes to use (with HOSTFILE: the first NUM_NODES hosts; with NODE_RANK: the total count)
#   NODE_RANK       this node's index when every node runs train.sh itself (SLURM srun, no ssh): --no_ssh mode
#   MASTER_ADDR     rank-0 host (default 127.0.0.1, or the first hostfile entry)
#   MASTER_PORT     rendezvous port (default 29500)
#   PYTHON          interpreter (default .venv/bin/python next to this script, else python3)
#   ENTRY           script each rank runs (default tools/train.py; tools/check_zero.py checks every ZeRO stage)
# See docs/training.md for SLURM and hostfile recipes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
PYTHON="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
export PYTHONUNBUFFERED=1
MASTER_PORT="${MASTER_PORT:-29500}"

NGPU="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
LAUNCH=("$PYTHON" -m deepspeed.launcher.runner --master_port "$MASTER_PORT")
if [[ "$NGPU" -gt 0 ]]; then
    PER_NODE="${GPUS_PER_NODE:-$NGPU}"
    [[ -n "${NPROC:-}" ]] && echo "warning: NPROC=$NPROC is for machines without GPUs; here GPUS_PER_NODE=$PER_NODE processes run" >&2
    if [[ -n "${NODE_RANK:-}" ]]; then            # every node launches itself (srun): no ssh
        : "${MASTER_ADDR:?set MASTER_ADDR to the first node when NODE_RANK is used}"
        LAUNCH+=(--no_ssh --node_rank "$NODE_RANK" --num_nodes "${NUM_NODES:?set NUM_NODES with NODE_RANK}"
                 --num_gpus "$PER_NODE" --master_addr "$MASTER_ADDR")
    elif [[ -n "${HOSTFILE:-}" ]]; then           # this node starts every node through pdsh/ssh
        [[ -f "$HOSTFILE" ]] || { echo "error: HOSTFILE=$HOSTFILE not found" >&2; exit 2; }
        MASTER_ADDR="${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}"
        LAUNCH+=(--hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --num_gpus "$PER_NODE")
        [[ -n "${NUM_NODES:-}" ]] && LAUNCH+=(--num_nodes "$NUM_NODES")
    else
        LAUNCH+=(--num_gpus "$PER_NODE")
    fi
else                                              # CPU: DeepSpeed picks its CPU accelerator, gloo on loopback
    [[ -n "${GPUS_PER_NODE:-}${HOSTFILE:-}${NODE_RANK:-}" ]] && echo "warning: no GPU here: GPUS_PER_NODE, HOSTFILE and NODE_RANK are not used (NPROC=${NPROC:-1} CPU processes)" >&2
    LAUNCH+=(--num_gpus "${NPROC:-1}" --master_addr "${MASTER_ADDR:-127.0.0.1}")
fi
ENTRY="${ENTRY:-tools/train.py}"
echo "launch: ${LAUNCH[*]} $ENTRY $*" >&2
exec "${LAUNCH[@]}" "$ENTRY" "$@"
