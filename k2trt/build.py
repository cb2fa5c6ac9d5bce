"""``k2trt build``: a build config (``build_configs/X.yaml``) + a checkpoint -> an engine dir for one backend.

- ``torch``: convert (or reuse a matching conversion), then the runtime's engine dir sized by the plan's limits.
- ``trtllm``: TensorRT-LLM 1.2.x engines per rank; stops before any work where TensorRT-LLM is missing.
- ``llmapi``: the LLM-API options and Triton ``llmapi`` model config for TensorRT-LLM's PyTorch backend, which
  reads the HF checkpoint itself (no conversion).

A conversion is reused when ``converted/manifest.json`` says it is complete and was made from this checkpoint
(same fingerprint) with the plan's mapping and weights; otherwise it is (re)written.
"""

from __future__ import annotations

import json
from pathlib import Path

from k2trt.errors import K2Error


def converted_dir_for(checkpoint: Path, out: Path, mapping, weights: str) -> Path:
    """Where a build keeps its conversion when none is given: beside the engine dir, named by the mapping."""
    m = mapping
    return out.parent / f"{checkpoint.name}.trtllm-tp{m.tp}-pp{m.pp}-ep{m.moe_ep}-{weights}"


def _matching_conversion(converted: Path, checkpoint: Path, mapping, weights: str) -> bool:
    from k2trt.checkpoint import HFCheckpoint
    from k2trt.convert import _fingerprint

    try:
        manifest = json.loads((converted / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    params = manifest.get("params", {})
    return (manifest.get("complete") is True and params.get("mapping") == mapping.to_trtllm()
            and params.get("weights") == weights
            and params.get("source_fingerprint") == _fingerprint(HFCheckpoint(checkpoint)))


def build(*, config: str | Path | None, checkpoint: str | Path, out: str | Path, backend: str | None = None,
          converted: str | Path | None = None, workers: int = 1, force: bool = False,
          progress: bool = True) -> Path:
    """Build the engine dir ``out``; returns it.

    ``checkpoint`` is the HF checkpoint, or, for ``--backend torch`` without a config, an existing conversion.
    """
    from k2trt.runtime.engine_dir import RuntimeConfig, build_torch_engine

    checkpoint, out = Path(checkpoint), Path(out)
    if config is None:
        if backend not in (None, "torch") or not (checkpoint / "manifest.json").is_file():
            raise K2Error("--config is required, except for --backend torch on a converted checkpoint "
                          "(the output of `k2trt convert`)")
        return build_torch_engine(converted=checkpoint, out=out, force=force)

    from k2trt.build_config import BACKENDS, load_build_config

    bc = load_build_config(config)
    backend = backend or bc.backend
    if backend not in BACKENDS:
        raise K2Error(f"--backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "llmapi":
        from k2trt.llmapi import build_llmapi_engine_dir

        return build_llmapi_engine_dir(build_config=bc, checkpoint=checkpoint, out=out, force=force)
    if backend == "trtllm":
        from k2trt.trtllm_build import require_tensorrt_llm

        require_tensorrt_llm()  # before converting anything
    if bc.attention_dp:
        raise K2Error(f"{config}: an attention-DP plan runs on the llmapi backend only; pass --backend llmapi")
    if out.exists() and not force:
        raise K2Error(f"{out} exists; pass --force to replace it")

    conv = Path(converted) if converted else converted_dir_for(checkpoint, out, bc.mapping, bc.weights)
    if not _matching_conversion(conv, checkpoint, bc.mapping, bc.weights):
        from k2trt.convert import convert

        convert(checkpoint=checkpoint, out=conv, tp=bc.mapping.tp, ep=bc.mapping.moe_ep, pp=bc.mapping.pp,
                weights=bc.weights, workers=workers, force=True, progress=progress)
    if backend == "trtllm":
        from k2trt.trtllm_build import build_trtllm_engines

        return build_trtllm_engines(build_config=bc, checkpoint_dir=conv, out=out)
    runtime = RuntimeConfig(**bc.runtime_limits())
    return build_torch_engine(converted=conv, out=out, runtime=runtime, tokenizer_dir=checkpoint, force=force)
