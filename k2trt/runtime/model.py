"""One rank's share of the model, run over a flat batch of tokens from many sequences (varlen) with the paged cache.

The math is the reference model's (``k2trt.model``: the same RoPE, routing and norms, absorbed MLA); what
differs is the execution: all scheduled tokens of all sequences go through the projections, MLPs and experts
together, attention reads each sequence's latents from the paged cache, and each rank holds only its slice:

- attention: heads ``mapping.heads(rank)`` (q_b / kv_b rows, o_proj input columns), partial o_proj sums
  all-reduced over the TP group;
- dense MLP and shared expert: intermediate width split over TP, all-reduced;
- routed experts: the rank's EP block of experts and its MoE-TP slice of their width; router replicated;
  the partial sums of all ranks of the TP group add up to the full MoE output (one all-reduce);
- lm_head: rows split over TP (padded vocab), gathered; pipeline stages own contiguous layer ranges.

Weights arrive as "local reference names": the HF name of the tensor, holding this rank's slice
(e.g. ``layers.3.mlp.experts.17.up_proj.weight`` rows of this rank's MoE-TP slice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from k2trt.config import K2Config
from k2trt.errors import K2Error
from k2trt.mapping import Mapping
from k2trt.model import LORA_NORM_EPS, apply_rope, rope_cos_sin, route
from k2trt.runtime.cache import PagedMLACache
from k2trt.runtime.comm import Comm


IMPLS = ("torch", "kernels")


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@dataclass
class SeqChunk:
    """The tokens one sequence contributes to a step: positions [start, start + n) of its cache ``table``."""

    table: list[int]
    start: int
    n: int


class _StepLayout:
    """Per-step indexing shared by every layer: cache slots, the batched decode gather, prefill chunks."""

    def __init__(self, chunks: list[SeqChunk], cache: PagedMLACache):
        bounds = torch.tensor([0] + [c.n for c in chunks]).cumsum(0).tolist()
        slots = [cache.slots(c.table, c.start, c.start + c.n) for c in chunks]
        self.blocks = torch.cat([s[0] for s in slots])
        self.offsets = torch.cat([s[1] for s in slots])
        self.last = torch.tensor(bounds[1:]) - 1  # each chunk's last token
        decodes = [(c, lo) for c, lo, hi in zip(chunks, bounds, bounds[1:]) if c.n == 1]
        self.prefills = [(c, lo, hi) for c, lo, hi in zip(chunks, bounds, bounds[1:]) if c.n > 1]
        self.decode_rows = torch.tensor([lo for _, lo in decodes], dtype=torch.long)
        lengths = [c.start + 1 for c, _ in decodes]
        self.decode_len = max(lengths, default=0)
        nb = cache.blocks_for(self.decode_len) if decodes else 0
        # block ids padded with block 0: the padded positions are masked out below
        self.decode_blocks = torch.tensor([(c.table[:nb] + [0] * nb)[:nb] for c, _ in decodes], dtype=torch.long)
        self.decode_lens = torch.tensor(lengths, dtype=torch.int32)
        self.decode_mask = torch.zeros(len(decodes), self.decode_len)
        for row, n in enumerate(lengths):
            self.decode_mask[row, n:] = float("-inf")


class RankModel:
    """This rank's layers, heads, experts and vocab rows; ``forward`` runs one scheduler step."""

    def __init__(self, cfg: K2Config, mapping: Mapping, rank: int, get: Callable[[str], torch.Tensor],
                 *, dtype: torch.dtype, comm: Comm, impl: str = "torch"):
        """``impl``: ``torch`` (plain PyTorch, any device) or ``kernels`` (k2trt's Triton kernels from
        ``plugins/``: paged MLA decode and prefill, grouped block-FP8 MoE on the rank file's FP8 experts; needs an
        fp8_block conversion, CUDA or ``TRITON_INTERPRET=1``)."""
        if impl not in IMPLS:
            raise K2Error(f"impl must be one of {IMPLS}, got {impl!r}")
        if impl == "kernels" and getattr(get, "weights", None) != "fp8_block":
            raise K2Error("impl 'kernels' runs the MoE on block-FP8 experts: build from an fp8_block conversion")
        self.cfg, self.mapping, self.rank, self.dtype, self.comm, self.impl = cfg, mapping, rank, dtype, comm, impl
        self.layers = mapping.layers(rank, cfg.num_hidden_layers)
        self.heads = mapping.heads(rank, cfg.num_attention_heads)
        self.experts = mapping.experts(rank, cfg.n_routed_experts)
        self.first_stage = self.layers.start == 0
        self.last_stage = self.layers.stop == cfg.num_hidden_layers
        w: dict[str, torch.Tensor] = {}

        def load(name: str, keep_fp32: bool = False) -> None:
            w[name] = get(name).to(torch.float32 if keep_fp32 else dtype).contiguous()

        if self.first_stage:
            load("embed_tokens.weight")
        if self.last_stage:
            load("norm.weight")
            load("lm_head.weight")  # [padded_vocab / tp, h]
        for i in self.layers:
            p = f"layers.{i}"
            for n in ("input_layernorm", "post_attention_layernorm", "self_attn.kv_a_layernorm"):
                load(f"{p}.{n}.weight")
            attn = ["q_a_proj", "q_a_layernorm", "q_b_proj"] if cfg.q_lora_rank else ["q_proj"]
            for n in attn + ["kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]:
                load(f"{p}.self_attn.{n}.weight")
            if not cfg.is_moe_layer(i):
                for n in ("gate_proj", "up_proj", "down_proj"):
                    load(f"{p}.mlp.{n}.weight")
                continue
            load(f"{p}.mlp.gate.weight", keep_fp32=True)
            load(f"{p}.mlp.gate.e_score_correction_bias", keep_fp32=True)
            for n in ("gate_proj", "up_proj", "down_proj"):
                load(f"{p}.mlp.shared_experts.{n}.weight")
            if impl == "kernels":  # the rank file's stacks as stored: fc = [up; gate] FP8 + scales, proj
                j, raw = i - self.layers.start, get.raw
                t = f"transformer.layers.{j}.mlp."
                w[f"{p}.mlp.fp8"] = tuple(raw(t + n) for n in ("fc.weight", "fc.weight_scale_inv", "proj.weight",
                                                          "proj.weight_scale_inv"))
                w[f"{p}.mlp.fp8_shared"] = tuple(raw(t + "shared_expert." + n) for n in (
                    "fc.weight", "fc.weight_scale_inv", "proj.weight", "proj.weight_scale_inv"))
            # Experts stacked: w13 [E_local, 2 * I_local, h] (gate rows first), w2 [E_local, h, I_local].
            gate_up = [torch.cat((get(f"{p}.mlp.experts.{e}.gate_proj.weight"), get(f"{p}.mlp.experts.{e}.up_proj.weight")))
                       for e in self.experts]
            w[f"{p}.w13"] = torch.stack(gate_up).to(dtype)
            w[f"{p}.w2"] = torch.stack([get(f"{p}.mlp.experts.{e}.down_proj.weight") for e in self.experts]).to(dtype)
        self.w = w
        self.vocab_rows = w["lm_head.weight"].shape[0] if self.last_stage else 0

    # ---------------------------------------------------------------------------------------------- step

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor | None, positions: torch.Tensor, chunks: list[SeqChunk],
                cache: PagedMLACache, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Run this stage over ``N`` tokens (contiguous per chunk, in ``chunks`` order).

        First stage takes ``tokens [N]``; later stages take the previous stage's ``hidden [N, h]``. Returns the
        hidden states ``[N, h]``, or on the last stage the float32 logits of each chunk's last token ``[C, vocab]``.
        """
        x = self.w["embed_tokens.weight"][tokens] if self.first_stage else hidden.to(self.dtype)
        cos, sin = rope_cos_sin(self.cfg, positions)  # [N, R/2]
        step = _StepLayout(chunks, cache)
        eps = self.cfg.rms_norm_eps
        for i in self.layers:
            p = f"layers.{i}"
            h = rms_norm(x, self.w[f"{p}.input_layernorm.weight"], eps)
            x = x + self.comm.all_reduce_tp(self._attention(i, h, cos, sin, step, cache))
            h = rms_norm(x, self.w[f"{p}.post_attention_layernorm.weight"], eps)
            x = x + self.comm.all_reduce_tp(self._moe(i, h) if self.cfg.is_moe_layer(i) else self._mlp(f"{p}.mlp", h))
        if not self.last_stage:
            return x
        h = rms_norm(x[step.last], self.w["norm.weight"], eps)
        logits = (h @ self.w["lm_head.weight"].t()).float()  # [C, padded_vocab / tp]
        return self.comm.all_gather_tp(logits)[:, : self.cfg.vocab_size]

    def _attention(self, i: int, h: torch.Tensor, cos, sin, step: _StepLayout, cache: PagedMLACache) -> torch.Tensor:
        """Absorbed MLA over this rank's heads; returns the partial o_proj output [N, h]."""
        c, p = self.cfg, f"layers.{i}.self_attn"
        n_heads, dn, dv = len(self.heads), c.qk_nope_head_dim, c.v_head_dim
        if c.q_lora_rank:
            qa = rms_norm(h @ self.w[f"{p}.q_a_proj.weight"].t(), self.w[f"{p}.q_a_layernorm.weight"], LORA_NORM_EPS)
            q = qa @ self.w[f"{p}.q_b_proj.weight"].t()
        else:
            q = h @ self.w[f"{p}.q_proj.weight"].t()
        q = q.view(-1, n_heads, c.qk_head_dim)  # [N, Hl, dn + dr]
        q_nope, q_rope = q.split([dn, c.qk_rope_head_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin, per_head=True)
        kv = h @ self.w[f"{p}.kv_a_proj_with_mqa.weight"].t()  # [N, C + dr]
        latent = rms_norm(kv[:, : c.kv_lora_rank], self.w[f"{p}.kv_a_layernorm.weight"], LORA_NORM_EPS)
        k_rope = apply_rope(kv[:, c.kv_lora_rank :], cos, sin, per_head=False)
        cache.write(i, step.blocks, step.offsets, latent, k_rope)

        w_kvb = self.w[f"{p}.kv_b_proj.weight"].view(n_heads, dn + dv, c.kv_lora_rank)
        w_uk, w_uv = w_kvb[:, :dn], w_kvb[:, dn:]  # [Hl, dn, C], [Hl, dv, C]
        # Queries in the latent space, with the rope part appended: one dot product against the cached
        # [latent | rope key] rows gives both score terms.
        q_lat = torch.matmul(q_nope.transpose(0, 1), w_uk).transpose(0, 1)  # [N, Hl, C]
        q_full = torch.cat((q_lat, q_rope), dim=-1)  # [N, Hl, C + dr]
        if self.impl == "kernels":
            o = self._attention_kernels(i, q_lat, q_nope, q_rope, w_kvb, step, cache)
            return o.reshape(h.shape[0], n_heads * dv) @ self.w[f"{p}.o_proj.weight"].t()
        out = torch.empty(h.shape[0], n_heads, c.kv_lora_rank, dtype=h.dtype)
        kv_all = cache.kv[i]
        if step.decode_rows.numel():  # one token per sequence: all decodes in one batched product
            kvs = kv_all[step.decode_blocks].flatten(1, 2)[:, : step.decode_len]  # [B, S, C + dr]
            scores = torch.bmm(q_full[step.decode_rows].to(kvs.dtype), kvs.transpose(1, 2)).float()  # [B, Hl, S]
            scores = scores * c.softmax_scale + step.decode_mask[:, None, :]
            probs = torch.softmax(scores, dim=-1).to(kvs.dtype)
            out[step.decode_rows] = torch.bmm(probs, kvs[..., : c.kv_lora_rank]).to(h.dtype)
        for chunk, lo, hi in step.prefills:  # prefill chunks: causal over their own new tokens
            s = chunk.start + chunk.n
            kvs = cache.read_rows(i, chunk.table, s)  # [S, C + dr]
            scores = torch.matmul(q_full[lo:hi].to(kvs.dtype), kvs.t()).float() * c.softmax_scale  # [T, Hl, S]
            mask = torch.ones(chunk.n, s, dtype=torch.bool).triu(chunk.start + 1)
            probs = torch.softmax(scores.masked_fill(mask[:, None, :], float("-inf")), dim=-1).to(kvs.dtype)
            out[lo:hi] = torch.matmul(probs, kvs[:, : c.kv_lora_rank]).to(h.dtype)
        o = torch.matmul(out.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)  # [N, Hl, dv]
        return o.reshape(h.shape[0], n_heads * dv) @ self.w[f"{p}.o_proj.weight"].t()

    def _attention_kernels(self, i, q_lat, q_nope, q_rope, w_kvb, step: _StepLayout, cache) -> torch.Tensor:
        """Per-head attention values [N, Hl, dv] through plugins.mla: absorbed paged decode (then W_UV), and
        prefill over each chunk's whole context expanded to per-head keys and values (plugins.mla.mla_prefill)."""
        from plugins import mla

        c = self.cfg
        dn = c.qk_nope_head_dim
        w_uv = w_kvb[:, dn:]  # [Hl, dv, C]
        out = torch.empty(q_lat.shape[0], q_lat.shape[1], c.v_head_dim, dtype=q_lat.dtype)
        if step.decode_rows.numel():
            o_lat = mla.mla_decode(
                q_lat[step.decode_rows].contiguous(), q_rope[step.decode_rows].contiguous(), cache.kv[i],
                step.decode_blocks.to(torch.int32), step.decode_lens, softmax_scale=c.softmax_scale)  # [B, Hl, C]
            out[step.decode_rows] = torch.matmul(o_lat.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)
        if step.prefills:
            rows = torch.cat([torch.arange(lo, hi) for _, lo, hi in step.prefills])
            ctx = [cache.read_rows(i, chunk.table, chunk.start + chunk.n) for chunk, _, _ in step.prefills]
            kv = torch.cat(ctx).to(q_lat.dtype)  # [Tk, C + dr]
            k_up = torch.einsum("sc,hdc->shd", kv[:, : c.kv_lora_rank], w_kvb)  # [Tk, Hl, dn + dv]
            cu_q = torch.tensor([0] + [hi - lo for _, lo, hi in step.prefills]).cumsum(0).to(torch.int32)
            cu_k = torch.tensor([0] + [len(x) for x in ctx]).cumsum(0).to(torch.int32)
            out[rows] = mla.mla_prefill(
                q_nope[rows].contiguous(), q_rope[rows].contiguous(), k_up[..., :dn].contiguous(),
                kv[:, c.kv_lora_rank :].contiguous(), k_up[..., dn:].contiguous(), cu_q, cu_k,
                softmax_scale=c.softmax_scale)
        return out

    def _mlp(self, prefix: str, h: torch.Tensor) -> torch.Tensor:
        g = h @ self.w[f"{prefix}.gate_proj.weight"].t()
        u = h @ self.w[f"{prefix}.up_proj.weight"].t()
        return (F.silu(g) * u) @ self.w[f"{prefix}.down_proj.weight"].t()

    def _moe(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Partial MoE output of this rank: its experts' share plus its slice of the shared expert."""
        p = f"layers.{i}.mlp"
        if self.impl == "kernels":
            from plugins.moe import moe_forward

            w13, w13_s, w2, w2_s = self.w[f"{p}.fp8"]
            return moe_forward(h.contiguous(), self.w[f"{p}.gate.weight"], self.w[f"{p}.gate.e_score_correction_bias"],
                               w13, w13_s, w2, w2_s, self.cfg, shared=self.w[f"{p}.fp8_shared"],
                               expert_start=self.experts.start, w13_order="up_gate")
        weights, ids = route(h.float() @ self.w[f"{p}.gate.weight"].t(), self.w[f"{p}.gate.e_score_correction_bias"],
                             self.cfg)  # [N, k]
        y = torch.zeros(h.shape, dtype=torch.float32)
        w13, w2 = self.w[f"layers.{i}.w13"], self.w[f"layers.{i}.w2"]
        inter = w13.shape[1] // 2
        local = (ids >= self.experts.start) & (ids < self.experts.stop)
        tok, slot = local.nonzero(as_tuple=True)
        if tok.numel():
            e_local = ids[tok, slot] - self.experts.start
            order = e_local.argsort(stable=True)  # group the (token, expert) pairs by expert
            tok, slot, e_local = tok[order], slot[order], e_local[order]
            counts = torch.bincount(e_local, minlength=len(self.experts)).tolist()
            start = 0
            for e, n in enumerate(counts):
                if not n:
                    continue
                t = tok[start : start + n]
                gu = h[t] @ w13[e].t()
                act = F.silu(gu[:, :inter]) * gu[:, inter:]
                y.index_add_(0, t, (act @ w2[e].t()).float() * weights[t, slot[start : start + n], None])
                start += n
        return y.to(h.dtype) + self._mlp(f"{p}.shared_experts", h)


def reference_slices(cfg: K2Config, mapping: Mapping, rank: int, get_full: Callable[[str], torch.Tensor]):
    """``get(name)`` of local reference names, cut from full tensors (for a HF checkpoint or a reference model).

    The converter's rank shards hold the same slices in TensorRT-LLM's layout; this is the slicing stated once
    for the runtime's own use (single process, or tests that compare against the converter).
    """
    heads = mapping.heads(rank, cfg.num_attention_heads)
    qk, dn, dv = cfg.qk_head_dim, cfg.qk_nope_head_dim, cfg.v_head_dim
    tp_rank, tp = mapping.tp_rank(rank), mapping.tp

    def rows(t: torch.Tensor, per: int) -> torch.Tensor:
        return t[heads.start * per : heads.stop * per]

    def split(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim] // tp
        return t.narrow(dim, tp_rank * n, n)

    def get(name: str) -> torch.Tensor:
        t = get_full("model." + name if not name.startswith("lm_head") else name)
        if name.endswith(("q_b_proj.weight", "q_proj.weight")):
            return rows(t, qk)
        if name.endswith("kv_b_proj.weight"):
            return rows(t, dn + dv)
        if name.endswith("o_proj.weight"):
            return t[:, heads.start * dv : heads.stop * dv]
        if ".experts." in name:
            width = mapping.expert_width(rank, cfg.moe_intermediate_size)
            return t[width.start : width.stop] if "down_proj" not in name else t[:, width.start : width.stop]
        if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight", "shared_experts.gate_proj.weight",
                          "shared_experts.up_proj.weight")):
            return split(t, 0)
        if name.endswith(("mlp.down_proj.weight", "shared_experts.down_proj.weight")):
            return split(t, 1)
        if name == "lm_head.weight":
            pad = -t.shape[0] % tp
            return split(F.pad(t, (0, 0, 0, pad)), 0)
        return t

    if cfg.num_attention_heads % tp:
        raise K2Error(f"tp {tp} does not divide {cfg.num_attention_heads} heads")
    return get
