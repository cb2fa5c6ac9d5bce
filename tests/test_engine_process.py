"""The engine in a process of its own (k2trt.runtime.engine_process): what the in-process service does, plus what a
process can do that a thread cannot (die, fail to start). The shared request/response behaviour is run over both
services in tests/test_serving_engine_model.py."""

from __future__ import annotations

import os
import signal
import time

import pytest

from k2trt.errors import K2Error
from k2trt.runtime.engine import Request
from k2trt.runtime.engine_process import EngineProcess
from k2trt.runtime.sampling import SamplingParams
from k2trt.runtime.service import open_service

PROMPT = [5, 17, 42, 99, 7, 3, 250]


def request(rid: int, max_tokens: int = 8, **kw) -> Request:
    return Request(request_id=rid, input_ids=list(PROMPT), max_tokens=max_tokens, sampling=SamplingParams(**kw))


def tokens(stream) -> list[int]:
    return [t for out in stream for t in out.new_ids]


def build(ckpt, root, tp: int):
    from k2trt.convert import convert
    from k2trt.runtime.engine_dir import RuntimeConfig, build_torch_engine

    convert(checkpoint=ckpt, out=root / "conv", tp=tp, ep=tp, weights="bf16", progress=False)
    return build_torch_engine(converted=root / "conv", out=root / "engine", tokenizer_dir=ckpt,
                              runtime=RuntimeConfig(max_batch_size=4, max_seq_len=256, kv_cache_tokens=2048))


@pytest.fixture(scope="module")
def engine_dir(tiny_ckpt, tmp_path_factory):
    return build(tiny_ckpt, tmp_path_factory.mktemp("engine"), 1)


def test_outputs_equal_the_in_process_service_and_close_ends_the_process(engine_dir):
    here = open_service(engine_dir)
    try:
        expected = [tokens(here.submit(request(i, 12, temperature=0.8, seed=i))) for i in (1, 2, 3)]
    finally:
        here.close()
    proc = EngineProcess(engine_dir)
    try:
        streams = [proc.submit(request(i, 12, temperature=0.8, seed=i)) for i in (1, 2, 3)]  # batched together
        assert [tokens(s) for s in streams] == expected
        assert proc.in_flight == 0
    finally:
        proc.close()
    assert proc._proc.exitcode == 0


def test_a_request_that_can_never_run_is_refused_at_submit_with_the_engines_words(engine_dir):
    here = open_service(engine_dir)
    proc = EngineProcess(engine_dir)
    try:
        for bad in (request(1, 10_000), Request(request_id=2, input_ids=[10**6], max_tokens=4)):
            with pytest.raises(K2Error) as a:
                here.submit(bad)
            with pytest.raises(K2Error) as b:
                proc.submit(bad)
            assert b.value.problems == a.value.problems
        assert proc.in_flight == 0
        assert len(tokens(proc.submit(request(3, 4)))) == 4  # and the engine still serves
    finally:
        here.close()
        proc.close()


def test_cancel_ends_the_stream_and_frees_the_request(engine_dir):
    proc = EngineProcess(engine_dir)
    try:
        s = proc.submit(request(1, 200))
        first = s.get(timeout=30)
        s.cancel()
        outs = [first, *s]
        assert outs[-1].finished and outs[-1].finish_reason == "cancelled"
        assert sum(len(o.new_ids) for o in outs) < 200 and proc.in_flight == 0
    finally:
        proc.close()


def test_a_dead_engine_process_fails_what_is_in_flight_and_refuses_more(engine_dir):
    proc = EngineProcess(engine_dir)
    try:
        s = proc.submit(request(1, 200))
        s.get(timeout=30)
        os.kill(proc._proc.pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"the engine process exited \(code -9\)"):
            for _ in s:
                pass
        deadline = time.monotonic() + 10
        while proc.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(K2Error, match="engine process exited"):
            proc.submit(request(2))
    finally:
        proc.close()


def test_an_engine_dir_that_cannot_start_is_a_clear_error(tmp_path):
    (tmp_path / "engine").mkdir()
    with pytest.raises(K2Error) as e:
        EngineProcess(tmp_path / "engine")
    assert "Traceback" not in str(e.value) and str(tmp_path / "engine") in str(e.value)


@pytest.mark.slow
def test_a_world_size_2_engine_runs_from_the_engine_process(tiny_ckpt, tmp_path):
    """The engine process starts the other rank itself (it is not a daemon, so it may)."""
    d = build(tiny_ckpt, tmp_path, 2)
    here = open_service(d)
    try:
        expected = tokens(here.submit(request(1, 10)))
    finally:
        here.close()
    proc = EngineProcess(d)
    try:
        assert tokens(proc.submit(request(1, 10))) == expected
    finally:
        proc.close()
    assert proc._proc.exitcode == 0
