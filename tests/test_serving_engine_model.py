"""The torch engine behind the tensorrt_llm Triton model, without Triton: tensors in, tensorrtllm-style responses out."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from k2trt.errors import K2Error
from k2trt.serving.engine_model import EngineModel
from k2trt.serving.tensors import EngineRequest, ids_from_output

PROMPT = (5, 17, 42, 99, 7, 3, 250)


@pytest.fixture(scope="module")
def engine_dir(tiny_ckpt, tmp_path_factory):
    from k2trt.convert import convert
    from k2trt.runtime.engine_dir import RuntimeConfig, build_torch_engine

    d = tmp_path_factory.mktemp("engine")
    convert(checkpoint=tiny_ckpt, out=d / "conv", tp=1, ep=1, weights="bf16", progress=False)
    return build_torch_engine(converted=d / "conv", out=d / "engine", tokenizer_dir=tiny_ckpt,
                              runtime=RuntimeConfig(max_batch_size=4, max_seq_len=256, kv_cache_tokens=2048))


class Metrics:
    def __init__(self):
        self.started, self.finished = 0, []

    def request_started(self):
        self.started += 1

    def request_finished(self, reason):
        self.finished.append(reason)


@pytest.fixture(scope="module", params=["thread", "process"])
def model(engine_dir, request):
    """The engine model over each service: stepping in a thread here, or in a process of its own."""
    from k2trt.runtime.engine_process import EngineProcess
    from k2trt.runtime.service import open_service

    service = open_service(engine_dir) if request.param == "thread" else EngineProcess(engine_dir)
    m = EngineModel(service, poll_s=0.01, metrics=Metrics())
    yield m
    m.close()


def ids_of(responses) -> list[list[int]]:
    return [ids_from_output(t["output_ids"], t["sequence_length"]) if t is not None else None for t, _ in responses]


def generate(model, **kw) -> list:
    return list(model.submit(EngineRequest(input_ids=PROMPT, **kw).to_tensors()).responses())


def test_streaming_sends_each_step_and_matches_the_whole(model):
    streamed = generate(model, max_tokens=12, streaming=True)
    assert [final for _, final in streamed] == [False] * (len(streamed) - 1) + [True]
    pieces = ids_of(streamed)
    assert all(len(p) == 1 for p in pieces)  # one token per step once decoding
    (whole,) = generate(model, max_tokens=12)
    assert whole[1] and sum(pieces, []) == ids_of([whole])[0]
    assert len(ids_of([whole])[0]) == 12


def test_exclude_input_in_output_false_returns_the_prompt_too(model):
    (whole,) = generate(model, max_tokens=4, exclude_input_in_output=False)
    (gen,) = generate(model, max_tokens=4)
    assert ids_of([whole])[0] == list(PROMPT) + ids_of([gen])[0]


def test_end_id_is_not_returned_stop_words_are(model):
    (ref,) = generate(model, max_tokens=8)
    ids = ids_of([ref])[0]
    end = ids[3]
    first = ids.index(end)  # greedy: the output is the same up to its first occurrence
    streamed = generate(model, max_tokens=8, end_id=end, streaming=True)
    assert sum((p for p in ids_of(streamed) if p), []) == ids[:first]
    (stopped,) = generate(model, max_tokens=8, stop_words=((end,),))
    assert ids_of([stopped])[0] == ids[: first + 1]


def test_cancellation_ends_with_a_final_flag_and_frees_the_request(model):
    polls = {"n": 0}

    def cancelled():
        polls["n"] += 1
        return polls["n"] > 3

    before = list(model.metrics.finished)
    call = model.submit(EngineRequest(input_ids=PROMPT, max_tokens=200, streaming=True).to_tensors())
    responses = list(call.responses(cancelled))
    assert responses[-1] == (None, True)
    assert len(responses) < 50
    assert model.metrics.finished[len(before):] == ["cancelled"]
    assert model.service.in_flight == 0


def test_a_stop_request_cancels_the_request_with_its_id(model):
    call = model.submit(EngineRequest(input_ids=PROMPT, max_tokens=200, streaming=True).to_tensors(),
                        triton_id="req-1")
    got = []
    t = threading.Thread(target=lambda: got.extend(call.responses()))
    t.start()
    time.sleep(0.05)
    stop = model.submit(EngineRequest(input_ids=(), max_tokens=1, stop=True).to_tensors(), triton_id="req-1")
    assert list(stop.responses()) == [(None, True)]
    t.join(timeout=30)
    assert got[-1] == (None, True) and call.finish_reason == "cancelled"


def test_concurrent_requests_each_get_what_they_get_alone(model):
    prompts = [PROMPT[: k + 2] for k in range(4)]
    alone = [ids_of(list(model.submit(EngineRequest(input_ids=p, max_tokens=10).to_tensors()).responses()))[0]
             for p in prompts]
    calls = [model.submit(EngineRequest(input_ids=p, max_tokens=10, streaming=True).to_tensors()) for p in prompts]
    together = [[None]] * len(calls)

    def consume(i):
        together[i] = sum((p for p in ids_of(list(calls[i].responses())) if p), [])

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(calls))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert together == alone


def test_a_request_the_engine_cannot_run_is_refused_at_submit(model):
    started = model.metrics.started
    with pytest.raises(K2Error, match="exceeds the engine's max sequence length 256"):
        model.submit(EngineRequest(input_ids=PROMPT, max_tokens=1000).to_tensors())
    with pytest.raises(K2Error, match="beam_width"):
        model.submit({**EngineRequest(input_ids=PROMPT, max_tokens=1).to_tensors(),
                      "beam_width": np.array([[4]], np.int32)})
    assert model.metrics.started == started


# ----------------------------------------------------------------------------------------------- push (Triton)


class Sink:
    """A response sender as the Triton model adapts it: records what it is sent, on which thread."""

    def __init__(self, *, cancel_after: int | None = None, refuse_after: int | None = None):
        self.sent, self.errors, self.threads = [], [], set()
        self.cancel_after, self.refuse_after = cancel_after, refuse_after
        self.done = threading.Event()
        self.polls = 0

    def send(self, outputs, final):
        self.threads.add(threading.current_thread().name)
        if self.refuse_after is not None and len(self.sent) >= self.refuse_after:
            raise RuntimeError("the response sender is closed")
        self.sent.append((outputs, final))
        if final:
            self.done.set()

    def fail(self, message, *, bad_request):
        self.errors.append((message, bad_request))
        self.done.set()

    def is_cancelled(self):
        self.polls += 1
        return self.cancel_after is not None and len(self.sent) >= self.cancel_after


def push(model, sink=None, triton_id="", **kw) -> Sink:
    sink = sink or Sink()
    model.submit(EngineRequest(input_ids=PROMPT, **kw).to_tensors(), triton_id=triton_id, sink=sink)
    return sink


def test_pushed_responses_equal_pulled_ones_and_come_from_one_thread(model):
    pulled = generate(model, max_tokens=12, streaming=True)
    sinks = [push(model, max_tokens=12, streaming=True) for _ in range(4)]
    for s in sinks:
        assert s.done.wait(60)
    for s in sinks:
        assert ids_of(s.sent) == ids_of(pulled) and [f for _, f in s.sent] == [f for _, f in pulled]
    assert set().union(*(s.threads for s in sinks)) == {"k2trt-responses"}  # not a thread per request
    (whole,) = generate(model, max_tokens=5)
    s = push(model, max_tokens=5)
    assert s.done.wait(60) and ids_of(s.sent) == ids_of([whole])


class SlowSink(Sink):
    """A sender that takes 20 ms per response: the engine makes tokens faster than they go out."""

    def send(self, outputs, final):
        time.sleep(0.02)
        super().send(outputs, final)


def test_a_slow_sender_still_gets_one_response_per_token(model):
    """One response per engine step, however far the sending falls behind: perf_analyzer counts the ensemble's
    streamed responses as tokens."""
    (whole,) = generate(model, max_tokens=20)
    s = push(model, SlowSink(), max_tokens=20, streaming=True)
    assert s.done.wait(60)
    pieces = ids_of(s.sent)
    assert sum(pieces, []) == ids_of([whole])[0] and all(len(p) == 1 for p in pieces)
    assert [f for _, f in s.sent] == [False] * (len(s.sent) - 1) + [True]


def test_a_pushed_request_whose_client_leaves_is_cancelled(model):
    before = len(model.metrics.finished)
    s = push(model, Sink(cancel_after=3), max_tokens=200, streaming=True)
    assert s.done.wait(60)
    assert s.sent[-1] == (None, True) and len(s.sent) < 100
    deadline = time.monotonic() + 10
    while model.service.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert model.service.in_flight == 0 and model.metrics.finished[before:] == ["cancelled"]


def test_a_sender_that_refuses_cancels_the_request(model):
    before = len(model.metrics.finished)
    s = push(model, Sink(refuse_after=2), max_tokens=200, streaming=True)
    deadline = time.monotonic() + 30
    while len(model.metrics.finished) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(s.sent) == 2 and model.metrics.finished[before:] == ["cancelled"]
    while model.service.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert model.service.in_flight == 0


def test_a_pushed_stop_request_cancels_its_target(model):
    s = push(model, triton_id="req-9", max_tokens=200, streaming=True)
    time.sleep(0.05)
    stop = Sink()
    model.submit(EngineRequest(input_ids=(), max_tokens=1, stop=True).to_tensors(), triton_id="req-9", sink=stop)
    assert stop.sent == [(None, True)]
    assert s.done.wait(30) and s.sent[-1] == (None, True)


def test_an_engine_failure_reaches_every_pushed_client_and_the_next_request_runs(engine_dir):
    from k2trt.runtime.service import open_service

    m = EngineModel(open_service(engine_dir), poll_s=0.01, metrics=Metrics())
    try:
        real_step = m.service.engine.step
        calls = {"n": 0}

        def failing_step():
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("rank 1 died")
            return real_step()

        m.service.engine.step = failing_step
        sinks = [push(m, max_tokens=50, streaming=True) for _ in range(2)]
        for s in sinks:
            assert s.done.wait(30)
            assert s.errors == [("RuntimeError: rank 1 died", False)]
        assert m.metrics.finished == ["cancelled", "cancelled"]
        after = push(m, max_tokens=4)
        assert after.done.wait(30) and len(ids_of(after.sent)[0]) == 4
    finally:
        m.close()


def test_submitting_and_cancelling_never_wait_for_a_step(engine_dir):
    """A request that arrives mid-step is queued at once and joins the next step (callers used to wait on the
    engine's lock for as long as it had work, which serialized concurrent requests)."""
    from k2trt.runtime.engine import Request
    from k2trt.runtime.sampling import SamplingParams
    from k2trt.runtime.service import open_service

    service = open_service(engine_dir)
    real_step = service.engine.step
    in_step, release = threading.Event(), threading.Event()

    def blocking_step():
        in_step.set()
        assert release.wait(30)
        return real_step()

    service.engine.step = blocking_step
    try:
        first = service.submit(Request(request_id=1, input_ids=list(PROMPT), max_tokens=3, sampling=SamplingParams()))
        assert in_step.wait(30)  # the engine thread is inside a step
        done = threading.Event()

        def submit_and_cancel():
            service.submit(Request(request_id=2, input_ids=list(PROMPT), max_tokens=3, sampling=SamplingParams()))
            service.cancel(1)
            done.set()

        threading.Thread(target=submit_and_cancel, daemon=True).start()
        assert done.wait(5) and not release.is_set()  # returned while the step was still running
        service.engine.step = real_step
        release.set()
        outs = list(first)
        assert outs[-1].finished
        assert service.in_flight in (0, 1)
    finally:
        release.set()
        service.close()
