"""The ``tensorrt_llm`` Triton model for ``torch`` engines: the tensorrtllm backend's tensors over k2trt's runtime.

One :class:`EngineModel` per Triton model instance holds one :class:`~k2trt.runtime.service.EngineService` (a
background thread stepping the continuous-batching engine; for world size > 1 it starts the other ranks as local
processes). Each Triton request becomes a runtime :class:`~k2trt.runtime.engine.Request`; requests arriving while
a step runs join the next step, so concurrent clients share batches.

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


class EngineModel:
    """Triton requests (engine tensors) in, engine responses out, over one :class:`EngineService`.

    ``exclude_input_default``: the model config's ``exclude_input_in_output`` (a request's own tensor overrides it).
    ``poll_s``: how often a waiting stream checks whether its client went away.
    """

    def __init__(self, service, *, exclude_input_default: bool = True, poll_s: float = 0.05,
                 metrics: EngineMetrics | None = None):
        self.service = service
        self.exclude_input_default = exclude_input_default
        self.poll_s = poll_s
        self.metrics = metrics or _NoMetrics()
        self._lock = threading.Lock()
        self._by_triton_id: dict[str, EngineCall] = {}

    def submit(self, tensors: Mapping[str, np.ndarray], *, triton_id: str = "") -> EngineCall:
        """Validate and queue one request; K2Error (nothing queued) when it cannot run.

        ``triton_id``: the Triton request id; a later ``stop`` request with the same id cancels this one.
        """
        from k2trt.runtime.engine import Request
        from k2trt.runtime.sampling import SamplingParams

        req = EngineRequest.from_tensors(tensors, exclude_input_default=self.exclude_input_default)
        if req.stop:
            with self._lock:
                target = self._by_triton_id.get(triton_id) if triton_id else None
            if target is not None:
                target.cancel()
            return EngineCall(self, req, None, triton_id)
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
        stream = self.service.submit(request)  # K2Error for a request the engine can never run
        call = EngineCall(self, req, stream, triton_id)
        if triton_id:
            with self._lock:
                self._by_triton_id[triton_id] = call
        self.metrics.request_started()
        return call

    def _done(self, call: EngineCall, reason: str) -> None:
        with self._lock:
            if self._by_triton_id.get(call.triton_id) is call:
                del self._by_triton_id[call.triton_id]
        self.metrics.request_finished(reason)

    def close(self) -> None:
        self.service.close()


class EngineCall:
    """One submitted request: :meth:`responses` yields what the Triton model sends, in order."""

    def __init__(self, model: EngineModel, req: EngineRequest, stream, triton_id: str):
        self.model, self.req, self.stream, self.triton_id = model, req, stream, triton_id
        self._cancel = threading.Event()
        self.finish_reason: str | None = None

    def cancel(self) -> None:
        """Ask for cancellation (from any thread); :meth:`responses` then ends with a flag-only final response."""
        self._cancel.set()

    def responses(self, is_cancelled: Callable[[], bool] = lambda: False) -> Iterator[Response]:
        """The responses to send: ``(tensors, final)``; the last has ``final`` True.

        ``is_cancelled``: whether the client went away (the Python backend's ``response_sender.is_cancelled``).
        Exceptions from the engine (a crashed rank) propagate; the request is cancelled on the way out.
        """
        if self.stream is None:  # a stop request: nothing to generate
            yield None, True
            return
        req, stream = self.req, self.stream
        generated: list[int] = []
        cancelling = False
        try:
            while True:
                if not cancelling and (self._cancel.is_set() or is_cancelled()):
                    stream.cancel()
                    cancelling = True
                try:
                    out = stream.get(timeout=self.model.poll_s)
                except queue.Empty:
                    continue
                ids = list(out.new_ids)
                if out.finished and out.finish_reason == "stop" and ids and ids[-1] == req.end_id:
                    ids.pop()  # the end token is not part of the output (TensorRT-LLM's behaviour)
                if out.finished:
                    self.finish_reason = out.finish_reason
                if cancelling or out.finish_reason == "cancelled":
                    if out.finished:
                        self.finish_reason = "cancelled"
                        yield None, True
                        return
                    continue
                generated += ids
                if req.streaming:
                    if out.finished:
                        yield (output_tensors(ids) if ids else None), True
                        return
                    if ids:
                        yield output_tensors(ids), False
                elif out.finished:
                    full = generated if req.exclude_input_in_output else [*req.input_ids, *generated]
                    yield output_tensors(full), True
                    return
        finally:
            if self.finish_reason is None:  # the consumer left early or the engine failed
                stream.cancel()
                self.finish_reason = "cancelled"
            self.model._done(self, self.finish_reason)


def open_engine_model(engine_dir: str, *, threads: int = 1, exclude_input_default: bool = True,
                      metrics: EngineMetrics | None = None) -> EngineModel:
    """An :class:`EngineModel` on a torch engine dir; ``threads`` is torch's intra-op thread count on rank 0."""
    import torch

    from k2trt.runtime.service import open_service

    if threads < 1:
        raise K2Error(f"engine_threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return EngineModel(open_service(engine_dir), exclude_input_default=exclude_input_default, metrics=metrics)
