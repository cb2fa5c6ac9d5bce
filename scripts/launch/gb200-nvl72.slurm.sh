#!/usr/bin/env bash
#SBATCH --job-name=k2trt-gb200-nvl72
#SBATCH --nodes=18
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --exclusive
# Slurm launch of gb200-nvl72: 72 x NVIDIA GB200 (NVL72), 3 replica(s) of 24 rank(s) (tp 24, pp 1, moe_ep 24, moe_tp 1, attention DP on), backend llmapi.
# Generated from build_configs/gb200-nvl72.yaml by scripts/gen_build_configs.py (k2trt.launch); do not edit.
# Usage: CONTAINER_IMAGE=nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3 MODEL_REPO=/path/to/triton_repo sbatch scripts/launch/gb200-nvl72.slurm.sh
set -euo pipefail
: "${CONTAINER_IMAGE:?the serving container, e.g. nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3}"
: "${MODEL_REPO:?the Triton model repository written by k2trt repo}"
MOUNTS=${MOUNTS:-"$MODEL_REPO:$MODEL_REPO"}
export MODEL_REPO PORT_BASE=${PORT_BASE:-8000}  # srun passes the environment to every task
SRUN_ARGS=(--mpi=pmix --container-image="$CONTAINER_IMAGE" --container-mounts="$MOUNTS")
# replica 0: node(s) 0, 1, 2, 3, 4, 5
srun "${SRUN_ARGS[@]}" --nodes=6 --ntasks=24 --ntasks-per-node=4 --relative=0 \
  trtllm-llmapi-launch tritonserver --model-repository="$MODEL_REPO" --http-port=$((PORT_BASE + 0)) --grpc-port=$((PORT_BASE + 0 + 1)) --metrics-port=$((PORT_BASE + 0 + 2)) &
# replica 1: node(s) 6, 7, 8, 9, 10, 11
srun "${SRUN_ARGS[@]}" --nodes=6 --ntasks=24 --ntasks-per-node=4 --relative=6 \
  trtllm-llmapi-launch tritonserver --model-repository="$MODEL_REPO" --http-port=$((PORT_BASE + 0)) --grpc-port=$((PORT_BASE + 0 + 1)) --metrics-port=$((PORT_BASE + 0 + 2)) &
# replica 2: node(s) 12, 13, 14, 15, 16, 17
srun "${SRUN_ARGS[@]}" --nodes=6 --ntasks=24 --ntasks-per-node=4 --relative=12 \
  trtllm-llmapi-launch tritonserver --model-repository="$MODEL_REPO" --http-port=$((PORT_BASE + 0)) --grpc-port=$((PORT_BASE + 0 + 1)) --metrics-port=$((PORT_BASE + 0 + 2)) &
wait
