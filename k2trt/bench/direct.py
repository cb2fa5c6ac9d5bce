"""The k2trt runtime called directly (no Triton, no gRPC): the baseline the Triton path's overhead is measured
against. Same closed loop, same prompts (as ids), same exact output length, same records.

``concurrency`` threads each submit a :class:`~k2trt.runtime.engine.Request` to one
:class:`~k2trt.runtime.service.EngineService` and read its stream; every :class:`Output` is a response whose
token count is ``len(new_ids)``; the time is taken when the thread receives it (``time.time_ns``), as a client
would.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence

from k2trt.bench.records import RequestRecord


def run_level(service, prompts: Sequence[list[int]], *, osl: int, concurrency: int, requests: int,
              warmup: int = 0, stop_ids: Sequence[int] = (), temperature: float = 0.0,
              on_done: Callable[[RequestRecord], None] | None = None) -> list[RequestRecord]:
    """``warmup + requests`` requests through ``service`` (an ``EngineService``), ``concurrency`` at a time;
    every record in send order, warm-up included. Each request has exactly ``osl`` tokens (``min_tokens`` =
    ``max_tokens`` = ``osl``)."""
    from k2trt.runtime.engine import Request
    from k2trt.runtime.sampling import SamplingParams

    order = itertools.count()
    lock = threading.Lock()
    records: list[tuple[int, RequestRecord]] = []
    total = warmup + requests
    failures: list[BaseException] = []

    def worker():
        while True:
            with lock:
                i = next(order)
            if i >= total:
                return
            ids = prompts[i % len(prompts)]
            req = Request(service.new_request_id(), list(ids), osl,
                          SamplingParams(temperature=temperature, min_tokens=osl),
                          stop_token_ids=tuple(stop_ids))
            start = time.time_ns()
            responses = []
            error = None
            try:
                for out in service.submit(req):
                    responses.append((time.time_ns(), len(out.new_ids)))
            except BaseException as e:  # noqa: BLE001  (recorded; the run reports it)
                error = f"{type(e).__name__}: {e}"
                failures.append(e)
            rec = RequestRecord(start, tuple(responses), len(ids), error)
            with lock:
                records.append((i, rec))
            if on_done is not None:
                on_done(rec)

    threads = [threading.Thread(target=worker, name=f"bench-direct-{k}", daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for _, r in sorted(records, key=lambda x: x[0])]
