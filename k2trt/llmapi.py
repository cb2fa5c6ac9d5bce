"""``--backend llmapi``: TensorRT-LLM's PyTorch backend (what NVIDIA supports for K2) driven by files k2trt writes.

Pure functions of a :class:`~k2trt.build_config.BuildConfig`:

- :func:`llm_api_options` → ``extra_llm_api_options.yaml`` for ``trtllm-serve`` / ``trtllm-bench``
  (``--extra_llm_api_options``): parallelism, limits, KV cache, CUDA graphs. Field names are the LLM API's
  (``tensorrt_llm/llmapi/llm_args.py``): ``tensor_parallel_size``, ``pipeline_parallel_size``,
  ``moe_expert_parallel_size``, ``moe_tensor_parallel_size``, ``enable_attention_dp``, ``gpus_per_node``,
  ``max_batch_size``, ``max_num_tokens``, ``max_seq_len``, ``kv_cache_config.{free_gpu_memory_fraction,dtype}``,
  ``cuda_graph_config.{enable_padding,batch_sizes}``, ``trust_remote_code`` (TensorRT-LLM's Kimi K2 deployment
  guide uses the same keys).
- :func:`triton_model_yaml` → Triton's ``llmapi`` model ``tensorrt_llm/1/model.yaml``: every key but
  ``triton_config`` goes to ``tensorrt_llm.LLM(**kwargs)``; ``triton_config`` sets the Triton model's
  ``max_batch_size`` and ``decoupled`` (tensorrt_llm/triton_backend/all_models/llmapi/tensorrt_llm/1/model.py).
- :func:`triton_config_pbtxt` → that model's ``config.pbtxt``: the Python backend, ``text_input`` in and
  ``text_output`` out plus the optional sampling inputs of the llmapi model.

:func:`build_llmapi_engine_dir` writes them with a manifest. The model directory (``model.py``, ``helpers.py``)
comes from the TensorRT-LLM in the serving container; ``k2trt repo`` copies it next to these files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from k2trt.build_config import BuildConfig, make_manifest, write_json
from k2trt.errors import K2Error

TRITON_MODEL_NAME = "tensorrt_llm"
OPTIONS_FILE = "extra_llm_api_options.yaml"


def llm_api_options(bc: BuildConfig) -> dict[str, Any]:
    """The LLM-API options of one replica (every replica of the plan runs the same options)."""
    m = bc.mapping
    opts: dict[str, Any] = {
        "tensor_parallel_size": m.tp,
        "pipeline_parallel_size": m.pp,
        "moe_expert_parallel_size": m.moe_ep,
        "moe_tensor_parallel_size": m.moe_tp,
        "enable_attention_dp": bc.attention_dp,
        "max_batch_size": bc.max_batch_size,
        "max_num_tokens": bc.max_num_tokens,
        "max_seq_len": bc.max_seq_len,
        "kv_cache_config": {
            # Both given: TensorRT-LLM uses the smaller ("If both max_tokens and free_gpu_memory_fraction are
            # specified, memory corresponding to the minimum will be used", llm_args.py KvCacheConfig).
            "max_tokens": bc.kv_cache_tokens_per_gpu,
            "free_gpu_memory_fraction": bc.kv_cache_free_gpu_memory_fraction,
            # "auto" keeps the model's dtype (bf16); "fp8" quantizes the MLA latent cache.
            "dtype": "fp8" if bc.kv_dtype == "fp8" else "auto",
        },
        "cuda_graph_config": {"enable_padding": True, "batch_sizes": list(bc.cuda_graph_batch_sizes)},
        # K2's checkpoint ships its own tokenizer code (tokenization_kimi.py).
        "trust_remote_code": True,
    }
    if bc.world_size > bc.topology.device.gpus_per_node:
        opts["gpus_per_node"] = bc.topology.device.gpus_per_node
    return opts


def options_yaml(bc: BuildConfig) -> str:
    return (f"# LLM-API options for {bc.name} ({bc.topology.name}): trtllm-serve / trtllm-bench "
            f"--extra_llm_api_options. Written by k2trt build --backend llmapi.\n"
            + yaml.safe_dump(llm_api_options(bc), sort_keys=False))


def triton_model_yaml(bc: BuildConfig, *, model_path: str, decoupled: bool = True) -> dict[str, Any]:
    """``tensorrt_llm/1/model.yaml`` of Triton's llmapi model for the checkpoint at ``model_path``."""
    if not model_path:
        raise K2Error("the llmapi model needs the checkpoint path the server will load (model_path)")
    return {
        "model": model_path,
        "backend": "pytorch",
        **llm_api_options(bc),
        # max_batch_size 0: the llmapi model batches inside TensorRT-LLM, not in Triton (its model.yaml says the
        # Triton-side batching is not supported). decoupled: streaming responses.
        "triton_config": {"max_batch_size": 0, "decoupled": decoupled},
    }


# (name, Triton data type, dims, optional) of the llmapi model's tensors: its interface, as data.
LLMAPI_INPUTS: tuple[tuple[str, str, list[int], bool], ...] = (
    ("text_input", "TYPE_STRING", [-1], False),
    ("streaming", "TYPE_BOOL", [1], True),
    ("sampling_param_best_of", "TYPE_INT32", [1], True),
    ("sampling_param_temperature", "TYPE_FP32", [1], True),
    ("sampling_param_top_k", "TYPE_INT32", [1], True),
    ("sampling_param_top_p", "TYPE_FP32", [1], True),
    ("sampling_param_frequency_penalty", "TYPE_FP32", [1], True),
    ("sampling_param_presence_penalty", "TYPE_FP32", [1], True),
    ("sampling_param_max_tokens", "TYPE_INT32", [1], True),
    ("sampling_param_stop", "TYPE_STRING", [-1], True),
    ("sampling_param_seed", "TYPE_UINT64", [1], True),
    ("sampling_param_exclude_input_from_output", "TYPE_BOOL", [1], True),
    ("sampling_param_return_perf_metrics", "TYPE_BOOL", [1], True),
    ("return_finish_reason", "TYPE_BOOL", [1], True),
    ("return_stop_reason", "TYPE_BOOL", [1], True),
    ("return_cumulative_logprob", "TYPE_BOOL", [1], True),
    ("stop", "TYPE_BOOL", [1], True),
)
LLMAPI_OUTPUTS: tuple[tuple[str, str, list[int]], ...] = (
    ("text_output", "TYPE_STRING", [-1]),
    ("finish_reason", "TYPE_STRING", [-1]),
    ("stop_reason", "TYPE_STRING", [-1]),
    ("cumulative_logprob", "TYPE_FP32", [-1]),
)


def triton_config_pbtxt(bc: BuildConfig, *, model_name: str = TRITON_MODEL_NAME) -> str:
    """``config.pbtxt`` of the llmapi model. ``max_batch_size`` and ``decoupled`` are left to model.yaml's
    ``triton_config`` (the model's auto_complete_config sets them; config.pbtxt must not)."""

    def dims(d: list[int]) -> str:
        return "[ " + ", ".join(str(x) for x in d) + " ]"

    lines = [
        f"# Triton llmapi model for {bc.name} ({bc.topology.name}); written by k2trt build --backend llmapi.",
        f'name: "{model_name}"',
        'backend: "python"',
        "",
        "instance_group [",
        "  {",
        "    count: 1",
        "    kind: KIND_CPU",
        "  }",
        "]",
        "",
        "input [",
    ]
    ins = []
    for name, dt, d, optional in LLMAPI_INPUTS:
        body = [f'    name: "{name}"', f"    data_type: {dt}", f"    dims: {dims(d)}"]
        if optional:
            body.append("    optional: true")
        ins.append("  {\n" + "\n".join(body) + "\n  }")
    lines.append(",\n".join(ins))
    lines += ["]", "", "output ["]
    outs = ["  {\n" + "\n".join([f'    name: "{n}"', f"    data_type: {dt}", f"    dims: {dims(d)}"]) + "\n  }"
            for n, dt, d in LLMAPI_OUTPUTS]
    lines.append(",\n".join(outs))
    lines.append("]")
    return "\n".join(lines) + "\n"


def build_llmapi_engine_dir(
    *, build_config: BuildConfig, checkpoint: str | Path, out: str | Path, model_path: str | None = None,
    force: bool = False,
) -> Path:
    """Write the llmapi engine dir for ``checkpoint`` (the HF checkpoint TensorRT-LLM loads itself)::

        out/extra_llm_api_options.yaml
        out/triton/tensorrt_llm/config.pbtxt
        out/triton/tensorrt_llm/1/model.yaml
        out/manifest.json

    ``model_path`` is where the serving machine sees the checkpoint (default: ``checkpoint`` as given).
    """
    bc = build_config
    ckpt = Path(checkpoint)
    if not (ckpt / "config.json").is_file():
        raise K2Error(f"--checkpoint {ckpt}: no config.json (expected a Hugging Face checkpoint directory)")
    dst = Path(out)
    if dst.exists() and any(dst.iterdir()) and not force:
        raise K2Error(f"--out {dst} exists and is not empty (use --force to overwrite)")
    model_dir = dst / "triton" / TRITON_MODEL_NAME
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (dst / OPTIONS_FILE).write_text(options_yaml(bc))
    (model_dir / "config.pbtxt").write_text(triton_config_pbtxt(bc))
    model_yaml = triton_model_yaml(bc, model_path=model_path or str(ckpt))
    (model_dir / "1" / "model.yaml").write_text(
        f"# Triton llmapi model.yaml for {bc.name}: LLM(**everything but triton_config).\n"
        + yaml.safe_dump(model_yaml, sort_keys=False))
    inputs: dict[str, str | Path] = {"checkpoint_config": ckpt / "config.json"}
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        inputs["checkpoint_index"] = index
    outputs = [OPTIONS_FILE, f"triton/{TRITON_MODEL_NAME}/config.pbtxt", f"triton/{TRITON_MODEL_NAME}/1/model.yaml"]
    write_json(dst / "manifest.json", make_manifest(build_config=bc, backend="llmapi", inputs=inputs,
                                                    outputs=outputs, versions={"tensorrt_llm": "container"}))
    return dst
