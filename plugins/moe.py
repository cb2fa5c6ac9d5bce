"""Grouped block-FP8 MoE for K2 / DeepSeek-V3: routing, permutation, grouped GEMMs with fused SwiGLU, un-permute.

Pipeline (one kernel each, so each is also one TensorRT AOT plugin: ``tensorrt.plugin.aot_impl`` launches exactly
one kernel)::

    x [T, h] ──route──▶ ids [T, k], weights [T, k], counts [T/BT, E_loc]   (sigmoid + bias, group-limited top-k)
            └─act_quant─▶ xq [T, h] fp8, xs [T, h/128]                        (plugins.fp8_gemm)
    ids, counts ──scatter──▶ sorted [P] (assignment t*k+j per row, grouped by expert, each expert padded to
                             BLOCK_M rows), block_expert [P/BLOCK_M], n_rows [1]
    gemm1: rows of xq gathered by sorted  x  w13[e]  -> silu(gate) * up  -> hq [P, I] fp8, hs [P, I/128]
    gemm2: hq x w2[e], times the routing weight       -> buf [T*k, h]  (one row per assignment)
    combine: out[t] = sum_j buf[t*k + j] over the local experts (+ the shared expert) -> [T, h]

Only experts that receive tokens get row blocks, so the GEMMs cover exactly the experts a batch hits. Expert
parallelism: a rank owns experts ``[expert_start, expert_start + E_loc)``; routing is global (every rank computes
the same top-k), a rank's output is the sum over its own experts, and summing the ranks' outputs (all-reduce)
gives the layer. The shared expert runs through the same two GEMM kernels with ``IDENTITY`` routing (every
token, weight 1).

Routing follows transformers' ``DeepseekV3TopkRouter`` (transformers 5.x ``modeling_deepseek_v3.py``) and
``k2trt.model.route``: logits in float32, ``scores = sigmoid``, choice = scores + ``e_score_correction_bias``,
groups scored by the sum of their top-2, the best ``topk_group`` groups kept (others -inf), top-k on the choice,
weights = the raw scores of the chosen experts, renormalised (``+ 1e-20``) and times ``routed_scaling_factor``.
The grouped-GEMM structure (sorted ids padded per expert, one expert per row block) follows vLLM's
``fused_moe`` / ``moe_align_block_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from k2trt.config import K2Config
from k2trt.fp8 import FP8_DTYPE, FP8_MAX, dequantize_block_fp8
from plugins._runtime import cdiv, check_tensor, interpreting, kernel_mode, next_pow2, require
from plugins._spec import KernelSpec, ptr, tl_dtype
from plugins._triton_helpers import e4m3_rne, mma, round_to
from plugins.fp8_gemm import ACT_EPS, GROUP, act_dequant_ref, act_quant, act_quant_ref

W13_ORDERS = ("gate_up", "up_gate")  # transformers' gate_up_proj and vLLM's w13 are gate first; TRT-LLM's fc is up first

# ------------------------------------------------------------------------------------------ references


def moe_route_ref(x: torch.Tensor, router_w: torch.Tensor, bias: torch.Tensor, cfg: K2Config):
    """x [T, h], router_w [E, h], bias [E] -> (ids [T, k] int32, weights [T, k] float32). Plain DeepSeek-V3 routing."""
    logits = x.float() @ router_w.float().t()  # [T, E]
    scores = logits.sigmoid()
    choice = scores + bias.float()
    t, e = choice.shape
    if cfg.n_group > 1:
        grouped = choice.view(t, cfg.n_group, e // cfg.n_group)  # [T, G, E/G]
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # [T, G]
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, group_scores.topk(cfg.topk_group, dim=-1).indices, True)
        choice = grouped.masked_fill(~keep[..., None], float("-inf")).view(t, e)
    ids = choice.topk(cfg.num_experts_per_tok, dim=-1).indices  # [T, k]
    w = scores.gather(1, ids)
    if cfg.norm_topk_prob:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return ids.to(torch.int32), w * cfg.routed_scaling_factor


def _split_w13(w13: torch.Tensor, order: str):
    """[2I, h] -> (gate [I, h], up [I, h])."""
    a, b = w13.chunk(2, dim=0)
    return (a, b) if order == "gate_up" else (b, a)


def expert_mlp_ref(xq, xs, w13, w13_s, w2, w2_s, *, w13_order="gate_up") -> torch.Tensor:
    """One expert on pre-quantized tokens, with the kernels' numerics (float32 h, h re-quantized per 128) -> f32.

    xq [n, h] fp8, xs [n, h/128]; w13 [2I, h] fp8, w13_s [2I/128, h/128]; w2 [h, I] fp8, w2_s [h/128, I/128].
    """
    a = act_dequant_ref(xq, xs)  # [n, h]
    gate_up = a @ dequantize_block_fp8(w13, w13_s).t()  # [n, 2I]
    g, u = _split_w13(gate_up.t(), w13_order)
    h = torch.nn.functional.silu(g.t()) * u.t()  # [n, I] f32
    hq, hs = act_quant_ref(h)
    return act_dequant_ref(hq, hs) @ dequantize_block_fp8(w2, w2_s).t()  # [n, h]


def moe_forward_ref(x, router_w, bias, w13, w13_s, w2, w2_s, cfg: K2Config, *, shared=None, expert_start=0,
                    w13_order="gate_up", out_dtype=None) -> torch.Tensor:
    """The whole MoE layer (this rank's experts + the shared expert), in plain PyTorch. Same signature as
    :func:`moe_forward`: w13 [E_loc, 2I, h], w13_s [E_loc, 2I/128, h/128], w2 [E_loc, h, I], w2_s [E_loc, h/128, I/128];
    ``shared`` = (w13, w13_s, w2, w2_s) of the shared expert or None."""
    out_dtype = out_dtype or x.dtype
    ids, wts = moe_route_ref(x, router_w, bias, cfg)
    xq, xs = act_quant_ref(x)
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(w13.shape[0]):
        tok, slot = (ids == expert_start + e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        out = expert_mlp_ref(xq[tok], xs[tok], w13[e], w13_s[e], w2[e], w2_s[e], w13_order=w13_order)
        # each assignment's weighted row is stored in the activation dtype before the sum (the kernel's buffer)
        y.index_add_(0, tok, (out * wts[tok, slot, None]).to(x.dtype).float())
    if shared is not None:
        y += expert_mlp_ref(xq, xs, *shared, w13_order=w13_order).to(x.dtype).float()
    return y.to(out_dtype)


# --------------------------------------------------------------------------------------------- kernels


@triton.jit
def _moe_route_kernel(
    x_ptr,  # [T, h] activations (bf16 / fp16 / fp32; same dtype as the router weight)
    w_ptr,  # [E, h] router weight
    bias_ptr,  # [E] float32 e_score_correction_bias
    T, H, E_START,  # int32; local experts are [E_START, E_START + E_LOCAL)
    ids_ptr,  # [T, TOPK] int32 chosen experts (global ids)
    wts_ptr,  # [T, TOPK] float32 routing weights
    cnt_ptr,  # [cdiv(T, BLOCK_T), E_LOCAL_PAD] int32 assignments of this token block to each local expert
    E: tl.constexpr, E_PAD: tl.constexpr, TOPK: tl.constexpr, TOPK_PAD: tl.constexpr,
    N_GROUP: tl.constexpr, N_GROUP_PAD: tl.constexpr, TOPK_GROUP: tl.constexpr,
    NORM: tl.constexpr, SCALE: tl.constexpr, E_LOCAL: tl.constexpr, E_LOCAL_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, DOT_IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    r_ok = rows < T
    col = tl.arange(0, E_PAD)
    c_ok = col < E
    offs_h = tl.arange(0, BLOCK_H)
    # router logits [BLOCK_T, E_PAD] in float32
    logits = tl.zeros((BLOCK_T, E_PAD), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        h_ok = offs_h < H - h0
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * H + h0 + offs_h[None, :], mask=r_ok[:, None] & h_ok[None, :], other=0.0)
        w = tl.load(w_ptr + col[:, None].to(tl.int64) * H + h0 + offs_h[None, :], mask=c_ok[:, None] & h_ok[None, :], other=0.0)
        logits += mma(x, tl.trans(w), DOT_IEEE)  # bf16 x bf16 products are exact in the fp32 accumulator
    scores = tl.sigmoid(logits)
    bias = tl.load(bias_ptr + col, mask=c_ok, other=0.0)
    choice = tl.where(c_ok[None, :], scores + bias[None, :], float("-inf"))

    if N_GROUP > 1:  # group-limited routing: keep the TOPK_GROUP groups with the best top-2 sums
        GS: tl.constexpr = E // N_GROUP
        grp = col // GS
        gcol = tl.arange(0, N_GROUP_PAD)
        gscore = tl.full((BLOCK_T, N_GROUP_PAD), float("-inf"), tl.float32)
        for g in tl.static_range(N_GROUP):
            cg = tl.where(((grp == g) & c_ok)[None, :], choice, float("-inf"))
            m1 = tl.max(cg, axis=1)
            i1 = tl.argmax(cg, axis=1)
            m2 = tl.max(tl.where(col[None, :] == i1[:, None], float("-inf"), cg), axis=1)
            gscore = tl.where(gcol[None, :] == g, (m1 + m2)[:, None], gscore)
        keep = tl.zeros((BLOCK_T, N_GROUP_PAD), dtype=tl.int32)
        for i in tl.static_range(TOPK_GROUP):
            gi = tl.argmax(gscore, axis=1)
            hit = gcol[None, :] == gi[:, None]
            keep = tl.where(hit, 1, keep)
            gscore = tl.where(hit, float("-inf"), gscore)
        allowed = tl.zeros((BLOCK_T, E_PAD), dtype=tl.int32)
        for g in tl.static_range(N_GROUP):
            kg = tl.max(tl.where(gcol[None, :] == g, keep, 0), axis=1)  # [BLOCK_T] 1 if group g is kept
            allowed = tl.where((grp[None, :] == g) & (kg[:, None] > 0), 1, allowed)
        choice = tl.where(allowed > 0, choice, float("-inf"))

    kcol = tl.arange(0, TOPK_PAD)
    ids = tl.zeros((BLOCK_T, TOPK_PAD), dtype=tl.int32)
    wts = tl.zeros((BLOCK_T, TOPK_PAD), dtype=tl.float32)
    for i in tl.static_range(TOPK):
        idx = tl.argmax(choice, axis=1)  # [BLOCK_T]
        hit = col[None, :] == idx[:, None]
        wi = tl.sum(tl.where(hit, scores, 0.0), axis=1)
        ids = tl.where(kcol[None, :] == i, idx[:, None], ids)
        wts = tl.where(kcol[None, :] == i, wi[:, None], wts)
        choice = tl.where(hit, float("-inf"), choice)
    if NORM:
        wts = tl.div_rn(wts, tl.sum(wts, axis=1)[:, None] + 1e-20)
    wts = wts * SCALE
    k_ok = kcol < TOPK
    out_offs = rows[:, None].to(tl.int64) * TOPK + kcol[None, :]
    tl.store(ids_ptr + out_offs, ids, mask=r_ok[:, None] & k_ok[None, :])
    tl.store(wts_ptr + out_offs, wts, mask=r_ok[:, None] & k_ok[None, :])

    # per-block histogram of local assignments; the last bin (>= E_LOCAL) collects everything else
    loc = ids - E_START
    local = r_ok[:, None] & k_ok[None, :] & (loc >= 0) & (loc < E_LOCAL)
    bins = tl.where(local, loc, E_LOCAL_PAD - 1)
    counts = tl.histogram(tl.reshape(bins, (BLOCK_T * TOPK_PAD,)), E_LOCAL_PAD)
    tl.store(cnt_ptr + pid * E_LOCAL_PAD + tl.arange(0, E_LOCAL_PAD), counts)


@triton.jit
def _moe_scatter_kernel(
    ids_ptr,  # [T, TOPK] int32 chosen experts (global ids)
    cnt_ptr,  # [cdiv(T, BLOCK_T), E_LOCAL_PAD] int32 per-block counts from the route kernel
    T, E_START, MAX_BLOCKS,  # int32
    sorted_ptr,  # [MAX_BLOCKS * BLOCK_M] int32: assignment t*TOPK+j per row; T*TOPK marks a padding row
    bexp_ptr,  # [MAX_BLOCKS] int32: local expert of each BLOCK_M-row block, -1 past the last
    nrows_ptr,  # [1] int32: rows in use (a multiple of BLOCK_M)
    TOPK: tl.constexpr, E_LOCAL: tl.constexpr, E_LOCAL_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_M: tl.constexpr, ENT_PAD: tl.constexpr, CNT_ROWS: tl.constexpr,
):
    c = tl.program_id(0)
    n_chunks = tl.cdiv(T, BLOCK_T)
    ecol = tl.arange(0, E_LOCAL_PAD)
    e_ok = ecol < E_LOCAL
    total_cnt = tl.zeros((E_LOCAL_PAD,), dtype=tl.int32)
    before = tl.zeros((E_LOCAL_PAD,), dtype=tl.int32)  # assignments of earlier blocks, per expert
    for r0 in range(0, n_chunks, CNT_ROWS):
        r = r0 + tl.arange(0, CNT_ROWS)
        cnt = tl.load(cnt_ptr + r[:, None] * E_LOCAL_PAD + ecol[None, :], mask=(r < n_chunks)[:, None], other=0)
        total_cnt += tl.sum(cnt, axis=0)
        before += tl.sum(tl.where((r < c)[:, None], cnt, 0), axis=0)
    total_cnt = tl.where(e_ok, total_cnt, 0)
    padded = tl.cdiv(total_cnt, BLOCK_M) * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    n_rows = tl.sum(padded, axis=0)

    # this block's assignments: slot = start of its expert + earlier blocks' + earlier ones in this block
    j = tl.arange(0, ENT_PAD)
    flat = c * (BLOCK_T * TOPK) + j
    ok = (j < BLOCK_T * TOPK) & (flat < T * TOPK)
    e = tl.load(ids_ptr + flat, mask=ok, other=-1) - E_START
    ok = ok & (e >= 0) & (e < E_LOCAL)
    e = tl.where(ok, e, 0)
    same_before = (e[None, :] == e[:, None]) & ok[None, :] & (j[None, :] < j[:, None])  # [ENT, ENT]
    within = tl.sum(same_before.to(tl.int32), axis=1)
    base = tl.gather(starts + before, e, 0)
    tl.store(sorted_ptr + base + within, flat, mask=ok)

    if c == 0:
        tl.store(nrows_ptr, n_rows)
        # padding rows of each expert: [start + count, end)
        sub = tl.arange(0, 16)
        for off in tl.static_range(0, BLOCK_M, 16):
            slot = (starts + total_cnt + off)[:, None] + sub[None, :]  # [E_LOCAL_PAD, 16]
            tl.store(sorted_ptr + slot, tl.full((E_LOCAL_PAD, 16), 0, tl.int32) + T * TOPK,
                     mask=e_ok[:, None] & (slot < ends[:, None]))
        # expert of each row block: the number of experts that end at or before the block's first row
        for b0 in range(0, MAX_BLOCKS, 16):
            b = b0 + sub
            first_row = b * BLOCK_M
            ex = tl.sum(((ends[None, :] <= first_row[:, None]) & e_ok[None, :]).to(tl.int32), axis=1)
            ex = tl.where(first_row < n_rows, ex, -1)
            tl.store(bexp_ptr + b, ex, mask=b < MAX_BLOCKS)


@triton.jit
def _moe_gemm1_kernel(
    xq_ptr,  # [T, h] float8_e4m3fn tokens, quantized per token per 128 channels
    xs_ptr,  # [T, cdiv(h, 128)] float32
    w_ptr,  # [E_LOCAL, 2I, h] float8_e4m3fn gate and up projections stacked (order: GATE_FIRST)
    ws_ptr,  # [E_LOCAL, 2I/128, cdiv(h, 128)] float32 block scales
    sorted_ptr,  # [P] int32 assignment per row (unused when IDENTITY)
    bexp_ptr,  # [P / BLOCK_M] int32 expert per row block (unused when IDENTITY)
    nrows_ptr,  # [1] int32 rows in use (unused when IDENTITY)
    T, H, I,  # int32
    hq_ptr,  # [P, I] float8_e4m3fn  silu(gate) * up, quantized per row per 128 (IDENTITY: [T, I])
    hs_ptr,  # [P, I/128] float32
    TOPK: tl.constexpr, BLOCK_M: tl.constexpr, GATE_FIRST: tl.constexpr, IDENTITY: tl.constexpr,
):
    BLOCK_N: tl.constexpr = 128  # one output tile = one quantization group of h
    BLOCK_K: tl.constexpr = 128
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if IDENTITY:
        if pid_m * BLOCK_M >= T:
            return
        e = pid_m * 0  # the single expert (an int32 tensor, like the loaded one)
        row_ok = rows < T
        valid = row_ok
        tok = rows
    else:
        n_rows = tl.load(nrows_ptr)
        if pid_m * BLOCK_M >= n_rows:
            return
        e = tl.load(bexp_ptr + pid_m)
        row_ok = rows < n_rows
        flat = tl.load(sorted_ptr + rows, mask=row_ok, other=0)
        valid = row_ok & (flat < T * TOPK)
        tok = tl.where(valid, flat // TOPK, 0)
    n_kb = tl.cdiv(H, BLOCK_K)
    if GATE_FIRST:
        gate0 = 0
        up0 = I
    else:
        gate0 = I
        up0 = 0
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    w_e = w_ptr + e.to(tl.int64) * (2 * I) * H
    bg_ptrs = w_e + (gate0 + offs_n)[None, :].to(tl.int64) * H + offs_k[:, None]  # [BK, BN]
    bu_ptrs = w_e + (up0 + offs_n)[None, :].to(tl.int64) * H + offs_k[:, None]
    ws_e = ws_ptr + e.to(tl.int64) * (2 * I // 128) * n_kb
    sg_ptr = ws_e + (gate0 // 128 + pid_n) * n_kb  # one scale per K slab: the tile is one 128-row block
    su_ptr = ws_e + (up0 // 128 + pid_n) * n_kb
    a_ptrs = xq_ptr + tok[:, None].to(tl.int64) * H + offs_k[None, :]  # [BM, BK] gathered token rows
    as_ptrs = xs_ptr + tok.to(tl.int64) * n_kb
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, n_kb):
        k_ok = offs_k < H - kb * BLOCK_K
        a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
        a_s = tl.load(as_ptrs + kb, mask=valid, other=0.0)
        bg = tl.load(bg_ptrs, mask=k_ok[:, None], other=0.0)
        bu = tl.load(bu_ptrs, mask=k_ok[:, None], other=0.0)
        s_g = tl.load(sg_ptr + kb)
        s_u = tl.load(su_ptr + kb)
        acc_g += tl.dot(a, bg) * (a_s[:, None] * s_g)
        acc_u += tl.dot(a, bu) * (a_s[:, None] * s_u)
        a_ptrs += BLOCK_K
        bg_ptrs += BLOCK_K
        bu_ptrs += BLOCK_K
    h = acc_g * tl.sigmoid(acc_g) * acc_u  # silu(gate) * up, float32 [BM, 128]
    amax = tl.maximum(tl.max(tl.abs(h), axis=1), 1e-10)  # ACT_EPS
    s = amax / 448.0  # FP8_MAX
    q = e4m3_rne(tl.div_rn(h, s[:, None]))
    tl.store(hq_ptr + rows[:, None].to(tl.int64) * I + offs_n[None, :], q.to(tl.float8e4nv), mask=row_ok[:, None])
    tl.store(hs_ptr + rows.to(tl.int64) * (I // 128) + pid_n, s, mask=row_ok)


@triton.jit
def _moe_gemm2_kernel(
    hq_ptr,  # [P, I] float8_e4m3fn (IDENTITY: [T, I])
    hs_ptr,  # [P, I/128] float32
    w_ptr,  # [E_LOCAL, h, I] float8_e4m3fn down projections
    ws_ptr,  # [E_LOCAL, cdiv(h, 128), I/128] float32
    sorted_ptr,  # [P] int32 (unused when IDENTITY)
    bexp_ptr,  # [P / BLOCK_M] int32 (unused when IDENTITY)
    nrows_ptr,  # [1] int32 (unused when IDENTITY)
    wts_ptr,  # [T * TOPK] float32 routing weights (unused when IDENTITY)
    T, H, I,  # int32
    out_ptr,  # [T * TOPK, h] OUT_DTYPE: expert output x routing weight per assignment (IDENTITY: [T, h])
    TOPK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IDENTITY: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
):
    BLOCK_K: tl.constexpr = 128
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if IDENTITY:
        if pid_m * BLOCK_M >= T:
            return
        e = pid_m * 0  # the single expert (an int32 tensor, like the loaded one)
        row_ok = rows < T
        valid = row_ok
        dest = rows
    else:
        n_rows = tl.load(nrows_ptr)
        if pid_m * BLOCK_M >= n_rows:
            return
        e = tl.load(bexp_ptr + pid_m)
        row_ok = rows < n_rows
        flat = tl.load(sorted_ptr + rows, mask=row_ok, other=0)
        valid = row_ok & (flat < T * TOPK)
        dest = tl.where(valid, flat, 0)
    n_kb = I // BLOCK_K
    n_hb = tl.cdiv(H, 128)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < H
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = hq_ptr + rows[:, None].to(tl.int64) * I + offs_k[None, :]  # [BM, BK]
    as_ptrs = hs_ptr + rows.to(tl.int64) * n_kb
    b_ptrs = w_ptr + e.to(tl.int64) * H * I + offs_n[None, :].to(tl.int64) * I + offs_k[:, None]  # [BK, BN]
    bs_ptrs = ws_ptr + e.to(tl.int64) * n_hb * n_kb + (offs_n // 128) * n_kb
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, n_kb):
        a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        a_s = tl.load(as_ptrs + kb, mask=row_ok, other=0.0)
        b = tl.load(b_ptrs, mask=n_ok[None, :], other=0.0)
        b_s = tl.load(bs_ptrs + kb, mask=n_ok, other=0.0)
        acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if not IDENTITY:
        acc = acc * tl.load(wts_ptr + dest, mask=valid, other=0.0)[:, None]
    out = round_to(acc, OUT_DTYPE)
    tl.store(out_ptr + dest[:, None].to(tl.int64) * H + offs_n[None, :], out, mask=valid[:, None] & n_ok[None, :])


@triton.jit
def _moe_combine_kernel(
    buf_ptr,  # [T * TOPK, h] per-assignment outputs (rows of other ranks' experts are never read)
    ids_ptr,  # [T, TOPK] int32
    shared_ptr,  # [T, h] shared-expert output (read when HAS_SHARED)
    T, H, E_START,  # int32
    out_ptr,  # [T, h] OUT_DTYPE
    TOPK: tl.constexpr, E_LOCAL: tl.constexpr, BLOCK_H: tl.constexpr, HAS_SHARED: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
):
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = offs < H
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for j in tl.static_range(TOPK):
        e = tl.load(ids_ptr + t * TOPK + j) - E_START + offs * 0  # broadcast to the tile
        mine = h_ok & (e >= 0) & (e < E_LOCAL)
        acc += tl.load(buf_ptr + (t * TOPK + j).to(tl.int64) * H + offs, mask=mine, other=0.0).to(tl.float32)
    if HAS_SHARED:
        acc += tl.load(shared_ptr + t.to(tl.int64) * H + offs, mask=h_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + t.to(tl.int64) * H + offs, round_to(acc, OUT_DTYPE), mask=h_ok)


# ------------------------------------------------------------------------------------- launch as data


@dataclass(frozen=True)
class MoeTiles:
    """Tile sizes and launch options of the MoE kernels (gemm1's N tile is fixed at 128, the h quant group)."""

    block_m: int  # rows per expert block (each expert's row count is padded to a multiple)
    block_n2: int  # gemm2 output tile
    route_block_t: int = 16  # tokens per route program (and per counts row)
    route_block_h: int = 64
    num_warps: int = 4
    num_stages: int = 3


def moe_tiles(t: int, topk: int, e_local: int, mode: str) -> MoeTiles:
    """Tiles for ``t`` tokens. Decode (few rows per expert) wastes least with 16-row blocks; prefill uses 64.

    Interpreter: wide route chunks over h (fewer numpy steps).
    """
    rows_per_expert = t * topk / max(1, e_local)
    bm = 16 if rows_per_expert <= 16 else 64
    if mode == "interpret":
        return MoeTiles(block_m=bm, block_n2=256, route_block_t=16, route_block_h=512)
    if bm == 16:
        return MoeTiles(block_m=16, block_n2=128, route_block_t=16, route_block_h=64, num_warps=4, num_stages=4)
    return MoeTiles(block_m=64, block_n2=128, route_block_t=16, route_block_h=64, num_warps=8, num_stages=3)


def max_rows(t, topk: int, e_local: int, block_m: int):
    """Upper bound on the padded rows: every assignment plus < block_m padding per expert that gets any.

    On ints the bound counts at most ``min(e_local, t*topk)`` non-empty experts; on TensorRT shape expressions
    (no ``min``) it uses ``e_local``.
    """
    n = t * topk
    busy = min(e_local, n) if isinstance(n, int) else e_local
    return cdiv(n + busy * (block_m - 1), block_m) * block_m


def route_spec(t, h, cfg: K2Config, x_dtype: torch.dtype, e_local: int, tiles: MoeTiles, *,
               interpret: bool | None = None) -> KernelSpec:
    interpret = interpreting() if interpret is None else interpret
    e = cfg.n_routed_experts
    return KernelSpec(
        name="moe_route",
        kernel=_moe_route_kernel,
        signature={"x_ptr": ptr(x_dtype), "w_ptr": ptr(x_dtype), "bias_ptr": ptr(torch.float32), "T": "i32",
                   "H": "i32", "E_START": "i32", "ids_ptr": ptr(torch.int32), "wts_ptr": ptr(torch.float32),
                   "cnt_ptr": ptr(torch.int32)},
        constexprs={
            "E": e, "E_PAD": next_pow2(e), "TOPK": cfg.num_experts_per_tok,
            "TOPK_PAD": next_pow2(cfg.num_experts_per_tok), "N_GROUP": cfg.n_group,
            "N_GROUP_PAD": next_pow2(cfg.n_group), "TOPK_GROUP": cfg.topk_group, "NORM": bool(cfg.norm_topk_prob),
            "SCALE": float(cfg.routed_scaling_factor), "E_LOCAL": e_local, "E_LOCAL_PAD": next_pow2(e_local + 1),
            "BLOCK_T": tiles.route_block_t, "BLOCK_H": tiles.route_block_h,
            "DOT_IEEE": x_dtype == torch.float32 or interpret,
        },
        grid=(cdiv(t, tiles.route_block_t),),
        n_inputs=3, n_scalars=3, num_warps=4, num_stages=2,
    )


def scatter_spec(t, topk: int, e_local: int, tiles: MoeTiles) -> KernelSpec:
    p = max_rows(t, topk, e_local, tiles.block_m)
    return KernelSpec(
        name="moe_scatter",
        kernel=_moe_scatter_kernel,
        signature={"ids_ptr": ptr(torch.int32), "cnt_ptr": ptr(torch.int32), "T": "i32", "E_START": "i32",
                   "MAX_BLOCKS": "i32", "sorted_ptr": ptr(torch.int32), "bexp_ptr": ptr(torch.int32),
                   "nrows_ptr": ptr(torch.int32)},
        constexprs={"TOPK": topk, "E_LOCAL": e_local, "E_LOCAL_PAD": next_pow2(e_local + 1),
                    "BLOCK_T": tiles.route_block_t, "BLOCK_M": tiles.block_m,
                    "ENT_PAD": next_pow2(tiles.route_block_t * topk), "CNT_ROWS": 16},
        grid=(cdiv(t, tiles.route_block_t),),
        n_inputs=2, n_scalars=3, num_warps=4, num_stages=1,
        notes={"max_rows": p, "max_blocks": p // tiles.block_m},
    )


def gemm1_spec(rows, inter: int, topk: int, tiles: MoeTiles, *, identity: bool, gate_first: bool) -> KernelSpec:
    """``rows``: padded rows P (routed) or tokens T (identity); grid = (row blocks, I/128)."""
    return KernelSpec(
        name="moe_gemm1_swiglu",
        kernel=_moe_gemm1_kernel,
        signature={"xq_ptr": ptr(FP8_DTYPE), "xs_ptr": ptr(torch.float32), "w_ptr": ptr(FP8_DTYPE),
                   "ws_ptr": ptr(torch.float32), "sorted_ptr": ptr(torch.int32), "bexp_ptr": ptr(torch.int32),
                   "nrows_ptr": ptr(torch.int32), "T": "i32", "H": "i32", "I": "i32",
                   "hq_ptr": ptr(FP8_DTYPE), "hs_ptr": ptr(torch.float32)},
        constexprs={"TOPK": topk, "BLOCK_M": tiles.block_m, "GATE_FIRST": gate_first, "IDENTITY": identity},
        grid=(cdiv(rows, tiles.block_m), inter // 128),
        n_inputs=7, n_scalars=3, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


def gemm2_spec(rows, h, topk: int, tiles: MoeTiles, *, identity: bool, out_dtype: torch.dtype) -> KernelSpec:
    return KernelSpec(
        name="moe_gemm2",
        kernel=_moe_gemm2_kernel,
        signature={"hq_ptr": ptr(FP8_DTYPE), "hs_ptr": ptr(torch.float32), "w_ptr": ptr(FP8_DTYPE),
                   "ws_ptr": ptr(torch.float32), "sorted_ptr": ptr(torch.int32), "bexp_ptr": ptr(torch.int32),
                   "nrows_ptr": ptr(torch.int32), "wts_ptr": ptr(torch.float32), "T": "i32", "H": "i32",
                   "I": "i32", "out_ptr": ptr(out_dtype)},
        constexprs={"TOPK": topk, "BLOCK_M": tiles.block_m, "BLOCK_N": tiles.block_n2, "IDENTITY": identity,
                    "OUT_DTYPE": tl_dtype(out_dtype)},
        grid=(cdiv(rows, tiles.block_m), cdiv(h, tiles.block_n2)),
        n_inputs=8, n_scalars=3, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


def combine_spec(t, h, topk: int, e_local: int, *, has_shared: bool, buf_dtype: torch.dtype,
                 out_dtype: torch.dtype, block_h: int = 1024) -> KernelSpec:
    return KernelSpec(
        name="moe_combine",
        kernel=_moe_combine_kernel,
        signature={"buf_ptr": ptr(buf_dtype), "ids_ptr": ptr(torch.int32), "shared_ptr": ptr(out_dtype),
                   "T": "i32", "H": "i32", "E_START": "i32", "out_ptr": ptr(out_dtype)},
        constexprs={"TOPK": topk, "E_LOCAL": e_local, "BLOCK_H": block_h, "HAS_SHARED": has_shared,
                    "OUT_DTYPE": tl_dtype(out_dtype)},
        grid=(t, cdiv(h, block_h)),
        n_inputs=3, n_scalars=3, num_warps=4, num_stages=1,
    )


# -------------------------------------------------------------------------------------------- wrappers


def moe_route(x: torch.Tensor, router_w: torch.Tensor, bias: torch.Tensor, cfg: K2Config, *, expert_start: int = 0,
              n_local: int | None = None, tiles: MoeTiles | None = None):
    """x [T, h], router_w [E, h], bias [E] float32 -> (ids [T, k] int32, weights [T, k] float32, counts).

    ``counts [cdiv(T, BLOCK_T), E_loc_pad]`` int32 counts each token block's assignments to the local experts
    ``[expert_start, expert_start + n_local)`` (for :func:`moe_scatter`).
    """
    e, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    n_local = e if n_local is None else n_local
    check_tensor("x", x, dtype=(torch.bfloat16, torch.float16, torch.float32), dims=2)
    t, h = x.shape
    check_tensor("router_w", router_w, dims=2, shape=(e, h))
    check_tensor("bias", bias, dtype=torch.float32, shape=(e,))
    require(0 <= expert_start and expert_start + n_local <= e,
            f"local experts [{expert_start}, {expert_start + n_local}) fall outside the {e} routed experts")
    mode = kernel_mode(x, router_w, bias)
    tiles = tiles or moe_tiles(t, k, n_local, mode)
    if router_w.dtype != x.dtype:  # e.g. bf16 tokens with a float32 router: route in float32 like transformers
        x, router_w = x.float(), router_w.float().contiguous()
    spec = route_spec(t, h, cfg, x.dtype, n_local, tiles)
    ids = torch.empty((t, k), dtype=torch.int32, device=x.device)
    wts = torch.empty((t, k), dtype=torch.float32, device=x.device)
    counts = torch.empty((cdiv(t, tiles.route_block_t), next_pow2(n_local + 1)), dtype=torch.int32, device=x.device)
    spec.launch(x, router_w, bias, t, h, expert_start, ids, wts, counts)
    return ids, wts, counts


def moe_scatter(ids: torch.Tensor, counts: torch.Tensor, *, expert_start: int, n_local: int, tiles: MoeTiles):
    """Group assignments by local expert -> (sorted [P] int32, block_expert [P/BLOCK_M] int32, n_rows [1] int32)."""
    t, k = ids.shape
    spec = scatter_spec(t, k, n_local, tiles)
    p, nb = spec.notes["max_rows"], spec.notes["max_blocks"]
    sorted_ids = torch.empty((p,), dtype=torch.int32, device=ids.device)
    bexp = torch.empty((nb,), dtype=torch.int32, device=ids.device)
    nrows = torch.empty((1,), dtype=torch.int32, device=ids.device)
    spec.launch(ids, counts, t, expert_start, nb, sorted_ids, bexp, nrows)
    return sorted_ids, bexp, nrows


def _check_expert_weights(w13, w13_s, w2, w2_s, h: int, name: str = "experts") -> tuple[int, int]:
    check_tensor(f"{name} w13", w13, dtype=FP8_DTYPE, dims=3)
    e_loc, two_i, hh = w13.shape
    require(hh == h, f"{name} w13 has {hh} input channels, tokens have {h}")
    require(two_i % 256 == 0, f"{name} w13 rows ({two_i}) must be 2 x a multiple of 128 (gate and up on block boundaries)")
    inter = two_i // 2
    check_tensor(f"{name} w13_scale", w13_s, dtype=torch.float32, shape=(e_loc, two_i // 128, cdiv(h, 128)))
    check_tensor(f"{name} w2", w2, dtype=FP8_DTYPE, shape=(e_loc, h, inter))
    check_tensor(f"{name} w2_scale", w2_s, dtype=torch.float32, shape=(e_loc, cdiv(h, 128), inter // 128))
    return e_loc, inter


def moe_experts(xq, xs, ids, wts, counts, w13, w13_s, w2, w2_s, *, expert_start: int, tiles: MoeTiles,
                w13_order: str = "gate_up", out_dtype=torch.bfloat16) -> torch.Tensor:
    """Grouped expert MLPs for this rank's experts -> per-assignment outputs [T*k, h] (weights applied)."""
    t, k = ids.shape
    h = xq.shape[1]
    e_loc, inter = _check_expert_weights(w13, w13_s, w2, w2_s, h)
    sorted_ids, bexp, nrows = moe_scatter(ids, counts, expert_start=expert_start, n_local=e_loc, tiles=tiles)
    p = sorted_ids.numel()
    hq = torch.empty((p, inter), dtype=FP8_DTYPE, device=xq.device)
    hs = torch.empty((p, inter // 128), dtype=torch.float32, device=xq.device)
    gemm1_spec(p, inter, k, tiles, identity=False, gate_first=w13_order == "gate_up").launch(
        xq, xs, w13, w13_s, sorted_ids, bexp, nrows, t, h, inter, hq, hs)
    buf = torch.empty((t * k, h), dtype=out_dtype, device=xq.device)
    gemm2_spec(p, h, k, tiles, identity=False, out_dtype=out_dtype).launch(
        hq, hs, w2, w2_s, sorted_ids, bexp, nrows, wts, t, h, inter, buf)
    return buf


def shared_expert(xq, xs, w13, w13_s, w2, w2_s, *, tiles: MoeTiles, w13_order: str = "gate_up",
                  out_dtype=torch.bfloat16) -> torch.Tensor:
    """The shared expert on every token through the same grouped kernels (IDENTITY routing) -> [T, h]."""
    t, h = xq.shape
    _, inter = _check_expert_weights(w13[None], w13_s[None], w2[None], w2_s[None], h, "shared expert")
    hq = torch.empty((t, inter), dtype=FP8_DTYPE, device=xq.device)
    hs = torch.empty((t, inter // 128), dtype=torch.float32, device=xq.device)
    dummy = torch.zeros((1,), dtype=torch.int32, device=xq.device)
    gemm1_spec(t, inter, 1, tiles, identity=True, gate_first=w13_order == "gate_up").launch(
        xq, xs, w13, w13_s, dummy, dummy, dummy, t, h, inter, hq, hs)
    out = torch.empty((t, h), dtype=out_dtype, device=xq.device)
    gemm2_spec(t, h, 1, tiles, identity=True, out_dtype=out_dtype).launch(
        hq, hs, w2, w2_s, dummy, dummy, dummy, torch.zeros((1,), dtype=torch.float32, device=xq.device),
        t, h, inter, out)
    return out


def moe_forward(x: torch.Tensor, router_w: torch.Tensor, bias: torch.Tensor, w13: torch.Tensor,
                w13_s: torch.Tensor, w2: torch.Tensor, w2_s: torch.Tensor, cfg: K2Config, *,
                shared: tuple | None = None, expert_start: int = 0, w13_order: str = "gate_up",
                tiles: MoeTiles | None = None) -> torch.Tensor:
    """One MoE layer on this rank: x [T, h] -> [T, h] in x's dtype.

    router_w [E, h], bias [E] float32 (``e_score_correction_bias``); this rank's experts
    ``[expert_start, expert_start + E_loc)`` as w13 [E_loc, 2I, h] fp8 (gate and up stacked, ``w13_order``),
    w13_s [E_loc, 2I/128, h/128] f32, w2 [E_loc, h, I] fp8, w2_s [E_loc, h/128, I/128] f32; ``shared`` =
    (w13 [2I_s, h], w13_s, w2 [h, I_s], w2_s) or None. With expert parallelism, summing every rank's output
    (each with its slice of the experts, the shared expert on one rank or TP-split across them) gives the layer.
    """
    require(w13_order in W13_ORDERS, f"w13_order must be one of {W13_ORDERS}, got {w13_order!r}")
    check_tensor("x", x, dtype=(torch.bfloat16, torch.float16, torch.float32), dims=2)
    t, h = x.shape
    k = cfg.num_experts_per_tok
    e_loc, _ = _check_expert_weights(w13, w13_s, w2, w2_s, h)
    mode = kernel_mode(x, router_w, w13)
    tiles = tiles or moe_tiles(t, k, e_loc, mode)
    out = torch.empty_like(x)
    if t == 0:
        return out
    ids, wts, counts = moe_route(x, router_w, bias, cfg, expert_start=expert_start, n_local=e_loc, tiles=tiles)
    xq, xs = act_quant(x)
    buf_dtype = x.dtype  # per-assignment rows in the activation dtype (bf16 in deployment)
    buf = moe_experts(xq, xs, ids, wts, counts, w13, w13_s, w2, w2_s, expert_start=expert_start, tiles=tiles,
                      w13_order=w13_order, out_dtype=buf_dtype)
    sh = None
    if shared is not None:
        sh = shared_expert(xq, xs, *shared, tiles=tiles, w13_order=w13_order, out_dtype=x.dtype)
    combine_spec(t, h, k, e_loc, has_shared=sh is not None, buf_dtype=buf_dtype, out_dtype=x.dtype).launch(
        buf, ids, sh if sh is not None else out, t, h, expert_start, out)
    return out


def stack_experts(experts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor]], w13_order: str = "gate_up"):
    """[(gate, gate_s, up, up_s, down, down_s), ...] (checkpoint tensors) -> (w13, w13_s, w2, w2_s) stacked."""
    w13 = torch.stack([torch.cat((g, u) if w13_order == "gate_up" else (u, g)) for g, _, u, _, _, _ in experts])
    w13_s = torch.stack([torch.cat((gs, us) if w13_order == "gate_up" else (us, gs)) for _, gs, _, us, _, _ in experts])
    w2 = torch.stack([d for *_, d, _ in experts])
    w2_s = torch.stack([ds for *_, ds in experts])
    return w13.contiguous(), w13_s.contiguous(), w2.contiguous(), w2_s.contiguous()


__all__ = [
    "ACT_EPS", "FP8_MAX", "GROUP", "MoeTiles", "W13_ORDERS", "expert_mlp_ref", "moe_experts", "moe_forward",
    "moe_forward_ref", "moe_route", "moe_route_ref", "moe_scatter", "moe_tiles", "shared_expert", "stack_experts",
]
