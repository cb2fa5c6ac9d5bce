"""``k2trt bench`` against the served tiny model (a real tritonserver, real perf_analyzer): the report's invariants.

The deployment is the Triton tests' session fixture (tests/test_triton_server.py): the trained k2-tiny when it is
there, else a synthetic tiny checkpoint, served by the generated repository.
"""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from k2trt.bench.profile import load_export
from k2trt.bench.records import RequestRecord
from k2trt.bench.report import load
from k2trt.cli import app
from test_triton_server import deployment  # noqa: F401  (the shared session fixture)

pytestmark = pytest.mark.slow

ISL, OSL = 64, 12


def _bench(deployment, out, *args) -> tuple[int, str, float]:  # noqa: F811
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["bench", "--url", deployment.server.grpc_url, "--metrics-url",
                                 deployment.server.metrics_url, "--isl", str(ISL), "--osl", str(OSL),
                                 "--out", str(out), "--timeout", "300", *args])
    return r.exit_code, r.output, time.monotonic() - t0


def _check_invariants(result, *, levels: list[int], requests: int, warmup: int, wall_s: float) -> None:
    assert [lv.concurrency for lv in result.levels] == levels
    for lv in result.levels:
        recs: list[RequestRecord] = result.records[lv.concurrency]
        assert (lv.requests, lv.errors, lv.warmup) == (requests, 0, warmup)
        assert len(recs) == requests
        for r in recs:
            assert r.ok
            assert r.output_tokens == OSL  # exact output length, counted from ids
            assert r.input_tokens == ISL
            assert 0 < r.ttft_ns <= r.latency_ns  # TTFT <= request latency
            assert r.itl_ns is not None and 0 <= r.itl_ns <= r.latency_ns
        # throughput = tokens of the measured requests / the span from their first send to their last response
        start = min(r.start_ns for r in recs)
        end = max(r.end_ns for r in recs)
        span = (end - start) / 1e9
        assert lv.duration_s == pytest.approx(span)
        assert lv.output_tokens_per_s == pytest.approx(requests * OSL / span)
        assert lv.requests_per_s == pytest.approx(requests / span)
        # the span holds at least the slowest request and at most the whole run
        assert max(r.latency_ns for r in recs) / 1e9 <= span < wall_s
        assert lv.ttft_ms.p50 <= lv.latency_ms.p50 and lv.ttft_ms.p99 <= lv.latency_ms.max
        assert lv.output_tokens.min == lv.output_tokens.max == OSL


def test_bench_ensemble_two_levels(deployment, tmp_path):  # noqa: F811
    code, output, wall = _bench(deployment, tmp_path / "ens", "--target", "ensemble", "--concurrency", "1,3",
                                "--requests", "6", "--warmup", "2")
    assert code == 0, output
    result = load(tmp_path / "ens")
    _check_invariants(result, levels=[1, 3], requests=6, warmup=2, wall_s=wall)
    assert result.config["driver"] == "perf_analyzer" and result.config["target"] == "ensemble"
    # Triton's /metrics saw every request of each level, warm-up included
    for c in (1, 3):
        ens = result.server[c]["models"]["ensemble"]
        assert ens["request_success"] >= 6 + 2 and ens["request_failure"] == 0
    # perf_analyzer's own export holds the warm-up requests that the report left out (its text_output is the raw
    # bytes of each token, not always UTF-8 on its own: load_export reads it)
    raw = load_export(tmp_path / "ens" / "raw" / "profile_export_c3.json")
    assert len(raw["experiments"][0]["requests"]) == 8
    for name in ("results.csv", "report.md", "throughput_latency.png", "ttft.png", "itl.png"):
        assert (tmp_path / "ens" / name).is_file()
    assert "| 3 | 6 |" in (tmp_path / "ens" / "report.md").read_text()


def test_bench_bls(deployment, tmp_path):  # noqa: F811
    code, output, wall = _bench(deployment, tmp_path / "bls", "--target", "bls", "--concurrency", "2",
                                "--requests", "4", "--warmup", "1")
    assert code == 0, output
    _check_invariants(load(tmp_path / "bls"), levels=[2], requests=4, warmup=1, wall_s=wall)


def test_bench_compare_of_two_runs(deployment, tmp_path):  # noqa: F811
    for name in ("a", "b"):
        code, output, _ = _bench(deployment, tmp_path / name, "--concurrency", "2", "--requests", "2",
                                 "--warmup", "0", "--no-plots")
        assert code == 0, output
    r = CliRunner().invoke(app, ["bench", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 0 and "| 2 | ITL p50 ms |" in r.output


def test_clear_errors_for_a_wrong_model_or_a_server_that_is_down(deployment, tmp_path):  # noqa: F811
    code, output, _ = _bench(deployment, tmp_path / "x", "--model", "nosuch", "--concurrency", "1")
    assert code == 1 and "model 'nosuch' is not ready" in output and "ensemble" in output
    from k2trt.serving.server import free_ports

    port = free_ports(1)[0]
    r = CliRunner().invoke(app, ["bench", "--url", f"127.0.0.1:{port}", "--isl", "8", "--osl", "4",
                                 "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and f"cannot reach Triton at 127.0.0.1:{port}" in r.output


def test_bench_openai_gateway(deployment, tmp_path):  # noqa: F811
    """The openai target: the async client driver through k2trt's gateway (k2trt.api) in front of the same server."""
    from k2trt.api.server import start_api
    from k2trt.serving.server import free_ports

    port = free_ports(1)[0]
    with start_api(triton_url=deployment.server.grpc_url, port=port, model_name="k2-bench") as api:
        t0 = time.monotonic()
        r = CliRunner().invoke(app, ["bench", "--url", api.url, "--target", "openai", "--isl", str(ISL), "--osl",
                                     str(OSL), "--concurrency", "1,2", "--requests", "3", "--warmup", "1",
                                     "--tokenizer", str(deployment.settings.tokenizer_dir), "--metrics-url",
                                     deployment.server.metrics_url, "--out", str(tmp_path / "oai"), "--timeout", "300"])
        wall = time.monotonic() - t0
        assert r.exit_code == 0, r.output
        tok = str(deployment.settings.tokenizer_dir)
        r = CliRunner().invoke(app, ["bench", "--url", api.url, "--target", "openai", "--model", "gpt-4",
                                     "--isl", str(ISL), "--osl", "4", "--tokenizer", tok,
                                     "--out", str(tmp_path / "bad")])
        assert r.exit_code == 1 and "model 'gpt-4' is not served" in r.output and "k2-bench" in r.output
    result = load(tmp_path / "oai")
    _check_invariants(result, levels=[1, 2], requests=3, warmup=1, wall_s=wall)
    assert result.config["model"] == "k2-bench" and result.config["extra_body"] == {"min_tokens": OSL}
