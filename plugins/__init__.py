"""k2trt's kernels for MLA attention and grouped block-FP8 MoE: Triton language, a PyTorch reference beside each,
and their TensorRT plugin registrations.

Modules (importing a kernel module decorates its Triton kernels: set ``TRITON_INTERPRET=1`` first to run them on
CPU, see ``plugins._runtime``):

- ``plugins.fp8_gemm``: ``act_quant``, ``fp8_gemm``, ``block_fp8_linear`` (+ ``*_ref``)
- ``plugins.moe``: ``moe_route``, ``moe_forward``, ``moe_experts``, ``shared_expert`` (+ ``*_ref``)
- ``plugins.mla``: ``mla_prefill``, ``mla_decode``, ``mla_cache_write`` (+ ``*_ref``), ``absorb_query``,
  ``project_values``, ``paged_from_contiguous``
- ``plugins.plugin_defs`` / ``plugins.trt_registration``: TensorRT AOT plugins (``plugins.aot`` compiles to PTX)
- ``plugins.check`` / ``plugins.bench`` / ``plugins.cli``: ``k2trt kernels check`` and ``k2trt kernels bench``

Nothing is imported here, so ``import plugins`` stays cheap and leaves Triton's mode undecided.
"""
