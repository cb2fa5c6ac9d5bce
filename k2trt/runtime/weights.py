"""The runtime's view of a converted (TensorRT-LLM layout) checkpoint: one rank file, back to local HF names.

The runtime loads ``rank{N}.safetensors`` as the converter wrote it and undoes the fusions and stacks of
:mod:`k2trt.trtllm_layout` *within the rank*: ``mlp.fc`` [E_local, 2 x I_local, H] becomes each local expert's
``up_proj`` and ``gate_proj`` slice, ``kv_b_proj``'s ``[k_nope; v]`` regrouping goes back to per-head rows, FP8
weights are dequantized with their block scales. The result is keyed by the HF name without ``model.`` and holds
this rank's slice: what :class:`k2trt.runtime.model.RankModel` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from k2trt.checkpoint import SCALE_SUFFIX
from k2trt.config import K2Config
from k2trt.errors import CheckpointError, K2Error
from k2trt.fp8 import dequantize_block_fp8
from k2trt.mapping import Mapping
from k2trt.trtllm_layout import rank_tensor_specs

MANIFEST = "manifest.json"  # written by k2trt.convert


def read_converted(path: str | Path) -> tuple[K2Config, Mapping, str]:
    """(model config, mapping, weights mode) of a converted checkpoint directory."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST}; is this a directory written by `k2trt convert`?") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / MANIFEST}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not manifest.get("complete"):
        raise CheckpointError(f"{path}: the conversion is incomplete; finish it with `k2trt convert --resume`")
    cfg = K2Config.from_dict(manifest["source_config"], source=str(path / MANIFEST))
    m = manifest["params"]["mapping"]
    mapping = Mapping(tp=m["tp_size"], pp=m["pp_size"], moe_ep=m["moe_ep_size"], moe_tp=m["moe_tp_size"])
    return cfg, mapping, manifest["params"]["weights"]


def rank_weights(path: str | Path, rank: int, *, dtype: torch.dtype = torch.float32) -> Callable[[str], torch.Tensor]:
    """``get(local HF name)`` for rank ``rank`` of the converted checkpoint at ``path``."""
    path = Path(path)
    cfg, mapping, weights = read_converted(path)
    file = path / f"rank{rank}.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (world size {mapping.world_size})")
    specs = rank_tensor_specs(cfg, mapping, rank, weights=weights)
    by_name = {s.name: s for s in specs}
    block = cfg.fp8_block or (128, 128)
    local: dict[str, list[tuple[tuple[int, int], tuple[int, int] | None, torch.Tensor]]] = {}
    with safe_open(str(file), framework="pt") as f:
        have = set(f.keys())
        if have != set(by_name):
            raise CheckpointError(f"{file.name}: tensors differ from the layout for rank {rank} "
                                  f"(missing {sorted(set(by_name) - have)[:3]}, extra {sorted(have - set(by_name))[:3]})")
        for spec in specs:
            if spec.name.endswith(SCALE_SUFFIX):
                continue
            t = f.get_tensor(spec.name)
            if spec.read == "fp8":
                scale = f.get_tensor(spec.name + SCALE_SUFFIX)
                slots = [dequantize_block_fp8(w, s, block, dtype) for w, s in
                         zip(t if spec.stacked else [t], scale if spec.stacked else [scale])]
            else:
                slots = list(t.to(dtype)) if spec.stacked else [t.to(dtype)]
            if spec.name == "lm_head.weight":  # keep the zero padding rows: the rank's share of the padded vocab
                local["lm_head.weight"] = [((0, t.shape[0]), None, slots[0])]
                continue
            for slot, pieces in zip(slots, spec.slots):
                row = 0
                for p in pieces:
                    part = slot[row : row + p.nrows]
                    row += p.nrows
                    if p.source is not None:
                        local.setdefault(p.source, []).append((p.rows, p.cols, part))

    def get(name: str) -> torch.Tensor:
        src = name if name == "lm_head.weight" else "model." + name
        parts = local.get(src)
        if parts is None:
            raise K2Error(f"rank {rank} of {path} holds no piece of '{src}'")
        r0 = min(p[0][0] for p in parts)
        if len(parts) == 1:
            return parts[0][2]
        # several row pieces of one source (kv_b_proj's k_nope/v per head): back to source row order
        parts = sorted(parts, key=lambda p: p[0][0])
        out = torch.cat([p[2] for p in parts])
        if sum(p[0][1] - p[0][0] for p in parts) != parts[-1][0][1] - r0:
            raise K2Error(f"rank {rank}: the pieces of '{src}' are not contiguous")
        return out

    def raw(name: str) -> torch.Tensor:
        """A tensor of the rank file exactly as stored (TensorRT-LLM name; FP8 stays FP8): for the kernels."""
        if name not in by_name:
            raise K2Error(f"{file.name} has no tensor '{name}'")
        with safe_open(str(file), framework="pt") as f:
            return f.get_tensor(name)

    get.raw = raw  # type: ignore[attr-defined]
    get.weights = weights  # type: ignore[attr-defined]
    return get
