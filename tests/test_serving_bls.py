"""k2_bls without Triton: request JSON -> prompt -> (recorded) engine outputs -> OpenAI-shaped JSON."""

from __future__ import annotations

import json
import random

import pytest

from k2trt.chat import render_chat
from k2trt.serving.bls import (
    BlsConfig,
    BlsError,
    ChatRequest,
    ChatSession,
    error_message,
    serve_request,
)
from k2trt.serving.client import collect
from k2trt.tokenizer import K2Tokenizer

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string"}}}}}
USER = [{"role": "user", "content": "Weather in Beijing?"}]
CALL_TEXT = ('I will check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
             '<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|><|tool_calls_section_end|>')


@pytest.fixture(scope="module")
def tok(tiny_ckpt) -> K2Tokenizer:
    return K2Tokenizer.from_dir(tiny_ckpt)


CONFIG = BlsConfig(model_name="k2-test", max_seq_len=1024, default_max_tokens=64)


def run(tok, body: dict, recorded: list[list[int]], **kw) -> list[dict]:
    """serve_request over an engine that replays ``recorded`` (the ids of each engine response)."""
    seen = {}

    def engine(req):
        seen["req"] = req
        yield from recorded

    out = list(serve_request(json.dumps(body), tokenizer=tok, config=CONFIG, engine=engine, **kw))
    run.engine_request = seen.get("req")
    return out


def one_per_token(ids: list[int]) -> list[list[int]]:
    return [[i] for i in ids]


def random_chunks(ids: list[int], seed: int) -> list[list[int]]:
    rng, out, i = random.Random(seed), [], 0
    while i < len(ids):
        n = rng.randint(1, 4)
        out.append(ids[i : i + n])
        i += n
    return out


# ----------------------------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize("raw, message", [
    ("{not json", "request: not valid JSON (line 1, column 2"),
    ("[1, 2]", "request: expected a JSON object, got a list"),
    (json.dumps({"messages": []}), "messages: expected a non-empty list"),
    (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}), "messages[0].role: 'wizard' is not one of"),
    (json.dumps({"messages": USER, "max_tokens": 0}), "max_tokens: expected a positive integer"),
    (json.dumps({"messages": USER, "sampling": {"temperature": -1}}), "sampling.temperature"),
    (json.dumps({"messages": USER, "sampling": {"top_q": 1}}), "sampling: unknown field(s) ['top_q']"),
    (json.dumps({"messages": USER, "temperature": 0}), "request: unknown field(s) ['temperature']"),
    (json.dumps({"messages": USER, "tool_choice": {"name": "nope"}, "tools": [WEATHER]}),
     "tool_choice: 'nope' is not one of the declared tools"),
    (json.dumps({"messages": USER, "tool_choice": "required"}), "'required' needs tools"),
    (json.dumps({"messages": USER, "stream": "yes"}), "stream: expected true or false"),
])
def test_bad_requests_are_named(raw, message):
    with pytest.raises(BlsError) as e:
        ChatRequest.parse(raw)
    assert message in error_message(e.value)
    assert error_message(e.value).startswith("k2_bls: ")


def test_every_problem_at_once():
    with pytest.raises(BlsError) as e:
        ChatRequest.parse(json.dumps({"messages": [{"role": "wizard"}], "max_tokens": -1, "stream": 1}))
    assert len(e.value.problems) == 3


def test_max_tokens_beyond_the_context(tok):
    req = ChatRequest.parse(json.dumps({"messages": USER, "max_tokens": 5000}))
    with pytest.raises(BlsError, match=r"max_tokens 5000 is beyond the context: the prompt is \d+ tokens and the "
                                       r"engine's max_seq_len is 1024, so at most \d+ tokens can be generated"):
        ChatSession(req, tok, CONFIG)


def test_default_max_tokens_fits_the_context(tok):
    small = BlsConfig(model_name="m", max_seq_len=60, default_max_tokens=512)
    s = ChatSession(ChatRequest.parse(json.dumps({"messages": USER})), tok, small)
    assert s.max_tokens == 60 - len(s.prompt_ids)


# ----------------------------------------------------------------------------------------------- the prompt


def test_prompt_is_the_chat_template_render(tok):
    body = {"messages": USER, "tools": [WEATHER], "max_tokens": 4,
            "sampling": {"temperature": 0, "top_k": 3, "top_p": 0.5, "seed": 11, "min_tokens": 1}}
    run(tok, body, [])
    req = run.engine_request
    assert list(req.input_ids) == render_chat(USER, tools=[WEATHER], tokenizer=tok).ids
    assert (req.max_tokens, req.temperature, req.top_k, req.top_p, req.seed, req.min_tokens) == (4, 0, 3, 0.5, 11, 1)
    assert req.streaming and req.end_id == tok.im_end_id and req.stop_words == ((tok.eos_id,),)


def test_tool_choice_none_declares_no_tools(tok):
    run(tok, {"messages": USER, "tools": [WEATHER], "tool_choice": "none"}, [])
    assert list(run.engine_request.input_ids) == render_chat(USER, tokenizer=tok).ids


def test_tool_choice_required_and_named_prefill_the_call(tok):
    run(tok, {"messages": USER, "tools": [WEATHER], "tool_choice": "required"}, [])
    plain = render_chat(USER, tools=[WEATHER], tokenizer=tok).ids
    assert list(run.engine_request.input_ids) == plain + [tok.tool_calls_section_begin_id]
    ids = tok.encode('{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>', allow_special=True)
    out = run(tok, {"messages": USER, "tools": [WEATHER], "tool_choice": {"type": "function",
                                                                           "function": {"name": "get_weather"}}},
              one_per_token(ids))
    msg = out[0]["choices"][0]["message"]
    assert msg["tool_calls"] == [{"id": "functions.get_weather:0", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert out[0]["choices"][0]["finish_reason"] == "tool_calls"


# ----------------------------------------------------------------------------------------------- answers


def test_tool_call_answer_whole(tok):
    ids = tok.encode(CALL_TEXT, allow_special=True)
    (obj,) = run(tok, {"messages": USER, "tools": [WEATHER]}, one_per_token(ids))
    assert obj["object"] == "chat.completion" and obj["model"] == "k2-test"
    choice = obj["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "I will check.", "tool_calls": [
        {"id": "functions.get_weather:0", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'}}]}
    assert choice["finish_reason"] == "tool_calls"
    prompt = len(render_chat(USER, tools=[WEATHER], tokenizer=tok).ids)
    # the engine ended at <|im_end|> (not returned): it counts as a generated token
    assert obj["usage"] == {"prompt_tokens": prompt, "completion_tokens": len(ids) + 1,
                            "total_tokens": prompt + len(ids) + 1}


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_streamed_deltas_add_up_to_the_whole_answer(tok, seed):
    ids = tok.encode(CALL_TEXT + " Done.", allow_special=True)
    chunks = one_per_token(ids) if seed is None else random_chunks(ids, seed)
    whole = run(tok, {"messages": USER, "tools": [WEATHER]}, chunks)[0]
    streamed = run(tok, {"messages": USER, "tools": [WEATHER], "stream": True}, chunks)
    assert all(o["object"] == "chat.completion.chunk" for o in streamed)
    # one delta per response; the first carries the role; the last has finish_reason and usage only
    assert all(len(o["choices"]) == 1 for o in streamed)
    assert streamed[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [o["choices"][0]["finish_reason"] for o in streamed[:-1]] == [None] * (len(streamed) - 1)
    assert streamed[-1]["choices"][0]["delta"] == {}
    r = collect(streamed)
    assert (r.content, r.tool_calls, r.finish_reason, r.usage) == (
        whole["choices"][0]["message"]["content"], whole["choices"][0]["message"]["tool_calls"],
        whole["choices"][0]["finish_reason"], whole["usage"])
    assert "<|" not in r.content  # no marker leaks into the content


def test_stop_length_and_eos(tok):
    ids = tok.encode("Hello there")
    body = {"messages": USER, "max_tokens": len(ids)}
    assert run(tok, body, [ids])[0]["choices"][0]["finish_reason"] == "length"
    assert run(tok, {**body, "max_tokens": len(ids) + 5}, [ids])[0]["choices"][0]["finish_reason"] == "stop"
    # [EOS] is a stop word: the engine returns it; it ends the answer and is not content
    out = run(tok, {**body, "max_tokens": 50}, [ids + [tok.eos_id]])[0]
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["content"] == "Hello there"
    assert out["usage"]["completion_tokens"] == len(ids) + 1


def test_a_call_to_no_declared_tool_is_dropped_and_no_marker_leaks(tok):
    ids = tok.encode("Let me see. " + CALL_TEXT, allow_special=True)
    out = run(tok, {"messages": USER}, [ids])[0]["choices"][0]
    content = out["message"]["content"]
    assert content == "Let me see. " + CALL_TEXT[: CALL_TEXT.index("<|")] and out["finish_reason"] == "stop"
    assert not out["message"].get("tool_calls")


def test_stop_strings_end_the_answer_and_stop_the_engine(tok):
    ids = tok.encode("Hello world, and more")
    stopped = []
    body = {"messages": USER, "sampling": {"stop": ["lo w", "zzz"]}, "stream": True}
    out = run(tok, body, one_per_token(ids), stop_engine=lambda: stopped.append(True))
    r = collect(out)
    assert r.content == "Hel" and r.finish_reason == "stop"
    assert out[-1]["choices"][0]["stop_sequence"] == "lo w"
    assert stopped == [True]
    # a held-back prefix of a stop string that never completes is released at the end
    out = run(tok, {"messages": USER, "sampling": {"stop": ["d!"]}}, one_per_token(tok.encode("Hello world")))
    assert out[0]["choices"][0]["message"]["content"] == "Hello world"


def test_streams_never_split_a_character(tok):
    text = "Zürich 🙂 ok"
    ids = tok.encode(text)
    out = run(tok, {"messages": USER, "stream": True}, one_per_token(ids))
    pieces = [o["choices"][0]["delta"].get("content", "") for o in out]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_cancelled_client_stops_the_engine_and_gets_nothing_more(tok):
    ids = tok.encode("one two three four five")
    polls = {"n": 0}

    def cancelled():
        polls["n"] += 1
        return polls["n"] > 2

    stopped = []
    out = run(tok, {"messages": USER, "stream": True}, one_per_token(ids), is_cancelled=cancelled,
              stop_engine=lambda: stopped.append(True))
    assert stopped == [True]
    assert all(o["choices"][0]["finish_reason"] is None for o in out) and len(out) == 2


def test_a_call_cut_by_max_tokens_is_length_with_the_partial_call(tok):
    ids = tok.encode(CALL_TEXT, allow_special=True)
    cut = ids[: ids.index(tok.tool_call_end_id) - 1]
    out = run(tok, {"messages": USER, "tools": [WEATHER], "max_tokens": len(cut)}, [cut])[0]["choices"][0]
    assert out["finish_reason"] == "length"
    assert out["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_cancellation_checks_are_rate_limited_and_a_cancellation_sticks():
    from k2trt.serving.bls import rate_limited

    now = {"t": 0.0}
    asked = []
    answers = iter([False, False, True, False])

    def is_cancelled():
        asked.append(now["t"])
        return next(answers)

    check = rate_limited(is_cancelled, 0.05, clock=lambda: now["t"])
    seen = []
    for t in (0.0, 0.01, 0.04, 0.05, 0.06, 0.11, 0.12, 0.5):
        now["t"] = t
        seen.append(check())
    assert asked == [0.0, 0.05, 0.11]  # once per interval, not once per token
    assert seen == [False, False, False, False, False, True, True, True]
