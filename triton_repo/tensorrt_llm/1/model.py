"""The engine model for torch engine dirs: a thin adapter over k2trt.serving.engine_model.

Tensors in (the tensorrtllm backend's), one thread per request sending the responses of
``EngineCall.responses`` (streamed, cancelled when the client goes away), Triton custom metrics out.
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


class TritonPythonModel:
    def initialize(self, args):
        p = model_parameters(args)
        self.engine = open_engine_model(p["engine_dir"], threads=int(p["engine_threads"]),
                                        exclude_input_default=p["exclude_input_in_output"] == "true",
                                        metrics=_Metrics())

    def execute(self, requests):
        for request in requests:
            tensors = {}
            for spec in ENGINE_INPUTS:
                t = pb_utils.get_input_tensor_by_name(request, spec.name)
                if t is not None:
                    tensors[spec.name] = t.as_numpy()
            args = (tensors, request.request_id(), request.get_response_sender())
            threading.Thread(target=self._serve, args=args, daemon=True).start()
        return None

    def _serve(self, tensors, triton_id, sender):
        try:
            call = self.engine.submit(tensors, triton_id=triton_id)
            for outputs, final in call.responses(sender.is_cancelled):
                response = None
                if outputs is not None:
                    response = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])
                sender.send(response, flags=FINAL if final else 0)
        except K2Error as e:
            error = pb_utils.TritonError("tensorrt_llm: " + "; ".join(e.problems), pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
        except Exception as e:  # a bug or a dead rank: the client gets it, the server keeps serving
            error = pb_utils.TritonError(f"tensorrt_llm: {type(e).__name__}: {e}")
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)

    def finalize(self):
        self.engine.close()
