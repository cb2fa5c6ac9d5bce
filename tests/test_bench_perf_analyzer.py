"""k2trt.bench.perf_analyzer: command lines, environment, failure messages; the Prometheus scraper."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from k2trt.bench import perf_analyzer as pa
from k2trt.bench import server_metrics as sm
from k2trt.errors import K2Error


def _cmd(**kw) -> pa.LevelCommand:
    base = dict(model="ensemble", url="localhost:8001", input_data=Path("/d/in.json"), concurrency=4,
                export_file=Path("/d/e.json"), requests=10, warmup=2)
    base.update(kw)
    return pa.LevelCommand(**base)


def _opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_request_count_command():
    argv = _cmd().argv("/bin/pa")
    assert argv[0] == "/bin/pa"
    assert _opt(argv, "-m") == "ensemble" and _opt(argv, "-u") == "localhost:8001" and _opt(argv, "-i") == "grpc"
    assert "--streaming" in argv
    assert _opt(argv, "--concurrency-range") == "4"
    assert _opt(argv, "--request-count") == "12"  # warm-up requests are sent first in the same run
    assert _opt(argv, "--profile-export-file") == "/d/e.json" and _opt(argv, "--input-data") == "/d/in.json"
    assert "--measurement-mode" not in argv
    assert int(_opt(argv, "--max-threads")) >= 4


def test_duration_command_measures_three_windows_once():
    argv = _cmd(requests=None, duration_s=30).argv()
    assert _opt(argv, "--measurement-mode") == "time_windows"
    assert _opt(argv, "--measurement-interval") == "10000"
    assert _opt(argv, "--max-trials") == "3"
    assert int(_opt(argv, "--stability-percentage")) >= 1000
    assert "--request-count" not in argv


def test_high_concurrency_gets_enough_threads():
    assert _opt(_cmd(concurrency=64).argv(), "--max-threads") == "64"


@pytest.mark.parametrize("bad, match", [
    (dict(concurrency=0), "concurrency"),
    (dict(requests=None), "exactly one"),
    (dict(duration_s=5), "exactly one"),
    (dict(requests=0), "requests must be"),
    (dict(requests=None, duration_s=-1), "duration"),
    (dict(warmup=-1), "warmup"),
    (dict(protocol="http"), "gRPC only"),
])
def test_invalid_commands(bad, match):
    with pytest.raises(K2Error, match=match):
        _cmd(**bad).argv()


def test_explain_failure_messages():
    down = ("error: failed to get model metadata: failed to connect to all addresses; last error: UNKNOWN: "
            "ipv4:127.0.0.1:18999: Failed to connect to remote host: Connection refused")
    assert pa.explain_failure(99, down, model="m", url="h:1").startswith("cannot reach the server at h:1")
    unknown = "error: failed to get model metadata: Request for unknown model: 'nosuch' is not found"
    assert pa.explain_failure(99, unknown, model="nosuch", url="h:1").startswith("model 'nosuch' is not served")
    lib = ("perf_analyzer: error while loading shared libraries: libb64.so.0d: cannot open shared object file: "
           "No such file or directory")
    assert "libb64-0d" in pa.explain_failure(127, lib, model="m", url="h:1")
    assert "longer --duration" in pa.explain_failure(2, "x\nFailed to obtain stable measurement.", model="m", url="u")
    assert "status 3: boom failed" in pa.explain_failure(3, "ok\nboom failed\n", model="m", url="u")


def test_find_perf_analyzer(tmp_path, monkeypatch):
    with pytest.raises(K2Error, match="not an executable"):
        pa.find_perf_analyzer(tmp_path / "nope")
    exe = tmp_path / "perf_analyzer"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert pa.find_perf_analyzer(exe) == exe
    monkeypatch.setattr(pa.sys, "executable", str(tmp_path / "python"))
    assert pa.find_perf_analyzer() == exe  # the one beside this Python (the tritonclient wheel's)
    exe.unlink()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(K2Error, match="tritonclient"):
        pa.find_perf_analyzer()


def test_environment_puts_libcudart_first(monkeypatch):
    monkeypatch.setattr(pa, "cuda_runtime_lib_dir", lambda: Path("/cudart/lib"))
    env = pa.environment({"LD_LIBRARY_PATH": "/x", "A": "b"})
    assert env["LD_LIBRARY_PATH"] == os.pathsep.join(["/cudart/lib", "/x"]) and env["A"] == "b"
    monkeypatch.setattr(pa, "cuda_runtime_lib_dir", lambda: None)
    assert "LD_LIBRARY_PATH" not in pa.environment({})


# ----------------------------------------------------------------------------------------------- /metrics

METRICS_0 = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="ensemble",version="1"} 10
nv_inference_request_success{model="tensorrt_llm",version="1"} 10
nv_inference_request_failure{model="ensemble",reason="OTHER",version="1"} 0
nv_inference_request_failure{model="ensemble",reason="BACKEND",version="1"} 1
nv_inference_exec_count{model="ensemble",version="1"} 10
nv_inference_queue_duration_us{model="ensemble",version="1"} 500
nv_inference_pending_request_count{model="ensemble",version="1"} 0
nv_cpu_utilization 0.5
nv_cpu_memory_used_bytes 1000
"""
METRICS_1 = """nv_inference_request_success{model="ensemble",version="1"} 30
nv_inference_request_success{model="tensorrt_llm",version="1"} 30
nv_inference_request_failure{model="ensemble",reason="OTHER",version="1"} 0
nv_inference_request_failure{model="ensemble",reason="BACKEND",version="1"} 1
nv_inference_exec_count{model="ensemble",version="1"} 30
nv_inference_queue_duration_us{model="ensemble",version="1"} 2500
nv_inference_pending_request_count{model="ensemble",version="1"} 3
nv_cpu_utilization 1.0
nv_cpu_memory_used_bytes 900
"""


def test_parse_and_summarize_metrics():
    s0, s1 = sm.parse_prometheus(METRICS_0), sm.parse_prometheus(METRICS_1)
    assert sm.by_model(s0, "nv_inference_request_failure") == {"ensemble": 1.0}
    assert sm.total(s0, "nv_cpu_utilization") == 0.5 and sm.total(s0, "nope") is None
    summary = sm.summarize([s0, s1])
    ens = summary["models"]["ensemble"]
    assert ens["request_success"] == 20 and ens["request_failure"] == 0 and ens["queue_duration_us"] == 2000
    assert ens["pending_request_count_max"] == 3
    assert summary["cpu_utilization_mean"] == pytest.approx(0.75)
    assert summary["cpu_memory_used_bytes_max"] == 1000
    assert sm.completed(s1, "ensemble") == 31 and sm.completed(None, "x") != sm.completed(None, "x")  # NaN


def test_metrics_url_for():
    assert sm.metrics_url_for("localhost:8001") == "http://localhost:8002/metrics"
    assert sm.metrics_url_for("grpc://10.0.0.5:9001") == "http://10.0.0.5:8002/metrics"
    assert sm.metrics_url_for("http://[::1]:8000/v1") == "http://[::1]:8002/metrics"


def test_scraper_samples_and_survives_failures():
    calls = []

    def fetcher(url):
        calls.append(url)
        if len(calls) == 2:
            raise OSError("connection refused")
        return sm.parse_prometheus(METRICS_0)

    s = sm.Scraper("http://x/metrics", interval=0.01, fetcher=fetcher).start()
    import time

    time.sleep(0.1)
    s.stop()
    assert s.failures == 1 and "connection refused" in s.last_error
    assert len(s.samples) >= 2 and s.latest() is not None


# ----------------------------------------------------------------------------------------------- the run's spec


def test_spec_validation_and_urls():
    from k2trt.bench.runner import BenchSpec, grpc_url, http_url, parse_concurrency

    ok = BenchSpec(url="h:1", target="ensemble", isl=8, osl=4, concurrency=(1, 8))
    ok.validate()
    assert ok.requests_at(1) == 16 and ok.requests_at(8) == 32  # max(16, 4 x concurrency)
    assert BenchSpec(url="h:1", target="bls", isl=8, osl=4, concurrency=(2,), duration_s=5).requests_at(2) is None
    bad = BenchSpec(url="h:1", target="grpc", isl=0, osl=4, concurrency=(2, 2), requests=1, duration_s=3, warmup=-1)
    with pytest.raises(K2Error) as e:
        bad.validate()
    text = "\n".join(e.value.problems)
    for part in ("--target must be one of", "--isl and --osl", "repeats a level", "not both", "--warmup"):
        assert part in text
    with pytest.raises(K2Error, match="never have that many requests in flight"):
        BenchSpec(url="h:1", target="ensemble", isl=8, osl=4, concurrency=(8,), requests=4, warmup=2).validate()
    assert parse_concurrency("1, 2,4") == (1, 2, 4)
    with pytest.raises(K2Error, match="comma-separated"):
        parse_concurrency("1,two")
    assert grpc_url("grpc://localhost:8001/") == "localhost:8001"
    with pytest.raises(K2Error, match="HOST:PORT"):
        grpc_url("localhost")
    assert http_url("localhost:9000") == "http://localhost:9000" and http_url("https://x:1/") == "https://x:1"
