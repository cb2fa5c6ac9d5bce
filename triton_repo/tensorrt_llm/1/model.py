"""The engine model for torch engine dirs: a thin adapter over k2trt.serving.engine_model.

Tensors in (the tensorrtllm backend's); responses pushed by EngineModel's one dispatcher thread to each
request's response sender (a request whose client goes away is cancelled); Triton custom metrics out.
"""

import threading

import triton_python_backend_utils as pb_utils

from k2trt.errors import K2Error
from k2trt.serving.engine_model import open_engine_model
from k2trt.serving.settings import model_parameters
from k2trt.serving.tensors import ENGINE_INPUTS

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _Metrics:
    """k2trt_engine_requests_in_flight (gauge) and k2trt_engine_requests_total{reason} (counter) on /metrics."""

    def __init__(self):
        # the families must outlive their metrics: keep them on self
        self.gauge = gauge = pb_utils.MetricFamily(name="k2trt_engine_requests_in_flight", kind=pb_utils.MetricFamily.GAUGE,
                                      description="Requests the k2trt engine is generating for")
        self.family = total = pb_utils.MetricFamily(name="k2trt_engine_requests_total", kind=pb_utils.MetricFamily.COUNTER,
                                      description="Requests the k2trt engine finished, by finish reason")
        self.in_flight = gauge.Metric(labels={})
        self.total = {r: total.Metric(labels={"reason": r}) for r in ("stop", "length", "cancelled")}
        # the stub's metric calls are not thread-safe (concurrent ones crashed tritonserver 2.51): one at a time
        self.lock = threading.Lock()

    def request_started(self):
        with self.lock:
            self.in_flight.increment(1)

    def request_finished(self, reason):
        with self.lock:
            self.in_flight.increment(-1)
            self.total[reason].increment(1)


class _Sink:
    """One request's response sender, as EngineModel pushes to it."""

    def __init__(self, sender):
        self.sender = sender

    def send(self, outputs, final):
        response = None
        if outputs is not None:
            response = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])
        self.sender.send(response, flags=FINAL if final else 0)

    def fail(self, message, *, bad_request):
        code = pb_utils.TritonError.INVALID_ARG if bad_request else pb_utils.TritonError.INTERNAL
        error = pb_utils.TritonError("tensorrt_llm: " + message, code)
        self.sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)

    def is_cancelled(self):
        return self.sender.is_cancelled()


class TritonPythonModel:
    def initialize(self, args):
        p = model_parameters(args)
        self.engine = open_engine_model(p["engine_dir"], threads=int(p["engine_threads"]),
                                        process=p["engine_process"] == "true",
                                        exclude_input_default=p["exclude_input_in_output"] == "true",
                                        metrics=_Metrics())

    def execute(self, requests):
        for request in requests:
            tensors = {}
            for spec in ENGINE_INPUTS:
                t = pb_utils.get_input_tensor_by_name(request, spec.name)
                if t is not None:
                    tensors[spec.name] = t.as_numpy()
            sink = _Sink(request.get_response_sender())
            try:
                self.engine.submit(tensors, triton_id=request.request_id(), sink=sink)
            except K2Error as e:
                sink.fail("; ".join(e.problems), bad_request=True)
            except Exception as e:  # a bug: the client gets it, the server keeps serving
                sink.fail(f"{type(e).__name__}: {e}", bad_request=False)
        return None

    def finalize(self):
        self.engine.close()
