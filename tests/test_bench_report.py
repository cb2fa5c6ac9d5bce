"""k2trt.bench.report and plots, the OpenAI driver (on a mock transport), the direct driver, and the CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
import time

import httpx
import pytest
from typer.testing import CliRunner

from k2trt.bench import direct, openai_driver
from k2trt.bench.inputs import Prompt
from k2trt.bench.metrics import summarize
from k2trt.bench.records import LevelRun, RequestRecord
from k2trt.bench.report import (
    BenchResult,
    compare,
    compare_markdown,
    load,
    render_markdown,
    to_csv,
    write,
)
from k2trt.cli import app
from k2trt.errors import K2Error

MS = 1_000_000


def _run(concurrency: int, itl_ms: float, n: int = 6, osl: int = 8) -> list[RequestRecord]:
    out = []
    for i in range(n):
        t0 = i * 50 * MS
        out.append(RequestRecord(t0, tuple((t0 + int((20 + k * itl_ms) * MS), 1) for k in range(osl)), 32))
    return out


def _result(itl_ms: float = 10.0, levels=(1, 4)) -> BenchResult:
    recs = {c: _run(c, itl_ms * c ** 0.5) for c in levels}
    summaries = [summarize(LevelRun(c, rs, warmup=2)) for c, rs in recs.items()]
    config = {"target": "ensemble", "model": "ensemble", "url": "localhost:8001", "isl": 32, "osl": 8,
              "concurrency": list(levels), "requests": 6, "warmup": 2}
    server = {1: {"models": {"ensemble": {"request_success": 8, "request_failure": 0, "exec_count": 8,
                                          "queue_duration_us": 800, "pending_request_count_max": 1}},
                  "cpu_utilization_mean": 0.5}}
    return BenchResult(config, summaries, recs, server)


def test_write_and_load_roundtrip(tmp_path):
    res = _result()
    written = write(res, tmp_path / "run")
    for key in ("json", "csv", "md"):
        assert written[key].is_file()
    pngs = sorted(p.name for p in (tmp_path / "run").glob("*.png"))
    assert pngs == ["itl.png", "throughput_latency.png", "ttft.png"]
    for p in pngs:
        assert (tmp_path / "run" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = load(tmp_path / "run")
    assert back.config == res.config
    assert [lv.to_json() for lv in back.levels] == [lv.to_json() for lv in res.levels]
    assert back.records == res.records and back.server[1] == res.server[1]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "![throughput vs latency](throughput_latency.png)" in md and "| 4 | 6 |" in md
    assert "queue ms/request" in md and "50%" in md


def test_csv_has_one_row_per_level_with_percentiles():
    rows = list(csv.DictReader(io.StringIO(to_csv(_result()))))
    assert [r["concurrency"] for r in rows] == ["1", "4"]
    assert float(rows[0]["itl_ms_p50"]) == pytest.approx(10.0)
    assert float(rows[1]["ttft_ms_p99"]) == pytest.approx(20.0)
    assert {"output_tokens_per_s", "latency_ms_p90", "tokens_per_s_per_user_p50"} <= set(rows[0])


def test_markdown_without_plots_or_server():
    res = _result()
    res.server = {}
    md = render_markdown(res)
    assert "Server" not in md and "![" not in md


def test_load_refuses_other_files(tmp_path):
    with pytest.raises(K2Error, match="no results.json"):
        load(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(K2Error, match="not a k2trt bench results.json"):
        load(tmp_path)


def test_compare_rows_and_markdown():
    a, b = _result(10.0), _result(12.0, levels=(1, 4, 8))
    rows = compare(a, b)
    itl = next(r for r in rows if r.concurrency == 1 and r.metric == "ITL p50 ms")
    assert itl.change_pct == pytest.approx(20.0)
    assert next(r for r in rows if r.concurrency == 8 and r.metric == "ITL p50 ms").a is None
    md = compare_markdown(a, b)
    assert "+20.0% (worse)" in md
    b.config["osl"] = 16
    assert "**warning**: osl differs" in compare_markdown(a, b)


def test_cli_compare_and_errors(tmp_path):
    write(_result(10.0), tmp_path / "a", plots=False)
    write(_result(9.0), tmp_path / "b", plots=False)
    r = CliRunner().invoke(app, ["bench", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                                 str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    assert "-10.0% (better)" in r.output
    assert (tmp_path / "cmp" / "compare.png").is_file() and (tmp_path / "cmp" / "compare.md").is_file()
    r = CliRunner().invoke(app, ["bench", "compare", str(tmp_path / "a"), str(tmp_path / "zzz")])
    assert r.exit_code == 1 and "no results.json" in r.output
    r = CliRunner().invoke(app, ["bench", "--isl", "8"])
    assert r.exit_code == 1 and "needs --url, --osl" in r.output
    r = CliRunner().invoke(app, ["bench", "--url", "localhost:1", "--isl", "8", "--osl", "4", "--target", "nope"])
    assert r.exit_code == 1 and "--target must be one of" in r.output


# ----------------------------------------------------------------------------------------------- OpenAI driver


def _sse_handler(n_tokens: int, *, chunks_per_event: int = 1, usage: bool = True):
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["max_tokens"] == n_tokens and body["min_tokens"] == n_tokens

        def chunk(delta, finish=None, use=None):
            d = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None else []}
            if use is not None:
                d["usage"] = use
            return f"data: {json.dumps(d)}\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": "x" * chunks_per_event}) for _ in range(n_tokens // chunks_per_event)]
        events.append(chunk({}, "length"))
        if usage:
            events.append(chunk(None, use={"prompt_tokens": 40, "completion_tokens": n_tokens}))
        events.append("data: [DONE]\n\n")
        return httpx.Response(200, content="".join(events).encode(), headers={"content-type": "text/event-stream"})

    return handler


def _work(osl: int) -> openai_driver.OpenAIWorkload:
    return openai_driver.OpenAIWorkload("http://gw", "kimi-k2", [Prompt("hi", 40, chat=True)], osl,
                                        extra_body={"min_tokens": osl})


def test_openai_driver_closed_loop_counts_usage_tokens():
    recs = asyncio.run(openai_driver.run_level(_work(6), concurrency=3, requests=5, warmup=1,
                                               transport=httpx.MockTransport(_sse_handler(6, chunks_per_event=2))))
    assert len(recs) == 6
    for r in recs:
        assert r.ok and r.output_tokens == 6 and r.input_tokens == 40
        assert [n for _, n in r.responses] == [1, 1, 4, 0]  # 3 content chunks, then the end of the stream


def test_openai_driver_records_errors():
    def refuse(request):
        return httpx.Response(400, json={"error": {"message": "min_tokens: unrecognized request argument"}})

    recs = asyncio.run(openai_driver.run_level(_work(4), concurrency=1, requests=2,
                                               transport=httpx.MockTransport(refuse)))
    assert all(r.error == "HTTP 400: min_tokens: unrecognized request argument" for r in recs)
    recs = asyncio.run(openai_driver.run_level(_work(4), concurrency=1, requests=1,
                                               transport=httpx.MockTransport(_sse_handler(4, usage=False))))
    assert "no usage" in recs[0].error


def test_assign_tokens():
    assert openai_driver.assign_tokens([1, 2, 3], 7) == [(1, 1), (2, 1), (3, 5)]
    assert openai_driver.assign_tokens([1, 2, 3], 2) == [(1, 1), (2, 1), (3, 0)]
    assert openai_driver.assign_tokens([], 3) == []


# ----------------------------------------------------------------------------------------------- direct


class _FakeService:
    """An EngineService stand-in: one token every millisecond, at most ``limit`` requests at once."""

    def __init__(self):
        self.ids = iter(range(1, 10_000))
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def new_request_id(self):
        return next(self.ids)

    def submit(self, req):
        from k2trt.runtime.engine import Output

        assert req.sampling.min_tokens == req.max_tokens
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)

        def stream():
            for k in range(req.max_tokens):
                time.sleep(0.001)
                last = k == req.max_tokens - 1
                yield Output(req.request_id, [7], last, "length" if last else None)
            with self.lock:
                self.active -= 1

        return stream()


def test_direct_driver_closed_loop():
    svc = _FakeService()
    recs = direct.run_level(svc, [[1, 2, 3]], osl=5, concurrency=2, requests=6, warmup=1)
    assert len(recs) == 7 and svc.peak == 2
    assert all(r.ok and r.output_tokens == 5 and r.input_tokens == 3 for r in recs)
