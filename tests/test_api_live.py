"""The real stack: openai and anthropic SDKs -> k2trt api -> tritonserver (k2_bls, the torch engine) -> k2-tiny.

One tritonserver for the session: the ``deployment`` fixture of the serving tests when tests/conftest.py offers it,
else one built here the same way (convert -> engine dir -> ``k2trt repo`` -> ``k2trt serve``'s start), and one
gateway for this module (started by :func:`k2trt.api.server.start_api`, the code behind ``k2trt serve --api-port``).
The checkpoint is the trained ``models/k2-tiny`` (tool use; block-FP8 in K2's layout); without it a synthetic
tiny one with random weights, on which everything but the tool-calling tests runs.

Determinism: greedy requests (``temperature=0``) are deterministic; the seed's own loop runs at its
``temperature=0.6`` with a ``seed`` (the engine samples each request from its own generator seeded with it), and
is checked by what must hold for any sample (the loop ends, each call is to get_weather with JSON arguments, the
answer is text).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from k2trt.api.server import start_api

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(os.environ.get("K2TRT_TINY_MODEL", ROOT / "models" / "k2-tiny"))
KEY = "sk-live-test"

pytestmark = pytest.mark.slow

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Retrieve current weather information. Call this when the user asks about the weather.",
        "parameters": {"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string", "description": "Name of the city"}}},
    },
}]
SEED_MESSAGES = [
    {"role": "system", "content": "You are Kimi, an AI assistant created by Moonshot AI."},
    {"role": "user", "content": "What's the weather like in Beijing today? Let's check using the tool."},
]


def get_weather(city: str) -> dict:
    return {"weather": "Sunny"}


@dataclass
class Stack:
    url: str  # the gateway
    server: object  # k2trt.serving.server.TritonServer
    model: str  # the served model name (k2_bls's served_model_name: the gateway asks Triton for it)
    trained: bool  # the checkpoint is the trained k2-tiny
    max_seq_len: int


def _own_server(work: Path):
    """A tritonserver on a repository built here (when no shared deployment fixture exists)."""
    from k2trt.convert import convert
    from k2trt.runtime.engine_dir import RuntimeConfig, build_torch_engine
    from k2trt.serving.server import start_local_server
    from k2trt.serving.settings import settings_for_engine, write_repo
    from k2trt.synth import synthesize

    trained = (TINY / "config.json").is_file()
    ckpt = TINY if trained else synthesize(out=work / "ckpt", preset="tiny", seed=0, shards=2)
    conv = convert(checkpoint=ckpt, out=work / "conv", tp=1, ep=1, weights="bf16", progress=False).out
    engine = build_torch_engine(converted=conv, out=work / "engine",
                                runtime=RuntimeConfig(max_batch_size=4, max_seq_len=1024, kv_cache_tokens=8192))
    repo = write_repo(settings=settings_for_engine(engine, tokenizer_dir=ckpt, served_model_name="k2-tiny"),
                      out=work / "repo")
    server = start_local_server(repo, log_path=work / "tritonserver.log")
    return server, trained, 1024


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    try:
        shared = request.getfixturevalue("deployment")
        server, trained, max_seq_len, own = shared.server, shared.trained, shared.settings.max_seq_len, False
    except pytest.FixtureLookupError:
        server, trained, max_seq_len = _own_server(tmp_path_factory.mktemp("live"))
        own = True
    try:
        from k2trt.serving.server import free_ports

        # no model_name: the gateway asks k2_bls for its served_model_name
        with start_api(triton_url=server.grpc_url, port=free_ports(1)[0], api_key=KEY, max_body_bytes=256 * 1024,
                       max_concurrency=4) as gw:
            model = httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"}).json()["data"][0]["id"]
            yield Stack(gw.url, server, model, trained, max_seq_len)
    finally:
        if own:
            server.stop()


@pytest.fixture
def trained(stack):
    if not stack.trained:
        pytest.skip(f"needs the trained tiny model at {TINY} (scripts/train_tiny.py writes it): random weights "
                    "do not call tools")


@pytest.fixture
def oai(stack):
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture
def claude(stack):
    return anthropic.Anthropic(base_url=stack.url, api_key=KEY, max_retries=0, timeout=300)


# ----------------------------------------------------------------------------------------------- the seed example


def test_seed_example_loop(stack, oai, trained):
    """The K2 model card's tool-calling loop, verbatim apart from the client's base_url/api_key and a seed."""
    client, model_name = oai, stack.model
    messages = list(SEED_MESSAGES)
    tool_map = {"get_weather": get_weather}
    finish_reason = None
    rounds = 0
    while finish_reason is None or finish_reason == "tool_calls":
        completion = client.chat.completions.create(model=model_name, messages=messages, temperature=0.6,
                                                    tools=TOOLS, tool_choice="auto", seed=1234)
        choice = completion.choices[0]
        finish_reason = choice.finish_reason
        if finish_reason == "tool_calls":
            messages.append(choice.message)
            for tool_call in choice.message.tool_calls:
                tool_call_name = tool_call.function.name
                tool_call_arguments = json.loads(tool_call.function.arguments)
                tool_function = tool_map[tool_call_name]
                tool_result = tool_function(**tool_call_arguments)
                messages.append({"role": "tool", "tool_call_id": tool_call.id, "name": tool_call_name,
                                 "content": json.dumps(tool_result)})
        rounds += 1
        assert rounds <= 3, f"the loop did not end: {messages}"
    assert rounds >= 2, "the model answered without calling get_weather"
    assert finish_reason == "stop" and choice.message.content
    assert messages[2].tool_calls[0].function.name == "get_weather"


def test_seed_example_streaming(stack, oai, trained):
    """The streaming variant: tool-call deltas accumulated by index, then the answer streamed."""
    messages = list(SEED_MESSAGES)
    for _ in range(3):
        stream = oai.chat.completions.create(model=stack.model, messages=messages, temperature=0.6, tools=TOOLS,
                                             tool_choice="auto", stream=True, seed=1234)
        finish_reason, content, tool_calls = None, "", {}
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                if tc.index not in tool_calls:
                    tool_calls[tc.index] = {"id": tc.id, "type": "function",
                                            "function": {"name": tc.function.name, "arguments": ""}}
                tool_calls[tc.index]["function"]["arguments"] += tc.function.arguments or ""
            finish_reason = chunk.choices[0].finish_reason or finish_reason
        if finish_reason != "tool_calls":
            break
        calls = [tool_calls[i] for i in sorted(tool_calls)]
        messages.append({"role": "assistant", "content": content or None, "tool_calls": calls})
        for call in calls:
            result = get_weather(**json.loads(call["function"]["arguments"]))
            messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                             "content": json.dumps(result)})
    assert finish_reason == "stop" and content
    assert any(m.get("tool_calls") for m in messages if isinstance(m, dict)), "no tool was called"


def _streamed(oai, **args):
    """(content, calls by index, finish_reason, usage) of a streamed request, accumulated as a client does."""
    content, calls, finish, usage = "", {}, None, None
    for chunk in oai.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        if chunk.choices:
            delta = chunk.choices[0].delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "arguments": ""})
                entry["arguments"] += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish, usage


def _same(oai, **args) -> str:
    whole = oai.chat.completions.create(**args)
    content, calls, finish, usage = _streamed(oai, **args)
    msg = whole.choices[0].message
    assert content == (msg.content or "")
    assert calls == [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                     for c in msg.tool_calls or []]
    assert finish == whole.choices[0].finish_reason
    assert usage.model_dump() == whole.usage.model_dump()
    return finish


def test_streaming_equals_non_streaming_greedy_text(stack, oai):
    _same(oai, model=stack.model, messages=[{"role": "user", "content": "Hello! Who are you?"}], temperature=0,
          max_tokens=48)


def test_streaming_equals_non_streaming_greedy_tool_call(stack, oai, trained):
    assert _same(oai, model=stack.model, messages=SEED_MESSAGES, tools=TOOLS, temperature=0,
                 max_tokens=48) == "tool_calls"


def test_tool_choice_named_forces_the_call(stack, oai):
    """The turn is started with the call's opening: even random weights "call" get_weather (arguments aside)."""
    named = oai.chat.completions.create(
        model=stack.model, temperature=0, max_tokens=32, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "Tell me about Paris."}])
    call = named.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id == "functions.get_weather:0"


def test_tool_choice_none_returns_no_calls(stack, oai):
    none = oai.chat.completions.create(model=stack.model, temperature=0, max_tokens=32, tools=TOOLS,
                                       tool_choice="none", messages=SEED_MESSAGES)
    assert not none.choices[0].message.tool_calls and none.choices[0].finish_reason in ("stop", "length")


def test_tool_choice_none_leaks_no_markers(stack, oai, trained):
    none = oai.chat.completions.create(model=stack.model, temperature=0, max_tokens=48, tools=TOOLS,
                                       tool_choice="none", messages=SEED_MESSAGES)
    assert "<|tool_call" not in (none.choices[0].message.content or "")


# ----------------------------------------------------------------------------------------------- Anthropic


def test_anthropic_tool_use_round_trip(stack, claude, trained):
    tools = [{"name": "get_weather", "description": TOOLS[0]["function"]["description"],
              "input_schema": TOOLS[0]["function"]["parameters"]}]
    messages = [{"role": "user", "content": "What's the weather like in Beijing today? Let's check using the tool."}]
    first = claude.messages.create(model=stack.model, max_tokens=64, system="You are Kimi, an AI assistant created "
                                   "by Moonshot AI.", tools=tools, messages=messages, extra_body={"temperature": 0})
    assert first.stop_reason == "tool_use", first
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input.get("city"), str)
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": json.dumps(get_weather(**use.input))}]}]
    with claude.messages.stream(model=stack.model, max_tokens=64, tools=tools, messages=messages,
                                extra_body={"temperature": 0}) as s:
        events = [e.type for e in s]
        second = s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert second.stop_reason in ("end_turn", "max_tokens") and second.content[0].type == "text"
    assert second.content[0].text and second.usage.input_tokens > first.usage.input_tokens
    whole = claude.messages.create(model=stack.model, max_tokens=64, tools=tools, messages=messages,
                                   extra_body={"temperature": 0})
    assert [b.model_dump() for b in whole.content] == [b.model_dump() for b in second.content]


def test_anthropic_max_tokens(stack, claude):
    r = claude.messages.create(model=stack.model, max_tokens=3, extra_body={"temperature": 0},
                               messages=[{"role": "user", "content": "Tell me a long story about Paris."}])
    assert (r.stop_reason, r.usage.output_tokens) == ("max_tokens", 3) or r.stop_reason == "end_turn"


# ----------------------------------------------------------------------------------------------- errors


def test_every_error_path_in_its_schema_while_serving(stack, oai, claude):
    url, model = stack.url, stack.model
    openai_cases = [
        (dict(model="gpt-4o"), openai.NotFoundError, "model"),
        (dict(n=2), openai.BadRequestError, "n"),
        (dict(logprobs=True), openai.BadRequestError, "logprobs"),
        (dict(tools=[{"type": "function", "function": {"name": "get weather"}}]), openai.BadRequestError, "tools"),
        (dict(messages=[]), openai.BadRequestError, "messages"),
    ]
    for kw, exc, param in openai_cases:
        with pytest.raises(exc) as e:
            oai.chat.completions.create(**{"model": model, "messages": SEED_MESSAGES, "max_tokens": 4, **kw})
        assert e.value.body["param"] == param, e.value.body
    auth = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/v1/chat/completions", json={"model": model}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model=model, messages=SEED_MESSAGES)
    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "x" * 300_000}])
    assert e.value.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError) as e:  # k2_bls: the prompt does not fit max_seq_len
        oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 3000}])
    assert "max_seq_len" in e.value.body["message"]

    anthropic_cases = [
        (dict(model="claude-x"), anthropic.NotFoundError, "not_found_error"),
        (dict(tools=[{"name": "f", "input_schema": {"type": "string"}}]), anthropic.BadRequestError,
         "invalid_request_error"),
        (dict(messages=[]), anthropic.BadRequestError, "invalid_request_error"),
        (dict(extra_body={"logprobs": True}), anthropic.BadRequestError, "invalid_request_error"),
    ]
    for kw, exc, kind in anthropic_cases:
        with pytest.raises(exc) as e:
            claude.messages.create(**{"model": model, "max_tokens": 4,
                                      "messages": [{"role": "user", "content": "hi"}], **kw})
        assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == kind
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0).messages.create(
            model=model, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.APIStatusError) as e:
        claude.messages.create(model=model, max_tokens=4, messages=[{"role": "user", "content": "x" * 300_000}])
    assert e.value.status_code == 413 and e.value.body["error"]["type"] == "request_too_large"

    # still serving, both APIs
    assert oai.chat.completions.create(model=model, messages=SEED_MESSAGES, max_tokens=4, temperature=0).choices
    assert claude.messages.create(model=model, max_tokens=4, messages=[{"role": "user", "content": "hi"}]).content


def _triton_count(server, model: str) -> int:
    """Triton's ``nv_inference_count`` of one model."""
    for line in httpx.get(server.metrics_url).text.splitlines():
        if line.startswith("nv_inference_count{") and f'model="{model}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError(f"no nv_inference_count for {model}")


def test_disconnect_cancels_the_triton_request(stack, oai):
    """A client leaving mid-stream: the gateway cancels its gRPC call, k2_bls sees is_cancelled() and stops the
    engine (a tensorrtllm-style stop request: the engine model's second request), the slot is freed."""
    engine_before = _triton_count(stack.server, "tensorrt_llm")
    host, port = stack.url.removeprefix("http://").split(":")
    n = stack.max_seq_len - 100  # min_tokens = max_tokens: seconds of generation, whatever the model would say
    body = json.dumps({"model": stack.model, "stream": True, "max_tokens": n, "min_tokens": n, "temperature": 0,
                       "messages": [{"role": "user", "content": "Tell me a long story."}]}).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {KEY}\r\n"
                 f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # the first token is out: generation runs
    sock.close()
    deadline = time.monotonic() + 60
    while _triton_count(stack.server, "tensorrt_llm") < engine_before + 2:
        assert time.monotonic() < deadline, "k2_bls never stopped the engine request"
        time.sleep(0.1)
    assert _triton_count(stack.server, "tensorrt_llm") == engine_before + 2  # the generation and its stop request
    metrics = httpx.get(stack.url + "/metrics").text
    assert "k2trt_api_in_flight 0.0" in metrics
    assert 'k2trt_api_cancelled_total{api="openai"} 1.0' in metrics
    assert oai.chat.completions.create(model=stack.model, messages=SEED_MESSAGES, max_tokens=4,
                                       temperature=0).choices


def test_health_models_metrics(stack, oai):
    assert httpx.get(stack.url + "/health").json() == {"status": "ok", "model": stack.model}
    assert [m.id for m in oai.models.list()] == [stack.model]
    text = httpx.get(stack.url + "/metrics").text
    assert 'k2trt_api_requests_total{api="openai",status="200"}' in text
    assert "k2trt_api_time_to_first_token_seconds_bucket" in text
