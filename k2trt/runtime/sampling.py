"""Per-request sampling: greedy, temperature, top-k, top-p, seeded and reproducible whatever the batch.

Each request draws from its own ``torch.Generator`` seeded by its ``seed``, one draw per generated token, so a
request samples the same tokens alone or among 15 others (the batch only changes which rows are computed
together, not the random stream a row consumes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from k2trt.errors import K2Error


@dataclass(frozen=True)
class SamplingParams:
    """TensorRT-LLM's sampling inputs: temperature 0 (or top_k 1) means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    seed: int | None = None
    min_tokens: int = 0  # stop ids are masked out until this many tokens exist

    def validate(self) -> None:
        if self.temperature < 0:
            raise K2Error(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise K2Error(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise K2Error(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_tokens < 0:
            raise K2Error(f"min_tokens must be >= 0, got {self.min_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def make_generator(params: SamplingParams, request_id: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(params.seed if params.seed is not None else request_id)
    return g


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from float32 ``logits [V]``."""
    if params.greedy:
        return int(logits.argmax())
    x = logits.float() / params.temperature
    if params.top_k and params.top_k < x.numel():
        kth = x.topk(params.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always survives)
        drop = sorted_p.cumsum(0) - sorted_p >= params.top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
