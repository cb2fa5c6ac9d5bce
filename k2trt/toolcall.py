"""Parse the tool calls K2 writes, whole or streamed; streamed == non-streamed for any chunking.

K2 writes calls after (optional) content, as decoded text::

    I'll check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>
    {"city": "Beijing"}<|tool_call_end|><|tool_call_begin|>functions.mcp.search:1<|tool_call_argument_begin|>
    {"q": "x"}<|tool_call_end|><|tool_calls_section_end|>

-> content ``"I'll check."``; calls ``functions.get_weather:0`` (name ``get_weather``, arguments
``{"city": "Beijing"}``) and ``functions.mcp.search:1`` (name ``mcp.search``: the name is everything between
``functions.`` and the last ``:idx``).

Design (STYLE.md 11): :func:`parse` is a pure function of the full text: one left-to-right scan
(:class:`_Scanner`). :class:`StreamingToolParser` runs the same scan over the accumulated text, resuming it where
the last marker left off (its state at a marker depends only on the text before it), takes the parse *as far as
it is already certain* (:meth:`_Scanner.view` with ``final=False``: text that could still turn out to be part of
a marker, and whitespace that could still turn out to be trailing, are left out), and emits what that adds to
what it emitted before. At :meth:`~StreamingToolParser.finish` the view is the full parse, so the emitted pieces
add up to exactly ``parse(text)``. The views only ever grow (a marker found in a prefix is found at the same
place in any extension: markers contain ``<|`` only at their start), so nothing emitted is ever retracted, and a
streamed token costs O(its length), not O(text so far).

Rules, chosen so that nothing the model wrote is lost and no marker reaches the content:

- Content is all text outside tool-call sections, kept exactly (not stripped); text after a section is content too.
- Markers: ``<|tool_calls_section_begin|>`` / ``_end|>`` (and the singular ``<|tool_call_section_begin|>`` /
  ``_end|>`` K2 also writes), ``<|tool_call_begin|>``, ``<|tool_call_argument_begin|>``, ``<|tool_call_end|>``;
  whitespace around them inside a section, around the id and around the arguments is dropped.
- Arguments run from ``<|tool_call_argument_begin|>`` to the first ``<|tool_call_end|>`` (or a
  ``<|tool_call_begin|>`` / section end when the model skipped ``<|tool_call_end|>``); any other ``<|...|>`` text,
  newlines and unicode inside them are kept. Arguments that are not a JSON object are kept as text with
  ``valid_json=False``, never an exception.
- A call cut off by the end of the text (max_tokens) is ``partial_call``; a call whose id/header was cut before its
  argument marker is in ``unparsed``; stray text inside a section and stray markers go to ``unparsed`` too.
- With ``declared_tools``, calls to other names go to ``dropped_calls`` and are never streamed.

Regression cases other parsers had, each covered by a named test: a greedy regex merging several calls into one,
markers leaking into content, dotted function names cut at the first dot, streamed arguments differing from the
non-streamed ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARG_BEGIN, CALL_END = range(5)

MARKERS: dict[str, int] = {
    "<|tool_calls_section_begin|>": SECTION_BEGIN,
    "<|tool_call_section_begin|>": SECTION_BEGIN,  # the singular spelling K2 also emits
    "<|tool_calls_section_end|>": SECTION_END,
    "<|tool_call_section_end|>": SECTION_END,
    "<|tool_call_begin|>": CALL_BEGIN,
    "<|tool_call_argument_begin|>": ARG_BEGIN,
    "<|tool_call_end|>": CALL_END,
}
"""Every marker the parser acts on -> its kind."""

_MARKER_RE = re.compile("|".join(re.escape(m) for m in MARKERS))
_MAX_MARKER = max(map(len, MARKERS))
_ARG_TERMINATORS = frozenset({CALL_END, CALL_BEGIN, SECTION_END})
# Proper prefixes of markers: a text ending in one may be cut inside a marker, so a view holds it back.
_PREFIXES_ANY = frozenset(m[:k] for m in MARKERS for k in range(1, len(m)))
_PREFIXES_TERMINATOR = frozenset(
    m[:k] for m, kind in MARKERS.items() if kind in _ARG_TERMINATORS for k in range(1, len(m))
)
_ID_INDEX = re.compile(r"(.*):\d+", re.DOTALL)

CONTENT, SECTION, HEADER, ARGS = "content", "section", "header", "args"


@dataclass(frozen=True)
class ToolCall:
    """One call the model made.

    ``id`` as the model wrote it (``functions.get_weather:0``, the form K2's history needs back), ``name`` parsed
    from it, ``arguments`` the raw argument text (a JSON object when ``valid_json``), ``complete`` False for a
    call cut off by the end of the text.
    """

    id: str
    name: str
    arguments: str
    valid_json: bool
    complete: bool = True

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``message.tool_calls[i]`` object."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ParseResult:
    """What a model output holds.

    ``tool_calls``: complete calls to declared (or any, without ``declared_tools``) tools, in order.
    ``partial_call``: the call the text ended inside (``complete=False``), if any. ``dropped_calls``: calls to
    undeclared tools. ``unparsed``: pieces of a tool-call section that belong to no call (stray text or markers, a
    call header cut before its arguments). ``truncated``: the text ended inside a tool-call section.
    """

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    partial_call: ToolCall | None = None
    dropped_calls: list[ToolCall] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def streamed_calls(self) -> list[ToolCall]:
        """The calls a stream announces: ``tool_calls`` plus ``partial_call`` (OpenAI returns cut-off calls too)."""
        return self.tool_calls + ([self.partial_call] if self.partial_call else [])


@dataclass(frozen=True)
class ToolCallDelta:
    """A fragment of call number ``index`` (counting streamed calls): the first has ``id`` and ``name``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Delta:
    """One streamed piece: ``content`` text or one ``tool_call`` fragment (exactly one is set)."""

    content: str | None = None
    tool_call: ToolCallDelta | None = None

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``chat.completion.chunk`` ``choices[0].delta`` object."""
        if self.tool_call is None:
            return {"content": self.content}
        tc = self.tool_call
        out: dict[str, Any] = {"index": tc.index}
        if tc.id is not None:
            out["id"] = tc.id
            out["type"] = "function"
            out["function"] = {"name": tc.name, "arguments": tc.arguments}
        else:
            out["function"] = {"arguments": tc.arguments}
        return {"tool_calls": [out]}


def name_from_id(call_id: str) -> str:
    """The function name in a K2 call id: ``functions.mcp.search:1`` -> ``mcp.search`` (dots kept)."""
    name = call_id[len("functions.") :] if call_id.startswith("functions.") else call_id
    m = _ID_INDEX.fullmatch(name)
    return m[1] if m else name


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------- the scan


@dataclass(eq=False)
class _Call:
    """A call whose header is complete. Its arguments are ``text[start:end]``, whitespace-stripped."""

    ordinal: int
    id: str
    name: str
    dropped: bool
    start: int
    end: int | None = None  # set when a terminator closes the call (then start/end are already stripped)
    lead_done: bool = False  # start has moved past the leading whitespace of the arguments


class _Scanner:
    """One left-to-right pass over a growing text, with state only at marker boundaries (so it can resume).

    ``items`` holds, in text order, closed content spans ``(a, b)`` and announced calls (:class:`_Call`); the
    open segment after the last marker is ``text[seg:]``, read according to ``mode``. Positions are absolute;
    the methods see a window ``text`` of the whole text that starts at position ``base`` and covers every
    position the scan still reads (:meth:`needed_from`), so a streaming caller can drop what lies before.
    """

    def __init__(self, declared_tools: Collection[str] | None):
        self.declared = frozenset(declared_tools) if declared_tools is not None else None
        self.mode = CONTENT
        self.seg = 0  # start of the open segment
        self.search = 0  # markers before this position have been handled
        self.items: list[tuple[int, int] | _Call] = []
        self.n_calls = 0
        self.unparsed: list[tuple[int, int]] = []

    def needed_from(self) -> int:
        """The first position the scan may still read (the window must start at or before it)."""
        need = self.search
        if self.mode in (SECTION, HEADER):
            need = min(need, self.seg)  # the gap or header text is read when its marker arrives
        elif self.mode == ARGS:
            call = self.items[-1]
            assert isinstance(call, _Call)
            if not call.lead_done:
                need = min(need, call.start)
        return need

    def advance(self, text: str, base: int = 0) -> None:
        """Handle every marker that is complete in the window and was not handled before."""
        for m in _MARKER_RE.finditer(text, self.search - base):
            e = m.end() + base
            self._on_marker(text, base, MARKERS[m[0]], m.start() + base, e)
            self.search = e
        # a marker may straddle the end of the text: search its possible start again next time
        self.search = max(self.search, base + len(text) - _MAX_MARKER + 1)

    def _on_marker(self, text: str, base: int, kind: int, s: int, e: int) -> None:
        mode = self.mode
        if mode == ARGS:
            if kind not in _ARG_TERMINATORS:
                return  # e.g. "<|tool_call_argument_begin|>" inside an argument string: literal text
            call = self.items[-1]
            assert isinstance(call, _Call)
            call.start, call.end = _strip(text, base, call.start, s, lead=not call.lead_done)
            self.mode = {CALL_END: SECTION, CALL_BEGIN: HEADER, SECTION_END: CONTENT}[kind]
        elif mode == CONTENT:
            if s > self.seg:
                self.items.append((self.seg, s))
            if kind == SECTION_BEGIN:
                self.mode = SECTION
            elif kind == CALL_BEGIN:
                self.mode = HEADER  # a call without its section marker: still a call, never content
            else:
                self.unparsed.append((s, e))  # a stray end marker
        elif mode == SECTION:
            a, b = _strip(text, base, self.seg, s)
            if b > a:
                self.unparsed.append((a, b))
            if kind == CALL_BEGIN:
                self.mode = HEADER
            elif kind == SECTION_END:
                self.mode = CONTENT
            else:
                self.unparsed.append((s, e))
        else:  # HEADER
            if kind in (ARG_BEGIN, CALL_END):
                a, b = _strip(text, base, self.seg, s)
                call_id = text[a - base : b - base]
                name = name_from_id(call_id)
                call = _Call(self.n_calls, call_id, name, self.declared is not None and name not in self.declared, e)
                if kind == CALL_END:  # a call without arguments
                    call.start, call.end, call.lead_done = s, s, True
                self.items.append(call)
                self.n_calls += 1
                self.mode = ARGS if kind == ARG_BEGIN else SECTION
            else:
                self.unparsed.append((self.seg, s))  # a header cut short by another marker
                self.mode = HEADER if kind == CALL_BEGIN else CONTENT if kind == SECTION_END else SECTION
                if kind == SECTION_BEGIN:
                    self.unparsed.append((s, e))
        self.seg = e

    def view(self, text: str, base: int = 0, *, final: bool, first: int = 0) -> tuple[list[Any], bool]:
        """Items from number ``first`` on, as far as certain: content spans ``(a, b)`` and ``(call, a, b)``
        argument spans, in text order, and whether the last call is still open. ``final``: the text is
        complete, nothing is held back."""
        out: list[Any] = [it if isinstance(it, tuple) else (it, it.start, it.end) for it in self.items[first:]]
        n = base + len(text)
        open_call = False
        if self.mode == CONTENT:
            end = n if final else n - _held(text, base, self.seg, _PREFIXES_ANY)
            if end > self.seg:
                out.append((self.seg, end))
        elif self.mode == ARGS:
            call = self.items[-1]
            assert isinstance(call, _Call)
            open_call = True
            if not call.lead_done:  # leading whitespace is never part of the arguments: skip it once
                while call.start < n and text[call.start - base].isspace():
                    call.start += 1
                call.lead_done = call.start < n
            end = n if final else n - _held(text, base, call.start, _PREFIXES_TERMINATOR)
            out[-1] = (call, *_strip(text, base, call.start, end, lead=False))
        return out, open_call

    def result(self, text: str) -> ParseResult:
        """The full parse of ``text`` (the whole text, of which :meth:`advance` has seen all)."""
        items, open_call = self.view(text, final=True)
        content: list[str] = []
        calls: list[ToolCall] = []
        partial: ToolCall | None = None
        dropped: list[ToolCall] = []
        for k, it in enumerate(items):
            if len(it) == 2:
                content.append(text[it[0] : it[1]])
                continue
            c, a, b = it
            args = text[a:b]
            complete = not (open_call and k == len(items) - 1)
            tc = ToolCall(c.id, c.name, args, _is_json_object(args), complete)
            if c.dropped:
                dropped.append(tc)
            elif complete:
                calls.append(tc)
            else:
                partial = tc
        unparsed = [text[a:b] for a, b in self.unparsed]
        if self.mode in (SECTION, HEADER):
            a, b = _strip(text, 0, self.seg, len(text))
            if b > a:
                unparsed.append(text[a:b])  # stray text, or a call header cut off before its arguments
        return ParseResult(
            content="".join(content),
            tool_calls=calls,
            partial_call=partial,
            dropped_calls=dropped,
            unparsed=unparsed,
            truncated=self.mode != CONTENT,
        )


def _strip(text: str, base: int, a: int, b: int, *, lead: bool = True) -> tuple[int, int]:
    """The span ``[a, b)`` without surrounding whitespace (the characters str.strip removes); ``lead=False``
    when ``a`` is known to start at a non-space (or to equal ``b``)."""
    if lead:
        while a < b and text[a - base].isspace():
            a += 1
    while b > a and text[b - 1 - base].isspace():
        b -= 1
    return a, b


def _held(text: str, base: int, start: int, prefixes: frozenset[str]) -> int:
    """Length of the longest suffix of the text from ``start`` that is a proper prefix of a marker (0 if none)."""
    n = len(text)
    i = text.find("<", max(start - base, n - _MAX_MARKER + 1, 0))
    while i != -1:
        if text[i:] in prefixes:
            return n - i
        i = text.find("<", i + 1)
    return 0


# ----------------------------------------------------------------------------------------------- public API


def parse(text: str, *, declared_tools: Collection[str] | None = None) -> ParseResult:
    """Content and tool calls of a complete model output (decoded with special tokens kept as text).

    ``declared_tools``: names of the request's tools; calls to other names go to ``dropped_calls``. Never raises
    on malformed output: whatever does not parse is in ``unparsed`` or flagged (``valid_json``, ``complete``).
    """
    scan = _Scanner(declared_tools)
    scan.advance(text)
    return scan.result(text)


class StreamingToolParser:
    """Feed decoded text as it streams; get OpenAI-style deltas whose concatenation equals :func:`parse`.

    ``feed(chunk)`` returns content deltas and, per call, one delta with ``id`` and ``name`` (index counting the
    streamed calls) followed by argument fragments. ``finish()`` returns the rest and sets :attr:`result`, the
    :class:`ParseResult` of the whole text (``== parse(text)``), which also says whether the output was cut off.
    Calls to undeclared tools are never streamed.

    Cost: the chunks are kept in a list (joined once, at finish) and the scan works on a window of the text
    from the first position it still needs, which stays short (the last marker's neighbourhood, what is not yet
    emitted); so a feed costs O(chunk + window), not O(text so far).
    """

    def __init__(self, *, declared_tools: Collection[str] | None = None):
        self._scan = _Scanner(declared_tools)
        self._chunks: list[str] = []
        self._win = ""  # the text from position self._base on
        self._base = 0
        self._item = 0  # first scan item that may still have something to emit
        self._pos = 0  # everything in the text before this position has been emitted (or is not emitted)
        self._announced = 0  # calls (by ordinal) already announced or dropped
        self._index: dict[int, int] = {}  # call ordinal -> OpenAI index
        self._emitted_content = 0
        self._emitted_args: list[int] = []  # by OpenAI index: argument characters emitted
        self.result: ParseResult | None = None

    @property
    def text(self) -> str:
        """Everything fed so far (joined on each call)."""
        return "".join(self._chunks)

    def feed(self, chunk: str) -> list[Delta]:
        """Add ``chunk`` to the text; the deltas that became certain."""
        if self.result is not None:
            raise RuntimeError("StreamingToolParser.feed after finish")
        if not chunk:
            return []
        self._chunks.append(chunk)
        self._win += chunk
        self._scan.advance(self._win, self._base)
        deltas = self._emit(final=False)
        # Drop the part of the window that nothing reads any more. The character before self._pos stays: when
        # an argument's trailing whitespace is stripped, the scan stops on it (the last character emitted).
        keep = min(self._scan.needed_from(), self._pos - 1)
        if keep > self._base:
            self._win = self._win[keep - self._base :]
            self._base = keep
        return deltas

    def finish(self) -> list[Delta]:
        """End of the output: the remaining deltas; sets :attr:`result`."""
        if self.result is not None:
            return []
        deltas = self._emit(final=True)
        self.result = self._scan.result(self.text)
        self._check_against(self.result)
        return deltas

    def _emit(self, *, final: bool) -> list[Delta]:
        items, _ = self._scan.view(self._win, self._base, final=final, first=self._item)
        text, base = self._win, self._base
        out: list[Delta] = []
        for it in items:
            if len(it) == 2:
                a, b = it
                s = max(a, self._pos)
                if b > s:
                    out.append(Delta(content=text[s - base : b - base]))
                    self._emitted_content += b - s
                    self._pos = b
                continue
            call, a, b = it
            if call.ordinal >= self._announced:
                self._announced = call.ordinal + 1
                if not call.dropped:
                    index = self._index[call.ordinal] = len(self._emitted_args)
                    self._emitted_args.append(0)
                    out.append(Delta(tool_call=ToolCallDelta(index, id=call.id, name=call.name)))
            s = max(a, self._pos)
            if b > s and not call.dropped:
                index = self._index[call.ordinal]
                out.append(Delta(tool_call=ToolCallDelta(index, arguments=text[s - base : b - base])))
                self._emitted_args[index] += b - s
            self._pos = max(self._pos, b)
        self._item += max(len(items) - 1, 0)  # the last item may still grow
        return out

    def _check_against(self, result: ParseResult) -> None:
        # The views only grow, so the stream must add up to the parse; a mismatch is a bug in this module.
        if self._emitted_content != len(result.content) or self._emitted_args != [
            len(c.arguments) for c in result.streamed_calls
        ]:
            raise RuntimeError("StreamingToolParser: streamed deltas do not add up to parse(text) (a k2trt bug)")


def collect(deltas: list[Delta]) -> tuple[str, list[dict[str, str]]]:
    """Concatenate deltas the way an OpenAI client does: (content, [{"id", "name", "arguments"}] by index)."""
    content: list[str] = []
    calls: list[dict[str, str]] = []
    for d in deltas:
        if d.tool_call is None:
            content.append(d.content or "")
            continue
        tc = d.tool_call
        if tc.id is not None:
            if tc.index != len(calls):
                raise ValueError(f"tool call index {tc.index} announced out of order")
            calls.append({"id": tc.id, "name": tc.name or "", "arguments": tc.arguments})
        else:
            calls[tc.index]["arguments"] += tc.arguments
    return "".join(content), calls


__all__ = [
    "Delta",
    "MARKERS",
    "ParseResult",
    "StreamingToolParser",
    "ToolCall",
    "ToolCallDelta",
    "collect",
    "name_from_id",
    "parse",
]
