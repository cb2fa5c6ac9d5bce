"""Prometheus metrics of the gateway (one registry per app, so several apps in a process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 131072)
_TIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """``k2trt_api_*``: requests and errors by API and status, requests in flight, time to first token (streams),
    request duration, prompt and completion tokens per request."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("k2trt_api_requests", "HTTP requests answered", ["api", "status"], registry=r)
        self.errors = Counter("k2trt_api_errors", "Requests answered with an error (status >= 400, or an error "
                              "event inside a stream)", ["api", "status"], registry=r)
        self.in_flight = Gauge("k2trt_api_in_flight", "Generation requests being served", registry=r)
        self.cancelled = Counter("k2trt_api_cancelled", "Requests whose client went away before the end",
                                 ["api"], registry=r)
        self.ttft = Histogram("k2trt_api_time_to_first_token_seconds", "Streaming: request received to first "
                              "token sent", ["api"], buckets=_TIME_BUCKETS, registry=r)
        self.duration = Histogram("k2trt_api_request_duration_seconds", "Generation request received to last byte",
                                  ["api", "stream"], buckets=_TIME_BUCKETS, registry=r)
        self.prompt_tokens = Histogram("k2trt_api_prompt_tokens", "Prompt tokens per request", ["api"],
                                       buckets=_TOKEN_BUCKETS, registry=r)
        self.completion_tokens = Histogram("k2trt_api_completion_tokens", "Generated tokens per request", ["api"],
                                           buckets=_TOKEN_BUCKETS, registry=r)

    def answered(self, api: str, status: int) -> None:
        self.requests.labels(api, str(status)).inc()
        if status >= 400:
            self.errors.labels(api, str(status)).inc()

    def tokens(self, api: str, usage: dict[str, int]) -> None:
        self.prompt_tokens.labels(api).observe(usage["prompt_tokens"])
        self.completion_tokens.labels(api).observe(usage["completion_tokens"])

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["Metrics"]
