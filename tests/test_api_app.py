"""The gateway over HTTP with the real openai and anthropic SDKs, in front of a scripted backend.

The backend here is a stand-in for k2_bls that plays fixed K2 outputs through k2trt.toolcall (the parser the BLS
uses), so every HTTP behaviour (auth, limits, errors in both schemas, SSE, disconnects, metrics) is tested without
Triton; tests/test_api_live.py runs the same SDK calls against tritonserver and the tiny model.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import anthropic
import httpx
import openai
import pytest
import uvicorn

from k2trt.api.app import ApiConfig, create_app
from k2trt.api.backend import Finish, Result
from k2trt.api.errors import ApiError
from k2trt.toolcall import StreamingToolParser, parse

MODEL = "k2-tiny"
KEY = "sk-test-k2"
WEATHER_TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Retrieve current weather information. Call this when the user asks about the weather.",
        "parameters": {"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string", "description": "Name of the city"}}},
    },
}]
CALL_TEXT = ('Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
             '<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|><|tool_calls_section_end|>')
ANSWER_TEXT = "The weather in Beijing is Sunny today."


class ScriptedBackend:
    """Answers like the tiny model would: a get_weather call when tools are declared and no tool result is in
    the conversation yet, then the answer. Special user texts: ``SLOW`` streams slowly (for disconnects),
    ``FAIL-FIRST`` fails before any token (422), ``FAIL-MID`` fails mid-stream."""

    def __init__(self):
        self.cancelled = 0
        self.started = 0
        self.up = True
        self.requests: list[dict] = []

    async def ready(self) -> bool:
        return self.up

    async def served_model_name(self) -> str:
        return MODEL  # k2_bls's served_model_name parameter

    def _text(self, req: dict) -> tuple[str, str, list[str]]:
        last = req["messages"][-1]
        user = last["content"] if isinstance(last["content"], str) else "".join(p["text"] for p in last["content"])
        declared = [t["function"]["name"] for t in req.get("tools") or []]
        if last["role"] == "tool":
            return ANSWER_TEXT, user, declared
        if declared:
            return CALL_TEXT, user, declared
        return "Hello! How can I help?", user, declared

    def _finish(self, req: dict, text: str, n: int, calls: bool) -> tuple[str, dict]:
        limit = req.get("max_tokens")
        reason = "length" if limit is not None and n >= limit else "tool_calls" if calls else "stop"
        return reason, {"prompt_tokens": len(json.dumps(req["messages"])) // 4, "completion_tokens": n}

    def _chunks(self, text: str, req: dict) -> list[str]:
        chunks = [text[k:k + 5] for k in range(0, len(text), 5)]
        limit = req.get("max_tokens")
        return chunks[:limit] if limit is not None else chunks

    async def complete(self, req: dict) -> Result:
        self.requests.append(req)
        self.started += 1
        text, user, declared = self._text(req)
        if "FAIL-FIRST" in user:
            raise ApiError(422, "k2_bls: prompt is longer than the engine's 64 tokens")
        try:
            if "SLOW" in user:
                await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        chunks = self._chunks(text, req)
        res = parse("".join(chunks), declared_tools=declared)
        reason, usage = self._finish(req, text, len(chunks), bool(res.tool_calls))
        return Result(res.content, [c.to_openai() for c in res.tool_calls], reason, usage)

    async def stream(self, req: dict):
        self.requests.append(req)
        self.started += 1
        text, user, declared = self._text(req)
        if "FAIL-FIRST" in user:
            raise ApiError(422, "k2_bls: prompt is longer than the engine's 64 tokens")
        p = StreamingToolParser(declared_tools=declared)
        chunks = self._chunks(text, req)
        try:
            for k, c in enumerate(chunks):
                if "SLOW" in user:
                    await asyncio.sleep(0.2)
                if "FAIL-MID" in user and k == 2:
                    raise ApiError(500, "Triton: the model instance crashed")
                for d in p.feed(c):
                    yield d.to_openai()
            for d in p.finish():
                yield d.to_openai()
            reason, usage = self._finish(req, text, len(chunks), bool(p.result.tool_calls))
            yield Finish(reason, usage)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def close(self) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway():
    """A uvicorn gateway in a thread: (base url, backend, app)."""
    backend = ScriptedBackend()
    app = create_app(ApiConfig(model_name=None, api_key=KEY, max_body_bytes=64 * 1024, max_concurrency=2),
                     backend=backend)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", backend, app
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def oai(gateway):
    return openai.OpenAI(base_url=gateway[0] + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def claude(gateway):
    return anthropic.Anthropic(base_url=gateway[0], api_key=KEY, max_retries=0)


def get_weather(city: str) -> dict:
    return {"weather": "Sunny"}


SEED_MESSAGES = [
    {"role": "system", "content": "You are Kimi, an AI assistant created by Moonshot AI."},
    {"role": "user", "content": "What's the weather like in Beijing today? Let's check using the tool."},
]


# ----------------------------------------------------------------------------------------------- OpenAI


def test_seed_example_loop(oai):
    """The model card's example, verbatim apart from base_url/api_key."""
    messages = list(SEED_MESSAGES)
    tool_map = {"get_weather": get_weather}
    finish_reason = None
    turns = 0
    while finish_reason is None or finish_reason == "tool_calls":
        completion = oai.chat.completions.create(model=MODEL, messages=messages, temperature=0.6,
                                                 tools=WEATHER_TOOLS, tool_choice="auto")
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
        turns += 1
    assert turns == 2
    assert choice.message.content == ANSWER_TEXT
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert messages[2].tool_calls[0].id == "functions.get_weather:0"


def test_streaming_equals_non_streaming(oai):
    whole = oai.chat.completions.create(model=MODEL, messages=SEED_MESSAGES, tools=WEATHER_TOOLS, seed=1)
    stream = oai.chat.completions.create(model=MODEL, messages=SEED_MESSAGES, tools=WEATHER_TOOLS, seed=1,
                                         stream=True, stream_options={"include_usage": True})
    content, calls, finish, usage, roles = "", {}, None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        roles.append(delta.role)
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "arguments": ""})
            entry["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    msg = whole.choices[0].message
    assert roles[0] == "assistant"
    assert content == (msg.content or "") == "Let me check."
    assert [calls[i] for i in sorted(calls)] == [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in msg.tool_calls]
    assert finish == whole.choices[0].finish_reason == "tool_calls"
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_gives_length(oai):
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2


def test_models(oai, gateway):
    assert [m.id for m in oai.models.list()] == [MODEL]
    assert oai.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4o")


@pytest.mark.parametrize(
    ("kwargs", "status", "param", "match"),
    [
        ({"model": "gpt-4o"}, 404, "model", "does not exist"),
        ({"n": 2}, 400, "n", "'n'"),
        ({"logprobs": True}, 400, "logprobs", "'logprobs'"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                                  "required": "city"}}}]},
         400, "tools", "tools[0].function.parameters.required"),
        ({"messages": []}, 400, "messages", "messages"),
        ({"extra_body": {"top_a": 1}}, 400, "top_a", "unrecognized"),
    ],
)
def test_openai_errors_in_openai_schema(oai, kwargs, status, param, match):
    args = {"model": MODEL, "messages": SEED_MESSAGES, **kwargs}
    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(**args)
    assert e.value.status_code == status
    assert e.value.body["type"] in ("invalid_request_error", "not_found_error")
    assert e.value.body["param"] == param and match in e.value.body["message"]
    assert oai.chat.completions.create(model=MODEL, messages=SEED_MESSAGES).choices  # still serving


def test_missing_messages_bad_json_and_wrong_key(gateway):
    url = gateway[0] + "/v1/chat/completions"
    auth = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(url, json={"model": MODEL}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(url, content=b'{"model": "k2-tiny", "messages": [', headers={**auth, "content-type":
                                                                              "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url, json={"model": MODEL, "messages": SEED_MESSAGES}, headers={"authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(url, json={"model": MODEL, "messages": SEED_MESSAGES})
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway[0] + "/v1", api_key="wrong", max_retries=0).models.list()


def test_oversized_body_is_413_in_both_schemas(gateway, oai, claude):
    big = "x" * (65 * 1024)
    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": big}])
    assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"
    with pytest.raises(anthropic.APIStatusError) as e:
        claude.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": big}])
    assert e.value.status_code == 413 and e.value.body["error"]["type"] == "request_too_large"

    def chunked():  # no Content-Length: the limit holds while reading
        for _ in range(70):
            yield b"x" * 1024

    r = httpx.post(gateway[0] + "/v1/chat/completions", content=chunked(),
                   headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 413


def test_unknown_route_and_method(gateway):
    r = httpx.get(gateway[0] + "/v1/engines", headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(gateway[0] + "/v1/messages", headers={"x-api-key": KEY})
    assert r.status_code == 405 and r.json()["type"] == "error"


def test_error_before_first_token_is_a_real_status(oai, claude):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "FAIL-FIRST"}], stream=True)
    assert "longer than" in e.value.body["message"]
    with pytest.raises(anthropic.UnprocessableEntityError):
        claude.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "FAIL-FIRST"}])


def test_error_mid_stream_is_an_error_event(oai, claude):
    with pytest.raises(openai.APIError, match="crashed"):
        for _ in oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "FAIL-MID"}],
                                             stream=True):
            pass
    with pytest.raises(anthropic.APIStatusError, match="crashed"):
        with claude.messages.stream(model=MODEL, max_tokens=64,
                                    messages=[{"role": "user", "content": "FAIL-MID"}]) as s:
            for _ in s:
                pass


def _in_flight(app) -> int:
    return app.state.k2["in_flight"]


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _raw_post(url: str, body: dict, headers: dict) -> socket.socket:
    """Send a POST on a raw socket and leave it open: closing it is a client disconnect."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(data)}\r\n{head}\r\n".encode() + data)
    return sock


def test_concurrency_limit_is_429_then_serves_again(gateway, oai, claude):
    url, backend, app = gateway
    slow = {"model": MODEL, "messages": [{"role": "user", "content": "SLOW"}]}
    socks = [_raw_post(url, slow, {"authorization": f"Bearer {KEY}"}) for _ in range(2)]
    _wait(lambda: _in_flight(app) == 2)
    with pytest.raises(openai.RateLimitError) as e:
        oai.chat.completions.create(model=MODEL, messages=SEED_MESSAGES)
    assert e.value.response.headers["retry-after"] == "1"
    with pytest.raises(anthropic.RateLimitError) as e:
        claude.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "rate_limit_error"
    cancelled = backend.cancelled
    for s in socks:
        s.close()  # the clients go away: their (non-streaming) requests are cancelled and the slots freed
    _wait(lambda: _in_flight(app) == 0)
    _wait(lambda: backend.cancelled == cancelled + 2)
    assert oai.chat.completions.create(model=MODEL, messages=SEED_MESSAGES).choices


def test_stream_disconnect_cancels_the_request(gateway):
    url, backend, app = gateway
    before = backend.cancelled
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                      json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "SLOW"}]}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the stream runs; then the client leaves
    _wait(lambda: backend.cancelled == before + 1)
    _wait(lambda: _in_flight(app) == 0)


# ----------------------------------------------------------------------------------------------- Anthropic


def test_anthropic_tool_use_round_trip(claude, gateway):
    tools = [{"name": "get_weather", "description": "Retrieve current weather information.",
              "input_schema": WEATHER_TOOLS[0]["function"]["parameters"]}]
    messages = [{"role": "user", "content": "What's the weather like in Beijing today?"}]
    first = claude.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=messages,
                                   extra_body={"temperature": 1.0})  # this SDK version sends it only so
    assert first.stop_reason == "tool_use"
    use = [b for b in first.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and use.input == {"city": "Beijing"}
    assert gateway[1].requests[-1]["sampling"]["temperature"] == pytest.approx(0.6)  # 1.0 x 0.6
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": json.dumps(get_weather(**use.input))}]}]
    second = claude.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=messages)
    assert second.stop_reason == "end_turn" and second.content[0].text == ANSWER_TEXT
    sent = gateway[1].requests[-1]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": use.id, "name": "get_weather",
                        "content": [{"type": "text", "text": '{"weather": "Sunny"}'}]}


def test_anthropic_stream_equals_whole(claude):
    tools = [{"name": "get_weather", "input_schema": WEATHER_TOOLS[0]["function"]["parameters"]}]
    messages = [{"role": "user", "content": "Weather in Beijing?"}]
    whole = claude.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=messages)
    with claude.messages.stream(model=MODEL, max_tokens=64, tools=tools, messages=messages) as s:
        kinds = [e.type for e in s]
        streamed = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in whole.content]
    assert streamed.stop_reason == whole.stop_reason == "tool_use"
    assert streamed.usage.output_tokens == whole.usage.output_tokens
    assert streamed.usage.input_tokens == whole.usage.input_tokens


def test_anthropic_errors_in_anthropic_schema(claude, gateway):
    cases = [
        (dict(model="claude-x"), anthropic.NotFoundError, "not_found_error"),
        (dict(tools=[{"name": "f", "input_schema": {"type": "object", "properties": {"a": 3}}}]),
         anthropic.BadRequestError, "invalid_request_error"),
        (dict(extra_body={"n": 2}), anthropic.BadRequestError, "invalid_request_error"),
        (dict(messages=[]), anthropic.BadRequestError, "invalid_request_error"),
    ]
    for kw, exc, kind in cases:
        args = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **kw}
        with pytest.raises(exc) as e:
            claude.messages.create(**args)
        assert e.value.body == {"type": "error", "error": {"type": kind, "message": e.value.body["error"]["message"]}}
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=gateway[0], api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    r = httpx.post(gateway[0] + "/v1/messages", content=b"{", headers={"x-api-key": KEY})
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert claude.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]).content


# ----------------------------------------------------------------------------------------------- health, metrics


def test_health_follows_the_backend(gateway):
    url, backend, _ = gateway
    assert httpx.get(url + "/health").status_code == 200
    backend.up = False
    try:
        r = httpx.get(url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
    finally:
        backend.up = True


def test_metrics(gateway, oai):
    url = gateway[0]
    list(oai.chat.completions.create(model=MODEL, messages=SEED_MESSAGES, stream=True))
    text = httpx.get(url + "/metrics").text
    for name in ("k2trt_api_requests_total", "k2trt_api_errors_total", "k2trt_api_time_to_first_token_seconds_bucket",
                 "k2trt_api_prompt_tokens_bucket", "k2trt_api_completion_tokens_bucket", "k2trt_api_in_flight"):
        assert name in text, name
    assert 'k2trt_api_requests_total{api="openai",status="200"}' in text
    assert 'k2trt_api_time_to_first_token_seconds_count{api="openai"}' in text


def test_cli_refuses_public_bind_without_key():
    from typer.testing import CliRunner

    from k2trt.cli import app

    r = CliRunner().invoke(app, ["api", "--host", "0.0.0.0", "--triton-url", "127.0.0.1:1"])
    assert r.exit_code == 1 and "needs --api-key" in r.output


def test_triton_down_is_503_in_both_schemas_and_unhealthy():
    """The real TritonBackend (tritonclient gRPC aio) with nothing listening at its address."""
    from k2trt.api.server import start_api

    dead, port = _free_port(), _free_port()
    with start_api(triton_url=f"127.0.0.1:{dead}", port=port, model_name=MODEL) as gw:
        r = httpx.get(gw.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        with pytest.raises(openai.InternalServerError) as e:
            openai.OpenAI(base_url=gw.url + "/v1", api_key="-", max_retries=0).chat.completions.create(
                model=MODEL, messages=SEED_MESSAGES)
        assert e.value.status_code == 503 and e.value.body["type"] == "service_unavailable"
        with pytest.raises(anthropic.InternalServerError) as e:
            anthropic.Anthropic(base_url=gw.url, api_key="-", max_retries=0).messages.create(
                model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}], stream=True)
        assert e.value.status_code == 503 and e.value.body["error"]["type"] == "api_error"
    with start_api(triton_url=f"127.0.0.1:{dead}", port=port) as gw:  # no --model-name, and Triton cannot say
        r = httpx.get(gw.url + "/v1/models")
        assert r.status_code == 503 and "--model-name" in r.json()["error"]["message"]
