"""The ``tensorrt_llm`` Triton model for ``torch`` engines: the tensorrtllm backend's tensors over k2trt's runtime.

One :class:`EngineModel` per Triton model instance holds one engine service: by default an
:class:`~k2trt.runtime.engine_process.EngineProcess` (the continuous-batching engine stepping in a process of its
own, so it shares no GIL with the per-token work of sending responses), else an
:class:`~k2trt.runtime.service.EngineService` (a thread of the stub's process). For world size > 1 the engine
starts the other ranks as local processes. Each Triton request becomes a runtime
:class:`~k2trt.runtime.engine.Request`; requests arriving while a step runs join the next step, so concurrent
clients share batches.

What a client sees is the tensorrtllm backend's behaviour (decoupled model):

- ``streaming`` true: one response per step that produced tokens (``output_ids [1, 1, n]``), the last one flagged
  final; a final flag without a response when the last step produced nothing to send.
- ``streaming`` false: one response with every generated id (after the prompt's ids when
  ``exclude_input_in_output`` is false), flagged final.
- The ``end_id`` token that ends a sequence is not returned (TensorRT-LLM does not return it either); stop words are.
- Cancellation: a client that goes away (``is_cancelled``) or a request with ``stop`` true and the same request id
  cancels the sequence; its cache blocks are free before the next step, and the stream ends with a final flag.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import numpy as np

from k2trt.errors import K2Error
from k2trt.serving.tensors import EngineRequest, output_tensors

Response = tuple[dict[str, np.ndarray] | None, bool]
"""(output tensors or None for a flag-only response, final)."""


class EngineMetrics(Protocol):
    """What the Triton adapter reports (Triton custom metrics); the engine model calls these."""

    def request_started(self) -> None: ...

    def request_finished(self, reason: str) -> None: ...


class _NoMetrics:
    def request_started(self) -> None:
        pass

    def request_finished(self, reason: str) -> None:
        pass


class ResponseSink(Protocol):
    """Where a pushed request's responses go (the Triton model's response sender, behind a thin adapter)."""

    def send(self, outputs: dict[str, np.ndarray] | None, final: bool) -> None: ...

    def fail(self, message: str, *, bad_request: bool) -> None:
        """Send an error response, flagged final."""

    def is_cancelled(self) -> bool: ...


class EngineModel:
    """Triton requests (engine tensors) in, engine responses out, over one engine service (``EngineService`` or
    ``EngineProcess``: the same interface).

    Two ways to take the responses of a request:

    - push (the Triton model): ``submit(..., sink=...)``. The service hands every request's outputs to one
      dispatcher thread per model instance, which turns them into responses and sends them; the same thread
      asks each live request's sink whether its client went away, every ``poll_s``. No thread per request: at
      concurrency N the per-token work is one loop, not N+1 threads handing the GIL around.
    - pull (tests, in-process callers): ``submit(...)`` then iterate :meth:`EngineCall.responses`.

    ``exclude_input_default``: the model config's ``exclude_input_in_output`` (a request's own tensor overrides it).
    """

    def __init__(self, service, *, exclude_input_default: bool = True, poll_s: float = 0.05,
                 metrics: EngineMetrics | None = None):
        self.service = service
        self.exclude_input_default = exclude_input_default
        self.poll_s = poll_s
        self.metrics = metrics or _NoMetrics()
        self._lock = threading.Lock()
        self._by_triton_id: dict[str, EngineCall] = {}
        self._pushed: set[EngineCall] = set()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None

    def submit(self, tensors: Mapping[str, np.ndarray], *, triton_id: str = "",
               sink: ResponseSink | None = None) -> EngineCall:
        """Validate and queue one request; K2Error (nothing queued, nothing sent) when it cannot run.

        ``triton_id``: the Triton request id; a later ``stop`` request with the same id cancels this one.
        ``sink``: push the responses there from the dispatcher thread (else pull them with ``responses``).
        """
        from k2trt.runtime.engine import Request
        from k2trt.runtime.sampling import SamplingParams

        req = EngineRequest.from_tensors(tensors, exclude_input_default=self.exclude_input_default)
        if req.stop:
            with self._lock:
                target = self._by_triton_id.get(triton_id) if triton_id else None
            if target is not None:
                target.cancel()
            if sink is not None:
                sink.send(None, True)
            return EngineCall(self, req, None, triton_id, sink)
        rid = self.service.new_request_id()
        request = Request(
            request_id=rid,
            input_ids=list(req.input_ids),
            max_tokens=req.max_tokens,
            sampling=SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=req.seed,
                                    min_tokens=req.min_tokens),
            stop_token_ids=() if req.end_id is None else (req.end_id,),
            stop_sequences=req.stop_words,
        )
        call = EngineCall(self, req, None, triton_id, sink)
        deliver = None
        if sink is not None:
            self._start_dispatcher()
            deliver = lambda item, call=call: self._events.put((call, item))  # noqa: E731
        with self._lock:  # registered before the engine can finish it
            if triton_id:
                self._by_triton_id[triton_id] = call
            if sink is not None:
                self._pushed.add(call)
        try:
            call.stream = self.service.submit(request, deliver=deliver)  # K2Error: the engine can never run it
        except BaseException:
            self._forget(call)
            raise
        self.metrics.request_started()
        return call

    def _forget(self, call: EngineCall) -> None:
        with self._lock:
            if self._by_triton_id.get(call.triton_id) is call:
                del self._by_triton_id[call.triton_id]
            self._pushed.discard(call)

    def _done(self, call: EngineCall, reason: str) -> None:
        self._forget(call)
        self.metrics.request_finished(reason)

    def _start_dispatcher(self) -> None:
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name="k2trt-responses", daemon=True)
                self._dispatcher.start()

    def _dispatch(self) -> None:
        next_check = time.monotonic() + self.poll_s
        while True:
            try:
                call, item = self._events.get(timeout=self.poll_s)
            except queue.Empty:
                call = None
            if call is _CLOSE:
                return
            if call is not None:  # one response per engine step, as the tensorrtllm backend sends them
                call._push(item)
            now = time.monotonic()
            if now >= next_check:  # clients that went away: a question per live request, not per token
                with self._lock:
                    live = list(self._pushed)
                for c in live:
                    c._check_client()
                next_check = now + self.poll_s

    def close(self) -> None:
        if self._dispatcher is not None:
            self._events.put((_CLOSE, None))
            self._dispatcher.join(timeout=10)
        self.service.close()


_CLOSE = object()


class EngineCall:
    """One submitted request: its responses are pushed to its sink, or pulled with :meth:`responses`."""

    def __init__(self, model: EngineModel, req: EngineRequest, stream, triton_id: str,
                 sink: ResponseSink | None = None):
        self.model, self.req, self.stream, self.triton_id, self.sink = model, req, stream, triton_id, sink
        self.finish_reason: str | None = None
        self._cancelling = False
        self._finished = False
        self._generated: list[int] = []

    def cancel(self) -> None:
        """Cancel (from any thread): the engine frees the sequence before its next step, and the responses end
        with a flag-only final response."""
        self._cancelling = True
        if self.stream is not None:
            self.stream.cancel()

    def _next(self, out) -> Response | None:
        """The response an engine output makes (None: nothing to send for it)."""
        req = self.req
        ids = list(out.new_ids)
        if out.finished and out.finish_reason == "stop" and ids and ids[-1] == req.end_id:
            ids.pop()  # the end token is not part of the output (TensorRT-LLM's behaviour)
        if out.finished:
            self.finish_reason = out.finish_reason
        if self._cancelling or out.finish_reason == "cancelled":
            if out.finished:
                self.finish_reason = "cancelled"
                return None, True
            return None
        self._generated += ids
        if req.streaming:
            if out.finished:
                return (output_tensors(ids) if ids else None), True
            return (output_tensors(ids), False) if ids else None
        if out.finished:
            full = self._generated if req.exclude_input_in_output else [*req.input_ids, *self._generated]
            return output_tensors(full), True
        return None

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.finish_reason is None:  # the consumer left early or the engine failed
            if self.stream is not None:
                self.stream.cancel()
            self.finish_reason = "cancelled"
        self.model._done(self, self.finish_reason)

    # ------------------------------------------------------------------------------------------- push

    def _push(self, item) -> None:
        """On the dispatcher thread: one engine output (or the exception that failed the engine's step)."""
        if self._finished:
            return  # a send failed and the request was cancelled: what the engine still sends is moot
        try:
            if isinstance(item, BaseException):  # a bug or a dead rank: the client gets it, the server keeps serving
                self.sink.fail(f"{type(item).__name__}: {item}", bad_request=False)
                self._finish()
                return
            response = self._next(item)
            if response is not None:
                self.sink.send(*response)
                if response[1]:
                    self._finish()
        except Exception:  # the client is gone (its sender refuses): stop generating for it
            self.cancel()
            self._finish()

    def _check_client(self) -> None:
        if not self._cancelling:
            try:
                gone = self.sink.is_cancelled()
            except Exception:
                gone = True
            if gone:
                self.cancel()

    # ------------------------------------------------------------------------------------------- pull

    def responses(self, is_cancelled: Callable[[], bool] = lambda: False) -> Iterator[Response]:
        """The responses to send: ``(tensors, final)``; the last has ``final`` True.

        ``is_cancelled``: whether the client went away. Exceptions from the engine (a crashed rank) propagate;
        the request is cancelled on the way out.
        """
        if self.stream is None:  # a stop request: nothing to generate
            yield None, True
            return
        try:
            while True:
                if not self._cancelling and is_cancelled():
                    self.cancel()
                try:
                    out = self.stream.get(timeout=self.model.poll_s)
                except queue.Empty:
                    continue
                response = self._next(out)
                if response is not None:
                    yield response
                    if response[1]:
                        return
        finally:
            self._finish()


def open_engine_model(engine_dir: str, *, threads: int = 1, process: bool = True,
                      exclude_input_default: bool = True, metrics: EngineMetrics | None = None) -> EngineModel:
    """An :class:`EngineModel` on a torch engine dir; ``threads``: torch's intra-op threads on rank 0; ``process``:
    the engine steps in a process of its own (:class:`~k2trt.runtime.engine_process.EngineProcess`), else in a
    thread of this one."""
    if threads < 1:
        raise K2Error(f"engine_threads must be >= 1, got {threads}")
    if process:
        from k2trt.runtime.engine_process import EngineProcess

        service = EngineProcess(engine_dir, threads=threads)
    else:
        import torch

        from k2trt.runtime.service import open_service

        torch.set_num_threads(threads)
        service = open_service(engine_dir)
    return EngineModel(service, exclude_input_default=exclude_input_default, metrics=metrics)
