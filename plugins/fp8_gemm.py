"""Block-FP8 GEMM as K2 runs it: dynamic per-token-group activation quantization, 128x128 weight scales.

K2's ``quantization_config`` says ``activation_scheme: dynamic``, ``weight_block_size [128, 128]``: at run time
each token's activations are quantized in groups of 128 channels (one float32 scale per token per group,
``scale = amax / 448``), weights are float8_e4m3fn with one scale per 128x128 block. The GEMM multiplies one
128-wide K slab at a time in FP8 on the tensor cores and folds both scales into a float32 accumulator after every
slab: the "promote to fp32 every 128 elements" remedy DeepSeek-V3's report (section 3.3.2) gives for Hopper's
limited FP8 accumulation precision. Same algorithm as DeepSeek-V3 ``inference/kernel.py`` (``act_quant`` +
``fp8_gemm``) and vLLM ``w8a8_block_fp8_matmul``.

Kernels (``_kernel``) and wrappers (allocate, check, grid) are separate; the ``*_ref`` functions beside them are
the plain PyTorch definitions the tests compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from k2trt.fp8 import FP8_DTYPE, FP8_MAX, dequantize_block_fp8
from plugins._runtime import cdiv, check_tensor, kernel_mode, require
from plugins._spec import KernelSpec, ptr, tl_dtype
from plugins._triton_helpers import e4m3_rne, round_to

GROUP = 128  # activation group and weight block edge (K2 weight_block_size)
ACT_EPS = 1e-10  # floor on a group's amax so an all-zero group gets a finite scale (vLLM per_token_group_quant)

# ------------------------------------------------------------------------------------------ references


def act_quant_ref(x: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q [M, K] float8_e4m3fn, s [M, ceil(K/group)] float32) with real ~= q * s per group."""
    m, k = x.shape
    g = math.ceil(k / group)
    xf = torch.nn.functional.pad(x.float(), (0, g * group - k)).view(m, g, group)  # [M, G, group]
    s = xf.abs().amax(-1).clamp_min(ACT_EPS) / FP8_MAX  # [M, G]
    q = (xf / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)  # torch's cast rounds to nearest-even
    return q.view(m, g * group)[:, :k].contiguous(), s


def act_dequant_ref(q: torch.Tensor, s: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    """(q [M, K], s [M, G]) -> float32 [M, K]."""
    return q.float() * s.repeat_interleave(group, dim=1)[:, : q.shape[1]]


def fp8_gemm_ref(a_q, a_s, w, w_s, out_dtype=torch.bfloat16) -> torch.Tensor:
    """a_q [M, K] fp8, a_s [M, K/128] f32, w [N, K] fp8, w_s [N/128, K/128] f32 -> a @ w.T [M, N] in out_dtype."""
    a = act_dequant_ref(a_q, a_s)  # [M, K] f32
    b = dequantize_block_fp8(w, w_s)  # [N, K] f32
    return (a @ b.t()).to(out_dtype)


def block_fp8_linear_ref(x, w, w_s, out_dtype=None) -> torch.Tensor:
    """x [..., K] -> [..., N]: quantize x per token group, multiply by the dequantized block-FP8 weight."""
    lead = x.shape[:-1]
    q, s = act_quant_ref(x.reshape(-1, x.shape[-1]))
    y = fp8_gemm_ref(q, s, w, w_s, out_dtype or x.dtype)
    return y.view(*lead, w.shape[0])


# --------------------------------------------------------------------------------------------- kernels


@triton.jit
def _act_quant_kernel(
    x_ptr,  # [M, K] bf16 / fp16 / fp32, contiguous
    M, K,  # int32
    q_ptr,  # [M, K] float8_e4m3fn
    s_ptr,  # [M, cdiv(K, GROUP)] float32
    BLOCK_M: tl.constexpr,
    GROUP: tl.constexpr,
):
    pid_m = tl.program_id(0)
    g = tl.program_id(1)
    n_groups = tl.cdiv(K, GROUP)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = g * GROUP + tl.arange(0, GROUP)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_M, GROUP]
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-10)  # ACT_EPS
    s = amax / 448.0  # FP8_MAX
    q = e4m3_rne(tl.div_rn(x, s[:, None]))  # IEEE division, as torch's reference does (plain `/` may be approximate)
    tl.store(q_ptr + offs, q.to(tl.float8e4nv), mask=mask)
    tl.store(s_ptr + rows.to(tl.int64) * n_groups + g, s, mask=rows < M)


@triton.jit
def _fp8_gemm_kernel(
    a_ptr,  # [M, K] float8_e4m3fn, activations
    as_ptr,  # [M, cdiv(K, 128)] float32, per-token-group scales
    b_ptr,  # [N, K] float8_e4m3fn, weight (out x in, as stored)
    bs_ptr,  # [cdiv(N, 128), cdiv(K, 128)] float32, weight block scales
    M, N, K,  # int32
    c_ptr,  # [M, N] OUT_DTYPE
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_M: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
):
    BLOCK_K: tl.constexpr = 128  # one K slab per scale column
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: GROUP_M row-tiles share each weight column-tile while it is in L2 (Triton matmul tutorial)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    n_kb = tl.cdiv(K, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * K + offs_k[None, :]  # [BM, BK]
    b_ptrs = b_ptr + offs_n[None, :].to(tl.int64) * K + offs_k[:, None]  # [BK, BN]
    as_ptrs = as_ptr + offs_m.to(tl.int64) * n_kb  # [BM]
    bs_ptrs = bs_ptr + (offs_n // 128).to(tl.int64) * n_kb  # [BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, n_kb):
        k_ok = offs_k < K - kb * BLOCK_K
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        a_s = tl.load(as_ptrs + kb, mask=m_ok, other=0.0)
        b_s = tl.load(bs_ptrs + kb, mask=n_ok, other=0.0)
        acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(c_ptrs, round_to(acc, OUT_DTYPE), mask=m_ok[:, None] & n_ok[None, :])


# ------------------------------------------------------------------------------------- launch as data


@dataclass(frozen=True)
class GemmConfig:
    """Tile shape and launch options of :func:`fp8_gemm` (BLOCK_K is fixed at 128, the scale group)."""

    block_m: int
    block_n: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3


def gemm_config(m: int, n: int, k: int, mode: str) -> GemmConfig:
    """The tile for an ``[m, k] x [k, n]`` problem.

    Interpreter: large tiles (few programs; numpy does the work). CUDA (Hopper): small-M problems are weight-
    bandwidth bound, so a 16-row tile and a narrow N tile spread the weight over many SMs; large M uses 128x128
    with three stages ((128x128 + 128x128) B fp8 per stage = 32 KiB) and 8 warps.
    """
    if mode == "interpret":
        return GemmConfig(block_m=min(64, max(16, triton.next_power_of_2(m))), block_n=128, group_m=1)
    if m <= 16:
        return GemmConfig(block_m=16, block_n=64, group_m=1, num_warps=4, num_stages=4)
    if m <= 64:
        return GemmConfig(block_m=64, block_n=64, group_m=4, num_warps=4, num_stages=4)
    return GemmConfig(block_m=128, block_n=128, group_m=8, num_warps=8, num_stages=3)


def act_quant_spec(m, k, x_dtype: torch.dtype, block_m: int = 16) -> KernelSpec:
    return KernelSpec(
        name="act_quant",
        kernel=_act_quant_kernel,
        signature={"x_ptr": ptr(x_dtype), "M": "i32", "K": "i32", "q_ptr": ptr(FP8_DTYPE), "s_ptr": ptr(torch.float32)},
        constexprs={"BLOCK_M": block_m, "GROUP": GROUP},
        grid=(cdiv(m, block_m), cdiv(k, GROUP)),
        n_inputs=1,
        n_scalars=2,
        num_warps=4,
        num_stages=1,
    )


def fp8_gemm_spec(m, n, k, cfg: GemmConfig, out_dtype: torch.dtype = torch.bfloat16) -> KernelSpec:
    return KernelSpec(
        name="fp8_gemm",
        kernel=_fp8_gemm_kernel,
        signature={
            "a_ptr": ptr(FP8_DTYPE), "as_ptr": ptr(torch.float32), "b_ptr": ptr(FP8_DTYPE),
            "bs_ptr": ptr(torch.float32), "M": "i32", "N": "i32", "K": "i32", "c_ptr": ptr(out_dtype),
        },
        constexprs={"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "GROUP_M": cfg.group_m,
                    "OUT_DTYPE": tl_dtype(out_dtype)},
        grid=(cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n),),
        n_inputs=4,
        n_scalars=3,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


# -------------------------------------------------------------------------------------------- wrappers


def act_quant(x: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (bf16/fp16/fp32) -> (q [M, K] float8_e4m3fn, s [M, ceil(K/128)] float32); dynamic, per token group."""
    require(group == GROUP, f"activation groups are {GROUP} channels (K2's weight_block_size), got {group}")
    check_tensor("x", x, dtype=(torch.bfloat16, torch.float16, torch.float32), dims=2)
    mode = kernel_mode(x)
    m, k = x.shape
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((m, cdiv(k, GROUP)), dtype=torch.float32, device=x.device)
    act_quant_spec(m, k, x.dtype, block_m=64 if mode == "interpret" else 16).launch(x, m, k, q, s)
    return q, s


def fp8_gemm(a_q: torch.Tensor, a_s: torch.Tensor, w: torch.Tensor, w_s: torch.Tensor,
             out_dtype: torch.dtype = torch.bfloat16, config: GemmConfig | None = None) -> torch.Tensor:
    """a_q [M, K] fp8 with a_s [M, K/128] f32, times w [N, K] fp8 with w_s [N/128, K/128] f32 -> [M, N] out_dtype."""
    check_tensor("a_q", a_q, dtype=FP8_DTYPE, dims=2)
    m, k = a_q.shape
    check_tensor("w", w, dtype=FP8_DTYPE, dims=2)
    n = w.shape[0]
    require(w.shape[1] == k, f"w has {w.shape[1]} input channels, activations have {k}")
    check_tensor("a_s", a_s, dtype=torch.float32, shape=(m, cdiv(k, GROUP)))
    check_tensor("w_s", w_s, dtype=torch.float32, shape=(cdiv(n, GROUP), cdiv(k, GROUP)))
    mode = kernel_mode(a_q, a_s, w, w_s)
    cfg = config or gemm_config(m, n, k, mode)
    c = torch.empty((m, n), dtype=out_dtype, device=a_q.device)
    fp8_gemm_spec(m, n, k, cfg, out_dtype).launch(a_q, a_s, w, w_s, m, n, k, c)
    return c


def block_fp8_linear(x: torch.Tensor, w: torch.Tensor, w_s: torch.Tensor,
                     out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``F.linear`` for a block-FP8 weight: x [..., K] -> [..., N] (activations quantized on the fly)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    q, s = act_quant(x2)
    y = fp8_gemm(q, s, w, w_s, out_dtype or (x.dtype if x.dtype != torch.float32 else torch.float32))
    return y.view(*lead, w.shape[0])
