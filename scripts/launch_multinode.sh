#!/usr/bin/env bash
# One machine's share of a multi-node run (docs/multinode.md). Start it once on every machine, with the same arguments:
# the recipe and its options, e.g.
#   srun --ntasks-per-node=1 scripts/launch_multinode.sh recipes/sft.py --config recipes/configs/coco_sft.yaml
# It reads the machine count, this machine's rank and the head's address from SLURM (SLURM_JOB_NUM_NODES, SLURM_NODEID,
# the first host of SLURM_JOB_NODELIST) or from a Kubernetes PyTorchJob with one pod per machine (WORLD_SIZE, RANK,
# MASTER_ADDR, MASTER_PORT); NUM_MACHINES, MACHINE_RANK, HEAD_IP, PORT, GPUS_PER_MACHINE and ACCELERATE_CONFIG, when
# set, win. Nothing has to be shared between the machines; resuming needs an output_dir that all of them see.
set -euo pipefail

if [[ -n "${SLURM_JOB_NUM_NODES:-}" && -n "${SLURM_NODEID:-}" ]]; then
    NUM_MACHINES=${NUM_MACHINES:-$SLURM_JOB_NUM_NODES}
    MACHINE_RANK=${MACHINE_RANK:-$SLURM_NODEID}
    HEAD_IP=${HEAD_IP:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
elif [[ -n "${MASTER_ADDR:-}" && -n "${WORLD_SIZE:-}" && -n "${RANK:-}" ]]; then
    NUM_MACHINES=${NUM_MACHINES:-$WORLD_SIZE}  # PyTorchJob: WORLD_SIZE pods, RANK this pod's index (0: the master)
    MACHINE_RANK=${MACHINE_RANK:-$RANK}
    HEAD_IP=${HEAD_IP:-$MASTER_ADDR}
    PORT=${PORT:-${MASTER_PORT:-29500}}
fi
: "${NUM_MACHINES:?set NUM_MACHINES (or run under SLURM or a PyTorchJob)}"
: "${MACHINE_RANK:?set MACHINE_RANK: 0 on the head machine, 1 … NUM_MACHINES-1 on the others}"
: "${HEAD_IP:?set HEAD_IP: the address of the machine with MACHINE_RANK 0}"
PORT=${PORT:-29500}
GPUS_PER_MACHINE=${GPUS_PER_MACHINE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if [[ "$GPUS_PER_MACHINE" -lt 1 ]]; then
    echo "launch_multinode.sh: no GPU found; set GPUS_PER_MACHINE" >&2
    exit 2
fi

# --num_processes counts every process of the run, on all machines.
exec tippo-launch --config_file "${ACCELERATE_CONFIG:-accelerate_configs/multi_gpu.yaml}" \
    --num_machines "$NUM_MACHINES" --num_processes $((NUM_MACHINES * GPUS_PER_MACHINE)) \
    --machine_rank "$MACHINE_RANK" --main_process_ip "$HEAD_IP" --main_process_port "$PORT" "$@"
