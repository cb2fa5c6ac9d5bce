"""Opening an engine dir on a rank, and generating with it for any world size.

World size 1 runs in this process. Larger worlds run one process per rank: launched here
(:func:`k2trt.runtime.spawn.run_ranks`) or by ``torchrun`` / ``mpirun`` (:func:`rank_main` joins the group).
"""

from __future__ import annotations

from pathlib import Path

import torch

from k2trt.runtime.cache import PagedMLACache
from k2trt.runtime.comm import Comm, init_distributed
from k2trt.runtime.engine import Engine, Request, worker_loop
from k2trt.runtime.engine_dir import RuntimeConfig, read_runtime_config
from k2trt.runtime.model import RankModel
from k2trt.runtime.weights import rank_weights, read_converted


def open_rank(engine_dir: str | Path, rank: int, comm: Comm) -> tuple[RankModel, PagedMLACache, RuntimeConfig]:
    """This rank's model slice and cache, as the engine dir's runtime.json sizes them."""
    rc = read_runtime_config(engine_dir)
    cfg, mapping, weights = read_converted(engine_dir)
    impl = rc.impl
    if impl == "auto":
        impl = "kernels" if torch.cuda.is_available() and weights == "fp8_block" else "torch"
    model = RankModel(cfg, mapping, rank, rank_weights(engine_dir, rank, dtype=rc.torch_dtype),
                      dtype=rc.torch_dtype, comm=comm, impl=impl)
    cache = PagedMLACache(cfg, num_blocks=rc.num_blocks, block_size=rc.block_size, layers=model.layers,
                          dtype=rc.torch_dtype)
    return model, cache, rc


def make_engine(model: RankModel, cache: PagedMLACache, rc: RuntimeConfig, comm: Comm, decode=None) -> Engine:
    return Engine(model, cache, max_batch_size=rc.max_batch_size, max_num_tokens=rc.max_num_tokens,
                  max_seq_len=rc.max_seq_len, comm=comm, decode=decode)


def world_size(engine_dir: str | Path) -> int:
    return read_converted(engine_dir)[1].world_size


def rank_main(rank: int, engine_dir: str, requests: list[Request] | None, prompts: list[list[int]] | None = None,
              threads: int = 1):
    """One rank of a multi-process run: rank 0 schedules and returns the result, the others follow.

    With ``requests``: generated ids per request id. With ``prompts``: the logits after each prompt.
    """
    torch.set_num_threads(threads)
    _, mapping, _ = read_converted(engine_dir)
    comm = init_distributed(mapping)
    try:
        model, cache, rc = open_rank(engine_dir, rank, comm)
        if rank != 0:
            worker_loop(model, cache, comm)
            return None
        engine = make_engine(model, cache, rc, comm)
        try:
            return engine.generate(requests) if prompts is None else engine.prefill_logits(prompts)
        finally:
            engine.shutdown()
    finally:
        comm.close()


def generate(engine_dir: str | Path, requests: list[Request]) -> dict[int, list[int]]:
    """Generated ids per request id, running the engine's world size of processes as needed."""
    n = world_size(engine_dir)
    if n == 1:
        model, cache, rc = open_rank(engine_dir, 0, Comm())
        return make_engine(model, cache, rc, Comm()).generate(requests)
    from k2trt.runtime.spawn import run_ranks

    return run_ranks(n, rank_main, str(engine_dir), requests)


def prefill_logits(engine_dir: str | Path, prompts: list[list[int]]) -> torch.Tensor:
    """float32 logits ``[len(prompts), vocab]`` after each prompt, at the engine's world size."""
    n = world_size(engine_dir)
    if n == 1:
        model, cache, rc = open_rank(engine_dir, 0, Comm())
        return make_engine(model, cache, rc, Comm()).prefill_logits(prompts)
    from k2trt.runtime.spawn import run_ranks

    return run_ranks(n, rank_main, str(engine_dir), None, prompts)


def generate_cli(*, engine_dir: Path, prompt_ids: list[int] | None, prompt: str | None, max_new_tokens: int,
                 temperature: float, top_k: int, top_p: float, seed: int | None):
    """What ``k2trt generate ENGINE_DIR`` does: one request, stop on the tokenizer's stop ids."""
    from k2trt.model import Generation
    from k2trt.runtime.sampling import SamplingParams
    from k2trt.tokenizer import K2Tokenizer

    tok = K2Tokenizer.from_dir(engine_dir)
    if prompt is not None:
        prompt_ids = tok.encode(prompt, allow_special=True)
    req = Request(0, prompt_ids, max_new_tokens, SamplingParams(temperature, top_k, top_p, seed),
                  stop_token_ids=tuple(tok.stop_ids))
    ids = generate(engine_dir, [req])[0]
    return Generation(ids, torch.empty(0), tok.decode(ids))


def follow(rank: int, engine_dir: str, threads: int = 1) -> None:
    """A rank other than 0 of a long-running service: follow rank 0's steps until it shuts down."""
    torch.set_num_threads(threads)
    _, mapping, _ = read_converted(engine_dir)
    comm = init_distributed(mapping)
    try:
        model, cache, _ = open_rank(engine_dir, rank, comm)
        worker_loop(model, cache, comm)
    finally:
        comm.close()
