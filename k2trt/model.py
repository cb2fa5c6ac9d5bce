"""The reference Kimi-K2 / DeepSeek-V3 model: plain PyTorch, one file, everything faster is checked against it.

Modules are named after the DeepSeek-V3 paper (``MLA``, ``Gate``, ``MoE``, ``Block``); their *attributes* carry
the Hugging Face checkpoint names (``self_attn.q_a_proj``, ``mlp.experts.3.up_proj``, ...) so that loading is a
name-for-name copy: ``model.state_dict()`` keys are the checkpoint's names without the ``model.`` prefix.

MLA has two paths behind one switch, ``attn_impl``:

- ``naive``: expand the cached latent through ``kv_b_proj`` into per-head K and V, then ordinary attention.
- ``absorb``: fold ``kv_b_proj`` into the query (``W_UK``) and the output (``W_UV``) and attend in the
  512-wide latent space directly (DeepSeek-V3 ``inference/model.py`` ``attn_impl="absorb"``).

Both cache the same thing per token per layer: the normalised latent ``[kv_lora_rank]`` and the rotated rope key
``[qk_rope_head_dim]`` (576 values for K2), the physical minimum of MLA.

RoPE follows DeepSeek-V3: the rope dims are rotated in interleaved pairs ``(x0, x1), (x2, x3), ...``
(transformers' ``rope_interleave=True``), with yarn-corrected frequencies and yarn's ``mscale^2`` on the softmax
scale (see :class:`k2trt.config.K2Config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from k2trt.config import K2Config
from k2trt.errors import K2Error

ATTN_IMPLS = ("naive", "absorb", "sdpa")
# DeepSeek-V3 and transformers build q_a_layernorm / kv_a_layernorm with the default eps, not rms_norm_eps.
LORA_NORM_EPS = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


# ------------------------------------------------------------------------------------------------ RoPE


def yarn_inv_freq(cfg: K2Config) -> torch.Tensor:
    """Inverse frequencies ``[rope_dim / 2]`` (float32), yarn-corrected when the config has ``rope_scaling``."""
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolation = 1.0 / pos_freqs
    rs = cfg.rope_scaling
    if rs is None:
        return extrapolation
    interpolation = 1.0 / (rs.factor * pos_freqs)

    def correction_dim(rotations: float) -> float:  # the dim whose wavelength fits `rotations` times
        return dim * math.log(rs.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(rs.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rs.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: keep the original (extrapolated) frequency; 0: interpolate
    return interpolation * (1 - keep) + extrapolation * keep


def rope_cos_sin(cfg: K2Config, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[..., rope_dim / 2]`` (float32) for integer ``positions [...]``."""
    angles = positions.to(torch.float32)[..., None] * yarn_inv_freq(cfg).to(positions.device)
    f = cfg.rope_attention_factor
    return angles.cos() * f, angles.sin() * f


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, per_head: bool) -> torch.Tensor:
    """Rotate interleaved pairs of ``x [B, T, R]`` (``per_head``: ``[B, T, H, R]``); cos/sin ``[T, R/2]``.

    Output keeps the interleaved layout. (transformers writes the rotated pairs de-interleaved; the dot products
    q.k are the same because queries and keys are permuted alike.)
    """
    if per_head:  # broadcast over the head axis between T and the rope dims
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return out.to(x.dtype)


# ------------------------------------------------------------------------------------------------- cache


class MLACache:
    """Contiguous per-sequence MLA cache for the reference model: latent and rope key per token per layer."""

    def __init__(self, cfg: K2Config, batch: int, max_len: int, dtype: torch.dtype, device="cpu"):
        self.max_len = max_len
        self.latent = torch.zeros(cfg.num_hidden_layers, batch, max_len, cfg.kv_lora_rank, dtype=dtype, device=device)
        self.rope = torch.zeros(cfg.num_hidden_layers, batch, max_len, cfg.qk_rope_head_dim, dtype=dtype, device=device)

    def update(self, layer: int, start: int, latent: torch.Tensor, k_rope: torch.Tensor):
        """Store ``latent [B, T, C]`` and ``k_rope [B, T, R]`` at positions [start, start+T); return all so far."""
        end = start + latent.shape[1]
        if end > self.max_len:
            raise K2Error(f"sequence of {end} tokens exceeds the cache's {self.max_len}")
        self.latent[layer, :, start:end] = latent
        self.rope[layer, :, start:end] = k_rope
        return self.latent[layer, :, :end], self.rope[layer, :, :end]


# ------------------------------------------------------------------------------------------------ layers


class MLA(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3)."""

    def __init__(self, cfg: K2Config, attn_impl: str = "absorb"):
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise K2Error(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.cfg, self.attn_impl = cfg, attn_impl
        h, n = cfg.hidden_size, cfg.num_attention_heads
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(h, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, LORA_NORM_EPS)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, n * cfg.qk_head_dim, bias=False)
        else:
            self.q_proj = nn.Linear(h, n * cfg.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, cfg.kv_a_out, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, LORA_NORM_EPS)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, n * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(n * cfg.v_head_dim, h, bias=False)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [B, T, h] -> q_nope [B,T,H,dn], q_rope [B,T,H,dr] (rotated), latent [B,T,C], k_rope [B,T,dr] (rotated)."""
        c = self.cfg
        b, t, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if c.q_lora_rank else self.q_proj(x)
        q = q.view(b, t, c.num_attention_heads, c.qk_head_dim)
        q_nope, q_rope = q.split([c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)
        kv = self.kv_a_proj_with_mqa(x)  # [B, T, C + dr]
        latent, k_rope = kv.split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin, per_head=True)
        return q_nope, q_rope, self.kv_a_layernorm(latent), apply_rope(k_rope, cos, sin, per_head=False)

    def forward(self, x, cos, sin, mask, cache: MLACache | None = None, layer: int = 0, start: int = 0):
        """x [B, T, h]; mask [T, S] additive (S = start + T); returns [B, T, h]."""
        c = self.cfg
        q_nope, q_rope, latent, k_rope = self.project(x, cos, sin)
        if cache is not None:
            latent, k_rope = cache.update(layer, start, latent, k_rope)  # [B, S, C], [B, S, dr]
        n, dn, dv = c.num_attention_heads, c.qk_nope_head_dim, c.v_head_dim
        w = self.kv_b_proj.weight.view(n, dn + dv, c.kv_lora_rank)  # [H, dn+dv, C]
        if self.attn_impl == "naive":
            kv = torch.einsum("bsc,hdc->bshd", latent, w)  # [B, S, H, dn+dv]
            k_nope, v = kv.split([dn, dv], dim=-1)
            scores = torch.einsum("bthd,bshd->bhts", q_nope, k_nope)
            scores = scores + torch.einsum("bthr,bsr->bhts", q_rope, k_rope)
            p = torch.softmax(scores.float() * c.softmax_scale + mask, dim=-1).to(x.dtype)
            out = torch.einsum("bhts,bshd->bthd", p, v)
        elif self.attn_impl == "sdpa":
            # naive's per-head keys and values through torch's fused attention: on a CPU about 1.2x faster for
            # training than the einsums (scripts/train_tiny.py --train-attn sdpa); absorb stays the decode path.
            kv = torch.einsum("bsc,hdc->bshd", latent, w)
            k_nope, v = kv.split([dn, dv], dim=-1)
            q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)  # [B, H, T, dn+dr]
            k = torch.cat([k_nope, k_rope[:, :, None].expand(-1, -1, n, -1)], dim=-1).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), attn_mask=mask.to(q.dtype),
                                                 scale=c.softmax_scale).transpose(1, 2)
        else:
            w_uk, w_uv = w[:, :dn], w[:, dn:]  # [H, dn, C], [H, dv, C]
            q_lat = torch.einsum("bthd,hdc->bthc", q_nope, w_uk)  # queries in the latent space
            scores = torch.einsum("bthc,bsc->bhts", q_lat, latent)
            scores = scores + torch.einsum("bthr,bsr->bhts", q_rope, k_rope)
            p = torch.softmax(scores.float() * c.softmax_scale + mask, dim=-1).to(x.dtype)
            o_lat = torch.einsum("bhts,bsc->bthc", p, latent)  # [B, T, H, C]
            out = torch.einsum("bthc,hdc->bthd", o_lat, w_uv)
        return self.o_proj(out.flatten(2))


class MLP(nn.Module):
    """SwiGLU MLP: the dense layers, each routed expert and the shared expert."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Sigmoid router with ``noaux_tc`` selection: top-k on score + correction bias, weights from raw scores."""

    def __init__(self, cfg: K2Config):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, h] -> (weights [N, k] float32, expert ids [N, k])."""
        return route(x.float() @ self.weight.float().t(), self.e_score_correction_bias.float(), self.cfg)


def route(logits: torch.Tensor, bias: torch.Tensor, cfg: K2Config) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 routing of router ``logits [N, E]`` (float32) -> (weights [N, k], ids [N, k]).

    Group-limited: experts form ``n_group`` groups; a group scores the sum of its top-2 biased scores; only the
    best ``topk_group`` groups compete for the ``num_experts_per_tok`` slots (K2: one group, so plain top-8).
    """
    scores = logits.sigmoid()  # [N, E]
    choice = scores + bias
    if cfg.n_group > 1:
        n, e = choice.shape
        grouped = choice.view(n, cfg.n_group, e // cfg.n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # [N, G]
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, group_scores.topk(cfg.topk_group, dim=-1).indices, True)
        choice = grouped.masked_fill(~keep[..., None], float("-inf")).view(n, e)
    ids = choice.topk(cfg.num_experts_per_tok, dim=-1).indices
    weights = scores.gather(1, ids)
    if cfg.norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights * cfg.routed_scaling_factor, ids


class MoE(nn.Module):
    """Routed experts (the ones this model holds) plus the shared expert."""

    def __init__(self, cfg: K2Config):
        super().__init__()
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(MLP(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts))
        self.shared_experts = MLP(cfg.hidden_size, cfg.shared_intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, h]
        weights, ids = self.gate(x)  # [N, k]
        y = torch.zeros_like(x, dtype=torch.float32)
        for e in ids.unique().tolist():  # only the experts this batch hits
            tok, slot = (ids == e).nonzero(as_tuple=True)
            y.index_add_(0, tok, self.experts[e](x[tok]).float() * weights[tok, slot, None])
        return (y.to(x.dtype) + self.shared_experts(x)).view(shape)


class Block(nn.Module):
    def __init__(self, cfg: K2Config, layer: int, attn_impl: str):
        super().__init__()
        self.layer = layer
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg, attn_impl)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer) else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, mask, cache=None, start=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, self.layer, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """The whole decoder. ``state_dict()`` names = HF checkpoint names without the ``model.`` prefix."""

    def __init__(self, cfg: K2Config, attn_impl: str = "absorb"):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i, attn_impl) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def set_attn_impl(self, attn_impl: str) -> None:
        if attn_impl not in ATTN_IMPLS:
            raise K2Error(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        for blk in self.layers:
            blk.self_attn.attn_impl = attn_impl

    def forward(self, ids: torch.Tensor, cache: MLACache | None = None, start: int = 0) -> torch.Tensor:
        """ids [B, T] at positions [start, start+T) -> float32 logits [B, T, vocab]."""
        t = ids.shape[1]
        positions = torch.arange(start, start + t, device=ids.device)
        cos, sin = rope_cos_sin(self.cfg, positions)  # [T, dr/2]
        s = start + t
        mask = torch.full((t, s), float("-inf"), device=ids.device).triu(start + 1)  # [T, S]: causal
        x = self.embed_tokens(ids)
        for blk in self.layers:
            x = blk(x, cos, sin, mask, cache, start)
        return self.lm_head(self.norm(x)).float()

    @torch.no_grad()
    def init_weights(self, seed: int = 0, std: float = 0.02, scheme: str = "normal") -> Transformer:
        """Fresh weights for training from scratch; unit norms, zero router bias.

        ``normal``: every matrix normal(0, ``std``). ``fan_in``: each matrix normal(0, 1/fan_in) (halved for the
        projections that write into the residual stream, ``o_proj`` and ``down_proj``), embeddings normal(0, 1), the
        routers normal(0, ``std``). Why fan-in for small models: at width 128, std 0.02 (a GPT-2-sized choice)
        makes every attention logit nearly zero, and the tiny K2 model then did not form an induction head in
        2,000 steps of pure copying data, where with fan-in it did after ~900 (docs/k2-tiny.md).
        """
        if scheme not in ("normal", "fan_in"):
            raise K2Error(f"init scheme must be 'normal' or 'fan_in', got {scheme!r}")
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif scheme == "normal" or name.endswith("mlp.gate.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.startswith("embed_tokens"):
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                scale = 0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * scale / p.shape[-1] ** 0.5)
        for blk in self.layers:
            if isinstance(blk.mlp, MoE):
                blk.mlp.gate.e_score_correction_bias.zero_()
        return self

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, attn_impl: str = "absorb"):
        """Load a HF checkpoint, dequantizing block-FP8 weights; every tensor must be used exactly once."""
        from k2trt.checkpoint import IGNORED, HFCheckpoint, _is_mtp

        ckpt = HFCheckpoint(path)
        with torch.device("meta"):
            model = cls(ckpt.config, attn_impl)
        params = dict(model.named_parameters())
        params.update(model.named_buffers())
        unused = []
        loaded = set()
        for name in ckpt.names():
            if name.endswith("_scale_inv") or IGNORED.match(name) or _is_mtp(name, ckpt.config):
                continue
            key = name.removeprefix("model.")
            if key not in params:
                unused.append(name)
                continue
            want = torch.float32 if key.endswith("e_score_correction_bias") else dtype
            t = ckpt.get_real(name, want)
            if tuple(t.shape) != tuple(params[key].shape):
                raise K2Error(f"tensor '{name}' has shape {list(t.shape)}, the model expects {list(params[key].shape)}")
            _set(model, key, t)
            loaded.add(key)
        missing = sorted(set(params) - loaded)
        if unused or missing:
            raise K2Error([f"checkpoint tensor '{n}' is not used by the model" for n in unused]
                          + [f"model tensor '{k}' is not in the checkpoint" for k in missing])
        return model.eval()


def _set(model: nn.Module, key: str, value: torch.Tensor) -> None:
    mod_path, _, leaf = key.rpartition(".")
    mod = model.get_submodule(mod_path)
    if leaf in mod._buffers:
        mod._buffers[leaf] = value
    else:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=False)


# --------------------------------------------------------------------------------------------- generation


@dataclass
class Generation:
    new_ids: list[int]
    prompt_logits: torch.Tensor  # [prompt_len, vocab] float32
    text: str | None = None


@torch.inference_mode()
def greedy_generate(model: Transformer, prompt_ids: list[int], max_new_tokens: int,
                    stop_ids: tuple[int, ...] = ()) -> Generation:
    """Greedy decoding with the MLA cache: one prefill, then one token per step."""
    if not prompt_ids:
        raise K2Error("the prompt is empty")
    bad = [i for i in prompt_ids if not 0 <= i < model.cfg.vocab_size]
    if bad:
        raise K2Error(f"prompt ids {bad[:5]} are outside the vocabulary [0, {model.cfg.vocab_size})")
    total = len(prompt_ids) + max_new_tokens
    cache = MLACache(model.cfg, 1, total, model.dtype)
    ids = torch.tensor([prompt_ids])
    logits = model(ids, cache, 0)[0]  # [T, V]
    prompt_logits = logits
    out: list[int] = []
    pos = len(prompt_ids)
    for _ in range(max_new_tokens):
        nxt = int(logits[-1].argmax())
        out.append(nxt)
        if nxt in stop_ids:
            break
        logits = model(torch.tensor([[nxt]]), cache, pos)[0]
        pos += 1
    return Generation(out, prompt_logits)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def generate_cli(*, model_dir: Path, prompt_ids: list[int] | None, prompt: str | None, max_new_tokens: int,
                 dtype: str, attn_impl: str, dump_logits: Path | None) -> Generation:
    """What ``k2trt generate`` does on a HF checkpoint: load, greedy-generate, optionally dump prompt logits."""
    if dtype not in _DTYPES:
        raise K2Error(f"--dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    if max_new_tokens < 0:
        raise K2Error("--max-new-tokens must be >= 0")
    tok = None
    if (Path(model_dir) / "tiktoken.model").is_file():
        from k2trt.tokenizer import K2Tokenizer

        tok = K2Tokenizer.from_dir(model_dir)
    if prompt is not None:
        if tok is None:
            raise K2Error(f"{model_dir}: --prompt needs tiktoken.model; pass --prompt-ids instead")
        prompt_ids = tok.encode(prompt, allow_special=True)
    model = Transformer.from_checkpoint(model_dir, dtype=_DTYPES[dtype], attn_impl=attn_impl)
    stop = tuple(tok.stop_ids) if tok is not None else ()
    gen = greedy_generate(model, prompt_ids, max_new_tokens, stop)
    if tok is not None:
        gen.text = tok.decode(gen.new_ids)
    if dump_logits is not None:
        import numpy as np

        tmp = Path(str(dump_logits) + ".partial.npy")
        np.save(tmp, gen.prompt_logits.numpy())
        tmp.replace(dump_logits)
    return gen
