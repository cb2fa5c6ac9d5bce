"""Start one process per rank on this machine (what ``torchrun --nproc-per-node N`` does) and collect rank 0's result.

Used by ``k2trt generate ENGINE_DIR`` for world size > 1 and by the tests. Under an external launcher
(``torchrun``, ``mpirun``) the processes already exist: :func:`k2trt.runtime.comm.init_distributed` joins them.
"""

from __future__ import annotations

import os
import time
import pickle
import queue as queue_module
import socket
import traceback
from typing import Any, Callable

import torch.multiprocessing as mp

from k2trt.errors import K2Error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        result = fn(rank, *args)
        if rank == 0:
            # Plain pickle: torch's queue would share tensor memory, which dies with this process.
            queue.put(("ok", pickle.dumps(result)))
    except K2Error as e:
        queue.put(("error", e.problems))
        raise
    except BaseException:
        queue.put(("crash", f"rank {rank}:\n{traceback.format_exc()}"))
        raise


def run_ranks(world_size: int, fn: Callable[..., Any], *args: Any, timeout: float = 600) -> Any:
    """Run ``fn(rank, *args)`` in ``world_size`` fresh processes; return rank 0's return value.

    ``fn`` must be importable (a module-level function). A K2Error in any rank is raised here with its message.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, args, queue), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    status, payload = "crash", f"no result from the ranks within {timeout} s"
    while time.monotonic() < deadline:
        try:
            status, payload = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:  # a rank died without reporting (killed, segfault): the others would wait forever
                status, payload = "crash", f"rank {dead[0]} exited with code {procs[dead[0]].exitcode}"
                break
    for p in procs:
        p.join(timeout=30 if status == "ok" else 1)
        if p.is_alive():
            p.kill()
    if status == "error":
        raise K2Error(payload)
    if status == "crash":
        raise RuntimeError(f"a rank failed:\n{payload}")
    return pickle.loads(payload)


def _follower(rank: int, world_size: int, port: int, engine_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from k2trt.runtime.runner import follow

    follow(rank, engine_dir)


def start_followers(world_size: int, engine_dir: str) -> tuple[int, list]:
    """Start ranks 1..world_size-1 of an engine dir as local processes; the caller becomes rank 0 on ``port``."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_follower, args=(r, world_size, port, engine_dir), daemon=True)
             for r in range(1, world_size)]
    for p in procs:
        p.start()
    return port, procs
