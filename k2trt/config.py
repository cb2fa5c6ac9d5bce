"""Kimi-K2 / DeepSeek-V3 model configuration, read 1:1 from a Hugging Face ``config.json``.

Field names are the HF ones so that a reader can hold this file next to ``config.json``. Derived sizes are
properties. Construction validates everything the rest of k2trt relies on and raises :class:`ConfigError`
naming the field.

Worked figures for the real Kimi-K2-Instruct config (``../shared/kimi-k2-reference/config.json``):

- ``total_weights`` 1,026,408,232,448: every weight matrix, norm, router and bias, embedding and lm_head.
- ``total_params`` 1,026,470,727,640 (1.0265e12): the above plus the 62,495,192 float32 ``weight_scale_inv``
  elements the block-FP8 checkpoint stores. The checkpoint's own count, 1,026,470,731,056, is 3,416 more:
  that is 56 per layer, the non-persistent ``rotary_emb.inv_freq`` buffers it also carries (k2trt skips them).
- ``activated_params_per_token`` 32,861,493,760 (32.9e9): 8 routed + 1 shared expert per MoE layer, all of
  attention, the dense layer, routers, norms, **both** the input embedding and lm_head. Without the embedding
  (a lookup, not a matmul) it is 31.69e9; Moonshot publishes 32.6B.
- ``kv_cache_bytes_per_token()`` 70,272: 61 layers x (512 latent + 64 rope key) x 2 bytes (bf16).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2trt.errors import ConfigError

SUPPORTED_ARCHITECTURES = ("DeepseekV3ForCausalLM",)
SUPPORTED_MODEL_TYPES = ("kimi_k2", "deepseek_v3")


@dataclass(frozen=True)
class RopeScaling:
    """``rope_scaling`` of a yarn model (DeepSeek-V3 / K2)."""

    factor: float
    """Context extension factor (K2: 32)."""
    original_max_position_embeddings: int
    """Pre-training context (K2: 4096)."""
    beta_fast: float = 32.0
    """Yarn ramp boundary in rotations, fast side (K2: 1)."""
    beta_slow: float = 1.0
    """Yarn ramp boundary in rotations, slow side (K2: 1)."""
    mscale: float = 1.0
    """Numerator of the cos/sin attention factor."""
    mscale_all_dim: float = 0.0
    """Drives the softmax scale: scale *= yarn_mscale(factor, mscale_all_dim)^2 (as transformers)."""
    type: str = "yarn"
    """Only ``yarn`` is supported (DeepSeek-V3 and K2 use it)."""


@dataclass(frozen=True)
class QuantizationConfig:
    """``quantization_config`` of a block-FP8 checkpoint."""

    quant_method: str
    """``fp8``."""
    fmt: str
    """``e4m3`` (float8_e4m3fn)."""
    weight_block_size: tuple[int, int]
    """Scale block ``[out, in]``; K2: (128, 128)."""
    activation_scheme: str
    """``dynamic``: activations are quantized per token per 128-channel group at run time."""


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """Yarn's attention magnitude correction (DeepSeek-V3 ``yarn_get_mscale``)."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


@dataclass(frozen=True)
class K2Config:
    """The architecture of a Kimi-K2 / DeepSeek-V3 checkpoint; fields are HF ``config.json`` keys."""

    vocab_size: int
    """Rows of embed_tokens and lm_head (K2: 163,840 = 163,584 BPE + 256 special)."""
    hidden_size: int
    """Model width (K2: 7168)."""
    intermediate_size: int
    """Width of the dense MLP in the first ``first_k_dense_replace`` layers (K2: 18432)."""
    moe_intermediate_size: int
    """Width of each routed expert and of each shared expert (K2: 2048)."""
    num_hidden_layers: int
    """Decoder layers (K2: 61)."""
    num_attention_heads: int
    """Attention heads (K2: 64)."""
    num_key_value_heads: int
    """Must equal ``num_attention_heads``: MLA expands one latent into every head."""
    n_routed_experts: int
    """Routed experts per MoE layer (K2: 384)."""
    num_experts_per_tok: int
    """Routed experts chosen per token (K2: 8)."""
    n_shared_experts: int
    """Always-on experts per MoE layer (K2: 1); fused into one MLP of width n_shared * moe_intermediate."""
    n_group: int
    """Expert groups for group-limited routing (K2: 1, DeepSeek-V3: 8)."""
    topk_group: int
    """Groups a token may route into (K2: 1, DeepSeek-V3: 4)."""
    routed_scaling_factor: float
    """Multiplier on the renormalised routing weights (K2: 2.827)."""
    norm_topk_prob: bool
    """Renormalise the chosen experts' scores to sum to one."""
    scoring_func: str
    """``sigmoid`` (the only one DeepSeek-V3/K2 use)."""
    topk_method: str
    """``noaux_tc``: top-k on scores + e_score_correction_bias, weights from the raw scores."""
    first_k_dense_replace: int
    """Layers [0, k) use the dense MLP, the rest MoE (K2: 1)."""
    q_lora_rank: int | None
    """Rank of the query compression (K2: 1536); None means a plain q_proj (DeepSeek-V2-Lite)."""
    kv_lora_rank: int
    """Width of the KV latent that MLA caches (K2: 512)."""
    qk_nope_head_dim: int
    """Per-head query/key dims without RoPE (K2: 128)."""
    qk_rope_head_dim: int
    """Per-head query dims with RoPE, and the width of the one shared rope key (K2: 64)."""
    v_head_dim: int
    """Per-head value dims (K2: 128)."""
    rope_theta: float
    """RoPE base (K2: 50000)."""
    rms_norm_eps: float
    """RMSNorm epsilon (K2: 1e-6)."""
    max_position_embeddings: int
    """Longest context the config declares (K2: 131072; the 0905 release: 262144)."""
    rope_scaling: RopeScaling | None = None
    """Yarn parameters, or None for plain RoPE."""
    quantization_config: QuantizationConfig | None = None
    """Block-FP8 description, or None for an unquantized (bf16/fp32) checkpoint."""
    model_type: str = "kimi_k2"
    """``kimi_k2`` or ``deepseek_v3``."""
    architectures: tuple[str, ...] = ("DeepseekV3ForCausalLM",)
    """HF model class; only DeepseekV3ForCausalLM."""
    hidden_act: str = "silu"
    """Activation of the SwiGLU MLPs; only ``silu``."""
    moe_layer_freq: int = 1
    """Every layer after the dense ones is MoE; only 1 is supported."""
    num_nextn_predict_layers: int = 0
    """MTP layers stored after the decoder layers (K2: 0, DeepSeek-V3: 1); not used for inference here."""
    tie_word_embeddings: bool = False
    """K2 has an untied lm_head; tied embeddings are refused."""
    attention_bias: bool = False
    """Biases on attention projections; K2 has none and none are supported."""
    bos_token_id: int | None = None
    """``[BOS]`` id (K2: 163584)."""
    eos_token_id: int | None = None
    """``[EOS]`` id (K2: 163585)."""
    torch_dtype: str = "bfloat16"
    """Dtype of the unquantized tensors."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Keys of config.json that k2trt does not interpret (kept so a written config round-trips)."""

    def __post_init__(self) -> None:
        _validate(self)

    # ----------------------------------------------------------------------------------------- reading

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config.json") -> K2Config:
        """Build from the parsed JSON of a HF config; ``source`` names the file in error messages."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        archs = raw.get("architectures")
        if archs is not None:
            if not isinstance(archs, list) or not any(a in SUPPORTED_ARCHITECTURES for a in archs):
                raise ConfigError(
                    f"{source}: field 'architectures' is {archs!r}; k2trt supports {list(SUPPORTED_ARCHITECTURES)}"
                )
        mt = raw.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: field 'model_type' is {mt!r}; k2trt supports {list(SUPPORTED_MODEL_TYPES)}"
            )
        raw = _normalise_transformers_v5(raw)
        kwargs: dict[str, Any] = {}
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        for name, f in known.items():
            if name in raw:
                kwargs[name] = raw[name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required field '{name}'")
        kwargs["architectures"] = tuple(archs) if archs else SUPPORTED_ARCHITECTURES
        kwargs["rope_scaling"] = _read_rope_scaling(raw.get("rope_scaling"), source)
        kwargs["quantization_config"] = _read_quant(raw.get("quantization_config"), source)
        for name in ("eos_token_id", "bos_token_id"):
            if isinstance(kwargs.get(name), list):  # some configs list several stop ids; the first is canonical
                kwargs[name] = kwargs[name][0] if kwargs[name] else None
        kwargs["extra"] = {k: v for k, v in raw.items() if k not in known}
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError([f"{source}: {p}" for p in e.problems]) from None

    @classmethod
    def from_file(cls, path: str | Path) -> K2Config:
        """Read ``config.json`` (or the ``config.json`` inside a directory)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise ConfigError(f"{p}: no such file")
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        return cls.from_dict(raw, source=str(p))

    def replace(self, **overrides: Any) -> K2Config:
        """A copy with fields overridden by their HF names (dicts for the nested configs); re-validated."""
        raw = self.to_hf_dict()
        unknown = [k for k in overrides if k not in raw and k not in {f.name for f in dataclasses.fields(self)}]
        if unknown:
            raise ConfigError(f"override names unknown field(s) {unknown}")
        raw.update(overrides)
        return K2Config.from_dict(raw, source="overrides")

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` object for this config (what ``synth`` writes)."""
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if isinstance(v, RopeScaling | QuantizationConfig):
                v = dataclasses.asdict(v)
                if "weight_block_size" in v:
                    v["weight_block_size"] = list(v["weight_block_size"])
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        if out["quantization_config"] is None:
            del out["quantization_config"]
        return out

    # ------------------------------------------------------------------------------------ derived sizes

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width: nope + rope (K2: 192)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_a_out(self) -> int:
        """Rows of ``kv_a_proj_with_mqa``: latent + rope key (K2: 576)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace

    @property
    def shared_intermediate_size(self) -> int:
        """Width of the fused shared-expert MLP."""
        return self.moe_intermediate_size * self.n_shared_experts

    @property
    def fp8_block(self) -> tuple[int, int] | None:
        """The weight scale block ``(out, in)`` when the checkpoint is block-FP8, else None."""
        return self.quantization_config.weight_block_size if self.quantization_config else None

    @property
    def softmax_scale(self) -> float:
        """Attention logit scale: qk_head_dim^-0.5, times yarn's mscale^2 (mscale_all_dim), as transformers."""
        scale = self.qk_head_dim**-0.5
        rs = self.rope_scaling
        if rs is not None and rs.mscale_all_dim:
            m = yarn_mscale(rs.factor, rs.mscale_all_dim)
            scale *= m * m
        return scale

    @property
    def rope_attention_factor(self) -> float:
        """Yarn's factor on cos/sin: mscale(factor, mscale) / mscale(factor, mscale_all_dim) (K2: 1.0)."""
        rs = self.rope_scaling
        if rs is None:
            return 1.0
        if rs.mscale and rs.mscale_all_dim:
            return yarn_mscale(rs.factor, rs.mscale) / yarn_mscale(rs.factor, rs.mscale_all_dim)
        return yarn_mscale(rs.factor)

    @property
    def kv_cache_elems_per_token(self) -> int:
        """Values MLA must cache per token over all layers: latent + rope key (K2: 35,136)."""
        return self.num_hidden_layers * self.kv_a_out

    def kv_cache_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Bytes of the MLA cache per token (K2 bf16: 70,272; FP8: 35,136)."""
        return self.kv_cache_elems_per_token * dtype_bytes

    def full_kv_cache_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """What a per-head K and V cache would take instead (K2 bf16: 2.5 MB): the MLA saving's baseline."""
        per_layer = self.num_attention_heads * (self.qk_head_dim + self.v_head_dim)
        return self.num_hidden_layers * per_layer * dtype_bytes

    # ----------------------------------------------------------------------------------- parameter counts

    @property
    def attention_weights_per_layer(self) -> int:
        h, n = self.hidden_size, self.num_attention_heads
        q = (
            h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * n * self.qk_head_dim
            if self.q_lora_rank
            else h * n * self.qk_head_dim
        )
        kv = h * self.kv_a_out + self.kv_lora_rank + self.kv_lora_rank * n * (self.qk_nope_head_dim + self.v_head_dim)
        return q + kv + n * self.v_head_dim * h

    @property
    def expert_weights(self) -> int:
        """One routed expert: gate, up and down."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def router_weights(self) -> int:
        """Router matrix plus e_score_correction_bias."""
        return self.n_routed_experts * self.hidden_size + self.n_routed_experts

    def _weights(self, *, routed_experts: int, include_embedding: bool) -> int:
        h = self.hidden_size
        per_layer_common = self.attention_weights_per_layer + 2 * h  # + input / post-attention norms
        dense_mlp = 3 * h * self.intermediate_size
        moe = routed_experts * self.expert_weights + 3 * h * self.shared_intermediate_size + self.router_weights
        total = self.num_hidden_layers * per_layer_common
        total += self.first_k_dense_replace * dense_mlp + self.num_moe_layers * moe
        total += h  # final norm
        total += self.vocab_size * h  # lm_head
        if include_embedding:
            total += self.vocab_size * h
        return total

    @property
    def total_weights(self) -> int:
        """Every weight, norm, router and bias (no FP8 scales)."""
        return self._weights(routed_experts=self.n_routed_experts, include_embedding=True)

    @property
    def total_scale_elements(self) -> int:
        """float32 ``weight_scale_inv`` elements of a block-FP8 checkpoint (0 when unquantized)."""
        if self.fp8_block is None:
            return 0
        return sum(_blocks(shape, self.fp8_block) for _, shape in self.fp8_weight_shapes())

    @property
    def total_params(self) -> int:
        """Stored parameters: weights plus FP8 scales (K2: 1,026,470,727,640, i.e. 1.0265e12)."""
        return self.total_weights + self.total_scale_elements

    @property
    def activated_params_per_token(self) -> int:
        """Weights one token touches: top-k routed + shared experts, embedding and lm_head included."""
        return self._weights(routed_experts=self.num_experts_per_tok, include_embedding=True)

    def fp8_weight_shapes(self) -> list[tuple[str, tuple[int, int]]]:
        """(HF name, [out, in]) of every weight a block-FP8 checkpoint stores in FP8, in layer order."""
        h, n = self.hidden_size, self.num_attention_heads
        out: list[tuple[str, tuple[int, int]]] = []
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}"
            if self.q_lora_rank:
                out.append((f"{p}.self_attn.q_a_proj.weight", (self.q_lora_rank, h)))
                out.append((f"{p}.self_attn.q_b_proj.weight", (n * self.qk_head_dim, self.q_lora_rank)))
            else:
                out.append((f"{p}.self_attn.q_proj.weight", (n * self.qk_head_dim, h)))
            out.append((f"{p}.self_attn.kv_a_proj_with_mqa.weight", (self.kv_a_out, h)))
            kvb = (n * (self.qk_nope_head_dim + self.v_head_dim), self.kv_lora_rank)
            out.append((f"{p}.self_attn.kv_b_proj.weight", kvb))
            out.append((f"{p}.self_attn.o_proj.weight", (h, n * self.v_head_dim)))
            if not self.is_moe_layer(i):
                out.extend(_mlp_shapes(f"{p}.mlp", h, self.intermediate_size))
                continue
            for e in range(self.n_routed_experts):
                out.extend(_mlp_shapes(f"{p}.mlp.experts.{e}", h, self.moe_intermediate_size))
            out.extend(_mlp_shapes(f"{p}.mlp.shared_experts", h, self.shared_intermediate_size))
        return out


def _mlp_shapes(prefix: str, hidden: int, inter: int) -> list[tuple[str, tuple[int, int]]]:
    return [
        (f"{prefix}.gate_proj.weight", (inter, hidden)),
        (f"{prefix}.up_proj.weight", (inter, hidden)),
        (f"{prefix}.down_proj.weight", (hidden, inter)),
    ]


def _blocks(shape: tuple[int, int], block: tuple[int, int]) -> int:
    return math.ceil(shape[0] / block[0]) * math.ceil(shape[1] / block[1])


def _normalise_transformers_v5(raw: dict[str, Any]) -> dict[str, Any]:
    """Map transformers >= 5's spelling back to the checkpoint's: ``rope_parameters`` holds ``rope_theta`` and the
    yarn fields (``rope_type`` "default" means no scaling), ``dtype`` replaces ``torch_dtype``."""
    rp = raw.get("rope_parameters")
    if not isinstance(rp, dict) or "rope_theta" in raw:
        return raw
    raw = dict(raw)
    rest = {k: v for k, v in rp.items() if k != "rope_theta"}
    raw["rope_theta"] = rp.get("rope_theta")
    if raw.get("rope_scaling") is None and rest.get("rope_type", rest.get("type")) not in (None, "default"):
        raw["rope_scaling"] = rest
    if "dtype" in raw and "torch_dtype" not in raw:
        raw["torch_dtype"] = raw["dtype"]
    return raw


def _read_rope_scaling(raw: Any, source: str) -> RopeScaling | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: field 'rope_scaling' must be an object or null, got {raw!r}")
    kind = raw.get("type", raw.get("rope_type"))
    if kind != "yarn":
        raise ConfigError(f"{source}: field 'rope_scaling.type' is {kind!r}; only 'yarn' is supported")
    for req in ("factor", "original_max_position_embeddings"):
        if req not in raw:
            raise ConfigError(f"{source}: missing required field 'rope_scaling.{req}'")
    names = {f.name for f in dataclasses.fields(RopeScaling)} - {"type"}
    kwargs = {k: raw[k] for k in names if k in raw and raw[k] is not None}
    return RopeScaling(**kwargs)


def _read_quant(raw: Any, source: str) -> QuantizationConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: field 'quantization_config' must be an object, got {raw!r}")
    for req in ("quant_method", "fmt", "weight_block_size", "activation_scheme"):
        if req not in raw:
            raise ConfigError(f"{source}: missing required field 'quantization_config.{req}'")
    bs = raw["weight_block_size"]
    if not (isinstance(bs, list | tuple) and len(bs) == 2 and all(isinstance(b, int) and b > 0 for b in bs)):
        raise ConfigError(f"{source}: field 'quantization_config.weight_block_size' must be two positive ints, got {bs!r}")
    return QuantizationConfig(
        quant_method=raw["quant_method"], fmt=raw["fmt"], weight_block_size=(bs[0], bs[1]),
        activation_scheme=raw["activation_scheme"],
    )


def _validate(c: K2Config) -> None:
    """Every invariant the rest of k2trt relies on; raises ConfigError listing each broken field."""
    problems: list[str] = []
    positive = (
        "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "n_routed_experts", "num_experts_per_tok", "n_group",
        "topk_group", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
        "max_position_embeddings",
    )
    for name in positive:
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            problems.append(f"field '{name}' must be a positive integer, got {v!r}")
    for name in ("n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"):
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            problems.append(f"field '{name}' must be a non-negative integer, got {v!r}")
    if c.q_lora_rank is not None and (not isinstance(c.q_lora_rank, int) or c.q_lora_rank <= 0):
        problems.append(f"field 'q_lora_rank' must be a positive integer or null, got {c.q_lora_rank!r}")
    for name in ("rope_theta", "rms_norm_eps", "routed_scaling_factor"):
        v = getattr(c, name)
        if not isinstance(v, int | float) or isinstance(v, bool) or v <= 0:
            problems.append(f"field '{name}' must be a positive number, got {v!r}")
    if problems:  # the relations below assume well-typed fields
        raise ConfigError(problems)

    if c.model_type not in SUPPORTED_MODEL_TYPES:
        problems.append(f"field 'model_type' is {c.model_type!r}; k2trt supports {list(SUPPORTED_MODEL_TYPES)}")
    if c.num_key_value_heads != c.num_attention_heads:
        problems.append(
            f"field 'num_key_value_heads' ({c.num_key_value_heads}) must equal 'num_attention_heads' "
            f"({c.num_attention_heads}) for MLA"
        )
    if c.qk_rope_head_dim % 2:
        problems.append(f"field 'qk_rope_head_dim' ({c.qk_rope_head_dim}) must be even (RoPE rotates pairs)")
    if c.n_routed_experts % c.n_group:
        problems.append(f"field 'n_group' ({c.n_group}) must divide 'n_routed_experts' ({c.n_routed_experts})")
    elif c.topk_group > c.n_group:
        problems.append(f"field 'topk_group' ({c.topk_group}) exceeds 'n_group' ({c.n_group})")
    elif c.num_experts_per_tok > c.topk_group * (c.n_routed_experts // c.n_group):
        problems.append(
            f"field 'num_experts_per_tok' ({c.num_experts_per_tok}) exceeds the experts in 'topk_group' "
            f"({c.topk_group}) groups of {c.n_routed_experts // c.n_group}"
        )
    if c.n_group > 1 and c.n_routed_experts // c.n_group < 2:
        problems.append("group-limited routing scores a group by its top-2 experts: groups need >= 2 experts")
    if c.first_k_dense_replace > c.num_hidden_layers:
        problems.append(
            f"field 'first_k_dense_replace' ({c.first_k_dense_replace}) exceeds 'num_hidden_layers' "
            f"({c.num_hidden_layers})"
        )
    if c.scoring_func != "sigmoid":
        problems.append(f"field 'scoring_func' is {c.scoring_func!r}; only 'sigmoid' (DeepSeek-V3/K2) is supported")
    if c.topk_method != "noaux_tc":
        problems.append(f"field 'topk_method' is {c.topk_method!r}; only 'noaux_tc' (DeepSeek-V3/K2) is supported")
    if c.hidden_act != "silu":
        problems.append(f"field 'hidden_act' is {c.hidden_act!r}; only 'silu' is supported")
    if c.moe_layer_freq != 1:
        problems.append(f"field 'moe_layer_freq' is {c.moe_layer_freq!r}; only 1 is supported")
    if c.tie_word_embeddings:
        problems.append("field 'tie_word_embeddings' is true; K2/DeepSeek-V3 have an untied lm_head")
    if c.attention_bias:
        problems.append("field 'attention_bias' is true; K2/DeepSeek-V3 attention has no biases")
    q = c.quantization_config
    if q is not None:
        if q.quant_method != "fp8":
            problems.append(f"field 'quantization_config.quant_method' is {q.quant_method!r}; only 'fp8'")
        if q.fmt != "e4m3":
            problems.append(f"field 'quantization_config.fmt' is {q.fmt!r}; only 'e4m3'")
        if q.activation_scheme != "dynamic":
            problems.append(
                f"field 'quantization_config.activation_scheme' is {q.activation_scheme!r}; only 'dynamic'"
            )
    rs = c.rope_scaling
    if rs is not None:
        if rs.factor < 1:
            problems.append(f"field 'rope_scaling.factor' ({rs.factor}) must be >= 1")
        if rs.original_max_position_embeddings <= 0:
            problems.append("field 'rope_scaling.original_max_position_embeddings' must be positive")
        if rs.beta_fast <= 0 or rs.beta_slow <= 0:
            problems.append("fields 'rope_scaling.beta_fast' and 'beta_slow' must be positive")
    if problems:
        raise ConfigError(problems)
