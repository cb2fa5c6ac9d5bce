"""Behavioural evaluation of a K2 chat model on the k2-tiny tool-use tasks, through any ``generate`` callable.

The model is reached only through ``generate(prompt_ids, max_new_tokens) -> new_ids`` (greedy), so the same
evaluation runs on the reference model (:func:`reference_generate`), k2trt's runtime, or tritonserver. Prompts are
rendered by :func:`k2trt.chat.render_chat` and outputs parsed by :func:`k2trt.toolcall.parse`, as a server does.

Per conversation (:mod:`k2trt.corpus`, held-out split):

- **tool request** (``conv.calls`` not empty): the first turn must be exactly the expected calls: same names in
  the same order, arguments that parse as JSON objects equal to the expected ones (``json.loads`` equality), no
  stray or cut-off call. Then the tool results go back the way the model card's client sends them
  (``{"role": "tool", "tool_call_id", "name", "content": json.dumps(result)}``) after the model's own calls
  (after the expected calls when the model's were wrong, so that the answer is scored on its own), and the
  final answer must contain no call and every result value (:func:`k2trt.corpus.value_text`).
- **no-call prompt** (greetings, small talk, a request for a tool that is not declared): the answer must be
  non-empty text with no tool-call section.

Every turn must end with a stop token (``<|im_end|>`` / ``[EOS]``) within ``max_new_tokens``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from k2trt.chat import render_chat
from k2trt.corpus import Conversation
from k2trt.tokenizer import K2Tokenizer
from k2trt.toolcall import ParseResult, parse

Generate = Callable[[list[int], int], list[int]]
"""``generate(prompt_ids, max_new_tokens) -> new_ids``: greedy continuation, stop token included if reached."""

THRESHOLD = 0.95
"""The issue's bar for each of the three rates."""

_SHOW = 160  # characters of model output quoted in a failure line


def _show(text: str) -> str:
    return repr(text if len(text) <= _SHOW else text[:_SHOW] + "...")


@dataclass
class CaseResult:
    """What one conversation produced; ``failures`` says what was wrong (empty: all right)."""

    kind: str
    user: str
    expected_calls: list[tuple[str, dict[str, Any]]]
    first_turn: str
    answer: str | None = None
    call_ok: bool | None = None  # None: not a tool request
    answer_ok: bool | None = None
    no_call_ok: bool | None = None  # None: a tool request
    failures: list[str] = field(default_factory=list)


@dataclass
class EvalReport:
    """The three rates and every case; ``failures`` lists each failed case in one line."""

    tool_call_rate: float
    answer_rate: float
    no_call_rate: float
    n_tool_requests: int
    n_no_call: int
    per_kind: dict[str, dict[str, float]]
    cases: list[CaseResult]
    seconds: float

    @property
    def failures(self) -> list[str]:
        return [f"[{c.kind}] {c.user!r}: {'; '.join(c.failures)}" for c in self.cases if c.failures]

    def passed(self, threshold: float = THRESHOLD) -> bool:
        return min(self.tool_call_rate, self.answer_rate, self.no_call_rate) >= threshold

    def summary(self) -> str:
        return (
            f"tool calls exactly right {self.tool_call_rate:.1%} ({self.n_tool_requests} requests), "
            f"answers with the tool values {self.answer_rate:.1%}, "
            f"no call when none is needed {self.no_call_rate:.1%} ({self.n_no_call} prompts)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tool_call_rate": self.tool_call_rate, "answer_rate": self.answer_rate, "no_call_rate": self.no_call_rate,
            "n_tool_requests": self.n_tool_requests, "n_no_call": self.n_no_call, "per_kind": self.per_kind,
            "seconds": round(self.seconds, 1), "failures": self.failures,
            "cases": [asdict(c) for c in self.cases],
        }


def reference_generate(model, tokenizer: K2Tokenizer) -> Generate:
    """Greedy generation with the reference model (:func:`k2trt.model.greedy_generate`), stopping on K2's stops."""
    from k2trt.model import greedy_generate

    stops = tuple(tokenizer.stop_ids)
    return lambda prompt_ids, max_new_tokens: greedy_generate(model, prompt_ids, max_new_tokens, stops).new_ids


def triton_generate(client, tokenizer: K2Tokenizer) -> Generate:
    """Greedy generation by a served engine: the ``tensorrt_llm`` model over gRPC (a
    :class:`k2trt.serving.client.ChatClient`), ending on ``<|im_end|>`` (its ``end_id``) or ``[EOS]`` (a stop
    word). The engine does not return its ``end_id``; it is put back here, so a turn reads as the reference
    model's does."""
    end = tokenizer.im_end_id
    others = [[t] for t in tokenizer.stop_ids if t != end]

    def generate(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        new: list[int] = []
        for arr in client.engine_stream(prompt_ids, max_tokens=max_new_tokens, end_id=end, stop_words=others):
            new += arr.reshape(-1).tolist()
        if len(new) < max_new_tokens and not (new and new[-1] in tokenizer.stop_ids):
            new.append(end)  # it stopped early without a stop word: on its end_id
        return new

    return generate


def _turn(generate: Generate, tok: K2Tokenizer, conv: Conversation, messages: list[dict], max_new_tokens: int,
          failures: list[str], what: str) -> tuple[str, ParseResult]:
    ids = render_chat(messages, tools=conv.tools, add_generation_prompt=True, tokenizer=tok).ids
    new = list(generate(ids, max_new_tokens))
    if new and new[-1] in tok.stop_ids:
        new = new[:-1]
    else:
        failures.append(f"{what}: no end of turn within {max_new_tokens} tokens")
    text = tok.decode(new)
    declared = [t["function"]["name"] for t in conv.tools] if conv.tools else []
    return text, parse(text, declared_tools=declared)


def _call_problems(text: str, res: ParseResult, expected: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    got = []
    for c in res.tool_calls:
        try:
            args = json.loads(c.arguments)
        except ValueError:
            args = c.arguments
        got.append((c.name, args))
    problems = []
    if got != list(expected):
        problems.append(f"calls {got} != expected {list(expected)}")
    if res.partial_call or res.dropped_calls or res.unparsed:
        problems.append(f"malformed section: {_show(text)}")
    return problems


def evaluate_case(generate: Generate, tok: K2Tokenizer, conv: Conversation, *, max_new_tokens: int = 96) -> CaseResult:
    """Run one conversation (see the module docstring); never raises on bad model output."""
    prompt = conv.prompt_messages
    r = CaseResult(kind=conv.kind, user=prompt[-1]["content"], expected_calls=list(conv.calls), first_turn="")
    text, res = _turn(generate, tok, conv, prompt, max_new_tokens, r.failures, "first turn")
    r.first_turn = text
    if not conv.calls:
        problems = []
        if res.tool_calls or res.partial_call or res.dropped_calls or res.unparsed or res.truncated:
            problems.append(f"made a call: {_show(text)}")
        elif not res.content.strip():
            problems.append("empty answer")
        r.failures += problems
        r.no_call_ok = not r.failures
        return r

    problems = _call_problems(text, res, conv.calls)
    r.call_ok = not problems and not r.failures
    r.failures += problems
    if r.call_ok:
        calls = [c.to_openai() for c in res.tool_calls]
    else:  # answer on the expected calls, so the answer rate measures answering alone
        before = sum(len(m.get("tool_calls") or ()) for m in prompt)  # K2 numbers calls across the conversation
        calls = [{"id": f"functions.{name}:{before + i}", "type": "function",
                  "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}
                 for i, (name, args) in enumerate(conv.calls)]
        if r.failures:
            r.failures.append("answer scored after the expected calls")
    messages = [*prompt, {"role": "assistant", "content": res.content or None, "tool_calls": calls}]
    for call, result in zip(calls, conv.results):
        messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                         "content": json.dumps(result, ensure_ascii=False)})
    answer_failures: list[str] = []
    answer, res2 = _turn(generate, tok, conv, messages, max_new_tokens, answer_failures, "answer")
    r.answer = answer
    if res2.tool_calls or res2.partial_call or res2.unparsed:
        answer_failures.append(f"answer made a call: {_show(answer)}")
    missing = [v for v in conv.answer_values if v not in res2.content]
    if missing:
        answer_failures.append(f"answer {_show(answer)} lacks {missing}")
    r.answer_ok = not answer_failures
    r.failures += answer_failures
    return r


def run_tool_loop(
    generate: Generate,
    tokenizer: K2Tokenizer,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    functions: dict[str, Callable[..., Any]],
    *,
    max_rounds: int = 4,
    max_new_tokens: int = 96,
) -> list[dict[str, Any]]:
    """The model card's client loop: generate; while the model calls tools, run them locally
    (``functions[name](**arguments)``) and send each result back as ``{"role": "tool", "tool_call_id",
    "name", "content": json.dumps(result)}``; returns the conversation with every new message appended
    (the last is the final answer). K2Error if the model's output cannot be acted on."""
    from k2trt.errors import K2Error

    out = [dict(m) for m in messages]
    declared = [t["function"]["name"] for t in tools] if tools else []
    for _ in range(max_rounds):
        ids = render_chat(out, tools=tools, tokenizer=tokenizer).ids
        new = list(generate(ids, max_new_tokens))
        if not new or new[-1] not in tokenizer.stop_ids:
            raise K2Error(f"the model did not end its turn within {max_new_tokens} tokens: "
                          f"{_show(tokenizer.decode(new))}")
        text = tokenizer.decode(new[:-1])
        res = parse(text, declared_tools=declared)
        if res.partial_call or res.dropped_calls or res.unparsed:
            raise K2Error(f"the model wrote a malformed or undeclared tool call: {_show(text)}")
        if not res.tool_calls:
            out.append({"role": "assistant", "content": res.content})
            return out
        out.append({"role": "assistant", "content": res.content or None,
                    "tool_calls": [c.to_openai() for c in res.tool_calls]})
        for call in res.tool_calls:
            if not call.valid_json:
                raise K2Error(f"tool call {call.id}: arguments are not a JSON object: {_show(call.arguments)}")
            result = functions[call.name](**json.loads(call.arguments))
            out.append({"role": "tool", "tool_call_id": call.id, "name": call.name,
                        "content": json.dumps(result, ensure_ascii=False)})
    raise K2Error(f"the model was still calling tools after {max_rounds} rounds")


def evaluate(
    generate: Generate,
    tokenizer: K2Tokenizer,
    conversations: Sequence[Conversation],
    *,
    max_new_tokens: int = 96,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Evaluate ``conversations`` (e.g. :func:`k2trt.corpus.eval_conversations`) through ``generate``."""
    t0 = time.perf_counter()
    cases = []
    for i, conv in enumerate(conversations):
        cases.append(evaluate_case(generate, tokenizer, conv, max_new_tokens=max_new_tokens))
        if progress:
            progress(i + 1, len(conversations))
    tool = [c for c in cases if c.call_ok is not None]
    free = [c for c in cases if c.no_call_ok is not None]

    def rate(xs: list[bool]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    per_kind: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(c.kind for c in cases):
        ks = [c for c in cases if c.kind == kind]
        entry: dict[str, float] = {"n": len(ks)}
        if ks[0].call_ok is not None:
            entry["tool_call_rate"] = rate([c.call_ok for c in ks])
            entry["answer_rate"] = rate([c.answer_ok for c in ks])
        else:
            entry["no_call_rate"] = rate([c.no_call_ok for c in ks])
        per_kind[kind] = entry
    return EvalReport(
        tool_call_rate=rate([c.call_ok for c in tool]),
        answer_rate=rate([c.answer_ok for c in tool]),
        no_call_rate=rate([c.no_call_ok for c in free]),
        n_tool_requests=len(tool),
        n_no_call=len(free),
        per_kind=per_kind,
        cases=cases,
        seconds=time.perf_counter() - t0,
    )


__all__ = [
    "CaseResult", "EvalReport", "Generate", "THRESHOLD", "evaluate", "evaluate_case", "reference_generate",
    "run_tool_loop", "triton_generate",
]
