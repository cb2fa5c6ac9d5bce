"""Text -> ids: a thin adapter over k2trt.serving.text.Preprocessor."""

import triton_python_backend_utils as pb_utils

from k2trt.errors import K2Error
from k2trt.serving.settings import model_parameters
from k2trt.serving.tensors import PREPROCESSING_INPUTS
from k2trt.serving.text import Preprocessor
from k2trt.tokenizer import K2Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        self.pre = Preprocessor(K2Tokenizer.from_dir(model_parameters(args)["tokenizer_dir"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            tensors = {}
            for spec in PREPROCESSING_INPUTS:
                t = pb_utils.get_input_tensor_by_name(request, spec.name)
                if t is not None:
                    tensors[spec.name] = t.as_numpy()
            try:
                out = self.pre(tensors)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in out.items()]))
            except K2Error as e:
                error = pb_utils.TritonError("preprocessing: " + "; ".join(e.problems), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses
