"""K2 chat prompts: validate OpenAI-shaped messages, normalise tool-call ids, render the checkpoint's chat template.

The template is the checkpoint's own (``chat_template.jinja`` or ``tokenizer_config.json`` ``chat_template``;
k2trt ships one in the current K2 format for the synthetic checkpoints). It is rendered the way ``transformers``
renders chat templates (sandboxed jinja2, ``trim_blocks``/``lstrip_blocks``, a ``tojson`` that neither sorts keys
nor HTML-escapes), so a template produces here what it produces under ``apply_chat_template``.

Messages (OpenAI chat shape, roles system/user/assistant/tool, content a string or a list of text parts)::

    [{"role": "user", "content": "Weather in Beijing?"},
     {"role": "assistant", "content": None, "tool_calls": [{
         "id": "call_abc", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'}}]},
     {"role": "tool", "tool_call_id": "call_abc", "content": "Sunny"}]

Before rendering, every tool-call id becomes ``functions.{name}:{idx}`` with ``idx`` counting the conversation's
tool calls from 0 (``call_abc`` -> ``functions.get_weather:0`` here, the tool result follows it): K2 was trained
on ids of that form and writes them itself; other ids degrade its tool use (Kimi-K2-Instruct discussion #48).
The count is the one vLLM and SGLang use for K2 (vLLM ``chat_utils.get_history_tool_calls_cnt``), so the next
call K2 writes continues it.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import SandboxedEnvironment

from k2trt.errors import K2Error
from k2trt.tokenizer import K2Tokenizer, default_chat_template

DEFAULT_SYSTEM_PROMPT = "You are Kimi, an AI assistant created by Moonshot AI."
"""The system prompt K2's current template inserts when the conversation has none."""

RECOMMENDED_TEMPERATURE = 0.6
"""Kimi-K2-Instruct model card: recommended sampling temperature."""

ANTHROPIC_TEMPERATURE_SCALE = 0.6
"""Kimi-K2-Instruct model card: the Anthropic-compatible API uses ``real = request * 0.6``."""

ROLES = ("system", "user", "assistant", "tool")


class ChatError(K2Error):
    """A conversation or chat template k2trt cannot render; names the message index and field."""


@dataclass(frozen=True)
class RenderedChat:
    """A rendered prompt: ``text`` (what the template produced) and its token ``ids`` (None without a tokenizer)."""

    text: str
    ids: list[int] | None


# ----------------------------------------------------------------------------------------------- loading


def load_chat_template(checkpoint_dir: str | Path) -> str:
    """The chat template of a checkpoint: ``chat_template.jinja`` if present (newer HF layout, which
    ``transformers`` prefers), else ``tokenizer_config.json`` ``chat_template`` (a string, or a list of
    ``{"name", "template"}`` of which the ``default`` one)."""
    d = Path(checkpoint_dir)
    jinja_file = d / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    cfg_file = d / "tokenizer_config.json"
    if not cfg_file.is_file():
        raise ChatError(f"{d}: no chat template (neither chat_template.jinja nor tokenizer_config.json)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ChatError(f"{cfg_file}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    tpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
    if isinstance(tpl, list):  # HF's named templates
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default")
    if not isinstance(tpl, str) or not tpl:
        raise ChatError(f"{cfg_file}: no 'chat_template' string (and no chat_template.jinja in {d})")
    return tpl


# ----------------------------------------------------------------------------------------------- validation


def validate_messages(messages: Any, tools: Any = None) -> None:
    """Raise ChatError listing every problem in ``messages``/``tools`` (see :func:`prepare_messages`)."""
    prepare_messages(messages, tools)


def prepare_messages(messages: Any, tools: Any = None) -> list[dict[str, Any]]:
    """Validate ``messages`` and ``tools`` and return a deep copy with tool-call ids normalised.

    Checks: a non-empty list of objects; ``role`` one of system/user/assistant/tool; ``content`` a string or a
    list of ``{"type": "text", "text": str}`` parts (assistant: also null or absent when it has tool_calls);
    ``name`` a string; ``tool_calls`` only on assistant messages, each with ``function.name`` and
    ``function.arguments`` (a JSON string or an object), ids unique within the message; every tool message has a
    ``tool_call_id`` answering a call made earlier in the conversation (a later call reusing an id takes it over);
    ``tools`` a list of ``{"type": "function", "function": {"name": ...}}`` with distinct names. All problems are
    reported at once, each as ``messages[i].field: ...``. Unknown keys are ignored (clients echo back fields
    such as ``refusal``).
    """
    problems: list[str] = []
    _check_tools(tools, problems)
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes) or not messages:
        raise ChatError(problems + ["messages: expected a non-empty list of message objects"])
    out = _copy_json(messages)
    call_ids: dict[str, str] = {}  # id as the client sent it -> functions.{name}:{idx}
    n_calls = 0
    for i, m in enumerate(out):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            problems.append(f"{at}: expected an object with 'role' and 'content', got {type(m).__name__}")
            continue
        role = m.get("role")
        if role not in ROLES:
            problems.append(f"{at}.role: {role!r} is not one of {', '.join(ROLES)}")
            continue
        if "name" in m and m["name"] is not None and (not isinstance(m["name"], str) or not m["name"]):
            problems.append(f"{at}.name: expected a non-empty string, got {m['name']!r}")
        calls = m.get("tool_calls")
        if calls is not None and role != "assistant":
            problems.append(f"{at}.tool_calls: only assistant messages carry tool_calls (role is {role!r})")
        content_optional = role == "assistant"
        if role == "assistant" and not calls and m.get("content") is None:
            problems.append(f"{at}.content: an assistant message needs content or tool_calls")
        else:
            _check_content(m.get("content", None), f"{at}.content", content_optional, problems)
        if role == "assistant" and calls is not None:
            n_calls = _normalise_calls(m, at, n_calls, call_ids, problems)
        if role == "tool":
            old = m.get("tool_call_id")
            if not isinstance(old, str) or not old:
                problems.append(f"{at}.tool_call_id: a tool message needs the id of the call it answers")
            elif old not in call_ids:
                problems.append(f"{at}.tool_call_id: {old!r} answers no tool call made earlier in the conversation")
            else:
                m["tool_call_id"] = call_ids[old]
    if problems:
        raise ChatError(problems)
    return out


def _check_tools(tools: Any, problems: list[str]) -> None:
    if tools is None:
        return
    if not isinstance(tools, Sequence) or isinstance(tools, str | bytes):
        problems.append(f"tools: expected a list of tool objects, got {type(tools).__name__}")
        return
    seen: dict[str, int] = {}
    for k, t in enumerate(tools):
        at = f"tools[{k}]"
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            problems.append(f'{at}: expected {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}')
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{at}.function.name: expected a non-empty string, got {name!r}")
        elif name in seen:
            problems.append(f"{at}.function.name: {name!r} is already declared by tools[{seen[name]}]")
        else:
            seen[name] = k
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            problems.append(f"{at}.function.parameters: expected a JSON schema object")


def _check_content(content: Any, at: str, optional: bool, problems: list[str]) -> None:
    if isinstance(content, str) or (content is None and optional):
        return
    if isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                problems.append(
                    f"{at}[{j}]: only text parts {{'type': 'text', 'text': str}} are supported "
                    f"(K2-Instruct reads text only), got {kind!r}"
                )
        return
    problems.append(f"{at}: expected a string or a list of text parts, got {type(content).__name__}")


def _normalise_calls(m: dict, at: str, n_calls: int, call_ids: dict[str, str], problems: list[str]) -> int:
    """Check an assistant message's tool_calls and rewrite their ids in place; returns the new call count."""
    calls = m["tool_calls"]
    if not isinstance(calls, list):
        problems.append(f"{at}.tool_calls: expected a list, got {type(calls).__name__}")
        return n_calls
    seen: set[str] = set()
    renamed: dict[str, str] = {}
    for j, call in enumerate(calls):
        cat = f"{at}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            problems.append(f'{cat}: expected {{"id": ..., "type": "function", "function": {{"name", "arguments"}}}}')
            continue
        if call.get("type", "function") != "function":
            problems.append(f"{cat}.type: {call.get('type')!r}; only 'function' calls exist")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{cat}.function.name: expected a non-empty string, got {name!r}")
            continue
        if not isinstance(fn.get("arguments"), str | dict):
            problems.append(f"{cat}.function.arguments: expected a JSON string or an object")
        old = call.get("id")
        if old is not None:
            if not isinstance(old, str):
                problems.append(f"{cat}.id: expected a string, got {old!r}")
            elif old in seen:
                problems.append(f"{cat}.id: {old!r} is used twice in this message")
            seen.add(str(old))
        new = f"functions.{name}:{n_calls}"
        n_calls += 1
        if isinstance(old, str):
            renamed[old] = new
        call["id"] = new
    call_ids.update(renamed)
    return n_calls


def _copy_json(obj: Any, fn: Callable[[str], str] | None = None) -> Any:
    """A deep copy of JSON-like data (dicts, lists, tuples become lists) with ``fn`` applied to every string."""
    if isinstance(obj, str):
        return fn(obj) if fn else obj
    if isinstance(obj, Mapping):
        return {k: _copy_json(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_copy_json(v, fn) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------- rendering


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # transformers' tojson: jinja's built-in sorts keys and HTML-escapes <>&' ("<|" would become "\u003c|"), which
    # would change K2's tool declarations; this is json.dumps with the same keywords and defaults as transformers.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    # SandboxedEnvironment blocks access to Python internals from the template. Not the *immutable* sandbox
    # transformers uses: real K2 templates mutate lists they create (ik_llama.cpp's adaptation keeps a queue of
    # call ids with .append/.pop), which the immutable sandbox refuses; caller data cannot be changed anyway,
    # since templates only ever see prepare_messages' deep copy.
    env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatError(f"chat template line {e.lineno}: {e.message}") from None


# Marks special-token names that come from message data, so that only the template's own markers become control
# tokens: "<|im_end|>" typed by a user is escaped to "<\ue000|im_end|>" for rendering (a private-use character
# no special name contains), and restored to text afterwards. A \ue000 already in the data is doubled.
_ESC = "\ue000"
_UNESCAPE = re.compile(_ESC + "(" + _ESC + ")?")


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(lambda m: m.group(1) or "", text)


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    template: str | None = None,
    tokenizer: K2Tokenizer | None = None,
) -> RenderedChat:
    """Render a conversation into K2's prompt text and, with a ``tokenizer``, its ids.

    ``template``: the chat template source (:func:`load_chat_template`); None uses k2trt's own template.
    ``add_generation_prompt`` appends the assistant header so that the model answers next.

    The ids are ``tokenizer.encode(text, allow_special=True)`` except that special-token names inside message
    data (a user pasting ``<|im_end|>``) are encoded as plain text: only the markers the template writes become
    control tokens, so a message cannot forge a turn or a tool call. Raises ChatError for invalid messages
    (:func:`prepare_messages`) or a template that fails.
    """
    compiled = _compile(default_chat_template() if template is None else template)
    if tokenizer is None:
        prepared = prepare_messages(messages, tools)
        tools_data = _copy_json(tools) if tools else None
    else:
        pattern = tokenizer.special_pattern

        def escape(s: str) -> str:
            return pattern.sub(lambda m: m[0][0] + _ESC + m[0][1:], s.replace(_ESC, _ESC + _ESC))

        prepare_messages(messages, tools)  # validate the caller's data (error messages show it unescaped)
        prepared = prepare_messages(_copy_json(messages, escape), None)
        tools_data = _copy_json(tools, escape) if tools else None
    try:
        rendered = compiled.render(
            messages=prepared, tools=tools_data, add_generation_prompt=add_generation_prompt
        )
    except jinja2.TemplateError as e:
        raise ChatError(f"chat template failed: {e}") from None
    except (TypeError, KeyError, IndexError, AttributeError, ValueError) as e:
        # a template that assumes a shape the (valid) messages do not have, e.g. content null
        raise ChatError(f"chat template failed on these messages: {type(e).__name__}: {e}") from None
    if tokenizer is None:
        return RenderedChat(text=rendered, ids=None)
    ids: list[int] = []
    pos = 0
    for m in tokenizer.special_pattern.finditer(rendered):
        ids.extend(tokenizer.encode(_unescape(rendered[pos : m.start()])))
        ids.append(tokenizer.special_ids[m[0]])
        pos = m.end()
    ids.extend(tokenizer.encode(_unescape(rendered[pos:])))
    return RenderedChat(text=_unescape(rendered), ids=ids)


# ----------------------------------------------------------------------------------------------- request helpers


def anthropic_to_real_temperature(temperature: float) -> float:
    """The sampling temperature for an Anthropic-API request: ``request * 0.6``.

    Source: Kimi-K2-Instruct model card ("the Anthropic-compatible API maps temperature by real_temperature =
    request_temperature * 0.6"): Anthropic clients default to 1.0, which maps to K2's recommended 0.6. The
    Anthropic API accepts 0..1; anything else is a ChatError.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0.0 <= temperature <= 1.0:
        raise ChatError(f"temperature: the Anthropic API takes a number in [0, 1], got {temperature!r}")
    return float(temperature) * ANTHROPIC_TEMPERATURE_SCALE


__all__ = [
    "ANTHROPIC_TEMPERATURE_SCALE",
    "ChatError",
    "DEFAULT_SYSTEM_PROMPT",
    "RECOMMENDED_TEMPERATURE",
    "RenderedChat",
    "anthropic_to_real_temperature",
    "load_chat_template",
    "prepare_messages",
    "render_chat",
    "validate_messages",
]
