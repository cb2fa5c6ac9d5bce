"""The TensorRT plugins as data: ids, inputs, outputs (shape and dtype from input shapes), and the kernel launch.

Pure functions only; ``plugins.trt_registration`` turns each :class:`PluginDef` into ``tensorrt.plugin.register``
+ ``tensorrt.plugin.aot_impl``. Shapes are sequences of ints or of TensorRT shape expressions: everything here
uses ``+ - * //`` on them, nothing else, so the tests evaluate the same functions on ints and compare with the
PyTorch wrappers. A TensorRT AOT plugin launches exactly one kernel, so the MoE layer is a chain of plugins:
``act_quant -> moe_route -> moe_scatter -> moe_gemm1 -> moe_gemm2 -> moe_combine`` (+ ``moe_shared_gemm1/2``), and
decode attention is ``mla_decode -> mla_decode_reduce``.

Identity-routed plugins (``moe_shared_gemm1/2``) keep the routed kernels' signature: their three int32 routing
inputs are not read; wire any int32 tensor (the route's ``ids``) to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from k2trt.config import K2Config
from k2trt.fp8 import FP8_DTYPE
from plugins import fp8_gemm as G
from plugins import mla as A
from plugins import moe as M
from plugins._runtime import cdiv, next_pow2
from plugins._spec import KernelSpec

NAMESPACE = "k2trt"
Shape = Sequence  # of ints or TensorRT shape expressions


@dataclass(frozen=True)
class PluginDef:
    """One TensorRT plugin = one kernel.

    ``outputs(shapes)`` -> [(name, shape, dtype)] from the input shapes; ``spec(shapes)`` -> the KernelSpec whose
    input pointers are the plugin inputs (in order), scalars come from ``scalars(shapes)``, outputs follow.
    """

    name: str
    inputs: tuple[str, ...]
    input_dtypes: tuple[torch.dtype, ...]
    outputs: Callable[[list[Shape]], list[tuple[str, tuple, torch.dtype]]]
    spec: Callable[[list[Shape]], KernelSpec]
    scalars: Callable[[list[Shape]], list]
    aliases: dict[int, int] | None = None  # output index -> input index it aliases (in-place)

    @property
    def plugin_id(self) -> str:
        return f"{NAMESPACE}::{self.name}"


@dataclass(frozen=True)
class PluginSettings:
    """What a build fixes: the model, this rank's experts, the activation dtype, tiles, decode splits."""

    cfg: K2Config
    expert_start: int = 0
    n_local_experts: int | None = None
    act_dtype: torch.dtype = torch.bfloat16
    kv_dtype: torch.dtype = torch.bfloat16
    page_size: int = 64
    max_batch: int = 64
    max_context: int = 4096
    w13_order: str = "gate_up"

    @property
    def e_local(self) -> int:
        return self.cfg.n_routed_experts if self.n_local_experts is None else self.n_local_experts


def plugin_defs(s: PluginSettings) -> list[PluginDef]:
    """Every plugin of the MLA and MoE layers for one build."""
    c, act, i32, f32 = s.cfg, s.act_dtype, torch.int32, torch.float32
    k, el = c.num_experts_per_tok, s.e_local
    # tiles are fixed per engine: decode-shaped MoE tiles for small batches, prefill-shaped otherwise
    tiles = M.moe_tiles(s.max_batch, k, el, "cuda")
    dtiles = A.decode_tiles(s.max_batch, c.num_attention_heads, s.max_context, "cuda")
    ptiles = A.prefill_tiles("cuda")
    dl, dr, dn, dv = c.kv_lora_rank, c.qk_rope_head_dim, c.qk_nope_head_dim, c.v_head_dim
    gate_first = s.w13_order == "gate_up"
    defs = [
        PluginDef(
            "act_quant", ("x",), (act,),
            outputs=lambda sh: [("q", (sh[0][0], sh[0][1]), FP8_DTYPE), ("s", (sh[0][0], cdiv(sh[0][1], G.GROUP)), f32)],
            spec=lambda sh: G.act_quant_spec(sh[0][0], sh[0][1], act),
            scalars=lambda sh: [sh[0][0], sh[0][1]],
        ),
        PluginDef(
            "fp8_gemm", ("a_q", "a_s", "w", "w_s"), (FP8_DTYPE, f32, FP8_DTYPE, f32),
            outputs=lambda sh: [("c", (sh[0][0], sh[2][0]), act)],
            spec=lambda sh: G.fp8_gemm_spec(sh[0][0], sh[2][0], sh[0][1], G.gemm_config(s.max_batch, 1, 1, "cuda"), act),
            scalars=lambda sh: [sh[0][0], sh[2][0], sh[0][1]],
        ),
        PluginDef(
            "moe_route", ("x", "router_w", "bias"), (act, act, f32),
            outputs=lambda sh: [("ids", (sh[0][0], k), i32), ("weights", (sh[0][0], k), f32),
                                ("counts", (cdiv(sh[0][0], tiles.route_block_t), next_pow2(el + 1)), i32)],
            spec=lambda sh: M.route_spec(sh[0][0], sh[0][1], c, act, el, tiles, interpret=False),
            scalars=lambda sh: [sh[0][0], sh[0][1], s.expert_start],
        ),
        PluginDef(
            "moe_scatter", ("ids", "counts"), (i32, i32),
            outputs=lambda sh: [("sorted", (M.max_rows(sh[0][0], k, el, tiles.block_m),), i32),
                                ("block_expert", (M.max_rows(sh[0][0], k, el, tiles.block_m) // tiles.block_m,), i32),
                                ("n_rows", (1,), i32)],
            spec=lambda sh: M.scatter_spec(sh[0][0], k, el, tiles),
            scalars=lambda sh: [sh[0][0], s.expert_start, M.max_rows(sh[0][0], k, el, tiles.block_m) // tiles.block_m],
        ),
        PluginDef(
            "moe_gemm1", ("xq", "xs", "w13", "w13_s", "sorted", "block_expert", "n_rows"),
            (FP8_DTYPE, f32, FP8_DTYPE, f32, i32, i32, i32),
            outputs=lambda sh: [("hq", (sh[4][0], sh[2][1] // 2), FP8_DTYPE), ("hs", (sh[4][0], sh[2][1] // 256), f32)],
            spec=lambda sh: M.gemm1_spec(sh[4][0], c.moe_intermediate_size, k, tiles, identity=False,
                                         gate_first=gate_first),
            scalars=lambda sh: [sh[0][0], sh[0][1], sh[2][1] // 2],
        ),
        PluginDef(
            "moe_gemm2", ("hq", "hs", "w2", "w2_s", "sorted", "block_expert", "n_rows", "weights"),
            (FP8_DTYPE, f32, FP8_DTYPE, f32, i32, i32, i32, f32),
            outputs=lambda sh: [("buf", (sh[7][0] * k, sh[2][1]), act)],
            spec=lambda sh: M.gemm2_spec(sh[4][0], sh[2][1], k, tiles, identity=False, out_dtype=act),
            scalars=lambda sh: [sh[7][0], sh[2][1], sh[2][2]],
        ),
        PluginDef(
            "moe_shared_gemm1", ("xq", "xs", "w13", "w13_s", "unused0", "unused1", "unused2"),
            (FP8_DTYPE, f32, FP8_DTYPE, f32, i32, i32, i32),
            # the shared expert's weights are 2-D: w13 [2I_s, h], w2 [h, I_s]
            outputs=lambda sh: [("hq", (sh[0][0], sh[2][0] // 2), FP8_DTYPE), ("hs", (sh[0][0], sh[2][0] // 256), f32)],
            spec=lambda sh: M.gemm1_spec(sh[0][0], c.shared_intermediate_size, 1, tiles, identity=True,
                                         gate_first=gate_first),
            scalars=lambda sh: [sh[0][0], sh[0][1], sh[2][0] // 2],
        ),
        PluginDef(
            "moe_shared_gemm2", ("hq", "hs", "w2", "w2_s", "unused0", "unused1", "unused2", "unused3"),
            (FP8_DTYPE, f32, FP8_DTYPE, f32, i32, i32, i32, f32),
            outputs=lambda sh: [("out", (sh[0][0], sh[2][0]), act)],
            spec=lambda sh: M.gemm2_spec(sh[0][0], sh[2][0], 1, tiles, identity=True, out_dtype=act),
            scalars=lambda sh: [sh[0][0], sh[2][0], sh[2][1]],
        ),
        PluginDef(
            "moe_combine", ("buf", "ids", "shared"), (act, i32, act),
            outputs=lambda sh: [("out", (sh[1][0], sh[0][1]), act)],
            spec=lambda sh: M.combine_spec(sh[1][0], sh[0][1], k, el, has_shared=True, buf_dtype=act, out_dtype=act),
            scalars=lambda sh: [sh[1][0], sh[0][1], s.expert_start],
        ),
        PluginDef(
            "mla_decode", ("q_latent", "q_rope", "kv_cache", "kv_scale", "block_table", "seq_lens"),
            (act, act, s.kv_dtype, f32, i32, i32),
            outputs=lambda sh: [("o_part", (sh[0][0], sh[0][1], dtiles.num_splits, dl), f32),
                                ("lse", (sh[0][0], sh[0][1], dtiles.num_splits), f32)],
            spec=lambda sh: A.decode_spec(sh[0][0], sh[0][1], dl, dr, s.page_size, act, s.kv_dtype, c.softmax_scale,
                                          dtiles, interpret=False),
            scalars=lambda sh: [sh[0][0], sh[0][1], sh[4][1]],
        ),
        PluginDef(
            "mla_decode_reduce", ("o_part", "lse"), (f32, f32),
            outputs=lambda sh: [("o_latent", (sh[0][0], sh[0][1], dl), act)],
            spec=lambda sh: A.decode_reduce_spec(sh[0][0], sh[0][1], dl, dtiles.num_splits, act),
            scalars=lambda sh: [sh[0][0], sh[0][1]],
        ),
        PluginDef(
            "mla_prefill", ("q_nope", "q_rope", "k_nope", "k_rope", "v", "cu_seqlens_q", "cu_seqlens_k"),
            (act, act, act, act, act, i32, i32),
            outputs=lambda sh: [("out", (sh[0][0], sh[0][1], dv), act)],
            spec=lambda sh: A.prefill_spec(sh[0][0], sh[5][0] - 1, sh[0][1], dn, dr, dv, act, c.softmax_scale, ptiles,
                                           interpret=False),
            # contiguous inputs: row strides are H*D, head strides D
            scalars=lambda sh: [sh[5][0] - 1, sh[0][1] * dn, dn, sh[1][1] * dr, dr, sh[2][1] * dn, dn, dr,
                                sh[4][1] * dv, dv, sh[0][1] * dv, dv],
        ),
    ]
    return defs


def plugin_def(s: PluginSettings, name: str) -> PluginDef:
    for d in plugin_defs(s):
        if d.name == name:
            return d
    raise KeyError(name)
