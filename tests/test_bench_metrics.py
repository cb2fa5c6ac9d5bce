"""k2trt.bench.metrics and records: the definitions of TTFT, ITL, latency and throughput, on hand-made records."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from k2trt.bench.metrics import LevelSummary, Stats, drop_warmup, percentile, summarize
from k2trt.bench.records import LevelRun, RequestRecord

MS = 1_000_000  # ns


def rec(start_ms: float, token_ms: list[float], tokens: list[int] | None = None, end_ms: float | None = None,
        **kw) -> RequestRecord:
    tokens = tokens or [1] * len(token_ms)
    responses = [(int(t * MS), n) for t, n in zip(token_ms, tokens)]
    if end_ms is not None:
        responses.append((int(end_ms * MS), 0))
    return RequestRecord(int(start_ms * MS), tuple(responses), **kw)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q):
    rng = random.Random(q)
    for n in (1, 2, 3, 7, 100):
        xs = [rng.uniform(0, 1000) for _ in range(n)]
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_percentile_edges():
    assert percentile([1, 2], 50) == 1.5
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_request_record_definitions():
    # sent at 0; tokens at 10, 15, 30 ms (the second response carries 2 tokens); stream closes at 31 ms
    r = rec(0, [10, 15, 30], tokens=[1, 2, 1], end_ms=31)
    assert r.output_tokens == 4
    assert r.ttft_ns == 10 * MS
    assert r.latency_ns == 31 * MS  # the null final response ends the request
    assert r.itl_ns == pytest.approx((30 - 10) * MS / 3)  # (last token - first token) / (tokens - 1)
    assert r.ok


def test_first_response_without_tokens_is_not_the_first_token():
    r = RequestRecord(0, ((5 * MS, 0), (9 * MS, 1), (12 * MS, 1)))
    assert r.ttft_ns == 9 * MS
    assert r.itl_ns == 3 * MS


def test_single_token_has_no_itl_and_empty_request_is_not_ok():
    assert rec(0, [7]).itl_ns is None
    assert not RequestRecord(0, ((3, 0),)).ok
    assert not RequestRecord(0, ()).ok
    assert not rec(0, [1, 2], error="boom").ok


def test_record_json_roundtrip():
    r = rec(1, [2, 3], tokens=[1, 2], end_ms=4, input_tokens=17)
    assert RequestRecord.from_json(r.to_json()) == r


def test_summarize_genai_perf_worked_example():
    """GenAI-Perf's own worked example (test_llm_profile_data_parser: experiment 1), in ns."""
    a = RequestRecord(1, ((3, 1), (5, 1), (8, 1)))
    b = RequestRecord(2, ((4, 1), (7, 2), (11, 3)))
    s = summarize(LevelRun(10, [a, b]))
    assert s.ttft_ms.p50 == pytest.approx(2 / 1e6)
    assert [a.itl_ns, b.itl_ns] == [pytest.approx(2.5), pytest.approx(1.4)]
    assert s.output_tokens_per_s == pytest.approx(9 / 10e-9)  # (3 + 6) tokens / (11 - 1) ns
    assert s.tokens_per_s_per_user.mean == pytest.approx((3 / 7e-9 + 6 / 9e-9) / 2)
    assert s.output_tokens.mean == 4.5


def test_summarize_throughput_and_errors():
    good = [rec(i * 100, [i * 100 + 20 + k * 10 for k in range(8)]) for i in range(10)]
    bad = rec(5, [6], error="HTTP 500")
    s = summarize(LevelRun(4, good + [bad], warmup=2))
    assert (s.requests, s.errors, s.warmup) == (10, 1, 2)
    # first send 0 ms, last token 900 + 20 + 70 = 990 ms
    assert s.duration_s == pytest.approx(0.990)
    assert s.output_tokens_per_s == pytest.approx(80 / 0.990)
    assert s.requests_per_s == pytest.approx(10 / 0.990)
    assert s.ttft_ms.p50 == pytest.approx(20)
    assert s.itl_ms.p99 == pytest.approx(10)
    assert s.latency_ms.max == pytest.approx(90)
    assert s.output_tokens.min == s.output_tokens.max == 8


def test_summarize_no_good_requests():
    s = summarize(LevelRun(1, [rec(0, [1], error="x")]))
    assert s.requests == 0 and s.errors == 1
    assert math.isnan(s.output_tokens_per_s) and math.isnan(s.ttft_ms.p50)


def test_level_summary_json_roundtrip_keeps_nan_as_null():
    s = summarize(LevelRun(2, [rec(0, [5])]))  # one token: no ITL
    d = s.to_json()
    assert d["itl_ms"]["p50"] is None
    back = LevelSummary.from_json(d)
    assert back.concurrency == 2 and math.isnan(back.itl_ms.p50) and back.ttft_ms == s.ttft_ms


def test_drop_warmup_removes_the_first_sent():
    rs = [rec(t, [t + 1]) for t in (30, 10, 20, 40)]
    kept = drop_warmup(rs, 2)
    assert sorted(r.start_ns for r in kept) == [30 * MS, 40 * MS]
    assert drop_warmup(rs, 0) == rs


def test_stats_of_empty_is_nan():
    st = Stats.of([])
    assert st.n == 0 and math.isnan(st.mean)
