"""Anthropic Messages: request -> :class:`ChatRequest`; k2_bls output -> ``message`` JSON and stream events.

Translation (the K2 model card's Anthropic-compatible API):

- ``system`` (a string or text blocks) becomes the first message; ``text`` blocks become text parts;
  an assistant's ``tool_use`` blocks become its ``tool_calls`` (``input`` as the JSON arguments); a user's
  ``tool_result`` blocks become ``tool`` messages named after the tool they answer, in block order (``is_error``
  results are prefixed ``Error: ``: K2's template has no error flag).
- ``tools`` (``name``, ``description``, ``input_schema``) become function tools; ``tool_choice`` ``auto`` /
  ``any`` / ``tool`` / ``none`` become ``auto`` / ``required`` / the named function / ``none``
  (:mod:`k2trt.api.request` says how each is kept).
- ``temperature`` (Anthropic's 0..1, default 1) is sampled at ``request * 0.6``; ``top_p``, ``top_k``,
  ``stop_sequences``, ``max_tokens`` pass through.
- The answer: a ``text`` block (when there is text) then one ``tool_use`` block per call, with the K2 call id
  (``functions.get_weather:0``) as its ``id``; ``stop_reason`` ``end_turn`` / ``max_tokens`` / ``stop_sequence``
  / ``tool_use``.

Refused with a 400 naming the field: images, documents, thinking and server-tool blocks, Anthropic's server tools
(``web_search_...``), a final assistant message (prefill), ``disable_parallel_tool_use``, ``thinking`` other
than disabled, unknown fields. ``cache_control`` marks and ``metadata`` are accepted and change nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from k2trt.api.errors import ApiError, bad_request, unsupported
from k2trt.api.request import (
    TOOL_NAME,
    ChatRequest,
    boolean,
    check_json_schema,
    check_messages,
    integer,
    model_name,
    number,
    stop_list,
)
from k2trt.chat import anthropic_to_real_temperature

SUPPORTED = frozenset({
    "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p", "top_k",
    "tools", "tool_choice",
})  # fmt: skip
BOOKKEEPING = frozenset({"metadata", "cache_control", "user_profile_id", "workspace_id"})
"""Labels and prompt-cache hints: accepted, they change no output."""
AT_DEFAULT: dict[str, tuple[Any, str]] = {
    "thinking": (lambda v: v == {"type": "disabled"}, "Kimi-K2-Instruct does not think before answering"),
    "service_tier": (lambda v: v in ("auto", "standard_only"), "one service tier"),
    "speed": (lambda v: v == "standard", "one speed"),
}
UNSUPPORTED: dict[str, str] = {
    "container": "no code-execution containers",
    "mcp_servers": "no MCP connector; declare the tools instead",
    "context_management": "no server-side context editing",
    "output_format": "no constrained decoding",
    "output_config": "no effort control or constrained output",
    "inference_geo": "one location: this server",
    "diagnostics": "no diagnostics",
}
MAX_STOP_SEQUENCES = 16

_STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def parse_messages_request(body: Mapping[str, Any], *, served_model: str) -> ChatRequest:
    """Validate a ``POST /v1/messages`` body; raise :class:`ApiError` (400/404) naming the field."""
    refused, why = [], {}
    for key, value in body.items():
        if key in SUPPORTED or key in BOOKKEEPING or value is None and key in AT_DEFAULT:
            continue
        if key in AT_DEFAULT:
            ok, reason = AT_DEFAULT[key]
            if not ok(value):
                refused.append(key)
                why[key] = f"{reason}; got {value!r}"
        else:
            refused.append(key)
            why[key] = UNSUPPORTED.get(key, "unrecognized field (extra inputs are not permitted)")
    if refused:
        raise unsupported(refused, why)
    model = model_name(body, served_model)
    max_tokens = integer(body, "max_tokens", lo=1)
    if max_tokens is None:
        raise bad_request("max_tokens: field required", param="max_tokens")
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    if "messages" not in body:
        raise bad_request("messages: field required", param="messages")
    messages = _messages(body["messages"], body.get("system"))
    check_messages(messages, tools)  # the rest of k2trt.chat's checks (ids answered, names) on the translation
    temperature = number(body, "temperature", 0.0, 1.0)
    return ChatRequest(
        model=model,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        temperature=anthropic_to_real_temperature(1.0 if temperature is None else temperature),
        top_p=number(body, "top_p", 0.0, 1.0, lo_open=True) or 1.0,
        top_k=integer(body, "top_k", lo=0) or 0,
        max_tokens=max_tokens,
        stop=_stop_sequences(body.get("stop_sequences")),
        stream=bool(boolean(body, "stream")),
        include_usage=True,
    )


def _stop_sequences(v: Any) -> list[str]:
    if v is not None and not isinstance(v, list):
        raise bad_request("stop_sequences: expected a list of strings", param="stop_sequences")
    if v and len(v) > MAX_STOP_SEQUENCES:
        raise bad_request(f"stop_sequences: at most {MAX_STOP_SEQUENCES}, got {len(v)}", param="stop_sequences")
    stops = stop_list(v or None, "stop_sequences")
    return stops


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    """Anthropic tools -> OpenAI function tools, every problem at once."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad_request("tools: expected a list of tools", param="tools")
    out, problems, seen = [], [], {}
    for k, t in enumerate(tools):
        at = f"tools[{k}]"
        if not isinstance(t, dict):
            problems.append(f"{at}: expected an object with name, description, input_schema")
            continue
        kind = t.get("type", "custom")
        if kind != "custom":
            problems.append(f"{at}.type: {kind!r} is an Anthropic server tool; only custom tools (name, "
                            "description, input_schema) are supported")
            continue
        extra = set(t) - {"type", "name", "description", "input_schema", "cache_control"}
        if extra:
            problems.append(f"{at}: unsupported fields {sorted(extra)}")
        name = t.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            problems.append(f"{at}.name: expected 1-64 characters of a-z, A-Z, 0-9, '_', '-', '.', got {name!r}")
        elif name in seen:
            problems.append(f"{at}.name: {name!r} is already declared by tools[{seen[name]}]")
        else:
            seen[name] = k
        if t.get("description") is not None and not isinstance(t["description"], str):
            problems.append(f"{at}.description: expected a string")
        if "input_schema" not in t:
            problems.append(f"{at}.input_schema: field required")
        else:
            check_json_schema(t["input_schema"], f"{at}.input_schema", problems)
        fn = {"name": name}
        if t.get("description") is not None:
            fn["description"] = t["description"]
        fn["parameters"] = t.get("input_schema")
        out.append({"type": "function", "function": fn})
    if problems:
        raise bad_request("invalid tools: " + "; ".join(problems), param="tools", code="invalid_tools")
    return out


def _tool_choice(choice: Any, tools: list[dict] | None) -> str | dict[str, str]:
    names = [t["function"]["name"] for t in tools or []]
    if choice is None:
        return "auto" if names else "none"
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise bad_request(
            "tool_choice: expected {'type': 'auto' | 'any' | 'tool' | 'none'}" + f", got {choice!r}",
            param="tool_choice",
        )
    if choice.get("disable_parallel_tool_use"):
        raise unsupported(["tool_choice.disable_parallel_tool_use"],
                          {"tool_choice.disable_parallel_tool_use": "K2 may write several calls in one turn and "
                           "nothing constrains it to one"})
    kind = choice["type"]
    if kind in ("any", "tool") and not names:
        raise bad_request(f"tool_choice: {kind!r} needs tools", param="tool_choice")
    if kind == "tool":
        if choice.get("name") not in names:
            raise bad_request(f"tool_choice.name: {choice.get('name')!r} is not among the tools", param="tool_choice")
        return {"name": choice["name"]}
    return {"auto": "auto", "any": "required", "none": "none"}[kind]


def _text(content: Any, at: str) -> list[dict[str, str]]:
    """A string or a list of text blocks -> OpenAI text parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(f"{at}: expected a string or a list of text blocks", param=at.split("[")[0].split(".")[0])
    parts = []
    for j, b in enumerate(content):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            kind = b.get("type") if isinstance(b, dict) else type(b).__name__
            raise bad_request(f"{at}[{j}]: only text blocks are supported here, got {kind!r}", param="messages")
        parts.append({"type": "text", "text": b["text"]})
    return parts


def _messages(messages: Any, system: Any) -> list[dict[str, Any]]:
    """Anthropic messages (and system) -> OpenAI-shaped messages, checked block by block."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: expected a non-empty list of messages", param="messages")
    out: list[dict[str, Any]] = []
    if system is not None and system != "" and system != []:
        out.append({"role": "system", "content": _text(system, "system")})
    tool_names: dict[str, str] = {}  # tool_use id -> name
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            role = m.get("role") if isinstance(m, dict) else None
            raise bad_request(f"{at}.role: expected 'user' or 'assistant', got {role!r}", param="messages")
        role, content = m["role"], m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise bad_request(f"{at}.content: expected a string or a list of content blocks", param="messages")
        texts: list[dict[str, str]] = []
        calls: list[dict[str, Any]] = []
        for j, b in enumerate(content):
            bat = f"{at}.content[{j}]"
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text" and isinstance(b.get("text"), str):
                texts.append({"type": "text", "text": b["text"]})
            elif kind == "tool_use" and role == "assistant":
                tid, name, inp = b.get("id"), b.get("name"), b.get("input")
                if not isinstance(tid, str) or not tid or not isinstance(name, str) or not name:
                    raise bad_request(f"{bat}: a tool_use block needs an 'id' and a 'name'", param="messages")
                if not isinstance(inp, dict):
                    raise bad_request(f"{bat}.input: expected an object", param="messages")
                tool_names[tid] = name
                calls.append({"id": tid, "type": "function",
                              "function": {"name": name, "arguments": json.dumps(inp, ensure_ascii=False)}})
            elif kind == "tool_result" and role == "user":
                if texts:  # text before a result: keep the order
                    out.append({"role": "user", "content": texts})
                    texts = []
                tid = b.get("tool_use_id")
                if tid not in tool_names:
                    raise bad_request(f"{bat}.tool_use_id: {tid!r} answers no tool_use block of an earlier assistant "
                                      "message", param="messages")
                result = _text(b.get("content", ""), f"{bat}.content")
                if b.get("is_error"):
                    result = [{"type": "text", "text": "Error: "}] + result
                out.append({"role": "tool", "tool_call_id": tid, "name": tool_names[tid], "content": result})
            elif kind in ("tool_use", "tool_result"):
                raise bad_request(f"{bat}: a {kind} block belongs in a {'assistant' if kind == 'tool_use' else 'user'}"
                                  " message", param="messages")
            else:
                raise bad_request(f"{bat}.type: {kind!r} blocks are not supported (Kimi-K2-Instruct reads text, "
                                  "tool_use and tool_result)", param="messages")
        if role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": texts or None}
            if calls:
                msg["tool_calls"] = calls
            elif not texts:
                msg["content"] = ""
            out.append(msg)
        elif texts:
            out.append({"role": "user", "content": texts})
    if messages[-1].get("role") == "assistant":
        raise unsupported(["messages[-1]"], {"messages[-1]": "a final assistant message (prefill) is not supported: "
                                             "end with a user message"})
    return out


# ----------------------------------------------------------------------------------------------- responses


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def stop_reason(finish_reason: str, stop_sequence: str | None) -> str:
    if finish_reason == "stop" and stop_sequence:
        return "stop_sequence"
    return _STOP_REASON[finish_reason]


def tool_input(arguments: str, name: str, *, cut: bool = False) -> dict[str, Any]:
    """A call's arguments as the ``input`` object Anthropic requires. ``cut``: ``max_tokens`` ended the answer
    inside this call, so its arguments are incomplete: ``{}`` (``stop_reason: max_tokens`` says so). Otherwise
    arguments that are not a JSON object are an error of the answer, reported, never replaced by ``{}``."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    if cut:
        return {}
    raise ApiError(500, f"the model called {name!r} with arguments that are not a JSON object: {arguments[:200]!r}",
                   code="invalid_tool_arguments")


def message_response(result: Mapping[str, Any], *, message_id: str, model: str) -> dict[str, Any]:
    """The ``message`` object for a whole k2_bls result."""
    content: list[dict[str, Any]] = []
    if result["content"]:
        content.append({"type": "text", "text": result["content"]})
    calls = result["tool_calls"]
    for k, call in enumerate(calls):
        fn = call["function"]
        cut = result["finish_reason"] == "length" and k == len(calls) - 1
        content.append({"type": "tool_use", "id": call["id"], "name": fn["name"],
                        "input": tool_input(fn["arguments"], fn["name"], cut=cut)})
    if not content:
        content.append({"type": "text", "text": ""})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(result["finish_reason"], result.get("stop_sequence")),
        "stop_sequence": result.get("stop_sequence"),
        "usage": {"input_tokens": result["usage"]["prompt_tokens"],
                  "output_tokens": result["usage"]["completion_tokens"]},
    }


class EventWriter:
    """Turns the k2_bls stream into Anthropic stream events ``(event name, data)``.

    ``message_start``; per content block ``content_block_start``, its ``content_block_delta`` s (``text_delta`` or
    ``input_json_delta``), ``content_block_stop``; then ``message_delta`` (stop_reason, usage) and
    ``message_stop``. A text delta after a tool call opens a new text block (K2 may write text after its calls).
    """

    def __init__(self, *, message_id: str, model: str):
        self.message_id, self.model = message_id, model
        self._block = -1  # index of the open block, -1: none
        self._kind: str | None = None  # "text" | "tool_use"
        self._tool_block: dict[int, int] = {}  # OpenAI tool-call index -> block index

    def start(self, input_tokens: int = 0) -> list[tuple[str, dict]]:
        message = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": input_tokens, "output_tokens": 0}}
        return [("message_start", {"type": "message_start", "message": message})]

    def _open(self, kind: str, block: dict) -> list[tuple[str, dict]]:
        out = self._close()
        self._block += 1
        self._kind = kind
        out.append(("content_block_start", {"type": "content_block_start", "index": self._block,
                                            "content_block": block}))
        return out

    def _close(self) -> list[tuple[str, dict]]:
        if self._kind is None:
            return []
        self._kind = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._block})]

    def delta(self, delta: Mapping[str, Any]) -> list[tuple[str, dict]]:
        """``delta``: an OpenAI delta (``{"content": ...}`` or ``{"tool_calls": [one fragment]}``)."""
        out: list[tuple[str, dict]] = []
        for frag in delta.get("tool_calls") or []:
            fn = frag.get("function") or {}
            if frag.get("id") is not None:
                out += self._open("tool_use", {"type": "tool_use", "id": frag["id"], "name": fn.get("name"),
                                               "input": {}})
                self._tool_block[frag["index"]] = self._block
            args = fn.get("arguments") or ""
            if args:
                out.append(("content_block_delta", {"type": "content_block_delta",
                                                    "index": self._tool_block[frag["index"]],
                                                    "delta": {"type": "input_json_delta", "partial_json": args}}))
        text = delta.get("content")
        if text:
            if self._kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out.append(("content_block_delta", {"type": "content_block_delta", "index": self._block,
                                                "delta": {"type": "text_delta", "text": text}}))
        return out

    def finish(self, finish_reason: str, usage_counts: Mapping[str, int],
               stop_sequence: str | None = None) -> list[tuple[str, dict]]:
        out = self._close()
        out.append(("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(finish_reason, stop_sequence), "stop_sequence": stop_sequence},
            "usage": {"input_tokens": usage_counts["prompt_tokens"],
                      "output_tokens": usage_counts["completion_tokens"]},
        }))
        out.append(("message_stop", {"type": "message_stop"}))
        return out


def iter_events(events: list[tuple[str, dict]]) -> Iterator[str]:
    """SSE text for events: ``event: NAME`` and ``data: JSON``."""
    for name, data in events:
        yield f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


__all__ = [
    "EventWriter",
    "iter_events",
    "message_response",
    "new_message_id",
    "parse_messages_request",
    "stop_reason",
    "tool_input",
]
