"""The engine in a process of its own: the frontend's process (Triton's Python stub) only moves requests and tokens.

Why: k2trt's engine is Python driving torch. Stepping it in the frontend's process (:class:`EngineService`'s
thread) makes it share one GIL with everything the frontend does per token: building responses, the stub's IPC to
tritonserver. Measured on the tiny model (docs/perf/serving.md) that was most of what the Triton path added per
token. vLLM's V1 engine core runs in its own process for the same reason.

:class:`EngineProcess` has :class:`EngineService`'s interface (``new_request_id``, ``submit`` returning a
:class:`Stream`, ``cancel``, ``in_flight``, ``close``), so :class:`~k2trt.serving.engine_model.EngineModel` takes
either. The engine process runs one loop on one thread, no locks: take what the frontend sent, step, send every
output of the step in one message. Over a duplex pipe, pickled tuples:

- frontend -> engine: ``("submit", Request)``, ``("cancel", request_id)``, ``("close",)``
- engine -> frontend: ``("ready", EngineLimits)`` once, then ``("outputs", [Output, ...])`` per step and
  ``("failed", [request_id, ...], message)`` when a step raised (a bug, a dead rank); or ``("error", problems)``
  when the engine could not start.

Requests are checked in the frontend against the engine's :class:`EngineLimits` before they travel, so a bad one
is refused at ``submit`` as with the in-process service. If the engine process dies, every request in flight
fails with the exit code and later submissions are refused.
"""

from __future__ import annotations

import itertools
import threading
import traceback
from pathlib import Path

from k2trt.errors import K2Error
from k2trt.runtime.engine import EngineLimits, Request
from k2trt.runtime.service import Stream


def _engine_main(conn, engine_dir: str, threads: int) -> None:
    """The engine process: open the engine dir, then step while there is work, taking commands between steps."""
    try:
        import torch

        torch.set_num_threads(threads)
        from k2trt.runtime.service import open_engine, stop_engine

        engine, workers = open_engine(engine_dir)
    except K2Error as e:
        conn.send(("error", e.problems))
        return
    except BaseException:
        conn.send(("error", [f"the engine could not start:\n{traceback.format_exc()}"]))
        return
    conn.send(("ready", engine.limits))
    try:
        while True:
            # Block for a command only when idle; between steps take whatever has arrived.
            while conn.poll(None if not engine.has_work else 0):
                msg = conn.recv()
                if msg[0] == "close":
                    return
                if msg[0] == "submit":
                    try:
                        engine.submit(msg[1])
                    except K2Error as e:
                        conn.send(("failed", [msg[1].request_id], "; ".join(e.problems)))
                elif msg[0] == "cancel":
                    engine.cancel(msg[1])
            try:
                outputs = engine.step()
            except Exception as e:  # fail every request rather than hang them; the engine keeps serving
                rids = [*engine.running, *(r.request_id for r in engine.waiting)]
                engine.running.clear()
                engine.waiting.clear()
                conn.send(("failed", rids, f"{type(e).__name__}: {e}"))
                continue
            if outputs:
                conn.send(("outputs", outputs))
    except (EOFError, OSError):  # the frontend is gone
        return
    finally:
        stop_engine(engine, workers)


class EngineProcess:
    """:class:`EngineService`'s interface over an engine stepping in a child process (started here)."""

    def __init__(self, engine_dir: str | Path, *, threads: int = 1, start_timeout_s: float = 600):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # torch and fork do not mix
        self._conn, child = ctx.Pipe()
        # Not a daemon: the engine process starts the other ranks' processes itself.
        self._proc = ctx.Process(target=_engine_main, args=(child, str(engine_dir), threads),
                                 name="k2trt-engine")
        self._proc.start()
        child.close()
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)
        self._gone: str | None = None
        if not self._conn.poll(start_timeout_s):
            self._kill()
            raise K2Error(f"the engine process did not start within {start_timeout_s:.0f} s")
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            self._proc.join(timeout=5)
            raise K2Error(f"the engine process exited with code {self._proc.exitcode} while starting") from None
        if kind == "error":
            self._proc.join(timeout=30)
            raise K2Error(payload)
        self.limits: EngineLimits = payload
        self._reader = threading.Thread(target=self._read, name="k2trt-engine-reader", daemon=True)
        self._reader.start()

    def new_request_id(self) -> int:
        return next(self._ids)

    def submit(self, request: Request, *, deliver=None) -> Stream:
        """As :meth:`EngineService.submit`; ``deliver`` is called on this object's reader thread."""
        self.limits.check(request)
        with self._lock:
            if self._gone is not None:
                raise K2Error(self._gone)
            if request.request_id in self._streams:
                raise K2Error(f"request id {request.request_id} is already in flight")
            stream = Stream(self, request.request_id, deliver)
            self._streams[request.request_id] = stream
        self._send(("submit", request))
        return stream

    def cancel(self, request_id: int) -> None:
        self._send(("cancel", request_id))

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._streams)

    def _send(self, msg: tuple) -> None:
        try:
            with self._send_lock:
                self._conn.send(msg)
        except (OSError, ValueError):  # the engine process is gone: the reader fails what is in flight
            pass

    def _read(self) -> None:
        while True:
            try:
                kind, *rest = self._conn.recv()
            except (EOFError, OSError):
                break
            if kind == "outputs":
                with self._lock:
                    streams = [(self._streams.get(o.request_id), o) for o in rest[0]]
                    for o in rest[0]:
                        if o.finished:
                            self._streams.pop(o.request_id, None)
                for stream, out in streams:  # outside the lock: deliver may take its time
                    if stream is not None:
                        stream._push(out)
            elif kind == "failed":
                rids, message = rest
                with self._lock:
                    streams = [self._streams.pop(r) for r in rids if r in self._streams]
                for stream in streams:
                    stream._push(RuntimeError(message))
        with self._lock:
            closing = self._gone is not None
        code = None
        if not closing:  # the engine died on its own: reap it for its exit code. When closing, close() reaps it:
            # two threads waiting for one child race, and the loser's ECHILD reads as "still running"
            self._proc.join(timeout=5)
            code = self._proc.exitcode
        with self._lock:
            if self._gone is None:
                self._gone = f"the engine process exited (code {code})"
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream._push(RuntimeError(self._gone))

    def close(self) -> None:
        with self._lock:
            if self._gone is None:
                self._gone = "the engine is shutting down"
        self._send(("close",))
        self._proc.join(timeout=60)
        if self._proc.is_alive():
            self._kill()
        self._conn.close()

    def _kill(self) -> None:
        self._proc.kill()
        self._proc.join(timeout=5)
