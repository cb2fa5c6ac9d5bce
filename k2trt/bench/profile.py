"""perf_analyzer's ``--profile-export-file`` JSON -> :class:`~k2trt.bench.records.RequestRecord` per request.

The file (perf_analyzer's ``ProfileDataExporter``)::

    {"experiments": [{"experiment": {"mode": "concurrency", "value": 4},
                      "requests": [{"timestamp": 1700000000000000000,            # send, ns since the epoch
                                    "request_inputs": {"text_input": "...", "max_tokens": 64, ...},
                                    "response_timestamps": [1700000000012000000, ...],
                                    "response_outputs": [{"text_output": "...", "output_ids": [1234]}, ...]}],
                      "window_boundaries": [...]}],
     "version": "2.51.0", "service_kind": "triton", "endpoint": ""}

An output tensor appears as a JSON scalar when it holds one element and as a list when it holds more
(``AddDataToJSON``); a BYTES tensor appears as one string. Some perf_analyzer releases keep Triton's 4-byte
little-endian length prefix in front of a BYTES element; :func:`bytes_value` removes it.

Counting output tokens (never from re-tokenized text), chosen per target:

- :class:`PerResponse` with :func:`ids_counter`: the ids of each streamed response's ``output_ids`` output (the
  ensemble), a null final response counting 0 (:func:`null_response`);
- :class:`ChatChunks`: OpenAI-shaped JSON chunks (k2_bls), the total from the model's own
  ``usage.completion_tokens`` (a count of generated ids).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from k2trt.bench.records import RequestRecord
from k2trt.errors import K2Error

TokenCounter = Callable[[dict[str, Any]], int]
"""Generated tokens carried by one response's outputs (``{name: value}``)."""

InputTokens = Callable[[dict[str, Any]], "int | None"]
"""Prompt tokens of a request, from its ``request_inputs``."""


def bytes_value(v: Any) -> str:
    """A BYTES tensor element as text, without Triton's 4-byte length prefix if the exporter kept it."""
    if not isinstance(v, str):
        raise K2Error(f"expected a BYTES (string) output in the profile export, got {type(v).__name__}")
    raw = v.encode("utf-8", errors="surrogatepass")
    if len(raw) >= 4 and struct.unpack("<I", raw[:4])[0] == len(raw) - 4:
        return raw[4:].decode("utf-8", errors="replace")
    return v


def _as_list(v: Any) -> list:
    if v is None or v == "":
        return []
    return v if isinstance(v, list) else [v]


def ids_counter(name: str = "output_ids", *, pad_ids: tuple[int, ...] = ()) -> TokenCounter:
    """Count the ids of the ``name`` output of each response (streaming: the new ids of that step).

    ``pad_ids``: ids that pad a tensor rather than being generated (a non-streaming ``output_ids`` padded to
    ``max_tokens``); left out of the count.
    """

    def count(outputs: dict[str, Any]) -> int:
        if name not in outputs:
            if not outputs:  # a response that only closes the stream
                return 0
            raise K2Error(f"a response has no '{name}' output (it has {sorted(outputs)}): the served model does "
                          f"not return token ids, which the benchmark counts")
        return sum(1 for i in _as_list(outputs[name]) if int(i) not in pad_ids)

    return count


def null_response(vocab_size: int | None = None) -> Callable[[dict[str, Any]], bool]:
    """Whether a request's *last* response is the flags-only final response of a decoupled model.

    perf_analyzer records that response too (a timestamp and, for every requested output, whatever its buffer
    held: BYTES outputs come out as "", numeric ones as junk such as -864822335), without saying it was null.
    It is recognised as: every BYTES (string) output empty, and, if it has no BYTES output, an id outside
    ``[0, vocab_size)``. A model that sends its final flag with its last token never produces one.
    """

    def is_null(outputs: dict[str, Any]) -> bool:
        if not outputs:
            return True
        strings = [v for v in outputs.values() if isinstance(v, str)]
        if strings:
            return all(bytes_value(v) == "" for v in strings)
        if vocab_size is None:
            return False
        ids = [i for v in outputs.values() for i in _as_list(v) if isinstance(i, int)]
        return any(not 0 <= i < vocab_size for i in ids)

    return is_null


def response_counter() -> TokenCounter:
    """One token per (non-null) streamed response: right for an engine that streams each step's token as it is
    sampled (TensorRT-LLM without speculative decoding, the k2trt runtime), used only when a model returns no
    ids."""

    def count(outputs: dict[str, Any]) -> int:
        return 1 if outputs else 0

    return count


def load_export(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise K2Error(f"{p}: no profile export (perf_analyzer did not write one)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as e:
        raise K2Error(f"{p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("experiments"), list):
        raise K2Error(f"{p}: not a perf_analyzer profile export (no 'experiments' list)")
    return doc


class Counting(Protocol):
    """Turns one request's response timestamps and outputs into ``(arrival_ns, tokens)`` pairs (and an error)."""

    def responses(self, stamps: list[int], outputs: list[dict]) -> tuple[list[tuple[int, int]], str | None]: ...


@dataclass(frozen=True)
class PerResponse:
    """Count each response's tokens with ``count``; ``null_last`` (:func:`null_response`) recognises a null final
    response, which counts 0 tokens but still ends the request."""

    count: TokenCounter
    null_last: Callable[[dict[str, Any]], bool] | None = None

    def responses(self, stamps: list[int], outputs: list[dict]) -> tuple[list[tuple[int, int]], str | None]:
        counts = []
        for k, o in enumerate(outputs):
            last = k == len(outputs) - 1
            counts.append(0 if last and self.null_last is not None and self.null_last(o) else self.count(o))
        return list(zip(stamps, counts)), None


@dataclass(frozen=True)
class ChatChunks:
    """Responses that are OpenAI ``chat.completion.chunk`` JSON in BYTES output ``name`` (k2_bls): the total is
    the ``usage.completion_tokens`` the model reports (its count of generated ids), spread over the chunks that
    carry content by :func:`k2trt.bench.openai_driver.assign_tokens`. A stream without usage is an error."""

    name: str

    def responses(self, stamps: list[int], outputs: list[dict]) -> tuple[list[tuple[int, int]], str | None]:
        from k2trt.bench.openai_driver import assign_tokens, has_content

        content: list[int] = []
        shown: list[int] = []  # every non-null response: the fallback when none carried content
        usage = None
        for t, o in zip(stamps, outputs):
            text = bytes_value(o[self.name]) if self.name in o else ""
            if not text.strip():
                continue  # a null final response
            shown.append(t)
            try:
                doc = json.loads(text)
            except json.JSONDecodeError:
                return [], f"output '{self.name}' is not JSON: {text[:120]!r}"
            if doc.get("error"):
                return [], f"model error: {doc['error']}"
            if has_content(doc):
                content.append(t)
            if doc.get("usage"):
                usage = doc["usage"]
        if usage is None or "completion_tokens" not in usage:
            return [(t, 0) for t in stamps], "the stream carried no usage.completion_tokens"
        out = assign_tokens(content or shown, int(usage["completion_tokens"]))
        if stamps and (not out or out[-1][0] != stamps[-1]):
            out.append((stamps[-1], 0))
        return out, None


def parse_export(doc: dict, counting: Counting,
                 input_tokens: InputTokens | None = None) -> dict[int, list[RequestRecord]]:
    """Records per concurrency level of a loaded export (request-rate experiments are refused); ``counting``: a
    :class:`PerResponse` or :class:`ChatChunks`."""
    out: dict[int, list[RequestRecord]] = {}
    for i, exp in enumerate(doc["experiments"]):
        mode = exp.get("experiment", {}).get("mode")
        if mode != "concurrency":
            raise K2Error(f"experiment {i}: mode {mode!r}; k2trt bench runs concurrency experiments only")
        level = int(exp["experiment"]["value"])
        records = out.setdefault(level, [])
        for j, req in enumerate(exp.get("requests", [])):
            records.append(parse_request(req, counting, input_tokens, where=f"experiment {i} request {j}"))
    return out


def parse_request(req: dict, counting: Counting, input_tokens: InputTokens | None = None, *,
                  where: str = "request") -> RequestRecord:
    """One request's record."""
    stamps = [int(t) for t in req.get("response_timestamps", [])]
    outputs = req.get("response_outputs", [])
    if len(outputs) not in (0, len(stamps)):
        raise K2Error(f"{where}: {len(stamps)} response timestamps but {len(outputs)} response outputs")
    if not outputs:
        outputs = [{}] * len(stamps)
    start = int(req["timestamp"])
    if any(t < start for t in stamps):
        raise K2Error(f"{where}: a response arrives before the request was sent")
    responses, error = counting.responses(stamps, [o or {} for o in outputs])
    if error is None:
        if not responses:
            error = "no response"
        elif sum(n for _, n in responses) == 0:
            error = "no generated tokens"
    ins = input_tokens(req.get("request_inputs", {})) if input_tokens else None
    return RequestRecord(start, tuple(responses), ins, error)
