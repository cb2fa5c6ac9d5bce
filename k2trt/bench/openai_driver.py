"""The ``openai`` target's load generator: a closed loop of ``concurrency`` async clients streaming
``POST /v1/chat/completions``, producing the same :class:`RequestRecord` as perf_analyzer's export.

Each request asks for ``stream: true`` with ``stream_options.include_usage`` and exactly ``osl`` tokens
(``max_tokens`` and the length-forcing fields of :attr:`OpenAIWorkload.extra_body`, e.g. ``min_tokens``).
Timestamps are taken as each SSE event arrives (``time.time_ns``). Token counts come from the server's
``usage.completion_tokens`` (the gateway counts generated ids), never from the text: the stream's chunks that
carry content are the responses, the first gets 1 token, each next one 1 more, and the last the remainder, so
the first token's time, the last token's time and the total are exact (which is all TTFT, ITL and throughput
use) even when a chunk holds several tokens. A stream without usage is an error, not a guess.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from k2trt.bench.inputs import Prompt
from k2trt.bench.records import RequestRecord
from k2trt.errors import K2Error


@dataclass(frozen=True)
class OpenAIWorkload:
    base_url: str
    """``http://host:port`` (``/v1/chat/completions`` is appended)."""
    model: str
    prompts: Sequence[Prompt]
    osl: int
    temperature: float = 0.0
    extra_body: dict = field(default_factory=dict)
    """Added to every request body (the fields that force the output length)."""
    timeout_s: float = 600.0

    def body(self, prompt: Prompt) -> dict:
        return {"model": self.model, "messages": prompt.messages, "max_tokens": self.osl, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": self.temperature, **self.extra_body}


def has_content(chunk: dict) -> bool:
    """Whether an OpenAI chunk carries generated text or tool-call deltas."""
    for ch in chunk.get("choices") or []:
        d = ch.get("delta") or {}
        if d.get("content") or d.get("tool_calls"):
            return True
    return False


def assign_tokens(content_times: list[int], completion_tokens: int) -> list[tuple[int, int]]:
    """Spread ``completion_tokens`` over the content chunks' arrival times: 1 each, the remainder on the last
    (exact first-token time, last-token time and total). More chunks than tokens: the extra chunks carry 0.

    Callers pass every chunk's time when no chunk carried content: tokens can be generated and shown as nothing
    (k2_bls drops a call to a tool the request did not declare), and the count still comes from the ids."""
    if not content_times:
        return []
    n = len(content_times)
    if completion_tokens >= n:
        counts = [1] * (n - 1) + [completion_tokens - (n - 1)]
    else:
        counts = [1] * completion_tokens + [0] * (n - completion_tokens)
    return list(zip(content_times, counts))


async def one_request(client, work: OpenAIWorkload, prompt: Prompt,
                      clock: Callable[[], int] = time.time_ns) -> RequestRecord:
    """Send one streaming request; its record (errors are recorded, not raised)."""
    url = work.base_url.rstrip("/") + "/v1/chat/completions"
    start = clock()
    content_times: list[int] = []
    chunk_times: list[int] = []  # every chunk: the fallback when nothing visible streams (see assign_tokens)
    usage = None
    last = start
    try:
        async with client.stream("POST", url, json=work.body(prompt), timeout=work.timeout_s) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode("utf-8", errors="replace")
                return RequestRecord(start, (), prompt.tokens, f"HTTP {resp.status_code}: {_api_message(body)}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                now = clock()
                last = now
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return RequestRecord(start, (), prompt.tokens, f"stream error: {chunk['error']}")
                chunk_times.append(now)
                if has_content(chunk):
                    content_times.append(now)
                if chunk.get("usage"):
                    usage = chunk["usage"]
    except Exception as e:  # noqa: BLE001  (a transport failure is this request's result)
        return RequestRecord(start, (), prompt.tokens, f"{type(e).__name__}: {e}")
    if usage is None or "completion_tokens" not in usage:
        return RequestRecord(start, tuple((t, 0) for t in content_times), prompt.tokens,
                             "the stream carried no usage (stream_options.include_usage unsupported?)")
    responses = assign_tokens(content_times or chunk_times, int(usage["completion_tokens"]))
    if not responses or responses[-1][0] != last:
        responses.append((last, 0))  # the end of the stream (finish chunk, usage, [DONE])
    return RequestRecord(start, tuple(responses), usage.get("prompt_tokens", prompt.tokens))


def _api_message(body: str) -> str:
    try:
        doc = json.loads(body)
        err = doc.get("error", doc)
        return str(err.get("message", err)) if isinstance(err, dict) else str(err)
    except (json.JSONDecodeError, AttributeError):
        return body[:300]


async def run_level(work: OpenAIWorkload, *, concurrency: int, requests: int | None = None,
                    duration_s: float | None = None, warmup: int = 0,
                    on_done: Callable[[RequestRecord], None] | None = None, transport=None) -> list[RequestRecord]:
    """A closed loop: ``concurrency`` clients, each sending its next request when the previous one ends, until
    ``warmup + requests`` were sent, or (``duration_s``) until the deadline after the warm-up. Returns every
    record in send order, warm-up included (the caller drops the first ``warmup``). ``transport``: an httpx
    transport (tests)."""
    import httpx

    if (requests is None) == (duration_s is None):
        raise K2Error("give exactly one of requests and duration")
    order = itertools.count()
    total = None if requests is None else warmup + requests
    records: list[tuple[int, RequestRecord]] = []
    deadline: list[float] = []

    async def worker(client):
        while True:
            i = next(order)
            if total is not None and i >= total:
                return
            if duration_s is not None and i >= warmup:
                if not deadline:
                    deadline.append(time.monotonic() + duration_s)
                if time.monotonic() >= deadline[0]:
                    return
            rec = await one_request(client, work, work.prompts[i % len(work.prompts)])
            records.append((i, rec))
            if on_done is not None:
                on_done(rec)

    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(limits=limits, timeout=work.timeout_s, transport=transport) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return [r for _, r in sorted(records, key=lambda x: x[0])]
