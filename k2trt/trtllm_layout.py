"""What each ``rank{N}.safetensors`` of the TensorRT-LLM checkpoint holds: the naming and split table, as data.

:data:`LAYOUT` maps Hugging Face tensors to TensorRT-LLM names. Each row says where the tensor lives (first stage,
last stage, every layer, dense layers, MoE layers), how a rank takes its share (``split``), how several sources are
joined (``fuse``) and how it is stored (``store``). :func:`rank_tensor_specs` turns the table into the exact list of
tensors of one rank, in file order, each with the *pieces* of source tensors it is assembled from, so the converter,
the planner and the inverse (:func:`k2trt.convert.reassemble`) all read one description.

Followed: TensorRT-LLM 1.2.x ``tensorrt_llm/models/deepseek_v2/convert.py`` (``load_weights_from_hf_model`` and
``load_weights_from_hf_safetensors``), ``deepseek_v2/model.py`` (module tree, ``pp_layers`` local layer numbering,
``ln_f`` and ``lm_head`` on the last stage, ``vocab_embedding`` on the first, lm_head padded with ``pad_vocab_size``),
``deepseek_v2/config.py`` (``DeepSeekV2Config.from_hugging_face``), ``layers/moe.py`` (``MoeConfig`` fields,
``MOEWeightWrapper``: ``fc`` = ``cat([stack(up), stack(gate)], dim=-2)``, ``proj`` = ``stack(down)``),
``mapping.py`` and ``docs/source/legacy/architecture/checkpoint.md``. Specifically:

- ``attention.fused_a`` = ``cat([q_a_proj, kv_a_proj_with_mqa], dim=0)`` (replicated; ``kv_a_proj_with_mqa`` alone
  without ``q_lora_rank``).
- ``attention.q_b_proj``: split by heads on dim 0 (``unflatten(0, [heads, qk_head_dim])`` then ``chunk``).
- ``attention.kv_b_proj``: split by heads, then regrouped ``[k_nope of the rank's heads; v of the rank's heads]``.
- ``attention.dense`` (o_proj): split on dim 1 (input), ``v_head_dim`` columns per head.
- dense MLP (GatedMLP naming): ``mlp.fc`` <- ``gate_proj``, ``mlp.gate`` <- ``up_proj`` (both dim 0), ``mlp.proj``
  <- ``down_proj`` (dim 1).
- MoE: ``mlp.router`` (float32) <- ``mlp.gate``, ``mlp.e_score_correction_bias`` (float32); experts stacked for the
  rank's EP block, ``mlp.fc`` [E_local, 2 x I_local, H] with **up first, then gate**; ``mlp.proj``
  [E_local, H, I_local].
  The expert width is split by ``moe_tp`` (TensorRT-LLM's legacy converter splits it with ``tp_size``/``tp_rank``,
  which only agrees when ``moe_ep == 1``; its ``MixtureOfExperts`` plugin is sized by ``moe_tp_size``, which is
  what this table follows).
- shared expert: ``mlp.shared_expert.fc`` = ``cat([up, gate])`` split by tp on dim 0, ``shared_expert.proj`` dim 1.
- norms: ``input_layernorm``, ``post_layernorm`` (HF ``post_attention_layernorm``), ``attention.q_a_layernorm``,
  ``attention.kv_a_layernorm``, ``transformer.ln_f``; embedding ``transformer.vocab_embedding`` (not split,
  ``use_parallel_embedding`` false); ``lm_head`` padded to a multiple of tp with zero rows, split on dim 0.

Deliberate departures, each because the source is block-FP8 and k2trt must not change a single weight byte:

- Block-FP8 weights keep their scales as ``<name>.weight_scale_inv`` (float32, HF's name and meaning: real = fp8 x
  scale of the 128x128 block), split and stacked exactly like their weight. TensorRT-LLM's legacy layers have no
  block-FP8 parameter (its ``FP8_BLOCK_SCALES`` lives in the PyTorch backend); k2trt's plugins read these.
- TensorRT-LLM's converter also writes ``attention.fused_q_proj`` = ``einsum(q_nope, k_nope)``: a product of two
  weights, not a source tensor, and not representable in block-FP8. It is left to the build stage.
- ``ln_f`` is written on the last stage only (the legacy converter writes it on every rank; only the last stage's
  model has the module).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from k2trt.checkpoint import SCALE_SUFFIX, expected_tensors
from k2trt.config import K2Config
from k2trt.errors import K2Error
from k2trt.mapping import Mapping
from k2trt.safetensors_io import ITEMSIZE

WEIGHTS = ("fp8_block", "bf16")
MODEL_DTYPE = "BF16"  # TRT-LLM checkpoint "dtype" (bfloat16); K2's unquantized tensors are bf16
ARCHITECTURE = "DeepseekV2ForCausalLM"  # the MODEL_MAP key of the legacy DeepSeek-V2/V3 model (no V3 entry there)


@dataclass(frozen=True)
class Rule:
    """One row of the naming table.

    ``{j}`` in ``target`` is the layer index within the pipeline stage (TensorRT-LLM numbers layers per stage),
    ``{l}`` in ``sources`` the global layer, ``{e}`` an expert.
    """

    target: str
    sources: tuple[str, ...]
    where: str
    """``first`` / ``last`` stage, every ``layer``, ``dense`` layers or ``moe`` layers."""
    split: str
    """``none``, ``heads_rows``, ``heads_cols``, ``tp_rows``, ``tp_cols``, ``vocab_rows``, ``experts_rows``,
    ``experts_cols`` (see :func:`_pieces`)."""
    fuse: str
    """``one`` source, ``concat_rows`` (sources joined on dim 0 after splitting), ``kv_b_regroup``."""
    store: str
    """``fp8`` (block-FP8 weight + scale, or dequantized with ``--weights bf16``), ``model`` (bf16), ``fp32``."""
    needs: str = ""
    """Only for configs with ``q_lora`` / ``no_q_lora`` / ``shared`` experts."""


_L = "transformer.layers.{j}."
_H = "model.layers.{l}."

LAYOUT: tuple[Rule, ...] = (
    # target                                   sources                                   where   split     fuse  store
    Rule("transformer.vocab_embedding.weight", ("model.embed_tokens.weight",), "first", "none", "one", "model"),
    Rule(_L + "input_layernorm.weight", (_H + "input_layernorm.weight",), "layer", "none", "one", "model"),
    Rule(_L + "attention.fused_a.weight",
         (_H + "self_attn.q_a_proj.weight", _H + "self_attn.kv_a_proj_with_mqa.weight"),
         "layer", "none", "concat_rows", "fp8", "q_lora"),
    Rule(_L + "attention.fused_a.weight", (_H + "self_attn.kv_a_proj_with_mqa.weight",),
         "layer", "none", "one", "fp8", "no_q_lora"),
    Rule(_L + "attention.q_a_layernorm.weight", (_H + "self_attn.q_a_layernorm.weight",),
         "layer", "none", "one", "model", "q_lora"),
    Rule(_L + "attention.kv_a_layernorm.weight", (_H + "self_attn.kv_a_layernorm.weight",),
         "layer", "none", "one", "model"),
    Rule(_L + "attention.q_b_proj.weight", (_H + "self_attn.q_b_proj.weight",),
         "layer", "heads_rows", "one", "fp8", "q_lora"),
    Rule(_L + "attention.q_b_proj.weight", (_H + "self_attn.q_proj.weight",),
         "layer", "heads_rows", "one", "fp8", "no_q_lora"),
    Rule(_L + "attention.kv_b_proj.weight", (_H + "self_attn.kv_b_proj.weight",),
         "layer", "heads_rows", "kv_b_regroup", "fp8"),
    Rule(_L + "attention.dense.weight", (_H + "self_attn.o_proj.weight",), "layer", "heads_cols", "one", "fp8"),
    Rule(_L + "post_layernorm.weight", (_H + "post_attention_layernorm.weight",), "layer", "none", "one", "model"),
    # dense MLP: GatedMLP's fc is the activated branch (gate_proj), gate the multiplier (up_proj)
    Rule(_L + "mlp.fc.weight", (_H + "mlp.gate_proj.weight",), "dense", "tp_rows", "one", "fp8"),
    Rule(_L + "mlp.gate.weight", (_H + "mlp.up_proj.weight",), "dense", "tp_rows", "one", "fp8"),
    Rule(_L + "mlp.proj.weight", (_H + "mlp.down_proj.weight",), "dense", "tp_cols", "one", "fp8"),
    # MoE: router and correction bias in float32 (TRT-LLM runs routing in fp32)
    Rule(_L + "mlp.router.weight", (_H + "mlp.gate.weight",), "moe", "none", "one", "fp32"),
    Rule(_L + "mlp.e_score_correction_bias", (_H + "mlp.gate.e_score_correction_bias",), "moe", "none", "one", "fp32"),
    Rule(_L + "mlp.fc.weight", (_H + "mlp.experts.{e}.up_proj.weight", _H + "mlp.experts.{e}.gate_proj.weight"),
         "moe", "experts_rows", "concat_rows", "fp8"),
    Rule(_L + "mlp.proj.weight", (_H + "mlp.experts.{e}.down_proj.weight",), "moe", "experts_cols", "one", "fp8"),
    Rule(_L + "mlp.shared_expert.fc.weight",
         (_H + "mlp.shared_experts.up_proj.weight", _H + "mlp.shared_experts.gate_proj.weight"),
         "moe", "tp_rows", "concat_rows", "fp8", "shared"),
    Rule(_L + "mlp.shared_expert.proj.weight", (_H + "mlp.shared_experts.down_proj.weight",),
         "moe", "tp_cols", "one", "fp8", "shared"),
    Rule("transformer.ln_f.weight", ("model.norm.weight",), "last", "none", "one", "model"),
    Rule("lm_head.weight", ("lm_head.weight",), "last", "vocab_rows", "one", "model"),
)


@dataclass(frozen=True)
class Piece:
    """Rows ``[rows)`` and columns ``[cols)`` of one source tensor; ``source None`` is that many rows of zeros."""

    source: str | None
    rows: tuple[int, int]
    cols: tuple[int, int] | None = None
    """None: every column (and the only choice for 1-D sources)."""

    @property
    def nrows(self) -> int:
        return self.rows[1] - self.rows[0]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a rank file: ``stack_s(cat_rows(pieces of slot s)))`` (one slot when not stacked)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    """safetensors dtype name: ``F8_E4M3``, ``F32`` or :data:`MODEL_DTYPE`."""
    read: str
    """``fp8`` (FP8 bytes as stored), ``dequant`` (FP8 x its scale -> dtype), ``cast`` (any float -> dtype)."""
    slots: tuple[tuple[Piece, ...], ...]
    stacked: bool
    rule: str
    """The table row's target pattern (for messages)."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    @property
    def sources(self) -> tuple[str, ...]:
        """HF tensors read to produce this one, in order (a dequantized weight also reads its scale)."""
        seen: dict[str, None] = {}
        for slot in self.slots:
            for p in slot:
                if p.source is not None:
                    seen[p.source] = None
                    if self.read == "dequant":
                        seen[p.source + SCALE_SUFFIX] = None
        return tuple(seen)


def pad_vocab(vocab_size: int, tp: int) -> int:
    """lm_head rows after padding to a multiple of tp (TensorRT-LLM ``pad_vocab_size``)."""
    return math.ceil(vocab_size / tp) * tp


@functools.lru_cache(maxsize=4)
def _source_shapes(config: K2Config) -> dict[str, tuple[int, ...]]:
    return {name: e.shape for name, e in expected_tensors(config).items()}


def _applies(rule: Rule, cfg: K2Config) -> bool:
    if rule.needs == "q_lora":
        return bool(cfg.q_lora_rank)
    if rule.needs == "no_q_lora":
        return not cfg.q_lora_rank
    if rule.needs == "shared":
        return cfg.n_shared_experts > 0
    return True


def divisibility_problems(config: K2Config, mapping: Mapping) -> list[str]:
    """Every way ``mapping`` fails to divide the model (empty when it divides)."""
    c, m = config, mapping
    out = []
    if m.pp > c.num_hidden_layers:
        out.append(f"pp ({m.pp}) exceeds the model's {c.num_hidden_layers} layers")
    if c.num_attention_heads % m.tp:
        out.append(f"tp ({m.tp}) does not divide the {c.num_attention_heads} attention heads")
    if c.num_moe_layers:
        if c.n_routed_experts % m.moe_ep:
            out.append(f"ep ({m.moe_ep}) does not divide the {c.n_routed_experts} routed experts")
        if c.moe_intermediate_size % m.moe_tp:
            out.append(f"moe_tp ({m.moe_tp}) does not divide the expert width {c.moe_intermediate_size}")
        if c.n_shared_experts and c.shared_intermediate_size % m.tp:
            out.append(f"tp ({m.tp}) does not divide the shared-expert width {c.shared_intermediate_size}")
    if c.first_k_dense_replace and c.intermediate_size % m.tp:
        out.append(f"tp ({m.tp}) does not divide the dense MLP width {c.intermediate_size}")
    return out


def _check_weights(config: K2Config, weights: str) -> None:
    if weights not in WEIGHTS:
        raise K2Error(f"--weights must be one of {list(WEIGHTS)}, got {weights!r}")
    if weights == "fp8_block" and config.fp8_block is None:
        raise K2Error("--weights fp8_block needs a block-FP8 checkpoint (config.json has no quantization_config); "
                      "use --weights bf16")


def rank_tensor_specs(config: K2Config, mapping: Mapping, rank: int = 0, *,
                      weights: str = "fp8_block") -> list[TensorSpec]:
    """Exactly the tensors of ``rank{rank}.safetensors``, in file order.

    Raises :class:`K2Error` listing every problem when ``mapping`` does not divide the model, or, with
    ``weights="fp8_block"``, when a split or fusion would cut a 128x128 FP8 block (named with the tensor, the rows
    or columns and the block size).
    """
    specs, problems = _build(config, mapping, rank, weights)
    if problems:
        raise K2Error(list(problems.values()))
    return specs


def check_mapping(config: K2Config, mapping: Mapping, *, weights: str = "fp8_block") -> list[str]:
    """Every problem of ``mapping`` over all ranks, one line per kind (empty when every rank can be written)."""
    _check_weights(config, weights)
    probs = divisibility_problems(config, mapping)
    if probs:
        return [f"mapping: {p}" for p in probs]
    seen: dict[str, str] = {}
    for r in mapping.ranks():
        for key, msg in _build(config, mapping, r, weights, first_expert_only=True)[1].items():
            seen.setdefault(key, msg)
    return list(seen.values())


def all_rank_specs(config: K2Config, mapping: Mapping, *, weights: str = "fp8_block") -> list[list[TensorSpec]]:
    """``rank_tensor_specs`` for every rank; raises with all problems of all ranks first."""
    problems = check_mapping(config, mapping, weights=weights)
    if problems:
        raise K2Error(problems)
    return [rank_tensor_specs(config, mapping, r, weights=weights) for r in mapping.ranks()]


def rank_weight_bytes(config: K2Config, mapping: Mapping, *, weights: str = "fp8_block") -> list[int]:
    """Bytes of tensor data in each rank file (the planner's per-GPU weight memory)."""
    return [sum(s.nbytes for s in specs) for specs in all_rank_specs(config, mapping, weights=weights)]


# ------------------------------------------------------------------------------------------- building


def _build(cfg: K2Config, m: Mapping, rank: int, weights: str,
           first_expert_only: bool = False) -> tuple[list[TensorSpec], dict[str, str]]:
    """(specs, problems keyed by kind); problems empty when the rank can be written.

    ``first_expert_only`` stacks one expert per rank: every expert is cut alike, so checking needs only one
    (K2 with moe_ep 1 has 384 x 60 x 3 expert pieces per rank).
    """
    _check_weights(cfg, weights)
    probs = divisibility_problems(cfg, m)
    if probs:
        return [], {p: f"mapping: {p}" for p in probs}
    m._check(rank)
    shapes = _source_shapes(cfg)
    layers = m.layers(rank, cfg.num_hidden_layers)
    ctx = _Ctx(cfg, m, rank, shapes)
    specs: list[TensorSpec] = []
    problems: dict[str, str] = {}  # kind -> first message
    layer_count: dict[str, int] = {}

    def emit(rule: Rule, layer: int | None) -> None:
        slots, stacked = _slots(rule, ctx, layer, first_expert_only)
        name = rule.target.format(j=layer - layers.start) if layer is not None else rule.target
        for spec in _specs_for(rule, name, slots, stacked, ctx, weights):
            specs.append(spec)
        if rule.store == "fp8" and weights == "fp8_block":
            for key, msg in _block_cuts(rule, name, slots, ctx):
                problems.setdefault(key, msg)
                layer_count[key] = layer_count.get(key, 0) + 1

    for rule in LAYOUT:
        if rule.where == "first" and m.is_first_stage(rank) and _applies(rule, cfg):
            emit(rule, None)
    for layer in layers:
        kind = "moe" if cfg.is_moe_layer(layer) else "dense"
        for rule in LAYOUT:
            if rule.where in ("layer", kind) and _applies(rule, cfg):
                emit(rule, layer)
    for rule in LAYOUT:
        if rule.where == "last" and m.is_last_stage(rank) and _applies(rule, cfg):
            emit(rule, None)
    return specs, {k: msg + (f" (and the same in {layer_count[k] - 1} more layer(s))" if layer_count[k] > 1 else "")
                   for k, msg in problems.items()}


@dataclass(frozen=True)
class _Ctx:
    cfg: K2Config
    m: Mapping
    rank: int
    shapes: dict


def _slots(rule: Rule, ctx: _Ctx, layer: int | None,
           first_expert_only: bool = False) -> tuple[tuple[tuple[Piece, ...], ...], bool]:
    cfg, m, r = ctx.cfg, ctx.m, ctx.rank
    if rule.split.startswith("experts"):
        slots = []
        experts = m.experts(r, cfg.n_routed_experts)
        for e in experts[:1] if first_expert_only else experts:
            pieces: list[Piece] = []
            for src in rule.sources:
                pieces += _pieces(rule, src.format(l=layer, e=e), ctx)
            slots.append(tuple(pieces))
        return tuple(slots), True
    pieces = []
    for src in rule.sources:
        pieces += _pieces(rule, src.format(l=layer) if layer is not None else src, ctx)
    return (tuple(pieces),), False


def _pieces(rule: Rule, src: str, ctx: _Ctx) -> list[Piece]:
    """The pieces of one source this rank takes, by the rule's split (and kv_b's regrouping)."""
    cfg, m, r = ctx.cfg, ctx.m, ctx.rank
    shape = ctx.shapes[src]
    rows = shape[0]
    cols = shape[1] if len(shape) > 1 else None
    s = rule.split
    if s == "none":
        return [Piece(src, (0, rows))]
    if s in ("heads_rows", "heads_cols"):
        n = cfg.num_attention_heads
        heads = m.heads(r, n)
        if s == "heads_cols":
            per = cols // n
            return [Piece(src, (0, rows), (heads.start * per, heads.stop * per))]
        per = rows // n
        if rule.fuse == "kv_b_regroup":  # [k_nope of each local head] then [v of each local head]
            nope = cfg.qk_nope_head_dim
            return ([Piece(src, (h * per, h * per + nope)) for h in heads]
                    + [Piece(src, (h * per + nope, (h + 1) * per)) for h in heads])
        return [Piece(src, (heads.start * per, heads.stop * per))]
    if s == "tp_rows":
        per, t = rows // m.tp, m.tp_rank(r)
        return [Piece(src, (t * per, (t + 1) * per))]
    if s == "tp_cols":
        per, t = cols // m.tp, m.tp_rank(r)
        return [Piece(src, (0, rows), (t * per, (t + 1) * per))]
    if s == "vocab_rows":
        per, t = pad_vocab(rows, m.tp) // m.tp, m.tp_rank(r)
        start, stop = t * per, (t + 1) * per
        out = [Piece(src, (start, min(stop, rows)))] if start < rows else []
        if stop > rows:
            out.append(Piece(None, (0, stop - max(start, rows))))
        return out
    if s == "experts_rows":
        w = m.expert_width(r, rows)
        return [Piece(src, (w.start, w.stop))]
    if s == "experts_cols":
        w = m.expert_width(r, cols)
        return [Piece(src, (0, rows), (w.start, w.stop))]
    raise AssertionError(f"unknown split {s!r} in LAYOUT")


def _shape_of(slots, stacked: bool, ctx: _Ctx, block: tuple[int, int] | None = None) -> tuple[int, ...]:
    first = slots[0]
    nrows = sum(p.nrows for p in first)
    src = next(p.source for p in first if p.source is not None)
    sshape = ctx.shapes[src]
    if len(sshape) == 1:
        inner: tuple[int, ...] = (nrows,)
    else:
        c = first[0].cols
        inner = (nrows, (c[1] - c[0]) if c else sshape[1])
    return ((len(slots),) + inner) if stacked else inner


def _specs_for(rule: Rule, name: str, slots, stacked: bool, ctx: _Ctx, weights: str) -> list[TensorSpec]:
    cfg = ctx.cfg
    if rule.store == "fp32":
        return [TensorSpec(name, _shape_of(slots, stacked, ctx), "F32", "cast", slots, stacked, rule.target)]
    if rule.store == "model" or cfg.fp8_block is None:
        return [TensorSpec(name, _shape_of(slots, stacked, ctx), MODEL_DTYPE, "cast", slots, stacked, rule.target)]
    if weights == "bf16":
        return [TensorSpec(name, _shape_of(slots, stacked, ctx), MODEL_DTYPE, "dequant", slots, stacked, rule.target)]
    bo, bi = cfg.fp8_block
    weight = TensorSpec(name, _shape_of(slots, stacked, ctx), "F8_E4M3", "fp8", slots, stacked, rule.target)
    scale_slots = tuple(
        tuple(Piece(p.source + SCALE_SUFFIX, (p.rows[0] // bo, -(-p.rows[1] // bo)),
                    (p.cols[0] // bi, -(-p.cols[1] // bi)) if p.cols else None) for p in slot)
        for slot in slots
    )
    scale_shapes = {}
    for slot in scale_slots:
        for p in slot:
            w = ctx.shapes[p.source[: -len(SCALE_SUFFIX)]]
            scale_shapes[p.source] = (-(-w[0] // bo), -(-w[1] // bi))
    sctx = _Ctx(cfg, ctx.m, ctx.rank, scale_shapes)
    scale = TensorSpec(name + SCALE_SUFFIX, _shape_of(scale_slots, stacked, sctx), "F32", "cast",
                       scale_slots, stacked, rule.target + SCALE_SUFFIX)
    return [weight, scale]


def _block_cuts(rule: Rule, name: str, slots, ctx: _Ctx) -> list[tuple[str, str]]:
    """(kind, message) for each piece of an FP8 weight that does not start and end on block boundaries.

    A partial edge block may only end a slot (it would misalign whatever followed it). The kind is the table row
    and source without layer or rank numbers, so a cut repeated in every layer and rank is reported once.
    """
    bo, bi = ctx.cfg.fp8_block
    out = []
    for slot in slots[:1]:  # every expert of a stack is cut the same way
        for i, p in enumerate(slot):
            rows, cols = ctx.shapes[p.source][:2]
            last = i == len(slot) - 1
            bad_rows = p.rows[0] % bo or (p.rows[1] % bo and not (p.rows[1] == rows and last))
            bad_cols = p.cols is not None and (p.cols[0] % bi or (p.cols[1] % bi and p.cols[1] != cols))
            if not (bad_rows or bad_cols):
                continue
            key = f"{rule.target}|{rule.sources[i % len(rule.sources)]}|{'rows' if bad_rows else 'cols'}"
            what = (f"rows [{p.rows[0]}, {p.rows[1]})" if bad_rows else f"columns [{p.cols[0]}, {p.cols[1]})")
            out.append((key,
                f"--weights fp8_block: {name} takes {what} of {p.source} {list(ctx.shapes[p.source])}, which cuts its "
                f"{bo}x{bi} FP8 blocks ({_why(rule, ctx, p, last)}); pick a mapping whose split falls on multiples of "
                f"{bo if bad_rows else bi}, or use --weights bf16"))
    return out


def _why(rule: Rule, ctx: _Ctx, p: Piece, last: bool) -> str:
    cfg, m = ctx.cfg, ctx.m
    n = cfg.num_attention_heads
    if rule.fuse == "kv_b_regroup":
        return f"regrouping into [k_nope; v] moves {cfg.qk_nope_head_dim}- and {cfg.v_head_dim}-row pieces per head"
    if rule.split == "heads_rows":
        per = ctx.shapes[p.source][0] // n
        return f"tp {m.tp} leaves {n // m.tp} head(s) x {per} rows = {p.nrows} rows per rank"
    if rule.split == "heads_cols":
        per = ctx.shapes[p.source][1] // n
        return f"tp {m.tp} leaves {n // m.tp} head(s) x {per} columns per rank"
    if rule.split.startswith("experts"):
        return f"moe_tp {m.moe_tp} leaves {cfg.moe_intermediate_size // m.moe_tp} of each expert's " \
               f"{cfg.moe_intermediate_size}"
    if rule.split == "tp_rows":
        return f"tp {m.tp} leaves {p.nrows} of its {ctx.shapes[p.source][0]} rows per rank"
    if rule.split == "tp_cols":
        return f"tp {m.tp} leaves {p.cols[1] - p.cols[0]} of its {ctx.shapes[p.source][1]} columns per rank"
    if rule.fuse == "concat_rows" and not last:
        return f"{rule.target.rsplit('.', 2)[-2]} joins it to the next tensor mid-block"
    return "split"


# ----------------------------------------------------------------------------------------- config.json


def trtllm_config(config: K2Config, mapping: Mapping, *, weights: str = "fp8_block") -> dict:
    """The TensorRT-LLM checkpoint ``config.json`` (``DeepSeekV2Config.from_hugging_face`` fields + mapping)."""
    _check_weights(config, weights)
    c, m = config, mapping
    rs = c.rope_scaling
    fp8 = weights == "fp8_block"
    return {
        "architecture": ARCHITECTURE,
        "dtype": "bfloat16",
        "logits_dtype": "float32",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": 1,  # MLA caches one latent "head" (DeepSeekV2Config.from_hugging_face)
        "head_size": c.kv_lora_rank + c.qk_rope_head_dim,
        "hidden_act": "swiglu",
        "intermediate_size": c.intermediate_size,
        "norm_epsilon": c.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": c.max_position_embeddings,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "share_embedding_table": False,
        "mapping": m.to_trtllm(),
        "quantization": {
            "quant_algo": "FP8_BLOCK_SCALES" if fp8 else None,
            "kv_cache_quant_algo": None,
            "exclude_modules": ["lm_head", "transformer.vocab_embedding", "*.mlp.router"] if fp8 else None,
        },
        "rotary_base": c.rope_theta,
        "rotary_scaling": None if rs is None else {
            "beta_fast": rs.beta_fast, "beta_slow": rs.beta_slow, "factor": rs.factor, "mscale": rs.mscale,
            "mscale_all_dim": rs.mscale_all_dim,
            "original_max_position_embeddings": rs.original_max_position_embeddings, "type": "yarn",
        },
        "kv_lora_rank": c.kv_lora_rank,
        "q_lora_rank": c.q_lora_rank,
        "qk_nope_head_dim": c.qk_nope_head_dim,
        "qk_rope_head_dim": c.qk_rope_head_dim,
        "v_head_dim": c.v_head_dim,
        "first_k_dense_replace": c.first_k_dense_replace,
        "moe_layer_freq": c.moe_layer_freq,
        "moe_inter_size": c.moe_intermediate_size,
        "topk_method": c.topk_method,
        "scoring_func": c.scoring_func,  # the 1.2.x source passes it as 'coring_func' (sic); nothing reads either
        "norm_topk_prob": c.norm_topk_prob,
        "moe": {  # layers/moe.py MoeConfig.to_dict
            "num_experts": c.n_routed_experts,
            "shared_expert_intermediate_size": c.shared_intermediate_size,
            "top_k": c.num_experts_per_tok,
            "normalization_mode": 3,  # ExpertScaleNormalizationMode.DEVICE_LIMITED, what config.py picks for noaux_tc
            "sparse_mixer_epsilon": 0.01,
            "tp_mode": 0,
            "device_limited_n_group": c.n_group,
            "device_limited_topk_group": c.topk_group,
            "device_limited_routed_scaling_factor": c.routed_scaling_factor,
        },
        # Flat MoE fields (DESIGN.md's names) for k2trt's build and plugins; TRT-LLM keeps unknown keys as attributes.
        "moe_num_experts": c.n_routed_experts,
        "moe_top_k": c.num_experts_per_tok,
        "moe_n_group": c.n_group,
        "moe_topk_group": c.topk_group,
        "moe_routed_scaling_factor": c.routed_scaling_factor,
        "moe_routing_method": "DeepSeekV3",  # sigmoid scores + e_score_correction_bias top-k, renormalised, scaled
        "k2trt": {
            "weights": weights,
            "weight_block_size": list(c.fp8_block) if fp8 else None,
            "scale_suffix": SCALE_SUFFIX if fp8 else None,
            "vocab_size_padded": pad_vocab(c.vocab_size, m.tp),
            "source_model_type": c.model_type,
        },
    }
