"""Serving k2trt engines with Triton Inference Server: everything but the Triton calls themselves.

Triton's ``model.py`` files in ``triton_repo/`` are thin adapters (STYLE.md 10); the logic lives here, Triton-free
and tested on its own:

- :mod:`~k2trt.serving.tensors`: the ``tensorrtllm`` backend's tensors (names, dtypes, shapes) as data, and the typed
  engine request they carry.
- :mod:`~k2trt.serving.engine_model`: the torch engine behind the ``tensorrt_llm`` model (same tensors as the
  ``tensorrtllm`` backend; continuous batching, streaming, cancellation).
- :mod:`~k2trt.serving.text`: the ``preprocessing`` / ``postprocessing`` models (K2 tokenizer, stop words, bytes
  out).
- :mod:`~k2trt.serving.bls`: the ``k2_bls`` chat model: request JSON -> prompt -> engine -> OpenAI-shaped JSON.
- :mod:`~k2trt.serving.settings`: ``k2trt repo``: typed settings that fill the template repository.
- :mod:`~k2trt.serving.server`: ``k2trt serve``: find, start, watch and stop ``tritonserver``.
- :mod:`~k2trt.serving.client`: a tritonclient (gRPC streaming) chat client and ``k2trt chat``.
"""
