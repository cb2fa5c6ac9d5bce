#!/usr/bin/env bash
#SBATCH --job-name=k2trt-cpu-tiny
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --exclusive
# Slurm launch of cpu-tiny: 1 x host CPU (k2trt torch backend), 1 replica(s) of 1 rank(s) (tp 1, pp 1, moe_ep 1, moe_tp 1, attention DP off), backend torch.
# Generated from build_configs/cpu-tiny.yaml by scripts/gen_build_configs.py (k2trt.launch); do not edit.
# Usage: CONTAINER_IMAGE=nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3 MODEL_REPO=/path/to/triton_repo sbatch scripts/launch/cpu-tiny.slurm.sh
set -euo pipefail
: "${CONTAINER_IMAGE:?the serving container, e.g. nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3}"
: "${MODEL_REPO:?the Triton model repository written by k2trt repo}"
MOUNTS=${MOUNTS:-"$MODEL_REPO:$MODEL_REPO"}
export MODEL_REPO PORT_BASE=${PORT_BASE:-8000}  # srun passes the environment to every task
SRUN_ARGS=(--mpi=pmix --container-image="$CONTAINER_IMAGE" --container-mounts="$MOUNTS")
# replica 0: node(s) 0
srun "${SRUN_ARGS[@]}" --nodes=1 --ntasks=1 --ntasks-per-node=1 --relative=0 \
  tritonserver --model-repository="$MODEL_REPO" --http-port=$((PORT_BASE + 0)) --grpc-port=$((PORT_BASE + 0 + 1)) --metrics-port=$((PORT_BASE + 0 + 2)) &
wait
