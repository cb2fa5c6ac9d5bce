"""OpenAI- and Anthropic-compatible HTTP API over k2_bls in Triton (docs/api.md).

- :mod:`~k2trt.api.request`: the API-neutral :class:`ChatRequest` and the k2_bls request JSON; shared checks.
- :mod:`~k2trt.api.openai_schema`, :mod:`~k2trt.api.anthropic_schema`: pure translations, request -> ChatRequest,
  k2_bls results -> each API's response objects and stream events.
- :mod:`~k2trt.api.errors`: :class:`ApiError` and both APIs' error bodies.
- :mod:`~k2trt.api.backend`: k2_bls over tritonclient's async gRPC stream (cancellable).
- :mod:`~k2trt.api.app`: the Starlette app (auth, limits, SSE, health, metrics); :mod:`~k2trt.api.server` runs it.
"""
