#!/usr/bin/env bash
# mpirun launch of gb200-nvl72: 72 x NVIDIA GB200 (NVL72), 3 replica(s) of 24 rank(s) (tp 24, pp 1, moe_ep 24, moe_tp 1, attention DP on), backend llmapi.
# Generated from build_configs/gb200-nvl72.yaml by scripts/gen_build_configs.py (k2trt.launch); do not edit.
# Usage: HOSTS=host0,...,host17 MODEL_REPO=/path/to/triton_repo scripts/launch/gb200-nvl72.mpirun.sh  (inside nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3 on every host)
set -euo pipefail
: "${HOSTS:?comma-separated hostnames of the 18 node(s), 4 GPU(s) each, in rank order}"
: "${MODEL_REPO:?the Triton model repository written by k2trt repo}"
PORT_BASE=${PORT_BASE:-8000}
IFS=, read -r -a H <<< "$HOSTS"
if [ "${#H[@]}" -ne 18 ]; then echo "HOSTS must name 18 host(s), got ${#H[@]}" >&2; exit 1; fi
MPI_ARGS=(--allow-run-as-root --bind-to none -x PATH -x LD_LIBRARY_PATH -x HF_HOME)
# replica 0: node(s) 0, 1, 2, 3, 4, 5
mpirun "${MPI_ARGS[@]}" -np 24 -H "${H[0]}:4,${H[1]}:4,${H[2]}:4,${H[3]}:4,${H[4]}:4,${H[5]}:4" \
  trtllm-llmapi-launch tritonserver --model-repository="$MODEL_REPO" --http-port=$((PORT_BASE + 0)) --grpc-port=$((PORT_BASE + 0 + 1)) --metrics-port=$((PORT_BASE + 0 + 2)) &
# replica 1: node(s) 6, 7, 8, 9, 10, 11
mpirun "${MPI_ARGS[@]}" -np 24 -H "${H[6]}:4,${H[7]}:4,${H[8]}:4,${H[9]}:4,${H[10]}:4,${H[11]}:4" \
  trtllm-llmapi-launch tritonserver --model-repository="$MODEL_REPO" --http-port=$((PORT_BASE + 0)) --grpc-port=$((PORT_BASE + 0 + 1)) --metrics-port=$((PORT_BASE + 0 + 2)) &
# replica 2: node(s) 12, 13, 14, 15, 16, 17
mpirun "${MPI_ARGS[@]}" -np 24 -H "${H[12]}:4,${H[13]}:4,${H[14]}:4,${H[15]}:4,${H[16]}:4,${H[17]}:4" \
  trtllm-llmapi-launch tritonserver --model-repository="$MODEL_REPO" --http-port=$((PORT_BASE + 0)) --grpc-port=$((PORT_BASE + 0 + 1)) --metrics-port=$((PORT_BASE + 0 + 2)) &
wait
