"""k2trt.bench.profile: perf_analyzer profile exports -> per-request records, tokens counted from ids."""

from __future__ import annotations

import json
import struct

import pytest

from k2trt.bench.profile import (
    ChatChunks,
    PerResponse,
    bytes_value,
    ids_counter,
    load_export,
    null_response,
    parse_export,
    parse_request,
    response_counter,
)
from k2trt.errors import K2Error

# Recorded from perf_analyzer 2.51.0 (-i grpc --streaming --concurrency-range 2 --profile-export-file) against a
# decoupled Python model that streams one id per response and then sends a flags-only final response: that last
# response shows up with text_output "" and output_ids holding junk (-864822335), as 2.51 exports it.
RECORDED_PA_251 = {
    "experiments": [{
        "experiment": {"mode": "concurrency", "value": 2},
        "requests": [
            {"timestamp": 1796020329484200705,
             "request_inputs": {"text_input": "hello world", "stream": True, "max_tokens": 5},
             "response_timestamps": [1796020329593389104, 1796020329605083133, 1796020329615738019,
                                     1796020329626410290, 1796020329636853091, 1796020329637057865],
             "response_outputs": [{"text_output": "tok0\u00e9", "output_ids": 100},
                                  {"text_output": "tok1\u00e9", "output_ids": 101},
                                  {"text_output": "tok2\u00e9", "output_ids": 102},
                                  {"text_output": "tok3\u00e9", "output_ids": 103},
                                  {"text_output": "tok4\u00e9", "output_ids": 104},
                                  {"text_output": "", "output_ids": -864822335}]},
            {"timestamp": 1796020329637099337,
             "request_inputs": {"text_input": "hello world", "stream": True, "max_tokens": 5},
             "response_timestamps": [1796020329651029438, 1796020329661471337, 1796020329671902741,
                                     1796020329684524488, 1796020329697287024, 1796020329697500882],
             "response_outputs": [{"text_output": "tok0\u00e9", "output_ids": 100},
                                  {"text_output": "tok1\u00e9", "output_ids": 101},
                                  {"text_output": "tok2\u00e9", "output_ids": 102},
                                  {"text_output": "tok3\u00e9", "output_ids": 103},
                                  {"text_output": "tok4\u00e9", "output_ids": 104},
                                  {"text_output": "", "output_ids": -864823084}]}],
        "window_boundaries": [1796020329483305961, 1796020330485170389]}],
    "version": "2.51.0", "service_kind": "triton", "endpoint": ""}


def test_recorded_export_counts_ids_and_recognises_the_null_final_response():
    levels = parse_export(RECORDED_PA_251, PerResponse(ids_counter(), null_response(vocab_size=768)), lambda ins: 7)
    assert list(levels) == [2]
    a, b = levels[2]
    assert a.output_tokens == b.output_tokens == 5
    assert a.tokens_per_response == [1, 1, 1, 1, 1, 0]
    assert a.ttft_ns == 1796020329593389104 - 1796020329484200705
    assert a.latency_ns == 1796020329637057865 - 1796020329484200705  # ends at the null final response
    assert a.itl_ns == pytest.approx((1796020329636853091 - 1796020329593389104) / 4)
    assert a.input_tokens == 7 and a.ok


def test_without_null_detection_the_junk_response_would_count():
    """Regression: perf_analyzer 2.51 exports the null final response's numeric outputs as junk."""
    levels = parse_export(RECORDED_PA_251, PerResponse(ids_counter()))
    assert levels[2][0].output_tokens == 6


def test_ids_counter_lists_scalars_padding_and_missing():
    c = ids_counter()
    assert c({"output_ids": [5, 6, 7]}) == 3
    assert c({"output_ids": 5}) == 1  # one element is exported as a scalar
    assert c({}) == 0
    assert ids_counter(pad_ids=(0,))({"output_ids": [5, 6, 0, 0]}) == 2
    with pytest.raises(K2Error, match="no 'output_ids' output"):
        c({"text_output": "hi"})


def test_null_response_rules():
    is_null = null_response(vocab_size=1000)
    assert is_null({"text_output": "", "output_ids": 12})  # BYTES outputs decide when there are some
    assert not is_null({"text_output": "x", "output_ids": -5})
    assert is_null({"output_ids": -864822335})  # ids only: an id outside the vocabulary
    assert not is_null({"output_ids": 999})
    assert is_null({})
    assert not null_response(None)({"output_ids": -1})


def test_only_the_last_response_can_be_null():
    req = {"timestamp": 0, "response_timestamps": [1, 2, 3],
           "response_outputs": [{"text_output": "", "output_ids": 4},  # a token whose text is held back
                                {"text_output": "é", "output_ids": 5},
                                {"text_output": "", "output_ids": 77777777}]}
    r = parse_request(req, PerResponse(ids_counter(), null_response(1000)))
    assert r.tokens_per_response == [1, 1, 0]


def test_bytes_value_strips_a_kept_length_prefix():
    raw = struct.pack("<I", 5) + b"hello"
    assert bytes_value(raw.decode("latin-1")) == "hello"
    assert bytes_value("hello") == "hello"
    assert bytes_value("") == ""


def test_response_counter():
    assert response_counter()({"text_output": "x"}) == 1
    assert response_counter()({}) == 0


def test_request_without_responses_is_an_error_record():
    r = parse_request({"timestamp": 5, "response_timestamps": [], "response_outputs": []}, PerResponse(ids_counter()))
    assert r.error == "no response" and not r.ok


def test_malformed_exports_are_refused(tmp_path):
    with pytest.raises(K2Error, match="no profile export"):
        load_export(tmp_path / "nope.json")
    p = tmp_path / "bad.json"
    p.write_text("{")
    with pytest.raises(K2Error, match="not valid JSON"):
        load_export(p)
    p.write_text("[]")
    with pytest.raises(K2Error, match="not a perf_analyzer profile export"):
        load_export(p)
    rate = {"experiments": [{"experiment": {"mode": "request_rate", "value": 2.0}, "requests": []}]}
    with pytest.raises(K2Error, match="concurrency experiments only"):
        parse_export(rate, PerResponse(ids_counter()))
    mismatch = {"timestamp": 0, "response_timestamps": [1, 2], "response_outputs": [{}]}
    with pytest.raises(K2Error, match="2 response timestamps but 1 response outputs"):
        parse_request(mismatch, PerResponse(ids_counter()))
    early = {"timestamp": 10, "response_timestamps": [5], "response_outputs": [{"output_ids": 1}]}
    with pytest.raises(K2Error, match="before the request was sent"):
        parse_request(early, PerResponse(ids_counter()))


def test_load_export_roundtrip(tmp_path):
    p = tmp_path / "e.json"
    p.write_text(json.dumps(RECORDED_PA_251))
    assert load_export(p)["version"] == "2.51.0"


def _chunk(delta=None, finish=None, usage=None) -> str:
    d = {"object": "chat.completion.chunk", "choices": [] if delta is None else
         [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        d["usage"] = usage
    return json.dumps(d)


def test_chat_chunks_take_the_total_from_usage():
    """k2_bls: a role chunk, content deltas (one holding two tokens), the finish with usage, a null final."""
    outs = [{"response": _chunk({"role": "assistant", "content": ""})},
            {"response": _chunk({"content": "Hi"})},
            {"response": _chunk({"content": " there"})},
            {"response": _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})},
            {"response": _chunk({}, "length", {"prompt_tokens": 40, "completion_tokens": 5})},
            {"response": ""}]
    req = {"timestamp": 0, "response_timestamps": [1, 2, 3, 4, 5, 6], "response_outputs": outs}
    r = parse_request(req, ChatChunks("response"))
    assert r.responses == ((2, 1), (3, 1), (4, 3), (6, 0))
    assert r.output_tokens == 5 and r.ttft_ns == 2 and r.latency_ns == 6 and r.ok


def test_chat_chunks_errors():
    no_usage = {"timestamp": 0, "response_timestamps": [1],
                "response_outputs": [{"response": _chunk({"content": "x"})}]}
    assert "no usage" in parse_request(no_usage, ChatChunks("response")).error
    err = {"timestamp": 0, "response_timestamps": [1],
           "response_outputs": [{"response": json.dumps({"error": {"message": "prompt too long"}})}]}
    assert "prompt too long" in parse_request(err, ChatChunks("response")).error
