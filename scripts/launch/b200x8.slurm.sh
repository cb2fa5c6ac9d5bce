#!/usr/bin/env bash
#SBATCH --job-name=k2trt-b200x8
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
# Slurm launch of b200x8: 8 x NVIDIA B200 180GB (HGX), 1 replica(s) of 8 rank(s) (tp 8, pp 1, moe_ep 8, moe_tp 1, attention DP on), backend llmapi.
# Generated from build_configs/b200x8.yaml by scripts/gen_build_configs.py (k2trt.launch); do not edit.
# Usage: CONTAINER_IMAGE=nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3 MODEL_REPO=/path/to/triton_repo sbatch scripts/launch/b200x8.slurm.sh
set -euo pipefail
: "${CONTAINER_IMAGE:?the serving container, e.g. nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3}"
: "${MODEL_REPO:?the Triton model repository written by k2trt repo}"
MOUNTS=${MOUNTS:-"$MODEL_REPO:$MODEL_REPO"}
export MODEL_REPO PORT_BASE=${PORT_BASE:-8000}  # srun passes the environment to every task
SRUN_ARGS=(--mpi=pmix --container-image="$CONTAINER_IMAGE" --container-mounts="$MOUNTS")
# replica 0: node(s) 0
srun "${SRUN_ARGS[@]}" --nodes=1 --ntasks=8 --ntasks-per-node=8 --relative=0 \
  trtllm-llmapi-launch tritonserver --model-repository="$MODEL_REPO" --http-port=$((PORT_BASE + 0)) --grpc-port=$((PORT_BASE + 0 + 1)) --metrics-port=$((PORT_BASE + 0 + 2)) &
wait
