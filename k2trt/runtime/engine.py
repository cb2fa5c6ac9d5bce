"""Continuous (in-flight) batching over the paged MLA cache.

Each :meth:`Engine.step` builds one batch: every running sequence's next token (decode) plus prefill chunks of
admitted sequences, up to ``max_num_tokens`` tokens; requests join and leave between steps. A request is
admitted when the free cache blocks cover its prompt plus ``max_tokens`` (reserved up front, so a running
request never runs out of cache and nothing is preempted); a request that could never fit is refused at
submit with the numbers; cancelling frees its blocks at once.

Multi-process (SPMD): rank 0 owns the requests and the schedule; each step it broadcasts the batch plan, every
rank runs its share of the model, the last pipeline stage returns logits, and rank 0 samples.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from k2trt.errors import K2Error
from k2trt.runtime.cache import PagedMLACache
from k2trt.runtime.comm import Comm
from k2trt.runtime.model import RankModel, SeqChunk
from k2trt.runtime.sampling import SamplingParams, make_generator, sample


@dataclass
class Request:
    """One generation request, as TensorRT-LLM's executor takes it (ids in, ids out)."""

    request_id: int
    input_ids: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_token_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()  # multi-token stops (tensorrtllm's stop_words_list)
    stop_strings: tuple[str, ...] = ()  # need the engine's ``decode``

    def validate(self, vocab_size: int) -> None:
        if not self.input_ids:
            raise K2Error(f"request {self.request_id}: input_ids is empty")
        bad = [t for t in self.input_ids if not 0 <= t < vocab_size]
        if bad:
            raise K2Error(f"request {self.request_id}: input ids {bad[:5]} outside the vocabulary [0, {vocab_size})")
        if self.max_tokens < 1:
            raise K2Error(f"request {self.request_id}: max_tokens must be >= 1, got {self.max_tokens}")
        self.sampling.validate()


@dataclass
class Output:
    """What one step produced for one request."""

    request_id: int
    new_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"


@dataclass(frozen=True)
class EngineLimits:
    """What decides whether a request can ever run on an engine: fixed at start-up, small, picklable (a frontend
    in another process checks requests with it before they travel)."""

    vocab_size: int
    max_seq_len: int
    block_size: int
    num_blocks: int
    decodes: bool  # the engine has a tokenizer (stop strings)

    def check(self, req: Request) -> None:
        req.validate(self.vocab_size)
        total = len(req.input_ids) + req.max_tokens
        if total > self.max_seq_len:
            raise K2Error(
                f"request {req.request_id}: {len(req.input_ids)} input + {req.max_tokens} max tokens = {total} "
                f"exceeds the engine's max sequence length {self.max_seq_len}"
            )
        need = math.ceil(total / self.block_size)
        if need > self.num_blocks:
            raise K2Error(f"request {req.request_id}: needs {need} cache blocks, the cache has {self.num_blocks}")
        if req.stop_strings and not self.decodes:
            raise K2Error(f"request {req.request_id}: stop strings need an engine with a tokenizer")


@dataclass
class _Seq:
    req: Request
    table: list[int]
    generator: torch.Generator
    tokens: list[int]  # prompt + generated
    prefilled: int = 0  # tokens already written to the cache
    generated: int = 0

    @property
    def done_prefill(self) -> bool:
        return self.prefilled >= len(self.req.input_ids)


@dataclass
class StepPlan:
    """The batch every rank runs: tokens, positions and per-sequence chunks (picklable)."""

    tokens: list[int]
    positions: list[int]
    chunks: list[SeqChunk]


class Engine:
    """Rank 0's scheduler; ``model`` is rank 0's :class:`RankModel`, ``cache`` its :class:`PagedMLACache`."""

    def __init__(self, model: RankModel, cache: PagedMLACache, *, max_batch_size: int = 64,
                 max_num_tokens: int = 2048, max_seq_len: int | None = None, comm: Comm | None = None,
                 decode: Callable[[list[int]], str] | None = None):
        if max_batch_size < 1 or max_num_tokens < 1:
            raise K2Error("max_batch_size and max_num_tokens must be >= 1")
        self.model, self.cache = model, cache
        self.max_batch_size, self.max_num_tokens = max_batch_size, max_num_tokens
        self.max_seq_len = max_seq_len or cache.capacity_tokens
        self.comm = comm or Comm()
        self.decode = decode
        self.waiting: deque[Request] = deque()
        self.running: dict[int, _Seq] = {}
        self._cancelled: set[int] = set()

    # ------------------------------------------------------------------------------------------ requests

    def submit(self, req: Request) -> None:
        """Queue a request; refuse at once one that can never run."""
        self.check(req)
        if req.request_id in self.running or any(r.request_id == req.request_id for r in self.waiting):
            raise K2Error(f"request id {req.request_id} is already in flight")
        self.waiting.append(req)

    @property
    def limits(self) -> EngineLimits:
        return EngineLimits(self.model.cfg.vocab_size, self.max_seq_len, self.cache.block_size,
                            self.cache.allocator.num_blocks, self.decode is not None)

    def check(self, req: Request) -> None:
        """K2Error if ``req`` can never run on this engine. Reads only the engine's fixed configuration, so any
        thread may call it while another steps the engine."""
        self.limits.check(req)

    def cancel(self, request_id: int) -> None:
        """Stop a request; its blocks are free before the next step."""
        seq = self.running.pop(request_id, None)
        if seq is not None:
            self.cache.allocator.release(seq.table)
            self._cancelled.add(request_id)
            return
        for r in list(self.waiting):
            if r.request_id == request_id:
                self.waiting.remove(r)
                self._cancelled.add(request_id)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._cancelled)

    # -------------------------------------------------------------------------------------------- steps

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_batch_size:
            req = self.waiting[0]
            need = self.cache.blocks_for(len(req.input_ids) + req.max_tokens)
            if need > self.cache.allocator.free:
                break  # FIFO: later requests wait behind it rather than starve it
            self.waiting.popleft()
            self.running[req.request_id] = _Seq(req, self.cache.allocator.allocate(need),
                                                make_generator(req.sampling, req.request_id), list(req.input_ids))

    def _plan(self) -> tuple[StepPlan, list[_Seq | None]]:
        tokens: list[int] = []
        positions: list[int] = []
        chunks: list[SeqChunk] = []
        owners: list[_Seq | None] = []  # the sequence that samples from each chunk's logits, None mid-prefill
        budget = self.max_num_tokens
        # decodes first (one token each), then prefill chunks in arrival order
        order = sorted(self.running.values(), key=lambda s: not s.done_prefill)
        for seq in order:
            if budget <= 0:
                break
            start = seq.prefilled
            n = min(len(seq.tokens) - start, budget)
            tokens.extend(seq.tokens[start : start + n])
            positions.extend(range(start, start + n))
            chunks.append(SeqChunk(seq.table, start, n))
            seq.prefilled += n
            budget -= n
            owners.append(seq if seq.prefilled == len(seq.tokens) else None)
        return StepPlan(tokens, positions, chunks), owners

    def step(self) -> list[Output]:
        """Run one batch; return the new tokens (and endings) of every request that got any."""
        outputs = [Output(rid, [], True, "cancelled") for rid in sorted(self._cancelled)]
        self._cancelled.clear()
        self._admit()
        if not self.running:
            return outputs
        plan, owners = self._plan()
        _, logits = run_plan(self.model, self.cache, self.comm, plan)  # [C, V] on rank 0
        for row, seq in enumerate(owners):
            if seq is None:
                continue
            out = self._advance(seq, logits[row])
            outputs.append(out)
            if out.finished:
                self.cache.allocator.release(self.running.pop(seq.req.request_id).table)
        return outputs

    def _advance(self, seq: _Seq, logits: torch.Tensor) -> Output:
        req = seq.req
        stops = set(req.stop_token_ids)
        if seq.generated < req.sampling.min_tokens and stops:
            logits = logits.clone()
            logits[list(stops)] = float("-inf")
        tok = sample(logits, req.sampling, seq.generator)
        seq.tokens.append(tok)
        seq.generated += 1
        out = Output(req.request_id, [tok])
        gen = seq.tokens[len(req.input_ids) :]
        if seq.generated >= req.sampling.min_tokens and (
            tok in stops
            or any(len(s) <= len(gen) and tuple(gen[-len(s) :]) == s for s in req.stop_sequences)
            or (req.stop_strings and any(s in self.decode(gen) for s in req.stop_strings))
        ):
            out.finished, out.finish_reason = True, "stop"
        elif seq.generated >= req.max_tokens:
            out.finished, out.finish_reason = True, "length"
        return out

    def run(self, requests: list[Request] | None = None) -> Iterator[Output]:
        """Submit ``requests`` and step until nothing is left, yielding every output."""
        for r in requests or []:
            self.submit(r)
        while self.has_work:
            yield from self.step()

    def generate(self, requests: list[Request]) -> dict[int, list[int]]:
        """All generated ids per request id (a convenience over :meth:`run`)."""
        result: dict[int, list[int]] = {r.request_id: [] for r in requests}
        for out in self.run(requests):  # also collects requests submitted earlier
            result.setdefault(out.request_id, []).extend(out.new_ids)
        return result

    def prefill_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        """float32 logits ``[len(prompts), vocab]`` after each prompt, in one batch (for verification)."""
        if self.running or self.waiting:
            raise K2Error("prefill_logits needs an idle engine")
        tables = [self.cache.allocator.allocate(self.cache.blocks_for(len(p))) for p in prompts]
        try:
            plan = StepPlan([t for p in prompts for t in p], [i for p in prompts for i in range(len(p))],
                            [SeqChunk(tb, 0, len(p)) for tb, p in zip(tables, prompts)])
            return run_plan(self.model, self.cache, self.comm, plan)[1]
        finally:
            for tb in tables:
                self.cache.allocator.release(tb)

    def shutdown(self) -> None:
        """Release the worker ranks (multi-process)."""
        if self.comm.world_size > 1:
            self.comm.broadcast_object(None)


def run_plan(model: RankModel, cache: PagedMLACache, comm: Comm,
             plan: StepPlan | None) -> tuple[bool, torch.Tensor | None]:
    """One step on this rank: (False, None) once rank 0 broadcasts the end, else (True, logits on rank 0).

    Rank 0 passes the plan (broadcast to the others) and gets the logits back.
    """
    if comm.world_size > 1:
        plan = comm.broadcast_object(plan)
        if plan is None:
            return False, None
    tokens = torch.tensor(plan.tokens, dtype=torch.long)
    positions = torch.tensor(plan.positions, dtype=torch.long)
    hidden = None
    if not model.first_stage:
        hidden = comm.recv_prev_stage((len(plan.tokens), model.cfg.hidden_size), model.dtype)
    out = model.forward(tokens, positions, plan.chunks, cache, hidden)
    if not model.last_stage:
        comm.send_next_stage(out)
        out = None
    # The last stage's first rank hands the logits to rank 0 (which samples) when they differ.
    m = model.mapping
    last_first = (m.pp - 1) * m.tp
    if m.pp > 1:
        if comm.rank == last_first:
            torch.distributed.send(out.contiguous(), 0)
        if comm.rank == 0:
            out = torch.empty(len(plan.chunks), model.cfg.vocab_size, dtype=torch.float32)
            torch.distributed.recv(out, last_first)
    return True, (out if comm.rank == 0 else None)


def worker_loop(model: RankModel, cache: PagedMLACache, comm: Comm) -> None:
    """Ranks other than 0: run whatever rank 0 broadcasts until it broadcasts the end."""
    while run_plan(model, cache, comm, None)[0]:
        pass
