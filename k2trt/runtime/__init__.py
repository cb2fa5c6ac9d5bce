"""k2trt's own PyTorch runtime (the ``torch`` engine backend): paged MLA cache, continuous batching, sampling.

Behind the same request contract as TensorRT-LLM's executor, so Triton's models cannot tell the backends apart.
"""
