"""The chat model: a thin adapter over k2trt.serving.bls.serve_request.

One thread per request; the engine is called with BLS (decoupled, streamed) under a request id of its own, and a
tensorrtllm-style ``stop`` request with that id cancels it when the client goes away or a stop string matched.
"""

import json
import threading
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

from k2trt.chat import load_chat_template
from k2trt.errors import K2Error
from k2trt.serving.bls import BlsConfig, error_message, rate_limited, serve_request
from k2trt.serving.settings import model_parameters
from k2trt.serving.tensors import EngineRequest, ids_from_output
from k2trt.tokenizer import K2Tokenizer

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        p = model_parameters(args)
        self.tokenizer = K2Tokenizer.from_dir(p["tokenizer_dir"])
        self.template = load_chat_template(p["tokenizer_dir"])
        self.config = BlsConfig(model_name=p["served_model_name"], max_seq_len=int(p["max_seq_len"]),
                                default_max_tokens=int(p["default_max_tokens"]))
        self.config.validate()
        self.engine_model = p["engine_model"]

    def execute(self, requests):
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "request").as_numpy().reshape(-1)[0]
            threading.Thread(target=self._serve, args=(raw, request.get_response_sender()), daemon=True).start()
        return None

    def _call(self, engine_request, triton_id):
        inputs = [pb_utils.Tensor(k, v) for k, v in engine_request.to_tensors().items()]
        return pb_utils.InferenceRequest(model_name=self.engine_model, inputs=inputs, request_id=triton_id,
                                         requested_output_names=["output_ids", "sequence_length"]).exec(decoupled=True)

    def _engine(self, triton_id):
        def run(engine_request):
            for r in self._call(engine_request, triton_id):
                if r.has_error():
                    raise K2Error("engine: " + r.error().message())
                ids = pb_utils.get_output_tensor_by_name(r, "output_ids")
                lengths = pb_utils.get_output_tensor_by_name(r, "sequence_length")
                yield ids_from_output(None if ids is None else ids.as_numpy(),
                                      None if lengths is None else lengths.as_numpy())
        return run

    def _stop(self, triton_id):
        for _ in self._call(EngineRequest(input_ids=(), max_tokens=1, stop=True), triton_id):
            pass

    def _serve(self, raw, sender):
        triton_id = f"k2_bls-{uuid.uuid4().hex}"
        pending = None  # each response is sent when the next exists, so the last one carries the final flag
        try:
            for obj in serve_request(raw, tokenizer=self.tokenizer, config=self.config, template=self.template,
                                     engine=self._engine(triton_id), is_cancelled=rate_limited(sender.is_cancelled),
                                     stop_engine=lambda: self._stop(triton_id)):
                if pending is not None:
                    sender.send(pending)
                data = np.array([json.dumps(obj, ensure_ascii=False).encode()], dtype=np.object_)
                pending = pb_utils.InferenceResponse([pb_utils.Tensor("response", data)])
            sender.send(pending, flags=FINAL)
        except K2Error as e:
            if pending is not None:
                sender.send(pending)
            error = pb_utils.TritonError(error_message(e), pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
        except Exception as e:  # a bug: the client gets it, the server keeps serving
            error = pb_utils.TritonError(f"k2_bls: {type(e).__name__}: {e}")
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
