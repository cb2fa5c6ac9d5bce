#!/usr/bin/env bash
# mpirun launch of h20x16: 16 x NVIDIA H20 96GB, 1 replica(s) of 16 rank(s) (tp 16, pp 1, moe_ep 16, moe_tp 1, attention DP off), backend llmapi.
# Generated from build_configs/h20x16.yaml by scripts/gen_build_configs.py (k2trt.launch); do not edit.
# Usage: HOSTS=host0,...,host1 MODEL_REPO=/path/to/triton_repo scripts/launch/h20x16.mpirun.sh  (inside nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3 on every host)
set -euo pipefail
: "${HOSTS:?comma-separated hostnames of the 2 node(s), 8 GPU(s) each, in rank order}"
: "${MODEL_REPO:?the Triton model repository written by k2trt repo}"
PORT_BASE=${PORT_BASE:-8000}
IFS=, read -r -a H <<< "$HOSTS"
if [ "${#H[@]}" -ne 2 ]; then echo "HOSTS must name 2 host(s), got ${#H[@]}" >&2; exit 1; fi
MPI_ARGS=(--allow-run-as-root --bind-to none -x PATH -x LD_LIBRARY_PATH -x HF_HOME)
# replica 0: node(s) 0, 1
mpirun "${MPI_ARGS[@]}" -np 16 -H "${H[0]}:8,${H[1]}:8" \
  trtllm-llmapi-launch tritonserver --model-repository="$MODEL_REPO" --http-port=$((PORT_BASE + 0)) --grpc-port=$((PORT_BASE + 0 + 1)) --metrics-port=$((PORT_BASE + 0 + 2)) &
wait
