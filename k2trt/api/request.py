"""The generation request both APIs translate into, and the k2_bls request JSON it becomes.

:class:`ChatRequest` is API-neutral: OpenAI-shaped ``messages`` and ``tools`` (what ``k2trt.chat`` renders), a
normalised ``tool_choice``, and the sampling parameters already mapped to what the model samples with (the
Anthropic route has applied ``real = request * 0.6`` before building it). :meth:`ChatRequest.to_bls` is the JSON
the ``k2_bls`` Triton model takes.

tool_choice, K2 has no grammar-constrained decoding here, so each value is a promise kept in the prompt or in the
parse, never ignored:

- ``auto``: the tools are declared; the model decides.
- ``none``: the tools are *not* declared to the model (K2's template has no "do not call" switch; undeclared,
  its training makes it answer in text) and no call is parsed out of its output: anything it writes is content.
- ``required`` / a named function: the assistant turn is started for the model (``prefill``) with the opening of a
  tool-call section (``required``), or of a call to that function (named), so the first thing it writes is a call.
  The prefill is part of the answer: the BLS parses ``prefill + generated text``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from k2trt.api.errors import ApiError, bad_request
from k2trt.chat import ChatError, prepare_messages

TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
"""OpenAI's function-name rule (``^[a-zA-Z0-9_-]{1,64}$``) plus dots: K2 calls MCP-style dotted names."""

MAX_STOP = 4
"""Stop strings per request (OpenAI's and vLLM's limit)."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat generation, API-neutral. ``tool_choice``: ``"auto" | "none" | "required"`` or a function name
    (as ``{"name": ...}``). ``max_tokens`` None: as many as the engine allows."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, str] = "auto"
    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0
    min_tokens: int = 0
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False

    @property
    def declared_tools(self) -> list[dict[str, Any]] | None:
        """The tools the prompt declares: none for ``tool_choice="none"``."""
        return None if self.tool_choice == "none" else self.tools

    def to_bls(self) -> dict[str, Any]:
        """The ``k2_bls`` request JSON."""
        sampling: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p}
        if self.top_k:
            sampling["top_k"] = self.top_k
        if self.min_tokens:
            sampling["min_tokens"] = self.min_tokens
        if self.seed is not None:
            sampling["seed"] = self.seed
        if self.stop:
            sampling["stop"] = list(self.stop)
        out: dict[str, Any] = {
            "messages": self.messages,
            "tool_choice": self.tool_choice,
            "sampling": sampling,
            "stream": self.stream,
        }
        if self.declared_tools:
            out["tools"] = self.declared_tools
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        return out


# ----------------------------------------------------------------------------------------------- shared checks


def check_tools(tools: Any, at: str = "tools") -> list[dict[str, Any]] | None:
    """OpenAI-shaped ``tools`` checked strictly enough that the model gets a declaration it can use: every
    problem at once, each naming its path (``tools[0].function.parameters.required[1]``)."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad_request(f"{at}: expected a list of tools, got {_kind(tools)}", param=at)
    problems: list[str] = []
    seen: dict[str, int] = {}
    for k, t in enumerate(tools):
        p = f"{at}[{k}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            problems.append(f'{p}: expected {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}')
            continue
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            problems.append(f"{p}.function.name: expected 1-64 characters of a-z, A-Z, 0-9, '_', '-', '.', "
                            f"got {name!r}")
        elif name in seen:
            problems.append(f"{p}.function.name: {name!r} is already declared by {at}[{seen[name]}]")
        else:
            seen[name] = k
        if "description" in fn and fn["description"] is not None and not isinstance(fn["description"], str):
            problems.append(f"{p}.function.description: expected a string")
        if fn.get("parameters") is not None:
            check_json_schema(fn["parameters"], f"{p}.function.parameters", problems)
        if fn.get("strict"):
            problems.append(f"{p}.function.strict: strict schema adherence needs constrained decoding, which "
                            "k2trt lacks")
    if problems:
        raise bad_request("invalid tools: " + "; ".join(problems), param=at, code="invalid_tools")
    return tools


def check_json_schema(schema: Any, at: str, problems: list[str]) -> None:
    """The parts of a function's parameter schema a model depends on: an object schema whose ``properties`` are
    schemas and whose ``required`` names are among them."""
    if not isinstance(schema, dict):
        problems.append(f"{at}: expected a JSON schema object, got {_kind(schema)}")
        return
    typ = schema.get("type", "object")
    if typ != "object":
        problems.append(f"{at}.type: function parameters must be an object schema, got {typ!r}")
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        problems.append(f"{at}.properties: expected an object mapping names to schemas, got {_kind(props)}")
        props = {}
    for name, sub in props.items():
        if not isinstance(sub, dict) and not isinstance(sub, bool):
            problems.append(f"{at}.properties.{name}: expected a schema object, got {_kind(sub)}")
        elif isinstance(sub, dict) and "type" in sub and not isinstance(sub["type"], str | list):
            problems.append(f"{at}.properties.{name}.type: expected a type name or a list of them")
    req = schema.get("required", [])
    if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
        problems.append(f"{at}.required: expected a list of property names")
    else:
        for j, r in enumerate(req):
            if "properties" in schema and r not in props:
                problems.append(f"{at}.required[{j}]: {r!r} is not one of the properties")


def check_messages(messages: Any, tools: list[dict] | None) -> list[dict[str, Any]]:
    """``k2trt.chat.prepare_messages``' checks, as a 400 that names each message index and field."""
    try:
        prepare_messages(messages, tools)
    except ChatError as e:
        raise bad_request("; ".join(e.problems), param="messages", code="invalid_messages") from None
    return messages


def number(body: Mapping, key: str, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
    """``body[key]`` as a float within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), None when absent or null."""
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise bad_request(f"{key}: expected a number, got {_kind(v)}", param=key)
    if v > hi or v < lo or (lo_open and v == lo):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise bad_request(f"{key}: {v!r} is outside {rng}", param=key)
    return float(v)


def integer(body: Mapping, key: str, lo: int | None = None, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"{key}: expected an integer, got {_kind(v)}", param=key)
    if lo is not None and v < lo:
        raise bad_request(f"{key}: must be >= {lo}, got {v}", param=key)
    if hi is not None and v > hi:
        raise bad_request(f"{key}: must be <= {hi}, got {v}", param=key)
    return v


def boolean(body: Mapping, key: str) -> bool | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise bad_request(f"{key}: expected true or false, got {_kind(v)}", param=key)
    return v


def stop_list(v: Any, key: str) -> list[str]:
    """A stop string or a list of up to :data:`MAX_STOP` non-empty ones."""
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request(f"{key}: expected a non-empty string or a list of them", param=key)
    if len(stops) > MAX_STOP:
        raise bad_request(f"{key}: at most {MAX_STOP} stop sequences, got {len(stops)}", param=key)
    return list(stops)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says where the JSON breaks."""
    try:
        body = json.loads(raw.decode("utf-8"))  # decoded first: json.loads(bytes) would guess UTF-16/32 too
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as e:
        raise bad_request(
            f"the request body is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {_kind(body)}", code="invalid_json")
    return body


def model_name(body: Mapping, served: str) -> str:
    """The ``model`` field, which must name the served model (404 otherwise, as OpenAI and Anthropic answer)."""
    m = body.get("model")
    if not isinstance(m, str) or not m:
        raise bad_request("model: a model name is required", param="model")
    if m != served:
        raise ApiError(404, f"model {m!r} does not exist; this server serves {served!r}", param="model",
                       code="model_not_found")
    return m


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, int | float) else type(v).__name__
    )


__all__ = [
    "ChatRequest",
    "MAX_STOP",
    "TOOL_NAME",
    "boolean",
    "check_json_schema",
    "check_messages",
    "check_tools",
    "integer",
    "model_name",
    "number",
    "parse_json_body",
    "stop_list",
]
