"""Collectives of the runtime over ``torch.distributed`` (gloo on CPU, nccl on GPU), or none in one process.

Groups follow :class:`k2trt.mapping.Mapping`: the TP group of a rank is the ``tp`` consecutive ranks of its
pipeline stage; stage ``s`` hands its hidden states to the same TP rank of stage ``s + 1``.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from k2trt.mapping import Mapping


class Comm:
    """Single-process: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_reduce_tp(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather_tp(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the ranks' ``x [..., n]`` along the last dim, in TP-rank order."""
        return x

    def send_next_stage(self, x: torch.Tensor) -> None:
        raise AssertionError("single process has no next stage")

    def recv_prev_stage(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        raise AssertionError("single process has no previous stage")

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def close(self) -> None:
        pass


class DistComm(Comm):
    """Collectives over an initialised default process group."""

    def __init__(self, mapping: Mapping):
        self.mapping = mapping
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if self.world_size != mapping.world_size:
            raise RuntimeError(f"world size {self.world_size} != mapping's {mapping.world_size}")
        self.tp_group = None
        for stage in range(mapping.pp):  # every rank must create every group, in the same order
            ranks = list(range(stage * mapping.tp, (stage + 1) * mapping.tp))
            g = dist.new_group(ranks)
            if self.rank in ranks:
                self.tp_group = g

    def all_reduce_tp(self, x: torch.Tensor) -> torch.Tensor:
        if self.mapping.tp > 1:
            dist.all_reduce(x, group=self.tp_group)
        return x

    def all_gather_tp(self, x: torch.Tensor) -> torch.Tensor:
        if self.mapping.tp == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.mapping.tp)]
        dist.all_gather(parts, x.contiguous(), group=self.tp_group)
        return torch.cat(parts, dim=-1)

    def send_next_stage(self, x: torch.Tensor) -> None:
        dist.send(x.contiguous(), self.rank + self.mapping.tp)

    def recv_prev_stage(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        x = torch.empty(shape, dtype=dtype)
        dist.recv(x, self.rank - self.mapping.tp)
        return x

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(mapping: Mapping) -> Comm:
    """Join the process group that ``torchrun`` (or mpirun, via OMPI_COMM_WORLD_*) describes, or run alone."""
    if mapping.world_size == 1:
        return Comm()
    env = os.environ
    if "RANK" not in env and "OMPI_COMM_WORLD_RANK" in env:  # under mpirun
        env["RANK"] = env["OMPI_COMM_WORLD_RANK"]
        env["WORLD_SIZE"] = env["OMPI_COMM_WORLD_SIZE"]
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", "29517")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        # A rank that dies leaves the others blocked in a collective: fail after this long instead of 30 min.
        timeout = datetime.timedelta(seconds=float(env.get("K2TRT_DIST_TIMEOUT", "300")))
        dist.init_process_group(backend, timeout=timeout)
    return DistComm(mapping)
