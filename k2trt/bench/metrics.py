"""From per-request records to the numbers of one concurrency level: TTFT, ITL, latency, throughput.

Definitions (per request, then p50/p90/p99 across the level's requests) are those of
:mod:`k2trt.bench` (GenAI-Perf's and AIPerf's): TTFT = first token - send; ITL = (last token - first token) /
(tokens - 1); request latency = last response - send; tokens/s per user = tokens / request latency. Level
throughput = all output tokens (or requests) / (last response - first send). Percentiles interpolate linearly
between order statistics (numpy's default), so p50 of [1, 2] is 1.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from k2trt.bench.records import LevelRun, RequestRecord

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    """Distribution of one per-request metric over a level's requests."""

    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        vals = [float(v) for v in values]
        if not vals:
            nan = math.nan
            return cls(nan, nan, nan, nan, nan, nan, 0)
        return cls(sum(vals) / len(vals), percentile(vals, 50), percentile(vals, 90), percentile(vals, 99),
                   min(vals), max(vals), len(vals))

    @classmethod
    def from_json(cls, d: dict) -> Stats:
        return cls(**{k: (math.nan if d.get(k) is None else d[k]) for k in cls.__dataclass_fields__})

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class LevelSummary:
    """What one concurrency level measured."""

    concurrency: int
    requests: int
    """Measured requests that completed with tokens (warm-up excluded)."""
    errors: int
    warmup: int
    duration_s: float
    """Last response - first send, over the measured requests."""
    input_tokens: Stats
    output_tokens: Stats
    ttft_ms: Stats
    itl_ms: Stats
    latency_ms: Stats
    tokens_per_s_per_user: Stats
    output_tokens_per_s: float
    """All output tokens / duration."""
    requests_per_s: float

    def to_json(self) -> dict:
        out = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            out[k] = v.to_json() if isinstance(v, Stats) else v
        return out

    @classmethod
    def from_json(cls, d: dict) -> LevelSummary:
        kw = {}
        for k in cls.__dataclass_fields__:
            v = d[k]
            kw[k] = Stats.from_json(v) if isinstance(v, dict) else v
        return cls(**kw)


def summarize(run: LevelRun) -> LevelSummary:
    """The level's summary from its measured records (those with an error count as errors, not in the stats)."""
    good = [r for r in run.records if r.ok]
    errors = len(run.records) - len(good)
    if good:
        t0 = min(r.start_ns for r in good)
        t1 = max(r.end_ns for r in good)
        duration = (t1 - t0) / 1e9
    else:
        duration = 0.0
    tokens = sum(r.output_tokens for r in good)
    return LevelSummary(
        concurrency=run.concurrency,
        requests=len(good),
        errors=errors,
        warmup=run.warmup,
        duration_s=duration,
        input_tokens=Stats.of([r.input_tokens for r in good if r.input_tokens is not None]),
        output_tokens=Stats.of([r.output_tokens for r in good]),
        ttft_ms=Stats.of([r.ttft_ns / 1e6 for r in good]),
        itl_ms=Stats.of([r.itl_ns / 1e6 for r in good if r.itl_ns is not None]),
        latency_ms=Stats.of([r.latency_ns / 1e6 for r in good]),
        tokens_per_s_per_user=Stats.of([r.output_tokens / (r.latency_ns / 1e9) for r in good if r.latency_ns > 0]),
        output_tokens_per_s=tokens / duration if duration > 0 else math.nan,
        requests_per_s=len(good) / duration if duration > 0 else math.nan,
    )


def drop_warmup(records: Sequence[RequestRecord], warmup: int) -> list[RequestRecord]:
    """The records after the first ``warmup`` sent (by send time): warm-up requests are sent first."""
    if warmup <= 0:
        return list(records)
    return sorted(records, key=lambda r: r.start_ns)[warmup:]
