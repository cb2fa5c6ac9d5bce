"""The engine behind a server: a background thread steps the engine while requests come and go from other threads.

:class:`EngineService` is what a serving frontend (the Triton Python model) holds. ``submit`` returns a
:class:`Stream` that yields :class:`~k2trt.runtime.engine.Output` as the engine produces them; ``cancel`` (or
closing the stream) frees the request's cache blocks before the next step. Requests submitted while a step runs
join the next one: continuous batching across concurrent callers.

World size > 1: rank 0 runs the service in the frontend's process; the other ranks are started here as
processes that follow rank 0's steps (:func:`k2trt.runtime.engine.worker_loop`).
"""

from __future__ import annotations

import itertools
import queue
import threading
from pathlib import Path

from k2trt.errors import K2Error
from k2trt.runtime.engine import Engine, Output, Request


class Stream:
    """Outputs of one request, in order; iteration ends after the finishing output."""

    def __init__(self, service: EngineService, request_id: int, deliver=None):
        self._service, self.request_id = service, request_id
        self._q: queue.Queue[Output | BaseException] = queue.Queue()
        self._deliver = deliver
        self.done = False

    def _push(self, item: Output | BaseException) -> None:
        """From the engine thread: queue ``item`` for :meth:`get`, or hand it to ``deliver``."""
        if self._deliver is None:
            self._q.put(item)
            return
        if isinstance(item, BaseException) or item.finished:
            self.done = True
        self._deliver(item)

    def __iter__(self):
        while not self.done:
            yield self.get()

    def get(self, timeout: float | None = None) -> Output:
        item = self._q.get(timeout=timeout)
        if isinstance(item, BaseException):
            self.done = True
            raise item
        if item.finished:
            self.done = True
        return item

    def cancel(self) -> None:
        if not self.done:
            self._service.cancel(self.request_id)


class EngineService:
    """Steps the engine in a daemon thread whenever there is work.

    Only that thread touches the engine's state. ``submit`` and ``cancel`` check what they can at once and leave
    the rest for it, under a lock that is never held during a step: a caller never waits for a step to end, so
    a request that arrives mid-step joins the next one.
    """

    def __init__(self, engine: Engine, *, workers: list | None = None):
        self.engine = engine
        self._workers = workers or []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._streams: dict[int, Stream] = {}
        self._submitted: list[Request] = []
        self._cancelled: list[int] = []
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="k2trt-engine", daemon=True)
        self._thread.start()

    def new_request_id(self) -> int:
        return next(self._ids)

    def submit(self, request: Request, *, deliver=None) -> Stream:
        """Queue ``request`` (validated now: a bad one raises K2Error here, the others are unaffected).

        ``deliver``: called on the engine thread with each :class:`Output` (or the exception that failed the step)
        instead of queueing it for :meth:`Stream.get`: a frontend serving many requests hands them all to one
        thread of its own rather than keeping a thread waiting per request. It must not block.
        """
        self.engine.check(request)
        with self._lock:
            if self._stopping:
                raise K2Error("the engine is shutting down")
            if request.request_id in self._streams:
                raise K2Error(f"request id {request.request_id} is already in flight")
            stream = Stream(self, request.request_id, deliver)
            self._streams[request.request_id] = stream
            self._submitted.append(request)
            self._wake.notify()
        return stream

    def cancel(self, request_id: int) -> None:
        with self._lock:
            self._cancelled.append(request_id)
            self._wake.notify()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._streams)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._submitted or self._cancelled or self.engine.has_work or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    break
                submitted, self._submitted = self._submitted, []
                cancelled, self._cancelled = self._cancelled, []
            try:
                for request in submitted:
                    self.engine.submit(request)
                for rid in cancelled:  # after the submissions: a request cancelled before it started is dropped
                    self.engine.cancel(rid)
                outputs = self.engine.step() if self.engine.has_work else []
            except BaseException as e:  # a bug or a dead rank: fail every caller rather than hang them
                with self._lock:
                    for s in self._streams.values():
                        s._push(e)
                    self._streams.clear()
                self.engine.running.clear()
                self.engine.waiting.clear()
                continue
            with self._lock:
                for out in outputs:
                    stream = self._streams.get(out.request_id)
                    if stream is None:
                        continue
                    stream._push(out)
                    if out.finished:
                        del self._streams[out.request_id]

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)
        stop_engine(self.engine, self._workers)


def stop_engine(engine: Engine, workers: list) -> None:
    """Shut the engine down (the other ranks leave their loops) and reap their processes."""
    engine.shutdown()
    for p in workers:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()


def open_engine(engine_dir: str | Path, *, decode=None) -> tuple[Engine, list]:
    """Rank 0's engine on the engine dir, and the processes of the other ranks (world size > 1), started here."""
    from k2trt.runtime.comm import Comm, init_distributed
    from k2trt.runtime.runner import make_engine, open_rank, world_size

    n = world_size(engine_dir)
    workers = []
    if n == 1:
        comm = Comm()
    else:
        import os

        from k2trt.runtime.spawn import start_followers

        port, workers = start_followers(n, str(engine_dir))
        os.environ.update(RANK="0", WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        from k2trt.runtime.weights import read_converted

        comm = init_distributed(read_converted(engine_dir)[1])
    model, cache, rc = open_rank(engine_dir, 0, comm)
    return make_engine(model, cache, rc, comm, decode=decode), workers


def open_service(engine_dir: str | Path, *, decode=None) -> EngineService:
    """An EngineService on the engine dir, stepping in this process (:mod:`k2trt.runtime.engine_process` keeps
    the engine in a process of its own)."""
    engine, workers = open_engine(engine_dir, decode=decode)
    return EngineService(engine, workers=workers)
