"""Multi-node launch scripts (mpirun and Slurm) generated from a build config's plan.

Each replica of the plan is one MPI world of ``tp x pp`` ranks placed on consecutive GPUs: replica ``r`` owns GPUs
``[r*W, (r+1)*W)`` of the topology, node by node. Per backend, what every MPI world runs:

- ``llmapi``: ``trtllm-llmapi-launch tritonserver --model-repository ...``. The llmapi model spawns its workers
  through MPI; ``trtllm-llmapi-launch`` is the wrapper that makes rank 0 the server and the other ranks workers
  (plain ``tritonserver`` under MPI fails with MPI_ERR_SPAWN). TensorRT-LLM's trtllm-serve docs launch a two-node
  DeepSeek-V3 the same way under Slurm: ``srun ... --ntasks 16 --ntasks-per-node=8 --mpi=pmix ...
  trtllm-llmapi-launch trtllm-serve ...``.
- ``trtllm``: one ``tritonserver`` per rank in an MPMD mpirun (the tensorrtllm backend's launch_triton_server.py
  pattern): each rank gets its own Python-backend shared-memory prefix; ranks other than 0 load only the
  ``tensorrt_llm`` model.
- ``torch``: k2trt's runtime; world size 1 runs a plain ``tritonserver`` (multi-process torch launch belongs to the
  runtime and is not generated here).

The scripts are pure text (:func:`mpirun_script`, :func:`slurm_script`); ``scripts/gen_build_configs.py`` writes
them to ``scripts/launch/`` for every standard build.
"""

from __future__ import annotations

from dataclasses import dataclass

from k2trt.build_config import BuildConfig
from k2trt.errors import K2Error
from k2trt.trtllm_build import CONTAINER


@dataclass(frozen=True)
class Placement:
    """Where one replica's ranks run: ``(node index, first local GPU, GPUs)`` per node, in rank order."""

    replica: int
    slots: tuple[tuple[int, int, int], ...]
    port_base_offset: int

    @property
    def nodes(self) -> list[int]:
        return [n for n, _, _ in self.slots]

    @property
    def ranks(self) -> int:
        return sum(g for _, _, g in self.slots)


def placement(bc: BuildConfig) -> list[Placement]:
    """Consecutive-GPU placement of every replica; replicas sharing a node get distinct ports."""
    gpn = bc.topology.device.gpus_per_node
    w = bc.world_size
    out = []
    shared = w < gpn
    for r in range(bc.replicas):
        start, end = r * w, (r + 1) * w
        slots = []
        g = start
        while g < end:
            node, local = divmod(g, gpn)
            take = min(gpn - local, end - g)
            slots.append((node, local, take))
            g += take
        out.append(Placement(r, tuple(slots), 10 * r if shared else 0))
    return out


def _header(bc: BuildConfig, kind: str, usage: str) -> list[str]:
    m = bc.mapping
    return [
        "#!/usr/bin/env bash",
        f"# {kind} launch of {bc.name}: {bc.topology.count} x {bc.topology.device.display}, {bc.replicas} replica(s) "
        f"of {bc.world_size} rank(s) (tp {m.tp}, pp {m.pp}, moe_ep {m.moe_ep}, moe_tp {m.moe_tp}, attention DP "
        f"{'on' if bc.attention_dp else 'off'}), backend {bc.backend}.",
        f"# Generated from build_configs/{bc.name}.yaml by scripts/gen_build_configs.py (k2trt.launch); do not edit.",
        f"# Usage: {usage}",
        "set -euo pipefail",
    ]


def _server_args(port: str) -> str:
    return (f'--model-repository="$MODEL_REPO" --http-port=$(({port})) --grpc-port=$(({port} + 1)) '
            f'--metrics-port=$(({port} + 2))')


def _rank_command(bc: BuildConfig, port: str) -> str:
    if bc.backend == "llmapi":
        return f"trtllm-llmapi-launch tritonserver {_server_args(port)}"
    if bc.backend == "torch":
        if bc.world_size > 1:
            raise K2Error(f"{bc.name}: the torch backend's multi-process launch is the runtime's, not generated here")
        return f"tritonserver {_server_args(port)}"
    raise AssertionError(bc.backend)


def mpirun_script(bc: BuildConfig) -> str:
    """Bash script that starts every replica with mpirun (OpenMPI) from one head node over ssh."""
    nodes = bc.topology.nodes
    gpn = bc.topology.device.gpus_per_node
    hosts_eg = "host0" if nodes == 1 else f"host0,...,host{nodes - 1}"
    lines = _header(bc, "mpirun", f"HOSTS={hosts_eg} MODEL_REPO=/path/to/triton_repo "
                                  f"scripts/launch/{bc.name}.mpirun.sh  (inside {CONTAINER} on every host)")
    lines += [
        f': "${{HOSTS:?comma-separated hostnames of the {nodes} node(s), {gpn} GPU(s) each, in rank order}}"',
        ': "${MODEL_REPO:?the Triton model repository written by k2trt repo}"',
        "PORT_BASE=${PORT_BASE:-8000}",
        'IFS=, read -r -a H <<< "$HOSTS"',
        f'if [ "${{#H[@]}}" -ne {nodes} ]; then echo "HOSTS must name {nodes} host(s), got ${{#H[@]}}" >&2; exit 1; fi',
        "MPI_ARGS=(--allow-run-as-root --bind-to none -x PATH -x LD_LIBRARY_PATH -x HF_HOME)",
    ]
    for p in placement(bc):
        hosts = ",".join(f"${{H[{n}]}}:{g}" for n, _, g in p.slots)
        port = f"PORT_BASE + {p.port_base_offset}"
        lines.append(f"# replica {p.replica}: node(s) {', '.join(str(n) for n in p.nodes)}")
        visible = ""
        if p.slots[0][2] < gpn:
            n, first, g = p.slots[0]
            visible = f" -x CUDA_VISIBLE_DEVICES={','.join(str(i) for i in range(first, first + g))}"
        if bc.backend == "trtllm":
            segs = []
            for rank in range(p.ranks):
                extra = "" if rank == 0 else " --model-control-mode=explicit --load-model=tensorrt_llm"
                segs.append(f"-np 1 tritonserver {_server_args(port)} --disable-auto-complete-config "
                            f"--backend-config=python,shm-region-prefix-name=rank{rank}_{extra}")
            lines.append(f'mpirun "${{MPI_ARGS[@]}}" -H "{hosts}"{visible} \\\n  ' + " \\\n  : ".join(segs) + " &")
        else:
            lines.append(f'mpirun "${{MPI_ARGS[@]}}" -np {p.ranks} -H "{hosts}"{visible} \\\n  '
                         f"{_rank_command(bc, port)} &")
    lines.append("wait")
    return "\n".join(lines) + "\n"


def slurm_script(bc: BuildConfig) -> str:
    """sbatch script: one ``srun --mpi=pmix`` per replica on its nodes, in a pyxis container."""
    nodes = bc.topology.nodes
    gpn = bc.topology.device.gpus_per_node
    lines = _header(bc, "Slurm", f"CONTAINER_IMAGE={CONTAINER} MODEL_REPO=/path/to/triton_repo "
                                 f"sbatch scripts/launch/{bc.name}.slurm.sh")
    lines[1:1] = [f"#SBATCH --job-name=k2trt-{bc.name}", f"#SBATCH --nodes={nodes}",
                  f"#SBATCH --ntasks-per-node={gpn}", f"#SBATCH --gpus-per-node={gpn}", "#SBATCH --exclusive"]
    lines += [
        f': "${{CONTAINER_IMAGE:?the serving container, e.g. {CONTAINER}}}"',
        ': "${MODEL_REPO:?the Triton model repository written by k2trt repo}"',
        'MOUNTS=${MOUNTS:-"$MODEL_REPO:$MODEL_REPO"}',
        "export MODEL_REPO PORT_BASE=${PORT_BASE:-8000}  # srun passes the environment to every task",
        'SRUN_ARGS=(--mpi=pmix --container-image="$CONTAINER_IMAGE" --container-mounts="$MOUNTS")',
    ]
    for p in placement(bc):
        port = f"PORT_BASE + {p.port_base_offset}"
        n_nodes = len(p.slots)
        per_node = p.slots[0][2]
        env = ""
        if per_node < gpn:
            _, first, g = p.slots[0]
            env = f"CUDA_VISIBLE_DEVICES={','.join(str(i) for i in range(first, first + g))} "
        lines.append(f"# replica {p.replica}: node(s) {', '.join(str(n) for n in p.nodes)}")
        if bc.backend == "trtllm":
            cmd = (f"bash -c 'tritonserver {_server_args(port)} --disable-auto-complete-config "
                   f"--backend-config=python,shm-region-prefix-name=rank${{SLURM_PROCID}}_ "
                   f"$([ \"$SLURM_PROCID\" = 0 ] || echo --model-control-mode=explicit --load-model=tensorrt_llm)'")
        else:
            cmd = _rank_command(bc, port)
        lines.append(f'{env}srun "${{SRUN_ARGS[@]}}" --nodes={n_nodes} --ntasks={p.ranks} '
                     f"--ntasks-per-node={per_node} --relative={p.slots[0][0]} \\\n  {cmd} &")
    lines.append("wait")
    return "\n".join(lines) + "\n"


def script_names(bc: BuildConfig) -> dict[str, str]:
    """File name -> text of the launch scripts of ``bc``."""
    return {f"{bc.name}.mpirun.sh": mpirun_script(bc), f"{bc.name}.slurm.sh": slurm_script(bc)}

