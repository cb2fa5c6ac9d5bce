#!/usr/bin/env bash
# mpirun launch of cpu-tiny: 1 x host CPU (k2trt torch backend), 1 replica(s) of 1 rank(s) (tp 1, pp 1, moe_ep 1, moe_tp 1, attention DP off), backend torch.
# Generated from build_configs/cpu-tiny.yaml by scripts/gen_build_configs.py (k2trt.launch); do not edit.
# Usage: HOSTS=host0 MODEL_REPO=/path/to/triton_repo scripts/launch/cpu-tiny.mpirun.sh  (inside nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3 on every host)
set -euo pipefail
: "${HOSTS:?comma-separated hostnames of the 1 node(s), 1 GPU(s) each, in rank order}"
: "${MODEL_REPO:?the Triton model repository written by k2trt repo}"
PORT_BASE=${PORT_BASE:-8000}
IFS=, read -r -a H <<< "$HOSTS"
if [ "${#H[@]}" -ne 1 ]; then echo "HOSTS must name 1 host(s), got ${#H[@]}" >&2; exit 1; fi
MPI_ARGS=(--allow-run-as-root --bind-to none -x PATH -x LD_LIBRARY_PATH -x HF_HOME)
# replica 0: node(s) 0
mpirun "${MPI_ARGS[@]}" -np 1 -H "${H[0]}:1" \
  tritonserver --model-repository="$MODEL_REPO" --http-port=$((PORT_BASE + 0)) --grpc-port=$((PORT_BASE + 0 + 1)) --metrics-port=$((PORT_BASE + 0 + 2)) &
wait
