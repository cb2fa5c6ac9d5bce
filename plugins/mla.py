"""MLA attention kernels: ragged causal prefill, and decode over a paged latent KV cache (absorbed form).

What K2 caches per token per layer is MLA's latent: ``kv_lora_rank`` (512) normalised latent values plus one
``qk_rope_head_dim`` (64) rotated rope key shared by all heads, 576 values (``k2trt.model.MLACache``). The cache
here is paged: ``kv_cache [num_pages, page_size, 576]`` (bf16, fp16, fp32, or float8_e4m3fn with one float32
scale), a ``block_table [B, max_pages]`` of page ids per sequence and ``seq_lens [B]``.

- **decode** uses the absorbed formulation (DeepSeek-V3 ``inference/model.py`` ``attn_impl="absorb"``, FlashMLA):
  queries are projected into the latent space (``q_lat = q_nope . W_UK``, [B, H, 512]), scores are
  ``q_lat . c + q_rope . k_rope``, values are the latent itself, so one K tile serves as K and V and every head
  reads the same cache rows. Output is the latent-space attention ``[B, H, 512]``; ``. W_UV`` and ``o_proj``
  follow. Long contexts are split across programs (flash-decoding) and merged by log-sum-exp.
- **prefill** is ordinary causal attention on decompressed per-head keys and values (``kv_b_proj`` applied):
  q_nope/k_nope [T, H, 128], q_rope [T, H, 64], k_rope [T, 64] shared by the heads, v [T, H, 128], ragged
  sequences given by ``cu_seqlens``. Keys may be longer than queries (context already cached: chunked prefill);
  causality is aligned to the end (query i of a sequence sees keys j <= i + k_len - q_len).

The softmax scale is K2's ``K2Config.softmax_scale`` (``1/sqrt(192)`` times yarn's ``mscale(32, 1)^2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from k2trt.fp8 import FP8_DTYPE
from plugins._runtime import cdiv, check_tensor, interpreting, kernel_mode, next_pow2, require
from plugins._spec import KernelSpec, ptr, tl_dtype
from plugins._triton_helpers import e4m3_rne, mma, round_to

LOG2E = 1.4426950408889634
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# ------------------------------------------------------------------------------------------ references


def _cache_rows(kv_cache: torch.Tensor, kv_scale: torch.Tensor | None) -> torch.Tensor:
    """[pages, page, 576] -> float32 [pages * page, 576] (fp8 dequantized with the one scale)."""
    rows = kv_cache.reshape(-1, kv_cache.shape[-1]).float()
    return rows * kv_scale.float() if kv_cache.dtype == FP8_DTYPE else rows


def mla_decode_ref(q_latent, q_rope, kv_cache, block_table, seq_lens, *, softmax_scale: float,
                   kv_scale: torch.Tensor | None = None) -> torch.Tensor:
    """q_latent [B, H, C], q_rope [B, H, R], kv_cache [P, page, C+R] -> o_latent [B, H, C] (q's dtype).

    Plain loop over sequences: gather the sequence's rows through the block table, softmax(q.k * scale) . c.
    """
    b, _, c = q_latent.shape
    page = kv_cache.shape[1]
    rows = _cache_rows(kv_cache, kv_scale)
    out = torch.zeros(q_latent.shape, dtype=torch.float32, device=q_latent.device)
    for i in range(b):
        n = int(seq_lens[i])
        if n == 0:
            continue
        pos = torch.arange(n, device=q_latent.device)
        kv = rows[block_table[i, pos // page].long() * page + pos % page]  # [n, C+R]
        lat, kr = kv[:, :c], kv[:, c:]
        s = q_latent[i].float() @ lat.t() + q_rope[i].float() @ kr.t()  # [H, n]
        out[i] = torch.softmax(s * softmax_scale, dim=-1) @ lat
    return out.to(q_latent.dtype)


def mla_prefill_ref(q_nope, q_rope, k_nope, k_rope, v, cu_seqlens_q, cu_seqlens_k=None, *, softmax_scale: float,
                    causal: bool = True) -> torch.Tensor:
    """q_nope [Tq, H, D], q_rope [Tq, H, R], k_nope [Tk, H, D], k_rope [Tk, R], v [Tk, H, Dv] -> [Tq, H, Dv]."""
    cu_k = cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k
    out = torch.zeros((q_nope.shape[0], q_nope.shape[1], v.shape[2]), dtype=torch.float32, device=q_nope.device)
    for i in range(len(cu_seqlens_q) - 1):
        qs, qe, ks, ke = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        if qe == qs:
            continue
        s = torch.einsum("qhd,khd->hqk", q_nope[qs:qe].float(), k_nope[ks:ke].float())
        s = s + torch.einsum("qhr,kr->hqk", q_rope[qs:qe].float(), k_rope[ks:ke].float())
        s = s * softmax_scale
        if causal:
            qi = torch.arange(qe - qs, device=s.device)[:, None] + (ke - ks) - (qe - qs)
            s = s.masked_fill(torch.arange(ke - ks, device=s.device)[None, :] > qi, float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a query row with no visible key gives zeros
        out[qs:qe] = torch.einsum("hqk,khd->qhd", p, v[ks:ke].float())
    return out.to(q_nope.dtype)


def mla_cache_write_ref(kv_cache, slots, latent, k_rope, kv_scale=None) -> None:
    """Store latent [T, C] ++ k_rope [T, R] at cache rows ``slots [T]`` (page * page_size + offset; < 0 skips)."""
    rows = kv_cache.view(-1, kv_cache.shape[-1])
    keep = slots >= 0
    val = torch.cat([latent.float(), k_rope.float()], dim=-1)[keep]
    if kv_cache.dtype == FP8_DTYPE:
        val = (val / kv_scale.float()).clamp(-448.0, 448.0)
    rows[slots[keep].long()] = val.to(kv_cache.dtype)


def absorb_query(q_nope: torch.Tensor, w_kv_b: torch.Tensor, n_heads: int, nope_dim: int) -> torch.Tensor:
    """q_nope [..., H, Dn] . W_UK -> q_latent [..., H, C]; ``w_kv_b`` is kv_b_proj's dequantized [H*(Dn+Dv), C]."""
    w = w_kv_b.view(n_heads, -1, w_kv_b.shape[-1])[:, :nope_dim]  # [H, Dn, C]
    return torch.einsum("...hd,hdc->...hc", q_nope, w.to(q_nope.dtype))


def project_values(o_latent: torch.Tensor, w_kv_b: torch.Tensor, n_heads: int, nope_dim: int) -> torch.Tensor:
    """o_latent [..., H, C] . W_UV^T -> [..., H, Dv]."""
    w = w_kv_b.view(n_heads, -1, w_kv_b.shape[-1])[:, nope_dim:]  # [H, Dv, C]
    return torch.einsum("...hc,hdc->...hd", o_latent, w.to(o_latent.dtype))


# --------------------------------------------------------------------------------------------- kernels


@triton.jit
def _mla_decode_kernel(
    ql_ptr,  # [B, NH, DL] queries in the latent space (q_nope . W_UK)
    qr_ptr,  # [B, NH, DR] rotated rope queries
    kv_ptr,  # [num_pages, PAGE, DL + DR] paged cache: latent ++ rope key (q's dtype, or fp8)
    kvs_ptr,  # [1] float32 dequantization scale of an fp8 cache (read when KV_FP8)
    bt_ptr,  # [B, MAX_PAGES] int32 block table
    lens_ptr,  # [B] int32 cached tokens per sequence
    B, NH, MAX_PAGES,  # int32
    o_ptr,  # [B, NH, NUM_SPLITS, DL] float32 per-split outputs, normalised within the split
    lse_ptr,  # [B, NH, NUM_SPLITS] float32 log2(sum(exp2(scores))) per split; -inf for an empty split
    SM_SCALE: tl.constexpr, DL: tl.constexpr, DR: tl.constexpr, PAGE: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, KV_FP8: tl.constexpr, DOT_IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    n_hb = tl.cdiv(NH, BLOCK_H)
    hb = pid % n_hb  # head blocks of one (sequence, split) are neighbours: they share the K tiles in L2
    split = (pid // n_hb) % NUM_SPLITS
    b = pid // (n_hb * NUM_SPLITS)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = heads < NH
    n_tok = tl.load(lens_ptr + b)
    per_split = tl.cdiv(tl.cdiv(n_tok, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(n_tok, start + per_split)

    dl = tl.arange(0, DL)
    dr = tl.arange(0, DR)
    q_rows = (b * NH + heads).to(tl.int64)
    q_l = tl.load(ql_ptr + q_rows[:, None] * DL + dl[None, :], mask=h_ok[:, None], other=0.0)  # [BH, DL]
    q_r = tl.load(qr_ptr + q_rows[:, None] * DR + dr[None, :], mask=h_ok[:, None], other=0.0)  # [BH, DR]
    scale = SM_SCALE * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
    kv_scale = 1.0
    if KV_FP8:
        kv_scale = tl.load(kvs_ptr)
        scale = scale * kv_scale
    m_i = tl.full((BLOCK_H,), -1e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_H,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_H, DL), dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n
        p_ok = pos < end
        page = tl.load(bt_ptr + b.to(tl.int64) * MAX_PAGES + pos // PAGE, mask=p_ok, other=0)
        row = (page.to(tl.int64) * PAGE + pos % PAGE) * (DL + DR)
        k_l = tl.load(kv_ptr + row[:, None] + dl[None, :], mask=p_ok[:, None], other=0.0)  # [BN, DL]: K and V
        k_r = tl.load(kv_ptr + row[:, None] + DL + dr[None, :], mask=p_ok[:, None], other=0.0)  # [BN, DR]
        if KV_FP8:
            k_l = k_l.to(q_l.dtype)  # exact: every e4m3 value is a bf16/fp16/fp32 value
            k_r = k_r.to(q_l.dtype)
        s = mma(q_l, tl.trans(k_l), DOT_IEEE) + mma(q_r, tl.trans(k_r), DOT_IEEE)  # [BH, BN]
        s = tl.where(p_ok[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + mma(p.to(k_l.dtype), k_l, DOT_IEEE)
        m_i = m_new
    has = l_i > 0
    o = acc / tl.where(has, l_i, 1.0)[:, None] * kv_scale
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    part = (q_rows * NUM_SPLITS + split)
    tl.store(o_ptr + part[:, None] * DL + dl[None, :], o, mask=h_ok[:, None])
    tl.store(lse_ptr + part, lse, mask=h_ok)


@triton.jit
def _mla_decode_reduce_kernel(
    o_ptr,  # [B, NH, NUM_SPLITS, DL] float32
    lse_ptr,  # [B, NH, NUM_SPLITS] float32
    B, NH,  # int32
    out_ptr,  # [B, NH, DL] OUT_DTYPE
    DL: tl.constexpr, NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr, OUT_DTYPE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * NH + head
    sp = tl.arange(0, S_PAD)
    s_ok = sp < NUM_SPLITS
    lse = tl.load(lse_ptr + row * NUM_SPLITS + sp, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)  # 0 for empty splits
    den = tl.sum(w, axis=0)
    dl = tl.arange(0, DL)
    o = tl.load(o_ptr + (row * NUM_SPLITS + sp)[:, None] * DL + dl[None, :], mask=s_ok[:, None], other=0.0)
    out = tl.sum(w[:, None] * o, axis=0) / tl.where(den > 0, den, 1.0)
    tl.store(out_ptr + row * DL + dl, round_to(out, OUT_DTYPE))


@triton.jit
def _mla_cache_write_kernel(
    lat_ptr,  # [T, DL] normalised latent (row stride LAT_STRIDE)
    kr_ptr,  # [T, DR] rotated rope key (row stride KR_STRIDE)
    slot_ptr,  # [T] int32 cache row page * PAGE + offset per token; < 0 skips the token
    kvs_ptr,  # [1] float32 fp8 scale (read when KV_FP8)
    T, LAT_STRIDE, KR_STRIDE,  # int32
    kv_ptr,  # [num_pages * PAGE, DL + DR] the cache, written in place
    DL: tl.constexpr, DR: tl.constexpr, BLOCK_T: tl.constexpr, KV_FP8: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = rows < T
    slot = tl.load(slot_ptr + rows, mask=t_ok, other=-1)
    ok = t_ok & (slot >= 0)
    dl = tl.arange(0, DL)
    dr = tl.arange(0, DR)
    lat = tl.load(lat_ptr + rows[:, None].to(tl.int64) * LAT_STRIDE + dl[None, :], mask=ok[:, None], other=0.0)
    kr = tl.load(kr_ptr + rows[:, None].to(tl.int64) * KR_STRIDE + dr[None, :], mask=ok[:, None], other=0.0)
    dst = kv_ptr + slot[:, None].to(tl.int64) * (DL + DR)
    if KV_FP8:
        inv = tl.load(kvs_ptr)
        lat = e4m3_rne(tl.div_rn(lat.to(tl.float32), inv))
        kr = e4m3_rne(tl.div_rn(kr.to(tl.float32), inv))
    tl.store(dst + dl[None, :], lat.to(kv_ptr.dtype.element_ty), mask=ok[:, None])
    tl.store(dst + DL + dr[None, :], kr.to(kv_ptr.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _mla_prefill_kernel(
    qn_ptr,  # [Tq, NH, DN] q_nope (strides SQN_T, SQN_H; last dim contiguous)
    qr_ptr,  # [Tq, NH, DR] rotated q_rope (SQR_T, SQR_H)
    kn_ptr,  # [Tk, NH, DN] k_nope = latent . W_UK (SKN_T, SKN_H)
    kr_ptr,  # [Tk, DR] rotated rope key, shared by the heads (SKR_T)
    v_ptr,  # [Tk, NH, DV] values = latent . W_UV (SV_T, SV_H)
    cuq_ptr,  # [B + 1] int32 query offsets of the sequences
    cuk_ptr,  # [B + 1] int32 key offsets
    B, SQN_T, SQN_H, SQR_T, SQR_H, SKN_T, SKN_H, SKR_T, SV_T, SV_H, SO_T, SO_H,  # int32
    o_ptr,  # [Tq, NH, DV] OUT_DTYPE (SO_T, SO_H)
    SM_SCALE: tl.constexpr, DN: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, SEQ_CHUNK: tl.constexpr, DOT_IEEE: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
):
    # grid axis 0 enumerates the query blocks of all sequences (cdiv(Tq, BLOCK_M) + B is enough: each sequence
    # wastes less than one block); find this program's (sequence, block) from the offsets.
    g = tl.program_id(0)
    hd = tl.program_id(1)
    seq = g * 0 - 1
    mblk = g * 0
    seen = g * 0
    for c0 in range(0, B, SEQ_CHUNK):
        bs = c0 + tl.arange(0, SEQ_CHUNK)
        b_ok = bs < B
        q0 = tl.load(cuq_ptr + bs, mask=b_ok, other=0)
        q1 = tl.load(cuq_ptr + bs + 1, mask=b_ok, other=0)
        nb = tl.where(b_ok, tl.cdiv(q1 - q0, BLOCK_M), 0)
        incl = tl.cumsum(nb, axis=0) + seen
        excl = incl - nb
        hit = b_ok & (excl <= g) & (g < incl)
        seq = tl.maximum(seq, tl.max(tl.where(hit, bs, -1), axis=0))
        mblk = tl.maximum(mblk, tl.max(tl.where(hit, g - excl, 0), axis=0))
        seen += tl.sum(nb, axis=0)
    if seq < 0:
        return
    q_start = tl.load(cuq_ptr + seq)
    q_len = tl.load(cuq_ptr + seq + 1) - q_start
    k_start = tl.load(cuk_ptr + seq)
    k_len = tl.load(cuk_ptr + seq + 1) - k_start
    shift = k_len - q_len  # query i sees keys j <= i + shift

    rows = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = rows < q_len
    t_q = (q_start + rows).to(tl.int64)
    dn = tl.arange(0, DN)
    dr = tl.arange(0, DR)
    dv = tl.arange(0, DV)
    q_n = tl.load(qn_ptr + t_q[:, None] * SQN_T + hd * SQN_H + dn[None, :], mask=r_ok[:, None], other=0.0)
    q_r = tl.load(qr_ptr + t_q[:, None] * SQR_T + hd * SQR_H + dr[None, :], mask=r_ok[:, None], other=0.0)
    scale = SM_SCALE * 1.4426950408889634
    m_i = tl.full((BLOCK_M,), -1e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, DV), dtype=tl.float32)
    hi = k_len
    if CAUSAL:
        hi = tl.minimum(k_len, (mblk + 1) * BLOCK_M + shift)
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(0, hi, BLOCK_N):
        cols = n0 + offs_n
        c_ok = cols < k_len
        t_k = (k_start + cols).to(tl.int64)
        k_n = tl.load(kn_ptr + t_k[:, None] * SKN_T + hd * SKN_H + dn[None, :], mask=c_ok[:, None], other=0.0)
        k_r = tl.load(kr_ptr + t_k[:, None] * SKR_T + dr[None, :], mask=c_ok[:, None], other=0.0)
        v = tl.load(v_ptr + t_k[:, None] * SV_T + hd * SV_H + dv[None, :], mask=c_ok[:, None], other=0.0)
        s = (mma(q_n, tl.trans(k_n), DOT_IEEE) + mma(q_r, tl.trans(k_r), DOT_IEEE)) * scale  # [BM, BN]
        ok = c_ok[None, :]
        if CAUSAL:
            ok = ok & (cols[None, :] <= rows[:, None] + shift)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, DOT_IEEE)
        m_i = m_new
    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_ptr + t_q[:, None] * SO_T + hd * SO_H + dv[None, :], round_to(o, OUT_DTYPE), mask=r_ok[:, None])


# ------------------------------------------------------------------------------------- launch as data


@dataclass(frozen=True)
class DecodeTiles:
    block_h: int  # heads per program (all heads share the cache rows)
    block_n: int  # cache rows per step
    num_splits: int  # programs per sequence along the context
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class PrefillTiles:
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


def decode_num_splits(batch: int, n_heads: int, block_h: int, max_context: int, block_n: int,
                      sm_count: int = 132) -> int:
    """Splits of the context so that the grid fills about two waves of ``sm_count`` SMs (H200: 132 SMs),
    never splitting below 4 ``block_n`` rows per split. Pure, so the TensorRT plugin picks the same."""
    programs = batch * cdiv(n_heads, block_h)
    want = max(1, cdiv(2 * sm_count, max(1, programs)))
    most = max(1, max_context // (4 * block_n))
    return int(min(want, most, 64))


def decode_tiles(batch: int, n_heads: int, max_context: int, mode: str, num_splits: int | None = None) -> DecodeTiles:
    if mode == "interpret":
        bh = min(64, max(16, next_pow2(n_heads)))
        return DecodeTiles(block_h=bh, block_n=64, num_splits=num_splits or 1)
    bh, bn = 16, 64  # acc [16, 512] fp32 stays in registers; the K tile [64, 576] bf16 is 72 KiB per stage
    return DecodeTiles(block_h=bh, block_n=bn, num_warps=4, num_stages=2,
                       num_splits=num_splits or decode_num_splits(batch, n_heads, bh, max_context, bn))


def prefill_tiles(mode: str) -> PrefillTiles:
    if mode == "interpret":
        return PrefillTiles(block_m=64, block_n=64)
    return PrefillTiles(block_m=64, block_n=64, num_warps=4, num_stages=2)


def decode_spec(batch, n_heads, dl: int, dr: int, page: int, q_dtype: torch.dtype, kv_dtype: torch.dtype,
                softmax_scale: float, tiles: DecodeTiles, *, interpret: bool | None = None) -> KernelSpec:
    interpret = interpreting() if interpret is None else interpret
    return KernelSpec(
        name="mla_decode",
        kernel=_mla_decode_kernel,
        signature={"ql_ptr": ptr(q_dtype), "qr_ptr": ptr(q_dtype), "kv_ptr": ptr(kv_dtype),
                   "kvs_ptr": ptr(torch.float32), "bt_ptr": ptr(torch.int32), "lens_ptr": ptr(torch.int32),
                   "B": "i32", "NH": "i32", "MAX_PAGES": "i32", "o_ptr": ptr(torch.float32),
                   "lse_ptr": ptr(torch.float32)},
        constexprs={"SM_SCALE": float(softmax_scale), "DL": dl, "DR": dr, "PAGE": page, "BLOCK_H": tiles.block_h,
                    "BLOCK_N": tiles.block_n, "NUM_SPLITS": tiles.num_splits, "KV_FP8": kv_dtype == FP8_DTYPE,
                    "DOT_IEEE": q_dtype == torch.float32 or interpret},
        grid=(batch * cdiv(n_heads, tiles.block_h) * tiles.num_splits,),
        n_inputs=6, n_scalars=3, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


def decode_reduce_spec(batch, n_heads, dl: int, num_splits: int, out_dtype: torch.dtype) -> KernelSpec:
    return KernelSpec(
        name="mla_decode_reduce",
        kernel=_mla_decode_reduce_kernel,
        signature={"o_ptr": ptr(torch.float32), "lse_ptr": ptr(torch.float32), "B": "i32", "NH": "i32",
                   "out_ptr": ptr(out_dtype)},
        constexprs={"DL": dl, "NUM_SPLITS": num_splits, "S_PAD": next_pow2(num_splits),
                    "OUT_DTYPE": tl_dtype(out_dtype)},
        grid=(batch * n_heads,),
        n_inputs=2, n_scalars=2, num_warps=4, num_stages=1,
    )


def cache_write_spec(t, dl: int, dr: int, src_dtype: torch.dtype, kv_dtype: torch.dtype, block_t: int = 16) -> KernelSpec:
    return KernelSpec(
        name="mla_cache_write",
        kernel=_mla_cache_write_kernel,
        signature={"lat_ptr": ptr(src_dtype), "kr_ptr": ptr(src_dtype), "slot_ptr": ptr(torch.int32),
                   "kvs_ptr": ptr(torch.float32), "T": "i32", "LAT_STRIDE": "i32", "KR_STRIDE": "i32",
                   "kv_ptr": ptr(kv_dtype)},
        constexprs={"DL": dl, "DR": dr, "BLOCK_T": block_t, "KV_FP8": kv_dtype == FP8_DTYPE},
        grid=(cdiv(t, block_t),),
        n_inputs=4, n_scalars=3, num_warps=4, num_stages=1,
    )


def prefill_spec(t_q, batch, n_heads, dn: int, dr: int, dv: int, dtype: torch.dtype, softmax_scale: float,
                 tiles: PrefillTiles, *, causal: bool = True, interpret: bool | None = None) -> KernelSpec:
    interpret = interpreting() if interpret is None else interpret
    sig = {"qn_ptr": ptr(dtype), "qr_ptr": ptr(dtype), "kn_ptr": ptr(dtype), "kr_ptr": ptr(dtype),
           "v_ptr": ptr(dtype), "cuq_ptr": ptr(torch.int32), "cuk_ptr": ptr(torch.int32)}
    for n in ("B", "SQN_T", "SQN_H", "SQR_T", "SQR_H", "SKN_T", "SKN_H", "SKR_T", "SV_T", "SV_H", "SO_T", "SO_H"):
        sig[n] = "i32"
    sig["o_ptr"] = ptr(dtype)
    return KernelSpec(
        name="mla_prefill",
        kernel=_mla_prefill_kernel,
        signature=sig,
        constexprs={"SM_SCALE": float(softmax_scale), "DN": dn, "DR": dr, "DV": dv, "BLOCK_M": tiles.block_m,
                    "BLOCK_N": tiles.block_n, "CAUSAL": causal, "SEQ_CHUNK": 64,
                    "DOT_IEEE": dtype == torch.float32 or interpret, "OUT_DTYPE": tl_dtype(dtype)},
        grid=(cdiv(t_q, tiles.block_m) + batch, n_heads),
        n_inputs=7, n_scalars=12, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


# -------------------------------------------------------------------------------------------- wrappers


def _fp8_scale(kv_cache: torch.Tensor, kv_scale: torch.Tensor | float | None) -> torch.Tensor:
    dev = kv_cache.device
    if kv_cache.dtype != FP8_DTYPE:
        require(kv_scale is None, "kv_scale is only for a float8_e4m3fn cache")
        return torch.ones((1,), dtype=torch.float32, device=dev)
    require(kv_scale is not None, "an fp8 cache needs kv_scale (real = fp8 * kv_scale)")
    s = torch.as_tensor(kv_scale, dtype=torch.float32, device=dev).reshape(-1)
    require(s.numel() == 1, f"kv_scale must be one number, got {s.numel()} values")
    return s.contiguous()


def mla_decode(q_latent: torch.Tensor, q_rope: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
               seq_lens: torch.Tensor, *, softmax_scale: float, kv_scale=None, num_splits: int | None = None,
               tiles: DecodeTiles | None = None) -> torch.Tensor:
    """Absorbed MLA decode: one query token per sequence against its paged latent cache -> o_latent [B, H, C].

    q_latent [B, H, C] (C = kv_lora_rank), q_rope [B, H, R]; kv_cache [pages, page_size, C + R]; block_table
    [B, max_pages] int32; seq_lens [B] int32 (tokens in the cache, the current one included).
    """
    check_tensor("q_latent", q_latent, dtype=FLOAT_DTYPES, dims=3)
    b, nh, dl = q_latent.shape
    check_tensor("q_rope", q_rope, dtype=q_latent.dtype, dims=3)
    dr = q_rope.shape[2]
    require(tuple(q_rope.shape[:2]) == (b, nh), f"q_rope is {list(q_rope.shape)}, q_latent {list(q_latent.shape)}")
    check_tensor("kv_cache", kv_cache, dtype=(q_latent.dtype, FP8_DTYPE), dims=3)
    require(kv_cache.shape[2] == dl + dr, f"kv_cache rows hold {kv_cache.shape[2]} values, queries need {dl}+{dr}")
    require(dl == next_pow2(dl) and dr == next_pow2(dr), f"latent ({dl}) and rope ({dr}) widths must be powers of 2")
    check_tensor("block_table", block_table, dtype=torch.int32, dims=2)
    require(block_table.shape[0] == b, f"block_table has {block_table.shape[0]} rows for {b} sequences")
    check_tensor("seq_lens", seq_lens, dtype=torch.int32, shape=(b,))
    scale_t = _fp8_scale(kv_cache, kv_scale)
    mode = kernel_mode(q_latent, q_rope, kv_cache, block_table, seq_lens)
    page = kv_cache.shape[1]
    tiles = tiles or decode_tiles(b, nh, block_table.shape[1] * page, mode, num_splits)
    o_part = torch.empty((b, nh, tiles.num_splits, dl), dtype=torch.float32, device=q_latent.device)
    lse = torch.empty((b, nh, tiles.num_splits), dtype=torch.float32, device=q_latent.device)
    decode_spec(b, nh, dl, dr, page, q_latent.dtype, kv_cache.dtype, softmax_scale, tiles).launch(
        q_latent, q_rope, kv_cache, scale_t, block_table, seq_lens, b, nh, block_table.shape[1], o_part, lse)
    out = torch.empty((b, nh, dl), dtype=q_latent.dtype, device=q_latent.device)
    decode_reduce_spec(b, nh, dl, tiles.num_splits, q_latent.dtype).launch(o_part, lse, b, nh, out)
    return out


def mla_cache_write(kv_cache: torch.Tensor, slots: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
                    kv_scale=None) -> None:
    """Write latent [T, C] ++ k_rope [T, R] into kv_cache [pages, page_size, C+R] at rows ``slots [T]`` int32
    (page * page_size + offset; negative skips the token). An fp8 cache stores value / kv_scale, RNE, saturated."""
    check_tensor("kv_cache", kv_cache, dims=3)
    check_tensor("latent", latent, dtype=FLOAT_DTYPES, dims=2, contiguous=False)
    t, dl = latent.shape
    check_tensor("k_rope", k_rope, dtype=latent.dtype, dims=2, contiguous=False)
    dr = k_rope.shape[1]
    require(latent.stride(1) == 1 and k_rope.stride(1) == 1, "latent and k_rope need contiguous rows")
    require(kv_cache.shape[2] == dl + dr, f"kv_cache rows hold {kv_cache.shape[2]} values, got {dl}+{dr}")
    require(kv_cache.dtype in (latent.dtype, FP8_DTYPE), f"kv_cache dtype {kv_cache.dtype} vs latent {latent.dtype}")
    check_tensor("slots", slots, dtype=torch.int32, shape=(t,))
    scale_t = _fp8_scale(kv_cache, kv_scale)
    kernel_mode(kv_cache, slots, latent, k_rope)
    cache_write_spec(t, dl, dr, latent.dtype, kv_cache.dtype).launch(
        latent, k_rope, slots, scale_t, t, latent.stride(0), k_rope.stride(0), kv_cache)


def mla_prefill(q_nope: torch.Tensor, q_rope: torch.Tensor, k_nope: torch.Tensor, k_rope: torch.Tensor,
                v: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor | None = None, *,
                softmax_scale: float, causal: bool = True, tiles: PrefillTiles | None = None) -> torch.Tensor:
    """Ragged (varlen) MLA prefill attention -> [Tq, H, Dv] in q's dtype.

    q_nope [Tq, H, Dn], q_rope [Tq, H, R], k_nope [Tk, H, Dn], k_rope [Tk, R] (one rope key for all heads),
    v [Tk, H, Dv]; cu_seqlens_q / cu_seqlens_k [B + 1] int32 offsets (keys default to the queries'). Views with
    a contiguous last dim are fine (e.g. q.split([128, 64], -1)).
    """
    check_tensor("q_nope", q_nope, dtype=FLOAT_DTYPES, dims=3, contiguous=False)
    tq, nh, dn = q_nope.shape
    dt = q_nope.dtype
    for name, x, nd in (("q_rope", q_rope, 3), ("k_nope", k_nope, 3), ("k_rope", k_rope, 2), ("v", v, 3)):
        check_tensor(name, x, dtype=dt, dims=nd, contiguous=False)
        require(x.stride(-1) == 1, f"{name} needs a contiguous last dim")
    require(q_nope.stride(-1) == 1, "q_nope needs a contiguous last dim")
    dr, dv, tk = q_rope.shape[2], v.shape[2], k_nope.shape[0]
    require(q_rope.shape[:2] == (tq, nh), f"q_rope is {list(q_rope.shape)}, q_nope {list(q_nope.shape)}")
    require(tuple(k_nope.shape) == (tk, nh, dn), f"k_nope is {list(k_nope.shape)}, expected [{tk}, {nh}, {dn}]")
    require(tuple(k_rope.shape) == (tk, dr), f"k_rope is {list(k_rope.shape)}, expected [{tk}, {dr}]")
    require(tuple(v.shape[:2]) == (tk, nh), f"v is {list(v.shape)}, expected [{tk}, {nh}, Dv]")
    for name, d in (("nope", dn), ("rope", dr), ("v", dv)):
        require(d == next_pow2(d) and d >= 16, f"{name} head dim {d} must be a power of 2 >= 16")
    check_tensor("cu_seqlens_q", cu_seqlens_q, dtype=torch.int32, dims=1)
    cu_k = cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k
    check_tensor("cu_seqlens_k", cu_k, dtype=torch.int32, shape=cu_seqlens_q.shape)
    mode = kernel_mode(q_nope, q_rope, k_nope, k_rope, v, cu_seqlens_q, cu_k)
    tiles = tiles or prefill_tiles(mode)
    batch = cu_seqlens_q.numel() - 1
    out = torch.empty((tq, nh, dv), dtype=dt, device=q_nope.device)
    prefill_spec(tq, batch, nh, dn, dr, dv, dt, softmax_scale, tiles, causal=causal).launch(
        q_nope, q_rope, k_nope, k_rope, v, cu_seqlens_q, cu_k, batch,
        q_nope.stride(0), q_nope.stride(1), q_rope.stride(0), q_rope.stride(1), k_nope.stride(0), k_nope.stride(1),
        k_rope.stride(0), v.stride(0), v.stride(1), out.stride(0), out.stride(1), out)
    return out


def paged_from_contiguous(latent: torch.Tensor, k_rope: torch.Tensor, lens, page_size: int, *,
                          dtype: torch.dtype | None = None, kv_scale=None, generator: torch.Generator | None = None,
                          spare_pages: int = 1):
    """Test/adapter helper: put per-sequence caches latent [B, S, C], k_rope [B, S, R] into a paged cache with
    pages in shuffled order -> (kv_cache [P, page, C+R], block_table [B, max_pages] int32)."""
    b, s, c = latent.shape
    r = k_rope.shape[-1]
    lens = [int(n) for n in lens]
    max_pages = max(1, max(cdiv(n, page_size) for n in lens) if lens else 1)
    n_pages = b * max_pages + spare_pages
    perm = torch.randperm(n_pages, generator=generator)
    dtype = dtype or latent.dtype
    kv = torch.zeros((n_pages, page_size, c + r), dtype=dtype, device=latent.device)
    table = torch.zeros((b, max_pages), dtype=torch.int32)
    for i in range(b):
        table[i] = perm[i * max_pages:(i + 1) * max_pages].to(torch.int32)
    table = table.to(latent.device)
    slots = []
    for i in range(b):
        pos = torch.arange(lens[i])
        slots.append(table[i, pos // page_size].cpu().long() * page_size + pos % page_size)
    flat_lat = torch.cat([latent[i, : lens[i]] for i in range(b)]) if b else latent[:0, 0]
    flat_kr = torch.cat([k_rope[i, : lens[i]] for i in range(b)]) if b else k_rope[:0, 0]
    mla_cache_write_ref(kv, torch.cat(slots).to(latent.device), flat_lat, flat_kr, kv_scale)
    return kv, table


__all__ = [
    "DecodeTiles", "PrefillTiles", "absorb_query", "decode_num_splits", "decode_tiles", "mla_cache_write",
    "mla_cache_write_ref", "mla_decode", "mla_decode_ref", "mla_prefill", "mla_prefill_ref", "paged_from_contiguous",
    "prefill_tiles", "project_values",
]
