"""OpenAI Chat Completions: request -> :class:`ChatRequest`; k2_bls output -> response JSON and SSE chunks.

Every request parameter is in one of four tables, so none is ever silently dropped:

- :data:`SUPPORTED`: honoured.
- :data:`AT_DEFAULT`: accepted only at its default value (``n: 1``, ``logprobs: false``, ...); any other value is
  a 400 naming the parameter and why.
- :data:`BOOKKEEPING`: the caller's own labels (``user``, ``metadata``); they do not change the output.
- :data:`UNSUPPORTED`: always a 400 that says what to use instead. Any other key is a 400 too ("unrecognized").

Defaults that differ from OpenAI's: ``temperature`` 0.6 (the K2 model card's recommendation) when omitted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from k2trt.api.errors import bad_request, unsupported
from k2trt.api.request import (
    ChatRequest,
    boolean,
    check_messages,
    check_tools,
    integer,
    model_name,
    number,
    stop_list,
)
from k2trt.chat import RECOMMENDED_TEMPERATURE

SUPPORTED = frozenset({
    "model", "messages", "tools", "tool_choice", "temperature", "top_p", "top_k", "min_tokens", "max_tokens",
    "max_completion_tokens", "stop", "seed", "stream", "stream_options",
})  # fmt: skip
"""Parameters k2trt honours (``top_k`` and ``min_tokens`` are extensions, named as in vLLM)."""

AT_DEFAULT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v == 1, "one choice per request; send n requests with different seeds"),
    "logprobs": (lambda v: v is False, "log-probabilities are not returned"),
    "top_logprobs": (lambda v: v == 0, "log-probabilities are not returned"),
    "frequency_penalty": (lambda v: v == 0, "no repetition penalties"),
    "presence_penalty": (lambda v: v == 0, "no repetition penalties"),
    "logit_bias": (lambda v: v == {}, "no logit bias"),
    "response_format": (lambda v: v == {"type": "text"}, "no constrained decoding: only {'type': 'text'}"),
    "parallel_tool_calls": (
        lambda v: v is True,
        "K2 may write several calls in one turn and nothing constrains it to one",
    ),
    "modalities": (lambda v: v == ["text"], "text only"),
    "store": (lambda v: v is False, "nothing is stored"),
    "service_tier": (lambda v: v in ("auto", "default"), "one service tier"),
}
"""Parameters accepted at their default only (null is accepted too): predicate, and why anything else is not."""

BOOKKEEPING = frozenset({"user", "metadata", "safety_identifier", "prompt_cache_key"})
"""Labels for the caller's bookkeeping: accepted, they change nothing."""

UNSUPPORTED: dict[str, str] = {
    "functions": "deprecated; use 'tools'",
    "function_call": "deprecated; use 'tool_choice'",
    "audio": "text only",
    "prediction": "no predicted outputs",
    "reasoning_effort": "Kimi-K2-Instruct is not a reasoning model",
    "verbosity": "not a K2 control",
    "web_search_options": "no built-in web search",
}
"""Parameters always refused, with what to do instead."""


def parse_chat_request(body: Mapping[str, Any], *, served_model: str) -> ChatRequest:
    """Validate a ``POST /v1/chat/completions`` body; raise :class:`ApiError` (400/404) naming the parameter."""
    refused: list[str] = []
    why: dict[str, str] = {}
    for key, value in body.items():
        if key in SUPPORTED or key in BOOKKEEPING or value is None and key in AT_DEFAULT:
            continue
        if key in AT_DEFAULT:
            ok, reason = AT_DEFAULT[key]
            if not ok(value):
                refused.append(key)
                why[key] = f"{reason}; got {value!r}"
        elif key in UNSUPPORTED:
            refused.append(key)
            why[key] = UNSUPPORTED[key]
        else:
            refused.append(key)
            why[key] = "unrecognized request argument"
    if refused:
        raise unsupported(refused, why)

    model = model_name(body, served_model)
    if "messages" not in body:
        raise bad_request("messages: a list of messages is required", param="messages")
    tools = check_tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    messages = check_messages(_developer_as_system(body["messages"]), tools)

    max_tokens = integer(body, "max_tokens", lo=1)
    max_completion = integer(body, "max_completion_tokens", lo=1)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise bad_request(
            f"max_tokens ({max_tokens}) and max_completion_tokens ({max_completion}) disagree; set one",
            param="max_completion_tokens",
        )
    stream = bool(boolean(body, "stream"))
    include_usage = False
    opts = body.get("stream_options")
    if opts is not None:
        if not stream:
            raise bad_request("stream_options: only allowed when stream is true", param="stream_options")
        if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
            raise bad_request("stream_options: only {'include_usage': bool} is supported", param="stream_options")
        include_usage = bool(boolean(opts, "include_usage"))
    temperature = number(body, "temperature", 0.0, 2.0)
    top_p = number(body, "top_p", 0.0, 1.0, lo_open=True)
    return ChatRequest(
        model=model,
        messages=list(messages),
        tools=tools or None,
        tool_choice=tool_choice,
        temperature=RECOMMENDED_TEMPERATURE if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=integer(body, "top_k", lo=0) or 0,
        min_tokens=integer(body, "min_tokens", lo=0) or 0,
        max_tokens=max_completion if max_completion is not None else max_tokens,
        stop=stop_list(body.get("stop"), "stop"),
        seed=integer(body, "seed"),
        stream=stream,
        include_usage=include_usage,
    )


def _developer_as_system(messages: Any) -> Any:
    """OpenAI's ``developer`` role (its newer name for system instructions) is K2's ``system``."""
    if not isinstance(messages, list):
        return messages
    return [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m for m in messages]


def _tool_choice(choice: Any, tools: list[dict] | None) -> str | dict[str, str]:
    names = [t["function"]["name"] for t in tools or []]
    if choice is None:
        return "auto" if names else "none"
    if choice in ("auto", "none"):
        return choice
    if choice == "required":
        if not names:
            raise bad_request("tool_choice: 'required' needs tools", param="tool_choice")
        return "required"
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise bad_request(
                f"tool_choice: function {name!r} is not among the tools ({', '.join(map(repr, names)) or 'none'})",
                param="tool_choice",
            )
        return {"name": name}
    raise bad_request(
        "tool_choice: expected 'auto', 'none', 'required' or "
        f"{{'type': 'function', 'function': {{'name': ...}}}}, got {choice!r}",
        param="tool_choice",
    )


# ----------------------------------------------------------------------------------------------- responses


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def completion_response(
    result: Mapping[str, Any], *, completion_id: str, model: str, created: int | None = None
) -> dict[str, Any]:
    """The ``chat.completion`` object for a whole k2_bls result (:class:`~k2trt.api.bls.BlsResult`'s JSON)."""
    message: dict[str, Any] = {"role": "assistant", "content": result["content"]}
    if result["tool_calls"]:
        message["tool_calls"] = result["tool_calls"]
        if not result["content"]:
            message["content"] = None  # OpenAI's shape for a pure tool-call turn
    message["refusal"] = None
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": result["finish_reason"]}],
        "usage": usage(result["usage"]),
    }


def usage(u: Mapping[str, int]) -> dict[str, int]:
    return {
        "prompt_tokens": u["prompt_tokens"],
        "completion_tokens": u["completion_tokens"],
        "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
    }


class ChunkWriter:
    """Turns the k2_bls stream (deltas, then the finish) into ``chat.completion.chunk`` objects.

    Order: one chunk announcing ``role: assistant``, one chunk per delta, a chunk with an empty delta and the
    ``finish_reason``, and with ``stream_options.include_usage`` a last chunk with no choices and the usage (every
    chunk before it carries ``usage: null``, as OpenAI streams do).
    """

    def __init__(self, *, completion_id: str, model: str, include_usage: bool, created: int | None = None):
        self.completion_id, self.model, self.include_usage = completion_id, model, include_usage
        self.created = int(time.time()) if created is None else created

    def _chunk(self, choices: list[dict]) -> dict[str, Any]:
        out = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            out["usage"] = None
        return out

    def start(self) -> dict[str, Any]:
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])

    def delta(self, delta: Mapping[str, Any]) -> dict[str, Any]:
        """``delta``: an OpenAI delta object (``{"content": ...}`` or ``{"tool_calls": [...]}``)."""
        return self._chunk([{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": None}])

    def finish(self, finish_reason: str, usage_counts: Mapping[str, int]) -> list[dict[str, Any]]:
        out = [self._chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}])]
        if self.include_usage:
            last = self._chunk([])
            last["usage"] = usage(usage_counts)
            out.append(last)
        return out


__all__ = [
    "AT_DEFAULT",
    "BOOKKEEPING",
    "ChunkWriter",
    "SUPPORTED",
    "UNSUPPORTED",
    "completion_response",
    "new_completion_id",
    "parse_chat_request",
    "usage",
]
