"""k2trt.toolcall: K2 tool-call parsing, whole and streamed (streamed == whole for any chunking)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2trt.tokenizer import K2Tokenizer
from k2trt.toolcall import MARKERS, Delta, StreamingToolParser, ToolCall, ToolCallDelta, collect, parse

SB, SE = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CB, AB, CE = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"


def call(call_id: str, args: str) -> str:
    return f"{CB}{call_id}{AB}{args}{CE}"


def stream(text: str, sizes: list[int] | None = None, **kw) -> tuple[list[Delta], StreamingToolParser]:
    """Feed ``text`` in chunks of the given sizes (cycled; default one character at a time)."""
    sizes = sizes or [1]
    p = StreamingToolParser(**kw)
    deltas: list[Delta] = []
    i = k = 0
    while i < len(text):
        n = sizes[k % len(sizes)]
        deltas += p.feed(text[i : i + n])
        i, k = i + n, k + 1
    deltas += p.finish()
    return deltas, p


def as_stream(result) -> tuple[str, list[dict[str, str]]]:
    """What a client must have collected from the stream of ``result``'s text."""
    return result.content, [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.streamed_calls]


# ----------------------------------------------------------------------------------------------- the format


def test_content_and_two_calls():
    text = (
        "I'll check both."
        + SB
        + call("functions.get_weather:0", '{"city": "Beijing"}')
        + call("functions.get_time:1", '{"tz": "Asia/Shanghai"}')
        + SE
    )
    r = parse(text)
    assert r.content == "I'll check both."
    assert r.tool_calls == [
        ToolCall("functions.get_weather:0", "get_weather", '{"city": "Beijing"}', True),
        ToolCall("functions.get_time:1", "get_time", '{"tz": "Asia/Shanghai"}', True),
    ]
    assert (r.partial_call, r.dropped_calls, r.unparsed, r.truncated) == (None, [], [], False)
    assert r.tool_calls[0].to_openai() == {
        "id": "functions.get_weather:0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'},
    }


def test_plain_content_is_kept_exactly():
    text = "  Hello <b>|</b> a<|b, 北京 😀 <|im_end|> \n"
    assert parse(text).content == text
    assert parse(text).tool_calls == []


def test_whitespace_around_markers_is_dropped_but_not_around_content():
    text = (
        "Sure: \n"
        + SB
        + "\n "
        + CB
        + "  functions.f:0 \n"
        + AB
        + ' \n {"a": 1} \n '
        + CE
        + "\n\n"
        + CB
        + "functions.g:1"
        + AB
        + "{}"
        + CE
        + " \n"
        + SE
    )
    r = parse(text)
    assert r.content == "Sure: \n"
    assert [(c.id, c.name, c.arguments) for c in r.tool_calls] == [("functions.f:0", "f", '{"a": 1}'), ("functions.g:1", "g", "{}")]
    assert r.unparsed == []


def test_arguments_keep_markup_newlines_and_unicode():
    args = '{\n  "text": "a <|im_end|> b <|tool_call_argument_begin|> c",\n  "city": "北京 😀",\n  "tag": "<|x|>"\n}'
    r = parse(SB + call("functions.note:0", args) + SE)
    assert r.tool_calls[0].arguments == args
    assert r.tool_calls[0].valid_json
    assert json.loads(r.tool_calls[0].arguments)["city"] == "北京 😀"


def test_singular_section_marker_variant():
    text = "x<|tool_call_section_begin|>" + call("functions.f:0", "{}") + "<|tool_call_section_end|>y"
    r = parse(text)
    assert (r.content, [c.name for c in r.tool_calls], r.truncated) == ("xy", ["f"], False)


def test_text_after_the_section_is_content():
    r = parse("before" + SB + call("functions.f:0", "{}") + SE + " after")
    assert r.content == "before after"


def test_call_without_section_marker_is_still_a_call():
    r = parse("hi " + call("functions.f:0", '{"a": 1}'))
    assert r.content == "hi "
    assert [c.arguments for c in r.tool_calls] == ['{"a": 1}']
    assert r.truncated  # the implicit section was never closed


def test_missing_call_end_does_not_merge_calls():
    text = SB + CB + "functions.f:0" + AB + '{"a": 1}' + CB + "functions.g:1" + AB + '{"b": 2}' + SE
    r = parse(text)
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("f", '{"a": 1}'), ("g", '{"b": 2}')]


def test_call_without_arguments():
    r = parse(SB + CB + "functions.ping:0" + CE + SE)
    assert r.tool_calls == [ToolCall("functions.ping:0", "ping", "", False)]


def test_invalid_json_is_kept_and_flagged_never_raised():
    r = parse(SB + call("functions.f:0", "{city: Beijing") + call("functions.g:1", "[1, 2]") + SE)
    assert [(c.arguments, c.valid_json, c.complete) for c in r.tool_calls] == [
        ("{city: Beijing", False, True),
        ("[1, 2]", False, True),  # JSON, but tool arguments must be an object
    ]


def test_cut_off_inside_arguments_keeps_complete_calls_and_reports_the_partial_one():
    text = "ok" + SB + call("functions.f:0", '{"a": 1}') + CB + "functions.g:1" + AB + '{"b": "cut he'
    r = parse(text)
    assert r.truncated
    assert r.tool_calls == [ToolCall("functions.f:0", "f", '{"a": 1}', True)]
    assert r.partial_call == ToolCall("functions.g:1", "g", '{"b": "cut he', False, complete=False)
    assert r.streamed_calls == r.tool_calls + [r.partial_call]


def test_cut_off_inside_a_call_header_reports_the_header_as_unparsed():
    r = parse("ok" + SB + call("functions.f:0", "{}") + CB + " functions.get_wea")
    assert (r.content, len(r.tool_calls), r.partial_call, r.truncated) == ("ok", 1, None, True)
    assert r.unparsed == ["functions.get_wea"]
    deltas, _ = stream("ok" + SB + call("functions.f:0", "{}") + CB + " functions.get_wea")
    assert collect(deltas) == ("ok", [{"id": "functions.f:0", "name": "f", "arguments": "{}"}])


def test_stray_markers_and_text_in_a_section_never_reach_content():
    text = "a" + CE + "b" + SB + " junk " + AB + call("functions.f:0", "{}") + SE + SE + "c"
    r = parse(text)
    assert r.content == "abc"
    assert r.unparsed == [CE, "junk", AB, SE]
    assert [c.name for c in r.tool_calls] == ["f"]


def test_undeclared_tools_are_dropped_and_never_streamed():
    text = SB + call("functions.rm_rf:0", "{}") + call("functions.get_weather:1", '{"city": "x"}') + SE
    r = parse(text, declared_tools={"get_weather"})
    assert [c.name for c in r.tool_calls] == ["get_weather"]
    assert [c.name for c in r.dropped_calls] == ["rm_rf"]
    deltas, p = stream(text, [3], declared_tools={"get_weather"})
    assert collect(deltas) == as_stream(r)
    assert deltas[0].tool_call == ToolCallDelta(0, id="functions.get_weather:1", name="get_weather")
    assert p.result == r


def test_delta_shapes_are_openai_chunks():
    assert Delta(content="hi").to_openai() == {"content": "hi"}
    assert Delta(tool_call=ToolCallDelta(1, id="functions.f:3", name="f")).to_openai() == {
        "tool_calls": [{"index": 1, "id": "functions.f:3", "type": "function", "function": {"name": "f", "arguments": ""}}]
    }
    assert Delta(tool_call=ToolCallDelta(1, arguments='{"a"')).to_openai() == {
        "tool_calls": [{"index": 1, "function": {"arguments": '{"a"'}}]
    }


def test_stream_announces_id_and_name_before_arguments():
    deltas, p = stream("hi" + SB + call("functions.f:0", '{"a": 1}') + SE, [4])
    kinds = [("content" if d.tool_call is None else "id" if d.tool_call.id else "args") for d in deltas]
    assert kinds[0] == "content" and kinds.index("id") < kinds.index("args")
    assert kinds.count("id") == 1
    assert p.finish() == []
    with pytest.raises(RuntimeError, match="after finish"):
        p.feed("x")


# ----------------------------------------------------------------------------------------------- regressions


def test_regression_greedy_regex_merging_calls():
    # A parser with `<|tool_call_begin|>(.*)<|tool_call_end|>` (greedy) read both calls as one call named
    # "get_weather" whose arguments held the second call, markers and all.
    text = SB + call("functions.get_weather:0", '{"city": "A"}') + call("functions.get_weather:1", '{"city": "B"}') + SE
    for r in (parse(text), stream(text, [5])[1].result):
        assert [(c.id, c.arguments) for c in r.tool_calls] == [
            ("functions.get_weather:0", '{"city": "A"}'),
            ("functions.get_weather:1", '{"city": "B"}'),
        ]


@pytest.mark.parametrize(
    "text",
    [
        "Let me look." + SB + call("functions.f:0", "{}") + SE,
        "Let me look." + SB + CB + "functions.f:0" + AB + '{"a": ',  # cut off
        "Let me look." + SB,  # cut off right after the section marker
        "Let me look.<|tool_call_section_begin|>" + call("functions.f:0", "{}") + "<|tool_call_section_end|>",
        "Let me look." + CE + SE + AB,  # stray markers only
    ],
)
def test_regression_markers_leak_into_content(text):
    for content in (parse(text).content, collect(stream(text)[0])[0], collect(stream(text, [7])[0])[0]):
        assert content == "Let me look."


def test_regression_dotted_names_truncated():
    # Splitting the id on the first "." (or ":") gave "mcp" instead of the tool's full name.
    r = parse(SB + call("functions.mcp.github.search_repos:12", '{"q": "k2"}') + call("functions.a.b:c:3", "{}") + SE)
    assert [c.name for c in r.tool_calls] == ["mcp.github.search_repos", "a.b:c"]
    assert collect(stream(SB + call("functions.mcp.github.search_repos:12", "{}") + SE)[0])[1][0]["name"] == (
        "mcp.github.search_repos"
    )


@pytest.mark.parametrize("sizes", [[1], [2], [3, 1, 5], [17], [1000]])
def test_regression_streamed_args_differ_from_non_streamed(sizes):
    # Streamers that emitted argument text before knowing it was final sent trailing whitespace, a "<|tool_c"
    # fragment of the end marker, or lost the last characters; the non-streamed parse had neither.
    text = (
        "ok "
        + SB
        + CB
        + " functions.write_file:0 "
        + AB
        + ' \n{"path": "a<|b", "body": "x  \n  y"}  \n  '
        + CE
        + CB
        + "functions.f:1"
        + AB
        + "<|"
        + CE
        + SE
    )
    deltas, p = stream(text, sizes)
    assert collect(deltas) == as_stream(parse(text))
    assert [c.arguments for c in p.result.tool_calls] == ['{"path": "a<|b", "body": "x  \n  y"}', "<|"]


# ----------------------------------------------------------------------------------------------- properties

NAME = st.from_regex(r"[a-z_][a-z0-9_]{0,6}(\.[a-z_][a-z0-9_]{0,6}){0,2}", fullmatch=True)
WS = st.sampled_from(["", "", " ", "\n", " \n  "])
TEXT = st.lists(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=3)
    | st.sampled_from(["<|", "|>", "<", "<|tool_call", " "]),
    max_size=8,
).map("".join)
JSON_VALUE = st.recursive(
    st.none() | st.integers() | st.text(max_size=8) | st.sampled_from(["<|im_end|>", "北京", "😀", "a\nb", "<|"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def tool_call_texts(draw):
    """A K2 output: content, then maybe a section of calls with random whitespace and JSON layout."""
    content = draw(TEXT.filter(lambda t: not any(m in t for m in MARKERS)))
    calls = []
    if draw(st.booleans()):
        singular = draw(st.booleans())
        parts = [content, "<|tool_call_section_begin|>" if singular else SB, draw(WS)]
        for k in range(draw(st.integers(1, 3))):
            name = draw(NAME)
            args = json.dumps(
                draw(st.dictionaries(st.text(max_size=5), JSON_VALUE, max_size=3)),
                ensure_ascii=draw(st.booleans()),
                indent=draw(st.sampled_from([None, 2])),
            )
            cid = f"functions.{name}:{k}"
            parts += [CB, draw(WS), cid, draw(WS), AB, draw(WS), args, draw(WS), CE, draw(WS)]
            calls.append((cid, name, args))
        parts.append("<|tool_call_section_end|>" if singular else SE)
        text = "".join(parts)
    else:
        text = content
    return text, content, calls


@st.composite
def chunkings(draw, text):
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def _stream_chunks(chunks, **kw):
    p = StreamingToolParser(**kw)
    deltas = [d for c in chunks for d in p.feed(c)] + p.finish()
    return deltas, p


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_property_parse_recovers_generated_calls_and_streaming_matches_under_any_chunking(data):
    text, content, calls = data.draw(tool_call_texts())
    r = parse(text)
    assert r.content == content
    assert [(c.id, c.name, c.arguments, c.valid_json) for c in r.tool_calls] == [(i, n, a, True) for i, n, a in calls]
    assert not any(m in r.content for m in MARKERS)
    deltas, p = _stream_chunks(data.draw(chunkings(text)))
    assert collect(deltas) == as_stream(r)
    assert p.result == r


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_property_streaming_equals_parse_for_any_text_even_cut_off(data):
    text, _, calls = data.draw(tool_call_texts())
    text = text[: data.draw(st.integers(0, len(text)))]  # max_tokens may stop anywhere
    r = parse(text)
    deltas, p = _stream_chunks(data.draw(chunkings(text)))
    assert collect(deltas) == as_stream(r)
    assert p.result == r
    # complete calls are never lost: each call whose end marker made it into the text is in tool_calls
    assert [c.id for c in r.tool_calls] == [cid for cid, _, _ in calls][: len(r.tool_calls)]


FRAGMENTS = st.sampled_from(
    [*MARKERS, "<|", "<|tool_", "<|im_end|>", " ", "\n", "{", "}", '"a"', ":", "functions.x.y:1", "北", "😀", "|>", "t"]
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_property_streaming_equals_parse_for_arbitrary_marker_soup(data):
    text = "".join(data.draw(st.lists(FRAGMENTS | st.text(max_size=3), max_size=30)))
    declared = data.draw(st.sampled_from([None, {"x.y"}, set()]))
    r = parse(text, declared_tools=declared)
    deltas, p = _stream_chunks(data.draw(chunkings(text)), declared_tools=declared)
    assert collect(deltas) == as_stream(r)
    assert p.result == r


@settings(max_examples=60, deadline=None)
@given(gen=tool_call_texts())
def test_property_token_by_token_from_the_stream_decoder(gen):
    """The serving path: ids -> StreamDecoder pieces (markers are single special ids, multi-byte characters arrive
    in byte tokens) -> StreamingToolParser; the result equals parse(decode(ids))."""
    text = gen[0]
    tok = _byte_tokenizer()
    ids = tok.encode(text, allow_special=True)
    assert sum(i >= 256 for i in ids) == len(tok.special_pattern.findall(text))  # markers are single ids
    dec, p = tok.stream_decoder(), StreamingToolParser()
    deltas = [d for i in ids for d in p.feed(dec.push([i]))] + p.feed(dec.flush()) + p.finish()
    assert collect(deltas) == as_stream(parse(tok.decode(ids)))


_BYTE_TOKENIZER: list[K2Tokenizer] = []


def _byte_tokenizer() -> K2Tokenizer:
    if not _BYTE_TOKENIZER:
        _BYTE_TOKENIZER.append(K2Tokenizer({bytes([b]): b for b in range(256)}))
    return _BYTE_TOKENIZER[0]
