"""The gateway's side of Triton: send a k2_bls request over async gRPC, read its results, cancel it.

:class:`TritonBackend` talks to a running tritonserver with ``tritonclient.grpc.aio``. Every request goes through
the bidirectional stream API (``ModelStreamInfer``), since k2_bls is a decoupled model: a non-streaming request
gets one response, a streaming one a response per delta. Leaving the async generator (the HTTP client went away,
the handler was cancelled) cancels the gRPC call, which Triton turns into a cancellation of the request inside the
model (the BLS sees ``is_cancelled()`` and stops generating).

What comes back is decoded by :func:`decode_result` / :func:`decode_chunk` into :class:`Result` (a whole answer),
or deltas (OpenAI delta objects) and a :class:`Finish`.

The k2_bls contract (k2trt's Triton model repository): input ``request`` (BYTES, shape [1]) holding the request
JSON (:meth:`k2trt.api.request.ChatRequest.to_bls`); output ``response`` (BYTES, [1]) holding an OpenAI-shaped
``chat.completion`` (whole) or ``chat.completion.chunk`` (one delta per response; the last one carries
``finish_reason`` and ``usage``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from k2trt.api.errors import ApiError

BLS_MODEL = "k2_bls"
BLS_INPUT = "request"
BLS_OUTPUT = "response"


@dataclass(frozen=True)
class Finish:
    """The end of a stream: why it stopped, the token counts, and the stop string it matched (if any)."""

    finish_reason: str
    usage: dict[str, int]
    stop_sequence: str | None = None


@dataclass(frozen=True)
class Result:
    """A whole answer: text, OpenAI ``tool_calls`` objects, finish reason, usage, the stop string matched."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    stop_sequence: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"content": self.content, "tool_calls": self.tool_calls, "finish_reason": self.finish_reason,
                "usage": self.usage, "stop_sequence": self.stop_sequence}


class Backend(Protocol):
    """What the ASGI app needs from a model server."""

    async def ready(self) -> bool: ...

    async def served_model_name(self) -> str | None: ...

    async def complete(self, request: dict[str, Any]) -> Result: ...

    def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any] | Finish]: ...

    async def close(self) -> None: ...


# ----------------------------------------------------------------------------------------------- decoding


def _usage(u: Any) -> dict[str, int]:
    if not isinstance(u, Mapping):
        raise ApiError(500, f"k2_bls returned no usage: {u!r}")
    return {"prompt_tokens": int(u.get("prompt_tokens", 0)), "completion_tokens": int(u.get("completion_tokens", 0))}


def _error(obj: Mapping[str, Any]) -> ApiError:
    err = obj["error"]
    if isinstance(err, Mapping):
        status = int(err.get("status") or err.get("code") or 422) if str(err.get("status") or err.get("code") or
                                                                          "").isdigit() else 422
        return ApiError(status, str(err.get("message", err)), param=err.get("param"))
    return ApiError(422, str(err))


def decode_result(obj: Mapping[str, Any]) -> Result:
    """A whole k2_bls answer (``chat.completion`` shape) -> :class:`Result`."""
    if "error" in obj and obj["error"]:
        raise _error(obj)
    choice = obj["choices"][0]
    msg = choice.get("message") or {}
    return Result(
        content=msg.get("content") or "",
        tool_calls=list(msg.get("tool_calls") or []),
        finish_reason=choice.get("finish_reason") or "stop",
        usage=_usage(obj.get("usage")),
        stop_sequence=choice.get("stop_sequence") or obj.get("stop_sequence"),
    )


def decode_chunk(obj: Mapping[str, Any]) -> list[dict[str, Any] | Finish]:
    """One streamed k2_bls response (``chat.completion.chunk`` shape) -> its deltas, then a Finish if it ends."""
    if "error" in obj and obj["error"]:
        raise _error(obj)
    out: list[dict[str, Any] | Finish] = []
    for choice in obj.get("choices") or []:
        delta = {k: v for k, v in (choice.get("delta") or {}).items() if k in ("content", "tool_calls") and v}
        if delta:
            out.append(delta)
        if choice.get("finish_reason"):
            out.append(Finish(choice["finish_reason"], _usage(obj.get("usage")),
                              choice.get("stop_sequence") or obj.get("stop_sequence")))
    return out


# ----------------------------------------------------------------------------------------------- Triton


class TritonBackend:
    """k2_bls over ``tritonclient.grpc.aio``; ``url`` is Triton's gRPC ``host:port``."""

    def __init__(self, url: str, *, model: str = BLS_MODEL):
        from tritonclient.grpc import aio as grpcclient  # lazily: the schema modules do not need it

        self.url, self.model = url, model
        self._client = grpcclient.InferenceServerClient(url)
        self._aio = grpcclient

    async def ready(self) -> bool:
        """Triton is up and k2_bls is loaded."""
        from tritonclient.utils import InferenceServerException

        try:
            return bool(await self._client.is_server_ready(client_timeout=2.0)) and bool(
                await self._client.is_model_ready(self.model, client_timeout=2.0)
            )
        except InferenceServerException:
            return False

    async def served_model_name(self) -> str | None:
        """The model name k2_bls answers with (its ``served_model_name`` parameter); None if it has none."""
        from tritonclient.utils import InferenceServerException

        try:
            cfg = await self._client.get_model_config(self.model, as_json=True, client_timeout=5.0)
        except InferenceServerException as e:
            raise _triton_error(e) from None
        value = cfg.get("config", {}).get("parameters", {}).get("served_model_name", {}).get("string_value")
        return value or None

    def _inputs(self, request: dict[str, Any]):
        import numpy as np

        tensor = self._aio.InferInput(BLS_INPUT, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([json.dumps(request, ensure_ascii=False).encode()], dtype=np.object_))
        return [tensor]

    async def _responses(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The decoded JSON of each response to ``request``; closing this generator cancels the request."""
        import grpc
        from tritonclient.utils import InferenceServerException

        done = asyncio.Event()

        async def requests():
            yield {"model_name": self.model, "inputs": self._inputs(request),
                   "parameters": {"enable_empty_final_response": True}}
            await done.wait()  # keep the stream open until the final response: half-closing early is not an end

        call = self._client.stream_infer(requests())
        try:
            async for result, error in call:
                if error is not None:
                    raise _triton_error(error)
                raw = result.as_numpy(BLS_OUTPUT)
                if raw is not None and raw.size:
                    item = raw.reshape(-1)[0]
                    yield json.loads(item.decode() if isinstance(item, bytes) else item)
                params = result.get_response().parameters
                if "triton_final_response" in params and params["triton_final_response"].bool_param:
                    return
            raise ApiError(500, "Triton closed the stream before k2_bls's final response")
        except InferenceServerException as e:
            raise _triton_error(e) from None
        except grpc.RpcError as e:  # the stream itself failed (Triton unreachable, gone mid-stream)
            raise _triton_error(InferenceServerException(msg=e.details(), status=str(e.code()))) from None
        finally:
            done.set()
            call.cancel()  # no-op after a normal end; otherwise Triton cancels the request

    async def complete(self, request: dict[str, Any]) -> Result:
        result = None
        async for obj in self._responses({**request, "stream": False}):
            result = decode_result(obj)
        if result is None:
            raise ApiError(500, "k2_bls sent no answer")
        return result

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any] | Finish]:
        finished = False
        async for obj in self._responses({**request, "stream": True}):
            for item in decode_chunk(obj):
                finished = finished or isinstance(item, Finish)
                yield item
        if not finished:
            raise ApiError(500, "k2_bls's stream ended without a finish_reason")

    async def close(self) -> None:
        await self._client.close()


# k2_bls reports a request it cannot serve as "k2_bls: <problems>" (k2trt.serving.bls.error_message) and a bug in
# itself as "k2_bls: <ExceptionType>: ..."; over the gRPC stream only the message text arrives, not the error code.
_BLS_BUG = re.compile(r"k2_bls: [A-Z]\w*(Error|Exception): ")


def _triton_error(error: Exception) -> ApiError:
    """A Triton error as an API error: unreachable or model not loaded -> 503; k2_bls refusing the request (a
    prompt longer than the engine takes, ...) -> 422; anything else -> 500."""
    msg = getattr(error, "message", lambda: str(error))() or str(error)
    status = getattr(error, "status", lambda: None)() or ""
    if "UNAVAILABLE" in status or "DEADLINE" in status:
        return ApiError(503, f"Triton is not reachable: {msg}")
    if "is not ready" in msg or "unknown model" in msg.lower():
        return ApiError(503, f"Triton: {msg}")
    if "k2_bls: " in msg and not _BLS_BUG.search(msg):
        return ApiError(422, msg[msg.index("k2_bls: "):])
    return ApiError(500, f"Triton: {msg}")


__all__ = ["BLS_INPUT", "BLS_MODEL", "BLS_OUTPUT", "Backend", "Finish", "Result", "TritonBackend",
           "decode_chunk", "decode_result"]
