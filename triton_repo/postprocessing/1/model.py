"""Ids -> the bytes of their text: a thin adapter over k2trt.serving.text.Postprocessor."""

import triton_python_backend_utils as pb_utils

from k2trt.errors import K2Error
from k2trt.serving.settings import model_parameters
from k2trt.serving.text import Postprocessor
from k2trt.tokenizer import K2Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        p = model_parameters(args)
        self.post = Postprocessor(K2Tokenizer.from_dir(p["tokenizer_dir"]),
                                  skip_special_tokens=p["skip_special_tokens"] == "true")

    def execute(self, requests):
        responses = []
        for request in requests:
            tensors = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                       for name in ("TOKENS_BATCH", "SEQUENCE_LENGTH")}
            try:
                out = self.post(tensors)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in out.items()]))
            except K2Error as e:
                error = pb_utils.TritonError("postprocessing: " + "; ".join(e.problems), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses
