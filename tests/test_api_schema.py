"""k2trt.api's pure translations: OpenAI and Anthropic requests -> ChatRequest -> k2_bls JSON, results -> responses."""

from __future__ import annotations

import json

import pytest

from k2trt.api import anthropic_schema as an
from k2trt.api import openai_schema as oa
from k2trt.api.backend import Finish, decode_chunk, decode_result
from k2trt.api.errors import ApiError
from k2trt.api.request import parse_json_body
from k2trt.toolcall import StreamingToolParser, collect

MODEL = "k2-tiny"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Retrieve current weather information. Call this when the user asks about the weather.",
        "parameters": {"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string", "description": "Name of the city"}}},
    },
}
SEED_MESSAGES = [
    {"role": "system", "content": "You are Kimi, an AI assistant created by Moonshot AI."},
    {"role": "user", "content": "What's the weather like in Beijing today? Let's check using the tool."},
]


def openai(**kw):
    return oa.parse_chat_request({"model": MODEL, "messages": SEED_MESSAGES, **kw}, served_model=MODEL)


def raises(status: int, fn, *args, match: str = "", **kw) -> ApiError:
    with pytest.raises(ApiError) as e:
        fn(*args, **kw)
    assert e.value.status == status, e.value.message
    assert match in e.value.message, e.value.message
    return e.value


# ----------------------------------------------------------------------------------------------- OpenAI requests


def test_seed_request_becomes_bls_json():
    req = openai(temperature=0.6, tools=[WEATHER], tool_choice="auto", seed=7, max_tokens=64, stop="\n\n")
    bls = req.to_bls()
    assert bls == {
        "messages": SEED_MESSAGES,
        "tools": [WEATHER],
        "tool_choice": "auto",
        "sampling": {"temperature": 0.6, "top_p": 1.0, "seed": 7, "stop": ["\n\n"]},
        "max_tokens": 64,
        "stream": False,
    }


def test_developer_role_is_system():
    req = openai(messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert req.messages[0] == {"role": "system", "content": "Be brief."}


def test_openai_extensions():
    assert openai(top_k=5, min_tokens=3).to_bls()["sampling"] == {"temperature": 0.6, "top_p": 1.0, "top_k": 5,
                                                                   "min_tokens": 3}


def test_openai_defaults():
    req = openai()
    assert req.temperature == 0.6  # K2's recommended temperature, not OpenAI's 1.0
    assert req.tool_choice == "none" and req.max_tokens is None and not req.stream
    assert openai(tools=[WEATHER]).tool_choice == "auto"


def test_tool_choice_none_does_not_declare_tools():
    bls = openai(tools=[WEATHER], tool_choice="none").to_bls()
    assert "tools" not in bls and bls["tool_choice"] == "none"


def test_tool_choice_required_and_named():
    assert openai(tools=[WEATHER], tool_choice="required").to_bls()["tool_choice"] == "required"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert openai(tools=[WEATHER], tool_choice=named).to_bls()["tool_choice"] == {"name": "get_weather"}
    raises(400, openai, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}},
           match="'nope' is not among the tools")
    raises(400, openai, tool_choice="required", match="needs tools")
    raises(400, openai, tools=[WEATHER], tool_choice="sometimes", match="tool_choice")


def test_max_completion_tokens_and_stream_options():
    assert openai(max_completion_tokens=9).max_tokens == 9
    assert openai(max_tokens=9, max_completion_tokens=9).max_tokens == 9
    raises(400, openai, max_tokens=8, max_completion_tokens=9, match="disagree")
    raises(400, openai, max_tokens=0, match="max_tokens")
    req = openai(stream=True, stream_options={"include_usage": True})
    assert req.stream and req.include_usage
    raises(400, openai, stream_options={"include_usage": True}, match="only allowed when stream")


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"n": 2}, "'n'"),
        ({"logprobs": True}, "'logprobs'"),
        ({"top_logprobs": 3}, "'top_logprobs'"),
        ({"presence_penalty": 0.5}, "'presence_penalty'"),
        ({"response_format": {"type": "json_object"}}, "'response_format'"),
        ({"parallel_tool_calls": False}, "'parallel_tool_calls'"),
        ({"functions": []}, "'functions'"),
        ({"min_p": 0.1}, "'min_p' (unrecognized"),
        ({"n": 3, "logit_bias": {"1": 5}}, "'n'"),
    ],
)
def test_unsupported_parameters_are_400_naming_them(params, named):
    err = raises(400, openai, **params, match=named)
    assert err.code == "unsupported_parameter" and err.param == next(iter(params))
    if len(params) > 1:
        assert all(f"'{k}'" in err.message for k in params)


def test_unsupported_parameters_at_their_default_are_accepted():
    req = openai(n=1, logprobs=False, presence_penalty=0, frequency_penalty=0.0, parallel_tool_calls=True,
                 response_format={"type": "text"}, user="u1", metadata=None, top_logprobs=None)
    assert req.model == MODEL


def test_model_and_messages_errors():
    raises(404, oa.parse_chat_request, {"model": "gpt-4o", "messages": SEED_MESSAGES}, served_model=MODEL,
           match="'gpt-4o' does not exist")
    raises(400, oa.parse_chat_request, {"model": MODEL}, served_model=MODEL, match="messages")
    raises(400, oa.parse_chat_request, {"messages": SEED_MESSAGES}, served_model=MODEL, match="model")
    err = raises(400, openai, messages=[{"role": "user", "content": "x"}, {"role": "tool", "content": "y",
                                                                            "tool_call_id": "call_9"}])
    assert "messages[1].tool_call_id" in err.message and err.param == "messages"
    raises(400, openai, messages=[{"role": "wizard", "content": "x"}], match="messages[0].role")
    raises(400, openai, temperature=2.5, match="temperature")
    raises(400, openai, top_p=0, match="top_p")
    raises(400, openai, stop=["a", "b", "c", "d", "e"], match="at most 4")


@pytest.mark.parametrize(
    ("tool", "where"),
    [
        ({"type": "function", "function": {"name": "has space"}}, "tools[0].function.name"),
        ({"type": "retrieval"}, "tools[0]:"),
        ({"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}},
         "tools[0].function.parameters.type"),
        ({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": [1]}}},
         "tools[0].function.parameters.properties"),
        ({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {}},
                                                                         "required": ["b"]}}},
         "tools[0].function.parameters.required[0]"),
        ({"type": "function", "function": {"name": "f", "parameters": "{}"}}, "tools[0].function.parameters"),
    ],
)
def test_invalid_tool_schema_is_400_naming_the_path(tool, where):
    err = raises(400, openai, tools=[tool], match=where)
    assert err.param == "tools"


def test_duplicate_tool_names_and_dotted_names():
    raises(400, openai, tools=[WEATHER, WEATHER], match="already declared by tools[0]")
    dotted = {"type": "function", "function": {"name": "mcp.search", "parameters": {"type": "object"}}}
    assert openai(tools=[dotted]).tools == [dotted]


def test_history_with_tool_calls_passes_through_unchanged():
    history = SEED_MESSAGES + [
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"id": "functions.get_weather:0", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'}}]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "name": "get_weather",
         "content": '{"weather": "Sunny"}'},
    ]
    assert openai(messages=history, tools=[WEATHER]).to_bls()["messages"] == history


def test_parse_json_body():
    assert parse_json_body(b'{"a": 1}') == {"a": 1}
    raises(400, parse_json_body, b'{"a": ', match="not valid JSON (line 1")
    raises(400, parse_json_body, b"[1]", match="must be a JSON object")
    raises(400, parse_json_body, b"\xff\xfe", match="UTF-8")


# ----------------------------------------------------------------------------------------------- OpenAI responses

CALL = {"id": "functions.get_weather:0", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'}}
USAGE = {"prompt_tokens": 40, "completion_tokens": 12}


def test_completion_response_shapes():
    tool_turn = oa.completion_response({"content": "", "tool_calls": [CALL], "finish_reason": "tool_calls",
                                        "usage": USAGE}, completion_id="chatcmpl-1", model=MODEL, created=5)
    assert tool_turn == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": MODEL, "system_fingerprint": None,
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": None, "tool_calls": [CALL], "refusal": None}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
    }
    text = oa.completion_response({"content": "Sunny.", "tool_calls": [], "finish_reason": "stop", "usage": USAGE},
                                  completion_id="c", model=MODEL)
    assert text["choices"][0]["message"] == {"role": "assistant", "content": "Sunny.", "refusal": None}


def test_chunk_writer_with_usage():
    w = oa.ChunkWriter(completion_id="c", model=MODEL, include_usage=True, created=1)
    start = w.start()
    assert start["choices"][0]["delta"] == {"role": "assistant", "content": ""} and start["usage"] is None
    assert w.delta({"content": "Hi"})["choices"][0]["delta"] == {"content": "Hi"}
    end, usage = w.finish("stop", USAGE)
    assert end["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 52
    assert len(oa.ChunkWriter(completion_id="c", model=MODEL, include_usage=False).finish("stop", USAGE)) == 1


# ----------------------------------------------------------------------------------------------- decoding k2_bls


def test_decode_bls_result_and_chunks():
    whole = {"choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [CALL]},
                          "finish_reason": "tool_calls"}], "usage": {**USAGE, "total_tokens": 52}}
    r = decode_result(whole)
    assert r.tool_calls == [CALL] and r.content == "" and r.finish_reason == "tool_calls" and r.usage == USAGE
    assert decode_chunk({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}) == [
        {"content": "a"}]
    assert decode_chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": USAGE}) == [
        Finish("length", USAGE)]
    with pytest.raises(ApiError):
        decode_chunk({"error": {"message": "prompt too long"}})


# ----------------------------------------------------------------------------------------------- Anthropic

A_TOOL = {"name": "get_weather", "description": "Weather.", "input_schema": WEATHER["function"]["parameters"]}


def anthropic(**kw):
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Weather in Beijing?"}], **kw}
    return an.parse_messages_request(body, served_model=MODEL)


def test_anthropic_temperature_is_scaled_by_0_6():
    assert anthropic(temperature=0.5).temperature == pytest.approx(0.3)
    assert anthropic().temperature == pytest.approx(0.6)  # Anthropic's default 1.0 -> K2's recommended 0.6
    raises(400, anthropic, temperature=1.5, match="temperature")


def test_anthropic_tool_use_round_trip_translation():
    req = anthropic(
        system=[{"type": "text", "text": "Be brief."}],
        tools=[A_TOOL],
        tool_choice={"type": "auto"},
        stop_sequences=["END"],
        messages=[
            {"role": "user", "content": "Weather in Beijing?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Beijing"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Sunny"}]},
                {"type": "text", "text": "And tomorrow?"}]},
        ],
    )
    assert req.tools == [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                                             "parameters": A_TOOL["input_schema"]}}]
    assert req.messages == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "Weather in Beijing?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}], "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather",
                                                                "arguments": '{"city": "Beijing"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "name": "get_weather",
         "content": [{"type": "text", "text": "Sunny"}]},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    ]
    assert req.stop == ["END"] and req.max_tokens == 64 and req.tool_choice == "auto"


def test_anthropic_tool_choice_mapping():
    assert anthropic(tools=[A_TOOL], tool_choice={"type": "any"}).tool_choice == "required"
    assert anthropic(tools=[A_TOOL], tool_choice={"type": "tool", "name": "get_weather"}).tool_choice == {
        "name": "get_weather"}
    assert "tools" not in anthropic(tools=[A_TOOL], tool_choice={"type": "none"}).to_bls()
    raises(400, anthropic, tools=[A_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True},
           match="disable_parallel_tool_use")


@pytest.mark.parametrize(
    ("kw", "status", "match"),
    [
        ({"model": "claude-3"}, 404, "'claude-3' does not exist"),
        ({"max_tokens": None}, 400, "max_tokens"),
        ({"tools": [{"name": "f", "input_schema": {"type": "array"}}]}, 400, "tools[0].input_schema.type"),
        ({"tools": [{"name": "f"}]}, 400, "tools[0].input_schema: field required"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400, "server tool"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, 400,
         "messages[0].content[0].type: 'image'"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "y"}]}]},
         400, "answers no tool_use"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}]}, 400,
         "prefill"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, 400, "'thinking'"),
        ({"frequency_penalty": 1}, 400, "'frequency_penalty' (unrecognized"),
    ],
)
def test_anthropic_errors(kw, status, match):
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    body = {k: v for k, v in body.items() if v is not None}
    raises(status, an.parse_messages_request, body, served_model=MODEL, match=match)


def test_anthropic_message_response():
    msg = an.message_response({"content": "Checking.", "tool_calls": [CALL], "finish_reason": "tool_calls",
                               "usage": USAGE}, message_id="msg_1", model=MODEL)
    assert msg == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
        "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "functions.get_weather:0", "name": "get_weather",
                     "input": {"city": "Beijing"}}],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 40, "output_tokens": 12},
    }
    stopped = an.message_response({"content": "a", "tool_calls": [], "finish_reason": "stop", "usage": USAGE,
                                   "stop_sequence": "END"}, message_id="m", model=MODEL)
    assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == "END"
    assert an.message_response({"content": "a", "tool_calls": [], "finish_reason": "length", "usage": USAGE},
                               message_id="m", model=MODEL)["stop_reason"] == "max_tokens"
    bad = {**CALL, "function": {"name": "get_weather", "arguments": '{"city": '}}
    raises(500, an.message_response, {"content": "", "tool_calls": [bad], "finish_reason": "tool_calls",
                                      "usage": USAGE}, message_id="m", model=MODEL, match="not a JSON object")
    cut = an.message_response({"content": "", "tool_calls": [CALL, bad], "finish_reason": "length", "usage": USAGE},
                              message_id="m", model=MODEL)  # max_tokens ended the answer inside the second call
    assert [b["input"] for b in cut["content"]] == [{"city": "Beijing"}, {}] and cut["stop_reason"] == "max_tokens"


K2_OUTPUT = ('I\'ll check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
             '<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|><|tool_call_begin|>'
             'functions.get_weather:1<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>'
             '<|tool_calls_section_end|>')


def openai_deltas(text: str, size: int) -> list[dict]:
    p = StreamingToolParser(declared_tools=["get_weather"])
    deltas = [d for k in range(0, len(text), size) for d in p.feed(text[k:k + size])] + p.finish()
    return [d.to_openai() for d in deltas]


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_anthropic_events_rebuild_the_whole_message(size):
    """The event stream, replayed as a client does, equals message_response for the same output."""
    w = an.EventWriter(message_id="msg_1", model=MODEL)
    events = w.start()
    for d in openai_deltas(K2_OUTPUT, size):
        events += w.delta(d)
    events += w.finish("tool_calls", USAGE)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    blocks: list[dict] = []
    partial: dict[int, str] = {}
    for name, data in events:
        assert data["type"] == name
        if name == "content_block_start":
            assert data["index"] == len(blocks)
            blocks.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            d = data["delta"]
            if d["type"] == "text_delta":
                blocks[data["index"]]["text"] += d["text"]
            else:
                partial[data["index"]] = partial.get(data["index"], "") + d["partial_json"]
    for i, js in partial.items():
        blocks[i]["input"] = json.loads(js)
    assert names.count("content_block_start") == names.count("content_block_stop") == 3
    content, calls = collect_openai(openai_deltas(K2_OUTPUT, size))
    whole = an.message_response({"content": content, "tool_calls": calls, "finish_reason": "tool_calls",
                                 "usage": USAGE}, message_id="msg_1", model=MODEL)
    assert blocks == whole["content"]
    assert events[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


def collect_openai(deltas: list[dict]) -> tuple[str, list[dict]]:
    from k2trt.toolcall import Delta, ToolCallDelta

    parsed = []
    for d in deltas:
        if "content" in d:
            parsed.append(Delta(content=d["content"]))
        else:
            tc = d["tool_calls"][0]
            parsed.append(Delta(tool_call=ToolCallDelta(tc["index"], tc.get("id"), tc["function"].get("name"),
                                                        tc["function"]["arguments"])))
    content, calls = collect(parsed)
    return content, [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                     for c in calls]


@pytest.mark.parametrize(
    ("message", "status", "kind"),
    [
        ("[StatusCode.UNAVAILABLE] failed to connect to all addresses", 503, "UNAVAILABLE"),
        ("Request for unknown model: 'k2_bls' is not found", 503, None),
        ("k2_bls: the prompt is 2000 tokens; the engine's max_seq_len is 1024, which leaves no room", 422, None),
        ("k2_bls: messages[1].tool_call_id: 'x' answers no tool call made earlier in the conversation", 422, None),
        ("k2_bls: KeyError: 'choices'", 500, None),  # a bug in k2_bls is not the client's fault
        ("engine crashed", 500, None),
    ],
)
def test_triton_errors_map_to_statuses(message, status, kind):
    from tritonclient.utils import InferenceServerException

    from k2trt.api.backend import _triton_error

    err = _triton_error(InferenceServerException(msg=message, status=f"StatusCode.{kind}" if kind else None))
    assert err.status == status, err.message
