"""A real tritonserver on a generated repository: one per test session (the ``deployment`` fixture).

The checkpoint is the trained ``models/k2-tiny`` when it is there (its tool calls are checked), else a synthetic
tiny one (random weights: everything but the tool-call test runs). Converted tp 2 / ep 2 (bf16) as the demo does,
so the engine model runs two ranks inside the Triton Python model.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from k2trt.serving.client import ChatClient, ServerError, collect
from k2trt.serving.server import TritonServer, start_local_server
from k2trt.serving.settings import RepoSettings, settings_for_engine, write_repo
from k2trt.tokenizer import K2Tokenizer

pytestmark = pytest.mark.slow

TRAINED = Path(__file__).resolve().parents[1] / "models" / "k2-tiny"
MAX_SEQ_LEN = 512


@dataclass
class Deployment:
    server: TritonServer
    repo: Path
    settings: RepoSettings
    tokenizer: K2Tokenizer
    trained: bool

    def client(self) -> ChatClient:
        return ChatClient(self.server.grpc_url, timeout_s=120)

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(self.server.metrics_url, timeout=5) as r:
            text = r.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            m = re.match(rf"{name}(\{{[^}}]*\}})? (\S+)$", line)
            if m and (not want or want in (m.group(1) or "")):
                return float(m.group(2))
        raise AssertionError(f"no metric {name}{labels} in /metrics")


@pytest.fixture(scope="session")
def deployment(tmp_path_factory) -> Deployment:
    from k2trt.convert import convert
    from k2trt.runtime.engine_dir import RuntimeConfig, build_torch_engine
    from k2trt.synth import synthesize

    work = tmp_path_factory.mktemp("triton")
    trained = (TRAINED / "config.json").is_file()
    ckpt = TRAINED if trained else synthesize(out=work / "ckpt", preset="tiny", seed=0, shards=2)
    convert(checkpoint=ckpt, out=work / "conv", tp=2, ep=2, weights="bf16", progress=False)
    engine = build_torch_engine(converted=work / "conv", out=work / "engine", tokenizer_dir=ckpt, runtime=RuntimeConfig(
        max_batch_size=16, max_seq_len=MAX_SEQ_LEN, max_num_tokens=512, kv_cache_tokens=16 * MAX_SEQ_LEN))
    settings = settings_for_engine(engine, served_model_name="k2-test")
    repo = write_repo(settings=settings, out=work / "repo")
    server = start_local_server(repo, log_path=work / "tritonserver.log")
    yield Deployment(server, repo, settings, K2Tokenizer.from_dir(ckpt), trained)
    server.stop()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ----------------------------------------------------------------------------------------------- health


def test_health_and_models_over_http_and_grpc(deployment):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    models = ("tensorrt_llm", "preprocessing", "postprocessing", "k2_bls", "ensemble")
    h = httpclient.InferenceServerClient(deployment.server.http_url)
    g = grpcclient.InferenceServerClient(deployment.server.grpc_url)
    assert h.is_server_live() and h.is_server_ready() and g.is_server_live() and g.is_server_ready()
    for m in models:
        assert h.is_model_ready(m) and g.is_model_ready(m)
    cfg = g.get_model_config("tensorrt_llm", as_json=True)["config"]
    assert cfg["backend"] == "python" and cfg["model_transaction_policy"]["decoupled"]
    assert {i["name"] for i in cfg["input"]} >= {"input_ids", "input_lengths", "request_output_len", "streaming"}
    bls = h.get_model_config("k2_bls")
    assert bls["parameters"]["served_model_name"]["string_value"] == "k2-test"
    assert deployment.metric("k2trt_engine_requests_in_flight") == 0


# ----------------------------------------------------------------------------------------------- chat


def test_chat_streamed_equals_whole(deployment):
    with deployment.client() as c:
        whole = c.complete(user("Tell me about Paris."), max_tokens=24, temperature=0)
        chunks = list(c.chat(user("Tell me about Paris."), max_tokens=24, temperature=0))
    assert whole["object"] == "chat.completion" and whole["model"] == "k2-test"
    r = collect(chunks)
    msg = whole["choices"][0]["message"]
    assert (r.content, r.tool_calls, r.finish_reason) == (msg.get("content") or "", msg.get("tool_calls", []),
                                                          whole["choices"][0]["finish_reason"])
    assert r.usage == whole["usage"] and r.finish_reason in ("stop", "length")
    assert r.usage["completion_tokens"] <= 25


def test_chat_over_http_generate(deployment):
    body = {"messages": user("Hello!"), "max_tokens": 16, "sampling": {"temperature": 0}}
    req = urllib.request.Request(f"http://{deployment.server.http_url}/v2/models/k2_bls/generate",
                                 data=json.dumps({"request": json.dumps(body)}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        over_http = json.loads(json.loads(r.read())["response"])
    with deployment.client() as c:
        over_grpc = c.complete(user("Hello!"), max_tokens=16, temperature=0)
    assert over_http["choices"] == over_grpc["choices"] and over_http["usage"] == over_grpc["usage"]


def test_chat_streamed_over_http_server_sent_events(deployment):
    body = {"messages": user("Hello!"), "max_tokens": 16, "sampling": {"temperature": 0}, "stream": True}
    req = urllib.request.Request(f"http://{deployment.server.http_url}/v2/models/k2_bls/generate_stream",
                                 data=json.dumps({"request": json.dumps(body)}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        events = [json.loads(line[len(b"data: "):]) for line in r.read().splitlines() if line.startswith(b"data: ")]
    chunks = [json.loads(e["response"]) for e in events if "response" in e]
    assert len(chunks) >= 2 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    with deployment.client() as c:
        over_grpc = collect(c.chat(user("Hello!"), max_tokens=16, temperature=0))
    assert collect(chunks) == over_grpc


def test_sixteen_concurrent_streams_each_get_what_they_get_alone(deployment):
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(16)]
    with deployment.client() as c:
        alone = [collect(c.chat(user(p), max_tokens=24, temperature=0)) for p in prompts]
    together: list = [None] * 16
    errors: list = []
    start = threading.Barrier(16)

    def one(i):
        try:
            with deployment.client() as c:
                start.wait()
                together[i] = collect(c.chat(user(prompts[i]), max_tokens=24, temperature=0))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert [(r.content, r.finish_reason, r.usage) for r in together] == [
        (r.content, r.finish_reason, r.usage) for r in alone]


@pytest.mark.skipif(not (TRAINED / "config.json").is_file(),
                    reason="needs the trained models/k2-tiny (scripts/train_tiny.py); a synthetic model's tool "
                           "calls are random. The BLS tool path is unit-tested on recorded outputs in "
                           "test_serving_bls.py")
def test_tools_request_is_answered_with_openai_tool_calls(deployment):
    """The model card's get_weather example through k2_bls: OpenAI tool_calls, the tool's result, an answer. What
    the model says is its own business (models/k2-tiny's evaluation); what is checked here is that the served
    answer is the one the independent reference model (k2trt.model, on the HF checkpoint) gives greedily."""
    from k2trt.chat import render_chat
    from k2trt.corpus import card_get_weather, seed_example
    from k2trt.model import Transformer, greedy_generate
    from k2trt.toolcall import parse

    tok = deployment.tokenizer
    reference = Transformer.from_checkpoint(TRAINED)

    def expected(messages, tools):
        ids = render_chat(messages, tools=tools, tokenizer=tok).ids
        out = [t for t in greedy_generate(reference, ids, 64, tuple(tok.stop_ids)).new_ids if t not in tok.stop_ids]
        return parse(tok.decode(out), declared_tools=[t["function"]["name"] for t in tools])

    tools, messages = seed_example()
    with deployment.client() as c:
        turn = collect(c.chat(messages, tools=tools, max_tokens=64, temperature=0))
        assert turn.finish_reason == "tool_calls"
        assert turn.tool_calls == [t.to_openai() for t in expected(messages, tools).tool_calls]
        call = turn.tool_calls[0]
        assert call["id"] == "functions.get_weather:0" and call["type"] == "function"
        assert call["function"]["name"] == "get_weather" and "city" in json.loads(call["function"]["arguments"])
        whole = c.complete(messages, tools=tools, max_tokens=64, temperature=0)
        assert whole["choices"][0]["message"]["tool_calls"] == turn.tool_calls  # streamed == whole
        city = json.loads(call["function"]["arguments"])["city"]
        messages = messages + [turn.message(), {"role": "tool", "tool_call_id": call["id"], "name": "get_weather",
                                                "content": json.dumps(card_get_weather(city))}]
        answer = collect(c.chat(messages, tools=tools, max_tokens=64, temperature=0))
    assert answer.finish_reason == "stop" and not answer.tool_calls and answer.content
    assert answer.content == expected(messages, tools).content


@pytest.mark.skipif(not (TRAINED / "config.json").is_file(), reason="needs the trained models/k2-tiny")
def test_heldout_cases_through_tritonserver(deployment):
    """Issue 9's evaluation after convert (tp 2, ep 2) and through tritonserver gives what the reference model gives
    on the HF checkpoint, turn for turn, on one held-out conversation of each kind (the full run, 300+
    conversations, is scripts/train_tiny.py's --stack-eval). Whether the model is right is test_tiny_model's."""
    from k2trt.corpus import eval_conversations
    from k2trt.model import Transformer
    from k2trt.tiny_eval import evaluate, reference_generate, triton_generate

    tok, convs = deployment.tokenizer, eval_conversations(1, seed=1)
    with deployment.client() as c:
        served = evaluate(triton_generate(c, tok), tok, convs)
    reference = evaluate(reference_generate(Transformer.from_checkpoint(TRAINED), tok), tok, convs)
    assert [(x.first_turn, x.answer) for x in served.cases] == [(x.first_turn, x.answer) for x in reference.cases]
    assert (served.tool_call_rate, served.answer_rate, served.no_call_rate) == (
        reference.tool_call_rate, reference.answer_rate, reference.no_call_rate)
    assert served.n_tool_requests >= 5 and served.n_no_call >= 3


# ----------------------------------------------------------------------------------------------- ensemble, engine


def test_ensemble_text_input(deployment):
    tok = deployment.tokenizer
    prompt = "The weather in Paris"
    with deployment.client() as c:
        streamed = list(c.generate(prompt, max_tokens=20, temperature=0.0))
        whole = "".join(c.generate(prompt, max_tokens=20, stream=False))
        # the same prompt as ids straight to the engine model: the ensemble is preprocessing + it + postprocessing
        ids = engine_ids(c, tok.encode(prompt, allow_special=True), 20, end_id=tok.im_end_id,
                         stop_words=[[t] for t in tok.stop_ids if t != tok.im_end_id])
    assert "".join(streamed) == whole == tok.decode(ids)
    assert len(streamed) >= 1


def engine_ids(client: ChatClient, ids: list[int], max_tokens: int, **kw) -> list[int]:
    out: list[int] = []
    for arr in client.engine_stream(ids, max_tokens=max_tokens, **kw):
        assert arr.ndim == 3 and arr.shape[:2] == (1, 1)  # [batch, beam, tokens], as the tensorrtllm backend
        out += arr.reshape(-1).tolist()
    return out


def test_engine_model_speaks_the_tensorrtllm_contract(deployment):
    with deployment.client() as c:
        a = engine_ids(c, [5, 6, 7, 8], 10)
        b = engine_ids(c, [5, 6, 7, 8], 10)
    assert len(a) == 10 and a == b


# ----------------------------------------------------------------------------------------------- cancellation


def _wait_for(cond, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s")


def test_cancellation_mid_stream_stops_the_engine(deployment):
    n = MAX_SEQ_LEN - 100
    before = deployment.metric("k2trt_engine_requests_total", reason="cancelled")
    with deployment.client() as c:
        # min_tokens: no early end, so only the cancellation can stop it before n tokens
        stream = c.request({"messages": user("Count to a thousand."), "max_tokens": n, "stream": True,
                            "sampling": {"temperature": 0, "min_tokens": n}})
        got = [next(stream) for _ in range(3)]
        assert deployment.metric("k2trt_engine_requests_in_flight") == 1
        stream.close()  # leaving the stream cancels the request on the server
        t_cancel = time.monotonic()
        _wait_for(lambda: deployment.metric("k2trt_engine_requests_in_flight") == 0, 20)
        took = time.monotonic() - t_cancel
    assert all(o["choices"][0]["finish_reason"] is None for o in got)
    assert deployment.metric("k2trt_engine_requests_total", reason="cancelled") == before + 1
    assert took < 10  # generating n tokens takes far longer; the server stopped it
    with deployment.client() as c:  # and it keeps serving
        assert collect(c.chat(user("Hi"), max_tokens=4, temperature=0)).usage["completion_tokens"] >= 1


def test_a_client_leaving_the_engine_model_cancels_its_request(deployment):
    # Through the ensemble, Triton 2.51 checks cancellation only between steps (its request_cancellation doc), so
    # the running engine step finishes its request; k2_bls and direct engine requests are cancelled at once.
    before = deployment.metric("k2trt_engine_requests_total", reason="cancelled")
    with deployment.client() as c:
        stream = c.engine_stream([5, 6, 7, 8], max_tokens=MAX_SEQ_LEN - 50, min_tokens=MAX_SEQ_LEN - 50)
        next(stream)
        assert deployment.metric("k2trt_engine_requests_in_flight") == 1
        stream.close()
        _wait_for(lambda: deployment.metric("k2trt_engine_requests_in_flight") == 0, 10)
    assert deployment.metric("k2trt_engine_requests_total", reason="cancelled") == before + 1


# ----------------------------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize("body, message", [
    ("{not json", "k2_bls: request: not valid JSON"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "k2_bls: messages[0].role: 'wizard' is not one of"),
    ({"messages": user("hi"), "max_tokens": 100000}, "k2_bls: max_tokens 100000 is beyond the context"),
    ({"messages": []}, "k2_bls: messages: expected a non-empty list"),
])
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(deployment, body, message):
    with deployment.client() as c:
        raw = body if isinstance(body, str) else json.dumps(body)
        import tritonclient.grpc as g

        data = g.InferInput("request", [1], "BYTES")
        data.set_data_from_numpy(np.array([raw.encode()], dtype=np.object_))
        with pytest.raises(ServerError) as e:
            list(c._stream("k2_bls", [data], "response"))
        assert message in str(e.value)
        assert collect(c.chat(user("Hi"), max_tokens=2, temperature=0)).finish_reason in ("stop", "length")


def test_bad_engine_request_is_refused(deployment):
    import tritonclient.grpc as g

    with deployment.client() as c, pytest.raises(ServerError, match="tensorrt_llm: beam_width: only 1"):
        inputs = []
        for name, arr in (("input_ids", np.array([[1, 2]], np.int32)), ("input_lengths", np.array([[2]], np.int32)),
                          ("request_output_len", np.array([[2]], np.int32)), ("beam_width", np.array([[2]], np.int32))):
            t = g.InferInput(name, list(arr.shape), "INT32")
            t.set_data_from_numpy(arr)
            inputs.append(t)
        list(c._stream("tensorrt_llm", inputs, "output_ids"))


# ----------------------------------------------------------------------------------------------- tools around it


def test_perf_analyzer_drives_the_ensemble_with_streaming(deployment, tmp_path):
    from k2trt.bench.perf_analyzer import environment, find_perf_analyzer

    data = tmp_path / "input.json"
    data.write_text(json.dumps({"data": [{"text_input": ["Tell me a story."], "max_tokens": [16], "stream": [True]},
                                         {"text_input": ["Hello"], "max_tokens": [8], "stream": [True]}]}))
    before = sum(deployment.metric("k2trt_engine_requests_total", reason=r) for r in ("stop", "length"))
    cmd = [str(find_perf_analyzer()), "-m", "ensemble", "-i", "grpc", "--streaming", "-u",
           deployment.server.grpc_url, "--input-data", str(data), "--concurrency-range", "2",
           "--request-count", "8"]
    r = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Throughput:" in out and "error" not in out.lower()
    after = sum(deployment.metric("k2trt_engine_requests_total", reason=r) for r in ("stop", "length"))
    assert after - before >= 8


def test_cli_chat_one_shot(deployment):
    from typer.testing import CliRunner

    from k2trt.cli import app

    r = CliRunner().invoke(app, ["chat", "Hello!", "--url", deployment.server.grpc_url, "--max-tokens", "8",
                                 "--temperature", "0"])
    assert r.exit_code == 0, r.output
    assert re.search(r"\[(stop|length); \d+ prompt \+ \d+ completion tokens", r.output)


def test_a_model_that_fails_to_load_stops_the_server_with_its_error(deployment, tmp_path):
    import shutil

    from k2trt.errors import K2Error

    broken = tmp_path / "repo"
    shutil.copytree(deployment.repo, broken)
    cfg = broken / "preprocessing" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace(str(deployment.settings.tokenizer_dir), str(tmp_path / "no-tokenizer")))
    with pytest.raises(K2Error) as e:
        start_local_server(broken, log_path=tmp_path / "log", exit_timeout_s=1, ready_timeout_s=120)
    text = "\n".join(e.value.problems)
    assert "tritonserver exited" in text and "failed to load 'preprocessing'" in text
    assert "no-tokenizer" in text  # the model's own error, as the server reported it


def test_cli_chat_interactive_with_tools(deployment, tmp_path):
    from typer.testing import CliRunner

    from k2trt.cli import app

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]))
    r = CliRunner().invoke(app, ["chat", "--url", deployment.server.grpc_url, "--tools", str(tools), "--max-tokens",
                                 "6", "--temperature", "0"], input="Hello\nWeather in Oslo?\n\n")
    assert r.exit_code == 0, r.output
    assert len(re.findall(r"\[(stop|length|tool_calls); \d+ prompt", r.output)) >= 2  # two turns answered


def test_a_port_taken_between_choosing_and_binding_is_retried(deployment, tmp_path, monkeypatch):
    """The race CI once lost: a port free when chosen is taken before tritonserver binds it. tritonserver then
    answers "ready" on HTTP while its metrics endpoint failed; that start must fail, and start_local_server tries
    again on other ports."""
    import socket

    from k2trt.serving import server as srv

    real_free_ports = srv.free_ports
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()  # accepts connections, never answers: an endpoint that is not tritonserver's
        taken = squatter.getsockname()[1]
        calls = []

        def free_ports(n=3, host="127.0.0.1"):
            calls.append(n)
            return real_free_ports(2, host) + [taken] if len(calls) == 1 else real_free_ports(n, host)

        monkeypatch.setattr(srv, "free_ports", free_ports)
        monkeypatch.setattr(srv, "_port_in_use", lambda port, address: False)  # the port is taken after the check
        server = srv.start_local_server(deployment.repo, log_path=tmp_path / "log", exit_timeout_s=1,
                                        ready_timeout_s=120)
        try:
            assert len(calls) == 2 and server.opts.metrics_port != taken
            with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
                assert b"nv_inference_count" in r.read()
        finally:
            server.stop()


def test_free_ports_avoid_the_ephemeral_range():
    from k2trt.serving.server import _ephemeral_range, free_port_range, free_ports

    lo, hi = _ephemeral_range()
    start, stop = free_port_range()
    assert stop <= lo or start > hi  # outside the range the kernel hands out for outgoing connections
    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(start <= p < stop for p in ports)
