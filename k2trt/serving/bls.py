"""``k2_bls``: the chat model. Request JSON -> K2 prompt -> the engine model (BLS, streaming) -> OpenAI-shaped JSON.

Request (the ``request`` tensor, one JSON object; :meth:`ChatRequest.parse` lists every problem at once)::

    {"messages": [...],                 # OpenAI chat messages (k2trt.chat.prepare_messages checks them)
     "tools": [...],                    # optional, OpenAI function tools
     "tool_choice": "auto",             # "auto" | "none" | "required" | {"name": F} | {"type": "function",
                                        #   "function": {"name": F}}
     "sampling": {"temperature": 0.6, "top_p": 1.0, "top_k": 0, "seed": 7, "stop": ["\\n\\n"]},  # all optional
     "max_tokens": 256,                 # optional: default min(default_max_tokens, room left in the context)
     "stream": true}                    # optional, default false

Response (the ``response`` tensor): ``stream`` false: one ``chat.completion`` object. ``stream`` true: one
``chat.completion.chunk`` per delta (the first delta also carries ``"role": "assistant"``), then a last chunk
with an empty delta, ``finish_reason`` and ``usage``. ``finish_reason`` is ``tool_calls`` when the answer holds
complete tool calls, ``stop`` when the model ended its turn (or wrote a ``stop`` string: the choice then has
``stop_sequence``), ``length`` when ``max_tokens`` cut it. ``usage`` counts the prompt (with any prefill) and the
generated tokens (the end-of-turn token included). Tool calls are parsed by :mod:`k2trt.toolcall`: the streamed
deltas add up to exactly the non-streamed message.

tool_choice (K2 has no constrained decoding here; each value is kept in the prompt or in the parse):
``auto`` declares the tools and parses calls to them; ``none`` declares no tools and parses nothing (all the model
writes is content); ``required`` / a named function start the assistant turn with the opening of a tool-call
section / of a call to that function (the prefill is part of the answer: parsed, and streamed).

Errors are :class:`BlsError` (a K2Error); :func:`error_message` prefixes ``k2_bls:``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from k2trt.chat import RECOMMENDED_TEMPERATURE, ChatError, prepare_messages, render_chat
from k2trt.errors import K2Error
from k2trt.serving.tensors import EngineRequest
from k2trt.tokenizer import K2Tokenizer
from k2trt.toolcall import (
    CALL_BEGIN,
    MARKERS,
    SECTION_BEGIN,
    Delta,
    ParseResult,
    StreamingToolParser,
)

REQUEST_KEYS = ("messages", "tools", "tool_choice", "sampling", "max_tokens", "stream")
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "seed", "stop", "min_tokens")
MAX_STOP_STRINGS = 16

_SECTION_BEGIN = next(m for m, k in MARKERS.items() if k == SECTION_BEGIN)
_CALL_BEGIN = next(m for m, k in MARKERS.items() if k == CALL_BEGIN)


class BlsError(K2Error):
    """A request k2_bls cannot answer, described so the client can fix it."""


def error_message(err: K2Error) -> str:
    """What the client reads: ``k2_bls: `` and every problem."""
    return "k2_bls: " + "; ".join(err.problems)


@dataclass(frozen=True)
class BlsConfig:
    """The k2_bls model's parameters (``k2trt repo`` fills them from the engine dir)."""

    model_name: str
    """The ``model`` field of every response."""
    max_seq_len: int
    """Prompt + generated tokens the engine takes."""
    default_max_tokens: int = 512
    """``max_tokens`` when a request has none (capped by the room left in the context)."""

    def validate(self) -> None:
        if self.max_seq_len < 2:
            raise BlsError(f"max_seq_len must be >= 2, got {self.max_seq_len}")
        if self.default_max_tokens < 1:
            raise BlsError(f"default_max_tokens must be >= 1, got {self.default_max_tokens}")


# ----------------------------------------------------------------------------------------------- requests


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, int | float) else type(v).__name__)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class ChatRequest:
    """A validated k2_bls request (the module docstring has the JSON)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, str] = "auto"
    """``auto``, ``none``, ``required``, or ``{"name": F}``."""
    temperature: float = RECOMMENDED_TEMPERATURE
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    max_tokens: int | None = None
    stream: bool = False

    @classmethod
    def parse(cls, raw: bytes | str) -> ChatRequest:
        """The request in ``raw`` (JSON), validated; BlsError listing every problem."""
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BlsError(f"request: not UTF-8 text (byte {e.start})") from None
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as e:
            raise BlsError(f"request: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        if not isinstance(body, dict):
            raise BlsError(f"request: expected a JSON object, got {_kind(body)}")
        return cls.from_dict(body)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> ChatRequest:
        problems: list[str] = []
        unknown = sorted(set(body) - set(REQUEST_KEYS))
        if unknown:
            problems.append(f"request: unknown field(s) {unknown}; expected some of {list(REQUEST_KEYS)}")
        messages, tools = body.get("messages"), body.get("tools")
        try:
            prepare_messages(messages, tools)
        except ChatError as e:
            problems += e.problems
        choice = body.get("tool_choice", "auto")
        names = [t["function"]["name"] for t in tools or [] if isinstance(t, dict) and isinstance(
            t.get("function"), dict) and isinstance(t["function"].get("name"), str)]
        if isinstance(choice, dict):
            fn = choice.get("function") if choice.get("type") == "function" else choice
            name = fn.get("name") if isinstance(fn, dict) else None
            if not isinstance(name, str) or not name:
                problems.append('tool_choice: a named choice is {"name": F} or {"type": "function", "function": '
                                '{"name": F}}')
            elif name not in names:
                problems.append(f"tool_choice: {name!r} is not one of the declared tools {names}")
            else:
                choice = {"name": name}
        elif choice not in ("auto", "none", "required"):
            problems.append(f"tool_choice: expected auto, none, required or a function, got {choice!r}")
        elif choice == "required" and not names:
            problems.append("tool_choice: 'required' needs tools")

        sampling = body.get("sampling", {})
        s: dict[str, Any] = {}
        if not isinstance(sampling, dict):
            problems.append(f"sampling: expected an object, got {_kind(sampling)}")
            sampling = {}
        bad = sorted(set(sampling) - set(SAMPLING_KEYS))
        if bad:
            problems.append(f"sampling: unknown field(s) {bad}; expected some of {list(SAMPLING_KEYS)}")
        t = sampling.get("temperature", RECOMMENDED_TEMPERATURE)
        if not _number(t) or not 0 <= t <= 2:
            problems.append(f"sampling.temperature: expected a number in [0, 2], got {t!r}")
        else:
            s["temperature"] = float(t)
        p = sampling.get("top_p", 1.0)
        if not _number(p) or not 0 < p <= 1:
            problems.append(f"sampling.top_p: expected a number in (0, 1], got {p!r}")
        else:
            s["top_p"] = float(p)
        for key in ("top_k", "seed", "min_tokens"):
            v = sampling.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 2**63):
                problems.append(f"sampling.{key}: expected a non-negative integer, got {v!r}")
            elif v is not None:
                s[key] = v
        stop = sampling.get("stop", [])
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(x, str) and x for x in stops):
            problems.append(f"sampling.stop: expected a non-empty string or a list of them, got {stop!r}")
        elif len(stops) > MAX_STOP_STRINGS:
            problems.append(f"sampling.stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        else:
            s["stop"] = tuple(stops)
        mt = body.get("max_tokens")
        if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
            problems.append(f"max_tokens: expected a positive integer, got {mt!r}")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            problems.append(f"stream: expected true or false, got {stream!r}")
        if problems:
            raise BlsError(problems)
        return cls(messages=list(messages), tools=list(tools) if tools else None, tool_choice=choice,
                   max_tokens=mt, stream=stream, **s)


# ----------------------------------------------------------------------------------------------- one session


@dataclass
class _Text:
    """Generated text with ``stop`` strings applied: what may be shown now, and whether a stop string ended it."""

    stops: tuple[str, ...]
    held: str = ""
    matched: str | None = None

    def push(self, piece: str) -> str:
        if self.matched is not None:
            return ""
        text = self.held + piece
        hits = [(text.find(s), s) for s in self.stops if s in text]
        if hits:
            at, self.matched = min(hits)
            self.held = ""
            return text[:at]
        # keep back the longest tail that could still become a stop string
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


@dataclass
class ChatSession:
    """One request's life: the prompt, the engine request, and the responses as the engine's ids arrive.

    Feed the engine's ids with :meth:`on_tokens` (it returns the chunks to send now when streaming); when the
    engine ends (or :attr:`stopped`: a stop string matched, stop the engine), :meth:`finish` returns the rest.
    """

    request: ChatRequest
    tokenizer: K2Tokenizer
    config: BlsConfig
    template: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    completion_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")

    def __post_init__(self) -> None:
        req, tok = self.request, self.tokenizer
        declared = None if req.tool_choice == "none" else req.tools
        rendered = render_chat(req.messages, tools=declared, add_generation_prompt=True, template=self.template,
                               tokenizer=tok)
        self.prefill = self._prefill()
        self.prompt_ids: list[int] = list(rendered.ids or []) + tok.encode(self.prefill, allow_special=True)
        room = self.config.max_seq_len - len(self.prompt_ids)
        if room < 1:
            raise BlsError(f"the prompt is {len(self.prompt_ids)} tokens; the engine's max_seq_len is "
                           f"{self.config.max_seq_len}, which leaves no room to generate")
        if req.max_tokens is not None and req.max_tokens > room:
            raise BlsError(f"max_tokens {req.max_tokens} is beyond the context: the prompt is "
                           f"{len(self.prompt_ids)} tokens and the engine's max_seq_len is "
                           f"{self.config.max_seq_len}, so at most {room} tokens can be generated")
        self.max_tokens = req.max_tokens or min(self.config.default_max_tokens, room)
        # Always parse: a call the model writes although no tool is declared (or tool_choice is none) is dropped
        # by declaring no tools, so K2's markers never reach the content.
        self._parser = StreamingToolParser(
            declared_tools=[t["function"]["name"] for t in declared or []])
        self._decoder = tok.stream_decoder()
        self._text = _Text(req.stop)
        self._stop_ids = set(tok.stop_ids)
        self._received = 0
        self._last_id: int | None = None
        self._sent_role = False
        self._deltas: list[Delta] = []
        self.result: ParseResult | None = None
        self.finish_reason: str | None = None
        if self.prefill:
            self._deltas += self._feed(self.prefill)

    def _prefill(self) -> str:
        choice = self.request.tool_choice
        if choice == "required":
            return _SECTION_BEGIN
        if isinstance(choice, dict):
            # the call's index continues the conversation's count, as K2 numbers its own calls (k2trt.chat)
            n = sum(len(m.get("tool_calls") or []) for m in self.request.messages if m.get("role") == "assistant")
            return f"{_SECTION_BEGIN}{_CALL_BEGIN}functions.{choice['name']}:{n}<|tool_call_argument_begin|>"
        return ""

    # -------------------------------------------------------------------------------------------- engine side

    def engine_request(self) -> EngineRequest:
        """The engine request: streamed (so stop strings and cancellation act at once), ending at ``<|im_end|>``,
        with the tokenizer's other stop ids as stop words."""
        r, tok = self.request, self.tokenizer
        return EngineRequest(
            input_ids=tuple(self.prompt_ids), max_tokens=self.max_tokens, end_id=tok.im_end_id, pad_id=tok.pad_id,
            stop_words=tuple((t,) for t in tok.stop_ids if t != tok.im_end_id), temperature=r.temperature,
            top_k=r.top_k, top_p=r.top_p, min_tokens=r.min_tokens, seed=r.seed, streaming=True)

    @property
    def stopped(self) -> bool:
        """A stop string matched: the answer is complete; stop the engine."""
        return self._text.matched is not None

    def _feed(self, text: str) -> list[Delta]:
        return self._parser.feed(text) if text else []

    def on_tokens(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """The engine produced ``ids``: the chunks to send now (streaming), else ``[]``."""
        ids = list(ids)
        if self.stopped or not ids:
            return []
        self._received += len(ids)
        self._last_id = ids[-1]
        text = self._decoder.push([t for t in ids if t not in self._stop_ids])
        self._deltas += self._feed(self._text.push(text))
        return self._drain() if self.request.stream else []

    def _drain(self) -> list[dict[str, Any]]:
        out = [self._chunk(d.to_openai()) for d in self._deltas]
        self._deltas = []
        return out

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if not self._sent_role and delta:
            delta = {"role": "assistant", **delta}
            self._sent_role = True
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.config.model_name, "choices": [choice]}

    def finish(self) -> list[dict[str, Any]]:
        """The engine ended (or a stop string matched): the last chunks, or the whole ``chat.completion``."""
        if not self.stopped:
            self._deltas += self._feed(self._text.push(self._decoder.flush()))
            self._deltas += self._feed(self._text.flush())
        self._deltas += self._parser.finish()
        self.result = self._parser.result
        ended_by_end_id = (not self.stopped and self._received < self.max_tokens
                           and self._last_id not in self._stop_ids)
        if self.stopped or (self._last_id in self._stop_ids) or ended_by_end_id:
            reason = "stop"
        else:
            reason = "length"
        if reason == "stop" and self.result.tool_calls and self.result.partial_call is None:
            reason = "tool_calls"
        self.finish_reason = reason
        usage = {"prompt_tokens": len(self.prompt_ids),
                 "completion_tokens": self._received + (1 if ended_by_end_id else 0)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if self.request.stream:
            out = self._drain()
            last = self._chunk({}, reason)
            if self.stopped:
                last["choices"][0]["stop_sequence"] = self._text.matched
            last["usage"] = usage
            return out + [last]
        calls = [c.to_openai() for c in self.result.streamed_calls]
        message: dict[str, Any] = {"role": "assistant",
                                   "content": self.result.content if self.result.content or not calls else None}
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": reason}
        if self.stopped:
            choice["stop_sequence"] = self._text.matched
        return [{"id": self.completion_id, "object": "chat.completion", "created": self.created,
                 "model": self.config.model_name, "choices": [choice], "usage": usage}]


# ----------------------------------------------------------------------------------------------- the driver


Engine = Callable[[EngineRequest], Iterator[list[int]]]
"""Runs an engine request and yields the ids of each engine response (the BLS call in Triton; a recording in the
tests)."""


def rate_limited(is_cancelled: Callable[[], bool], interval_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> Callable[[], bool]:
    """``is_cancelled`` asked at most once per ``interval_s`` (False in between; True once seen stays True).

    The Python backend's ``response_sender.is_cancelled`` is a round trip to tritonserver; asked per token it
    costs more than the token's own work in this model at concurrency > 1.
    """
    state = {"next": 0.0, "gone": False}

    def check() -> bool:
        if not state["gone"]:
            now = clock()
            if now >= state["next"]:
                state["next"] = now + interval_s
                state["gone"] = bool(is_cancelled())
        return state["gone"]

    return check


def serve_request(
    raw: bytes | str, *, tokenizer: K2Tokenizer, config: BlsConfig, engine: Engine, template: str | None = None,
    is_cancelled: Callable[[], bool] = lambda: False, stop_engine: Callable[[], None] = lambda: None,
) -> Iterator[dict[str, Any]]:
    """Every response object for one k2_bls request, in order (BlsError before the first for a bad request).

    ``stop_engine`` is called when the answer ended before the engine did (a stop string) or the client went away
    (``is_cancelled``); after a cancellation nothing more is yielded.
    """
    session = ChatSession(ChatRequest.parse(raw), tokenizer, config, template)
    for ids in engine(session.engine_request()):
        if is_cancelled():
            stop_engine()
            return
        yield from session.on_tokens(ids)
        if session.stopped:
            stop_engine()
            break
    if is_cancelled():
        return
    yield from session.finish()
