"""Triton's Prometheus ``/metrics`` during a benchmark: counters diffed over a level, gauges sampled through it.

Triton (``--metrics-port``, 8002 by default) exposes per model ``nv_inference_request_success``,
``nv_inference_request_failure{reason}``, ``nv_inference_count``, ``nv_inference_exec_count``,
``nv_inference_queue_duration_us`` ... (counters, cumulative since start) and gauges such as
``nv_inference_pending_request_count``, ``nv_cpu_utilization``, ``nv_cpu_memory_used_bytes`` and, on GPUs,
``nv_gpu_utilization`` / ``nv_gpu_memory_used_bytes`` (one series per GPU).

For a decoupled (streaming) model, Triton's request duration ends when ``execute`` returns, not when the
stream does, so the durations here are server-side context only; latencies come from the client's records.
"""

from __future__ import annotations

import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""(metric name, sorted label pairs) -> value."""

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)
GAUGES_MAX = ("nv_inference_pending_request_count", "nv_cpu_memory_used_bytes", "nv_gpu_memory_used_bytes")
GAUGES_MEAN = ("nv_cpu_utilization", "nv_gpu_utilization", "nv_gpu_power_usage")


def parse_prometheus(text: str) -> Sample:
    """The samples of a Prometheus text exposition (comments and malformed lines skipped)."""
    out: Sample = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        try:
            v = float(value)
        except ValueError:
            continue
        pairs = tuple(sorted((k, val.replace('\\"', '"').replace("\\\\", "\\"))
                             for k, val in _LABEL.findall(labels or "")))
        out[(name, pairs)] = v
    return out


def by_model(sample: Sample, name: str) -> dict[str, float]:
    """``name`` summed over every label except ``model`` (e.g. failures over reasons), per model."""
    out: dict[str, float] = {}
    for (n, labels), v in sample.items():
        if n != name:
            continue
        model = dict(labels).get("model")
        if model is not None:
            out[model] = out.get(model, 0.0) + v
    return out


def total(sample: Sample, name: str) -> float | None:
    """``name`` summed over all its series (None if absent)."""
    vals = [v for (n, _), v in sample.items() if n == name]
    return sum(vals) if vals else None


def metrics_url_for(url: str, port: int = 8002) -> str:
    """Triton's metrics endpoint on the host of ``url`` (``host:port`` or ``scheme://host:port``)."""
    host = url.split("://", 1)[-1].split("/", 1)[0]
    if host.startswith("["):  # IPv6 literal
        host = host[: host.index("]") + 1]
    else:
        host = host.rsplit(":", 1)[0]
    return f"http://{host}:{port}/metrics"


def fetch(url: str, timeout: float = 5.0) -> Sample:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (a URL the user gave)
        return parse_prometheus(resp.read().decode("utf-8", errors="replace"))


@dataclass
class Scraper:
    """Samples ``url`` every ``interval`` seconds in a daemon thread between :meth:`start` and :meth:`stop`.

    ``fetcher`` is injectable for tests. A failed scrape is counted (``failures``), never raised: metrics are
    context for a benchmark, not a condition of it.
    """

    url: str
    interval: float = 1.0
    fetcher: Callable[[str], Sample] = fetch
    samples: list[tuple[float, Sample]] = field(default_factory=list)
    failures: int = 0
    last_error: str | None = None

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def scrape(self) -> Sample | None:
        try:
            s = self.fetcher(self.url)
        except (OSError, urllib.error.URLError, ValueError) as e:
            with self._lock:
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
            return None
        with self._lock:
            self.samples.append((time.time(), s))
        return s

    def latest(self) -> Sample | None:
        with self._lock:
            return self.samples[-1][1] if self.samples else None

    def start(self) -> Scraper:
        self.scrape()
        self._thread = threading.Thread(target=self._loop, name="k2trt-metrics", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.scrape()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 6)
        self.scrape()


def summarize(samples: Iterable[Sample], models: Iterable[str] | None = None) -> dict:
    """What changed between the first and last sample (counters, per model) and the gauges over all of them.

    ``models``: report only these (default: every model with requests in the window).
    """
    samples = list(samples)
    if not samples:
        return {}
    first, last = samples[0], samples[-1]
    per_model: dict[str, dict[str, float]] = {}
    for name in COUNTERS:
        a, b = by_model(first, name), by_model(last, name)
        for model in b:
            per_model.setdefault(model, {})[name.removeprefix("nv_inference_")] = b[model] - a.get(model, 0.0)
    for model in list(per_model):
        pend = [by_model(s, "nv_inference_pending_request_count").get(model) for s in samples]
        pend = [p for p in pend if p is not None]
        if pend:
            per_model[model]["pending_request_count_max"] = max(pend)
    wanted = set(models) if models is not None else {
        m for m, d in per_model.items() if d.get("request_success", 0) or d.get("request_failure", 0)}
    out: dict = {"models": {m: d for m, d in sorted(per_model.items()) if m in wanted}, "samples": len(samples)}
    for name in GAUGES_MEAN:
        vals = [v for v in (total(s, name) for s in samples) if v is not None]
        if vals:
            out[name.removeprefix("nv_") + "_mean"] = sum(vals) / len(vals)
    for name in GAUGES_MAX:
        vals = [v for v in (total(s, name) for s in samples) if v is not None]
        if vals and not name.startswith("nv_inference"):
            out[name.removeprefix("nv_") + "_max"] = max(vals)
    return out


def completed(sample: Sample | None, model: str) -> float:
    """Requests ``model`` finished so far (successes + failures), NaN without a sample."""
    if sample is None:
        return math.nan
    return (by_model(sample, "nv_inference_request_success").get(model, 0.0)
            + by_model(sample, "nv_inference_request_failure").get(model, 0.0))
