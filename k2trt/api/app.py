"""The ASGI gateway: OpenAI- and Anthropic-compatible HTTP over k2_bls in Triton.

Routes: ``GET /v1/models`` (``/v1/models/{id}``), ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/messages``
(Anthropic), ``GET /health`` (200 only while Triton and k2_bls are ready), ``GET /metrics`` (Prometheus).

Every request to a ``/v1`` route goes through the same gate, in this order: the API key (401), the body size
(413, from ``Content-Length`` or while reading a chunked body), the JSON and its schema (400, 404 for another
model), a concurrency slot (429 when ``max_concurrency`` generations are running; nothing queues). Errors are
written in the schema of the API the path belongs to (``/v1/messages...`` Anthropic, else OpenAI). A client that
goes away cancels its Triton request: streams when the disconnect arrives, whole answers too (a watcher on the
connection cancels the pending call).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from k2trt.api import anthropic_schema, openai_schema
from k2trt.api.backend import Backend, Finish, TritonBackend
from k2trt.api.errors import ApiError
from k2trt.api.metrics import Metrics
from k2trt.api.request import ChatRequest, parse_json_body

log = logging.getLogger("k2trt.api")

OPENAI, ANTHROPIC = "openai", "anthropic"


@dataclass(frozen=True)
class ApiConfig:
    """The gateway's settings (``k2trt api`` options)."""

    model_name: str | None = None
    """The name clients put in ``model`` (any other is a 404); None: k2_bls's ``served_model_name``, asked from
    Triton (at startup, else at the first request that needs it)."""
    api_key: str | None = None
    """When set, every /v1 request needs it: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    max_body_bytes: int = 8 * 2**20
    """Largest request body (413 beyond)."""
    max_concurrency: int = 64
    """Generations served at once (429 beyond)."""
    triton_url: str = "127.0.0.1:8001"
    """Triton's gRPC address, used when the app makes its own backend."""


class _Disconnected(Exception):
    """The HTTP client went away."""


def _api_of(path: str) -> str:
    return ANTHROPIC if path.startswith("/v1/messages") else OPENAI


def error_response(api: str, err: ApiError) -> JSONResponse:
    body = err.anthropic_body() if api == ANTHROPIC else err.openai_body()
    headers = {"retry-after": "1"} if err.status in (429, 503) else None
    return JSONResponse(body, status_code=err.status, headers=headers)


class _SSE(StreamingResponse):
    """A streaming response that runs ``on_close`` however it ends (finished, client gone, send failed, never
    started), so the Triton request behind it is cancelled at once and its slot freed, not when a generator is
    garbage collected (closing a generator that never started runs none of its ``finally``)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]], **kw: Any):
        super().__init__(content, **kw)
        self._on_close = on_close

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self._on_close()


def create_app(config: ApiConfig, backend: Backend | None = None) -> Starlette:
    """The gateway app. ``backend`` None: a :class:`TritonBackend` on ``config.triton_url``, made at startup."""
    metrics = Metrics()
    state: dict[str, Any] = {"backend": backend, "in_flight": 0, "model": config.model_name}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if state["backend"] is None:
            state["backend"] = TritonBackend(config.triton_url)
        with contextlib.suppress(ApiError):
            log.info("serving model %r", await served_name())
        try:
            yield
        finally:
            await state["backend"].close()

    def be() -> Backend:
        return state["backend"]

    async def served_name() -> str:
        if state["model"] is None:
            try:
                name = await be().served_model_name()
            except ApiError as err:
                raise ApiError(503, f"the served model's name is not known yet (Triton: {err.message}); start the "
                               "gateway with --model-name to serve without asking Triton") from None
            if not name:
                raise ApiError(503, "k2_bls has no served_model_name parameter: start the gateway with --model-name")
            state["model"] = name
        return state["model"]

    # ------------------------------------------------------------------------------------------- the gate

    def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key")
        if not given:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
                           code="invalid_api_key")
        if not hmac.compare_digest(given.encode(), config.api_key.encode()):
            raise ApiError(401, "invalid API key", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes",
                           code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def take_slot() -> None:
        if state["in_flight"] >= config.max_concurrency:
            raise ApiError(429, f"the server is serving its limit of {config.max_concurrency} requests; retry later",
                           code="rate_limit_exceeded")
        state["in_flight"] += 1
        metrics.in_flight.set(state["in_flight"])

    def give_slot() -> None:
        state["in_flight"] -= 1
        metrics.in_flight.set(state["in_flight"])

    async def until_disconnect(request: Request, aw: Awaitable[Any]) -> Any:
        """Await ``aw``; if the client disconnects first, cancel it and raise _Disconnected."""
        task = asyncio.ensure_future(aw)

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise _Disconnected
        finally:
            watcher.cancel()
            if not task.done():  # we were cancelled ourselves
                task.cancel()

    def answer(api: str, response: Response) -> Response:
        metrics.answered(api, response.status_code)
        return response

    async def generation(request: Request, api: str) -> Response:
        t0 = time.monotonic()
        try:
            check_key(request)
            body = parse_json_body(await read_body(request))
            served = await served_name()
            if api == OPENAI:
                req = openai_schema.parse_chat_request(body, served_model=served)
            else:
                req = anthropic_schema.parse_messages_request(body, served_model=served)
            take_slot()
        except ApiError as err:
            return answer(api, error_response(api, err))
        try:
            if req.stream:
                return await start_stream(request, api, req, t0)
            result = await until_disconnect(request, be().complete(req.to_bls()))
        except _Disconnected:
            give_slot()
            metrics.cancelled.labels(api).inc()
            return answer(api, Response(status_code=499))  # nobody reads it; nginx's "client closed request"
        except ApiError as err:
            give_slot()
            return answer(api, error_response(api, err))
        except Exception:
            give_slot()
            log.exception("k2trt api: internal error")
            return answer(api, error_response(api, ApiError(500, "internal error in the k2trt gateway (see its log)")))
        give_slot()
        metrics.tokens(api, result.usage)
        metrics.duration.labels(api, "false").observe(time.monotonic() - t0)
        try:
            if api == OPENAI:
                out = openai_schema.completion_response(
                    result.as_dict(), completion_id=openai_schema.new_completion_id(), model=req.model)
            else:
                out = anthropic_schema.message_response(
                    result.as_dict(), message_id=anthropic_schema.new_message_id(), model=req.model)
        except ApiError as err:
            return answer(api, error_response(api, err))
        return answer(api, JSONResponse(out))

    async def start_stream(request: Request, api: str, req: ChatRequest, t0: float) -> Response:
        """Wait for k2_bls's first response (so that an error before any token is a real HTTP status), then
        stream the rest. Owns the concurrency slot from here on."""
        items = be().stream(req.to_bls())
        try:
            first = await until_disconnect(request, items.__anext__())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await items.aclose()
            raise
        metrics.answered(api, 200)
        outcome = {"finished": False, "closed": False}
        events = (openai_events if api == OPENAI else anthropic_events)(req, first, items, t0)

        async def on_close() -> None:
            if outcome["closed"]:
                return
            outcome["closed"] = True
            await items.aclose()  # cancels the Triton request if it is still running
            give_slot()
            if outcome["finished"]:
                metrics.duration.labels(api, "true").observe(time.monotonic() - t0)
            else:
                metrics.cancelled.labels(api).inc()

        return _SSE(guarded(api, events, outcome), on_close, media_type="text/event-stream",
                    headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def guarded(api: str, events: AsyncIterator[str], outcome: dict[str, bool]) -> AsyncIterator[str]:
        """The stream's events; on an error mid-stream, one error event in the API's schema."""
        try:
            async for text in events:
                yield text
        except ApiError as err:
            metrics.errors.labels(api, str(err.status)).inc()
            yield stream_error(api, err)
        except Exception:
            log.exception("k2trt api: internal error while streaming")
            metrics.errors.labels(api, "500").inc()
            yield stream_error(api, ApiError(500, "internal error in the k2trt gateway (see its log)"))
        outcome["finished"] = True

    def stream_error(api: str, err: ApiError) -> str:
        if api == OPENAI:
            return f"data: {json.dumps(err.openai_body())}\n\ndata: [DONE]\n\n"
        return f"event: error\ndata: {json.dumps(err.anthropic_body())}\n\n"

    async def with_first(first: Any, items: AsyncIterator) -> AsyncIterator[dict | Finish]:
        yield first
        async for item in items:
            yield item

    async def openai_events(req: ChatRequest, first: Any, items: AsyncIterator, t0: float) -> AsyncIterator[str]:
        w = openai_schema.ChunkWriter(completion_id=openai_schema.new_completion_id(), model=req.model,
                                      include_usage=req.include_usage)
        yield _data(w.start())
        timed = False
        async for item in with_first(first, items):
            if isinstance(item, Finish):
                metrics.tokens(OPENAI, item.usage)
                for chunk in w.finish(item.finish_reason, item.usage):
                    yield _data(chunk)
                yield "data: [DONE]\n\n"
                return
            if not timed:
                metrics.ttft.labels(OPENAI).observe(time.monotonic() - t0)
                timed = True
            yield _data(w.delta(item))
        raise ApiError(500, "k2_bls's stream ended without a finish_reason")

    async def anthropic_events(req: ChatRequest, first: Any, items: AsyncIterator, t0: float) -> AsyncIterator[str]:
        w = anthropic_schema.EventWriter(message_id=anthropic_schema.new_message_id(), model=req.model)
        for text in anthropic_schema.iter_events(w.start()):
            yield text
        timed = False
        async for item in with_first(first, items):
            if isinstance(item, Finish):
                metrics.tokens(ANTHROPIC, item.usage)
                for text in anthropic_schema.iter_events(w.finish(item.finish_reason, item.usage,
                                                                  item.stop_sequence)):
                    yield text
                return
            if not timed:
                metrics.ttft.labels(ANTHROPIC).observe(time.monotonic() - t0)
                timed = True
            for text in anthropic_schema.iter_events(w.delta(item)):
                yield text
        raise ApiError(500, "k2_bls's stream ended without a finish_reason")

    # ------------------------------------------------------------------------------------------- routes

    async def chat_completions(request: Request) -> Response:
        return await generation(request, OPENAI)

    async def messages(request: Request) -> Response:
        return await generation(request, ANTHROPIC)

    def model_card(name: str, anthropic: bool) -> dict[str, Any]:
        if anthropic:
            return {"type": "model", "id": name, "display_name": name, "created_at": "2025-07-11T00:00:00Z"}
        return {"id": name, "object": "model", "created": 1752192000, "owned_by": "k2trt"}

    async def models(request: Request) -> Response:
        anthropic = "anthropic-version" in request.headers  # the Anthropic SDK sends it on every request
        api = ANTHROPIC if anthropic else OPENAI
        try:
            check_key(request)
            name = await served_name()
        except ApiError as err:
            return answer(api, error_response(api, err))
        model_id = request.path_params.get("model_id")
        if model_id is not None:
            if model_id != name:
                return answer(api, error_response(api, ApiError(404, f"model {model_id!r} does not exist",
                                                                param="model", code="model_not_found")))
            return answer(api, JSONResponse(model_card(name, anthropic)))
        if anthropic:
            return answer(api, JSONResponse({"data": [model_card(name, True)], "has_more": False,
                                             "first_id": name, "last_id": name}))
        return answer(api, JSONResponse({"object": "list", "data": [model_card(name, False)]}))

    async def health(request: Request) -> Response:
        ready = await be().ready()
        return JSONResponse({"status": "ok" if ready else "unavailable", "model": state["model"]},
                            status_code=200 if ready else 503)

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        api = _api_of(request.url.path)
        if exc.status_code == 404:
            err = ApiError(404, f"no route {request.method} {request.url.path}", code="not_found")
        elif exc.status_code == 405:
            err = ApiError(405, f"method {request.method} is not allowed on {request.url.path}")
        else:
            err = ApiError(exc.status_code, str(exc.detail))
        return answer(api, error_response(api, err))

    async def internal_error(request: Request, exc: Exception) -> Response:
        api = _api_of(request.url.path)
        log.exception("k2trt api: internal error", exc_info=exc)
        return answer(api, error_response(api, ApiError(500, "internal error in the k2trt gateway (see its log)")))

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.metrics = metrics
    app.state.config = config
    app.state.k2 = state
    return app


def _data(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


__all__ = ["ApiConfig", "create_app", "error_response"]
