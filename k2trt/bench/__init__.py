"""``k2trt bench``: serving benchmarks of a k2trt deployment, measured the way users judge it.

One run = one target (``ensemble``, ``bls`` or ``openai``), one input/output length, several concurrency levels.
Per level, a closed loop of ``concurrency`` clients sends requests (perf_analyzer over streaming gRPC for the
Triton targets, an async HTTP driver for ``openai``) and every request becomes a :class:`RequestRecord`: its
send time, the arrival time of each streamed response and the number of generated tokens each response
carried. Everything reported derives from those records:

- **TTFT**: first response carrying a token - send.
- **request latency**: last response - send.
- **ITL** (inter-token latency): (last token's response - first token's response) / (output tokens - 1),
  GenAI-Perf's and AIPerf's definition (a request's mean gap between tokens; percentiles are across requests).
- **output tokens/s per user**: output tokens / request latency (GenAI-Perf's per-request throughput).
- **output tokens/s total**: all output tokens / (last response of the level - first send of the level).

Output tokens are counted from token ids, never from re-tokenized text (:mod:`k2trt.bench.profile`).

Modules: :mod:`~k2trt.bench.inputs` (prompts of exact token lengths, request payloads),
:mod:`~k2trt.bench.perf_analyzer` (command lines), :mod:`~k2trt.bench.profile` (profile-export parsing),
:mod:`~k2trt.bench.metrics` (percentiles and per-level summaries), :mod:`~k2trt.bench.server_metrics`
(Triton's Prometheus ``/metrics``), :mod:`~k2trt.bench.report` (JSON/CSV/Markdown, compare),
:mod:`~k2trt.bench.plots`, :mod:`~k2trt.bench.openai_driver`, :mod:`~k2trt.bench.direct` (the k2trt runtime
called in-process, the baseline of the Triton path's overhead) and :mod:`~k2trt.bench.runner` (the command).
"""

from k2trt.bench.records import LevelRun, RequestRecord

__all__ = ["LevelRun", "RequestRecord"]
