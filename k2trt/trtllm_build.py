"""``--backend trtllm``: TensorRT-LLM 1.2.x engines, one per rank, via TensorRT-LLM's Python build API.

The thin adapter. Everything it passes to TensorRT-LLM is computed by pure functions here
(:func:`trtllm_build_args`) from the build config; :func:`build_trtllm_engines` first checks that TensorRT-LLM
1.2.x is importable and stops, before touching any input, with a message naming the container to run in. The
TensorRT-LLM calls follow ``tensorrt_llm/commands/build.py`` (what ``trtllm-build`` runs): per rank,
``build_model(build_config, rank, ckpt_dir, model_config)`` then ``engine.save(output_dir)``.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable

from k2trt.build_config import BuildConfig, make_manifest, write_json
from k2trt.errors import K2Error

CONTAINER = "nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3"
TRTLLM_LINE = "1.2"
"""The last TensorRT-LLM release line with the TensorRT engine workflow (DESIGN.md)."""


def require_tensorrt_llm() -> Any:
    """Import TensorRT-LLM 1.2.x or raise K2Error naming the container to run ``k2trt build`` in."""
    where = (f"run `k2trt build --backend trtllm` inside the {CONTAINER} container (Triton with TensorRT-LLM "
             f"{TRTLLM_LINE}.x); its PyPI wheel cannot be installed on machines without access to NVIDIA's package "
             f"host")
    if importlib.util.find_spec("tensorrt_llm") is None:
        raise K2Error(f"--backend trtllm needs TensorRT-LLM {TRTLLM_LINE}.x, which is not installed here: {where}")
    trtllm = importlib.import_module("tensorrt_llm")
    version = str(getattr(trtllm, "__version__", "unknown"))
    if not version.startswith(TRTLLM_LINE + "."):
        raise K2Error(f"--backend trtllm needs TensorRT-LLM {TRTLLM_LINE}.x (the TensorRT engine workflow), found "
                      f"{version}: {where}")
    return trtllm


def check_supported(bc: BuildConfig) -> None:
    """Plans the TensorRT engine workflow cannot build."""
    if bc.attention_dp:
        raise K2Error(f"{bc.name}: TensorRT engines have no attention DP; build it with --backend llmapi or plan a "
                      f"TP-attention layout (k2trt plan --objective latency)")
    if bc.mapping.pp > 1 and bc.mapping.moe_ep != bc.mapping.tp:
        raise K2Error(f"{bc.name}: pipeline parallelism with split experts is not supported by the engine builder")


def trtllm_build_args(bc: BuildConfig) -> dict[str, Any]:
    """``tensorrt_llm.builder.BuildConfig.from_dict`` arguments for the plan (identical for every rank)."""
    check_supported(bc)
    args: dict[str, Any] = {
        "max_batch_size": bc.max_batch_size,
        "max_input_len": bc.max_seq_len - 1,
        "max_seq_len": bc.max_seq_len,
        "max_num_tokens": bc.max_num_tokens,
        "max_beam_width": 1,
        "kv_cache_type": "paged",
        "plugin_config": {
            "gemm_plugin": "auto",
            "gpt_attention_plugin": "auto",
            "remove_input_padding": True,
            "context_fmha": True,
            "use_paged_context_fmha": True,
        },
    }
    return args


def build_trtllm_engines(
    *, build_config: BuildConfig, checkpoint_dir: str | Path, out: str | Path,
    register_plugins: Callable[[], None] | None = None,
) -> Path:
    """Build ``rank{N}.engine`` for every rank of ``checkpoint_dir`` (a converted TensorRT-LLM checkpoint).

    ``register_plugins`` registers k2trt's MLA and block-FP8 MoE TensorRT plugins (``plugins/``) before the
    first build; it is called only once TensorRT-LLM has been found.
    """
    trtllm = require_tensorrt_llm()  # before any work: nothing is read or written without TensorRT-LLM
    bc = build_config
    args = trtllm_build_args(bc)
    ckpt = Path(checkpoint_dir)
    if not (ckpt / "config.json").is_file():
        raise K2Error(f"{ckpt}: not a converted TensorRT-LLM checkpoint (no config.json); run k2trt convert first")
    if register_plugins is not None:
        register_plugins()
    from tensorrt_llm.builder import BuildConfig as TrtBuildConfig
    from tensorrt_llm.commands.build import build_model
    from tensorrt_llm.models.modeling_utils import PretrainedConfig

    model_config = PretrainedConfig.from_json_file(str(ckpt / "config.json"))
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    for rank in range(bc.world_size):  # one engine per rank, as trtllm-build's parallel_build
        engine = build_model(TrtBuildConfig.from_dict(dict(args)), rank, str(ckpt), model_config)
        engine.save(str(dst))
    outputs = sorted(p.name for p in dst.iterdir())
    write_json(dst / "manifest.json", make_manifest(
        build_config=bc, backend="trtllm", inputs={"checkpoint": ckpt}, outputs=outputs,
        versions={"tensorrt_llm": str(trtllm.__version__)}))
    return dst
