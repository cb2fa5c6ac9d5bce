"""Per-request timing records: the one shape every driver (perf_analyzer, the OpenAI driver, the in-process
runtime) produces and every metric is computed from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it. Times are nanoseconds on one clock (perf_analyzer: system clock since
    the epoch; the Python drivers: ``time.time_ns``).

    ``responses``: ``(arrival_ns, tokens)`` per streamed response, in arrival order; ``tokens`` is how many
    generated token ids that response carried (0 for a response that only closes the stream).
    """

    start_ns: int
    responses: tuple[tuple[int, int], ...]
    input_tokens: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.output_tokens > 0

    @property
    def output_tokens(self) -> int:
        return sum(n for _, n in self.responses)

    @property
    def end_ns(self) -> int:
        """Arrival of the last response (the request is complete for the client)."""
        return self.responses[-1][0] if self.responses else self.start_ns

    @property
    def first_token_ns(self) -> int | None:
        return next((t for t, n in self.responses if n > 0), None)

    @property
    def last_token_ns(self) -> int | None:
        return next((t for t, n in reversed(self.responses) if n > 0), None)

    @property
    def ttft_ns(self) -> int | None:
        t = self.first_token_ns
        return None if t is None else t - self.start_ns

    @property
    def latency_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def itl_ns(self) -> float | None:
        """Mean gap between tokens: (last token - first token) / (tokens - 1); None below two tokens."""
        n = self.output_tokens
        if n < 2:
            return None
        return (self.last_token_ns - self.first_token_ns) / (n - 1)

    @property
    def tokens_per_response(self) -> list[int]:
        return [n for _, n in self.responses]

    def to_json(self) -> dict:
        return {"start_ns": self.start_ns, "responses": [list(r) for r in self.responses],
                "input_tokens": self.input_tokens, "error": self.error}

    @classmethod
    def from_json(cls, d: dict) -> RequestRecord:
        return cls(int(d["start_ns"]), tuple((int(t), int(n)) for t, n in d["responses"]),
                   d.get("input_tokens"), d.get("error"))


@dataclass
class LevelRun:
    """The requests of one concurrency level, warm-up already removed (``warmup`` says how many were)."""

    concurrency: int
    records: list[RequestRecord]
    warmup: int = 0
    server: dict = field(default_factory=dict)
    """What Triton's /metrics said about this level (:func:`k2trt.bench.server_metrics.summarize`)."""
