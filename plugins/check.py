"""``k2trt kernels check``: every kernel against its PyTorch reference on seeded random data, as a table.

Metric (one number per case): ``max |out - ref| / max |ref|``, the largest error relative to the reference's
largest magnitude, compared with the tolerance of the output dtype below. Routing is compared as sets: the error
is the fraction of tokens whose chosen experts differ (tolerance 0), plus the weights with the float32 tolerance.

Tolerances (per output dtype, same metric):

==============  =========  ==========================================================================
dtype           tolerance  why
==============  =========  ==========================================================================
float32         1e-5       accumulation order only (IEEE float32 dots)
bfloat16        1e-2       one final bf16 rounding (2**-8 relative) plus bf16 probabilities in P.V
float16         2e-3       one final fp16 rounding (2**-11) plus fp16 probabilities
float8_e4m3fn   4e-3       values on the e4m3 grid: the interpreter is bit-exact (asserted separately in
                           the tests); compiled code may flip a rounding tie of a tiny element
==============  =========  ==========================================================================
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from k2trt.config import K2Config
from k2trt.errors import K2Error
from k2trt.fp8 import FP8_DTYPE, quantize_block_fp8

TOLERANCE = {
    torch.float32: 1e-5,
    torch.bfloat16: 1e-2,
    torch.float16: 2e-3,
    FP8_DTYPE: 4e-3,
}
PRESETS = ("small", "k2")


@dataclass(frozen=True)
class CheckRow:
    kernel: str
    shape: str
    error: float
    tolerance: float
    seconds: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.error) and self.error <= self.tolerance


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| in float32 (0 when both are all zero)."""
    o, r = out.float(), ref.float()
    den = r.abs().max().item() if r.numel() else 0.0
    num = (o - r).abs().max().item() if r.numel() else 0.0
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def default_config() -> K2Config:
    """K2's architecture numbers (the reference config.json's values), independent of any file."""
    return K2Config(
        vocab_size=163840, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=64, num_key_value_heads=64, n_routed_experts=384,
        num_experts_per_tok=8, n_shared_experts=1, n_group=1, topk_group=1, routed_scaling_factor=2.827,
        norm_topk_prob=True, scoring_func="sigmoid", topk_method="noaux_tc", first_k_dense_replace=1,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        rope_theta=50000.0, rms_norm_eps=1e-6, max_position_embeddings=131072,
        rope_scaling=None, quantization_config=None,
    ).replace(rope_scaling={"type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
                            "beta_fast": 1.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0})


def rand_fp8_experts(n: int, rows: int, cols: int, g: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """n random experts [rows, cols] (std 1/sqrt(cols)) quantized one at a time on ``device`` (K2's 384 experts
    never exist in float32 at once) -> (fp8 [n, rows, cols], scales [n, rows/128, cols/128])."""
    q = torch.empty((n, rows, cols), dtype=FP8_DTYPE, device=device)
    s = torch.empty((n, math.ceil(rows / 128), math.ceil(cols / 128)), dtype=torch.float32, device=device)
    for i in range(n):
        q[i], s[i] = quantize_block_fp8(torch.randn(rows, cols, generator=g, device=device) / math.sqrt(cols))
    return q, s


def moe_case(cfg: K2Config, t: int, e_local: int, expert_start: int, device, seed: int, dtype=torch.bfloat16,
             hot_expert: int | None = None):
    """Random MoE inputs on ``device``: tokens, router, bias, this rank's experts (block-FP8) and a shared expert.

    ``hot_expert``: bias the router so that every token's top choice is that (global) expert.
    """
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    h, inter, e = cfg.hidden_size, cfg.moe_intermediate_size, cfg.n_routed_experts
    x = torch.randn(t, h, generator=g, device=device).to(dtype)
    router = (torch.randn(e, h, generator=g, device=device) / math.sqrt(h)).to(dtype)
    bias = torch.randn(e, generator=g, device=device) * 0.05
    if hot_expert is not None:
        bias[hot_expert] += 100.0  # selection uses score + bias; the weight uses the raw score
    w13, w13_s = rand_fp8_experts(e_local, 2 * inter, h, g, device)
    w2, w2_s = rand_fp8_experts(e_local, h, inter, g, device)
    sw13, sw13_s = rand_fp8_experts(1, 2 * cfg.shared_intermediate_size, h, g, device)
    sw2, sw2_s = rand_fp8_experts(1, h, cfg.shared_intermediate_size, g, device)
    return x, router, bias, w13, w13_s, w2, w2_s, (sw13[0], sw13_s[0], sw2[0], sw2_s[0])


def _small_moe_cfg(cfg: K2Config) -> K2Config:
    return cfg.replace(hidden_size=256, moe_intermediate_size=256, n_routed_experts=16, num_experts_per_tok=4,
                       n_group=4, topk_group=2)


def cases(preset: str, device: torch.device) -> list[tuple[str, str, Callable[[], object], float]]:
    """(kernel, shape, run -> (out, ref), tolerance) for a preset; run() builds its own seeded inputs."""
    from plugins import fp8_gemm as G
    from plugins import mla as A
    from plugins import moe as M

    if preset not in PRESETS:
        raise K2Error(f"--preset must be one of {list(PRESETS)}, got {preset!r}")
    k2 = default_config()
    bf16, fp32 = torch.bfloat16, torch.float32
    out: list = []

    def gemm(m, n, k, seed):
        def run():
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(m, k, generator=g).to(bf16).to(device)
            wq, ws = quantize_block_fp8(torch.randn(n, k, generator=g) / math.sqrt(k))
            wq, ws = wq.to(device), ws.to(device)
            return G.block_fp8_linear(x, wq, ws), G.block_fp8_linear_ref(x, wq, ws)
        return ("fp8_gemm", f"M={m} N={n} K={k}", run, TOLERANCE[bf16])

    def quant(m, k, seed):
        def run():
            g = torch.Generator().manual_seed(seed)
            x = (torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 10).to(bf16).to(device)
            q, s = G.act_quant(x)
            qr, sr = G.act_quant_ref(x)
            return G.act_dequant_ref(q, s), G.act_dequant_ref(qr, sr)
        return ("act_quant", f"M={m} K={k}", run, TOLERANCE[FP8_DTYPE])

    def route(cfg, t, seed, label):
        def run():
            x, router, bias, *_ = moe_case(cfg, t, 1, 0, device, seed)
            ids, wts, _ = M.moe_route(x, router, bias, cfg)
            idr, wr = M.moe_route_ref(x, router, bias, cfg)
            same = (ids.sort(1).values == idr.sort(1).values).all(1)
            wk = torch.where(same[:, None], wts.gather(1, ids.sort(1).indices), 0)
            wrk = torch.where(same[:, None], wr.gather(1, idr.sort(1).indices), 0)
            # error = fraction of tokens whose expert sets differ (>= 1/T, so any mismatch fails) + weight error
            return (1 - same.float().mean()).item() + rel_err(wk, wrk)
        return ("moe_route", f"T={t} {label}", run, TOLERANCE[fp32])

    def moe(cfg, t, e_local, start, seed, label, hot=None):
        def run():
            x, router, bias, w13, w13_s, w2, w2_s, shared = moe_case(cfg, t, e_local, start, device, seed, hot_expert=hot)
            y = M.moe_forward(x, router, bias, w13, w13_s, w2, w2_s, cfg, shared=shared, expert_start=start)
            yr = M.moe_forward_ref(x, router, bias, w13, w13_s, w2, w2_s, cfg, shared=shared, expert_start=start)
            return y, yr
        return ("moe_forward", f"T={t} E_loc={e_local}@{start} {label}", run, TOLERANCE[bf16])

    def decode(b_lens, nh, page, kv_dtype, dtype, splits, seed):
        def run():
            g = torch.Generator().manual_seed(seed)
            b, s = len(b_lens), max(b_lens)
            lat = torch.randn(b, s, k2.kv_lora_rank, generator=g).to(dtype)
            kr = torch.randn(b, s, k2.qk_rope_head_dim, generator=g).to(dtype)
            kvs = torch.tensor(0.01) if kv_dtype == FP8_DTYPE else None
            kv, table = A.paged_from_contiguous(lat, kr, b_lens, page, dtype=kv_dtype, kv_scale=kvs, generator=g)
            ql = (torch.randn(b, nh, k2.kv_lora_rank, generator=g) * 0.05).to(dtype)
            qr = (torch.randn(b, nh, k2.qk_rope_head_dim, generator=g) * 0.05).to(dtype)
            lens = torch.tensor(b_lens, dtype=torch.int32)
            args = [t.to(device) for t in (ql, qr, kv, table, lens)]
            kw = dict(softmax_scale=k2.softmax_scale, kv_scale=None if kvs is None else kvs.to(device))
            return A.mla_decode(*args, num_splits=splits, **kw), A.mla_decode_ref(*args, **kw)
        kvn = "fp8" if kv_dtype == FP8_DTYPE else str(kv_dtype).replace("torch.", "")
        shape = f"B={len(b_lens)} H={nh} ctx<={max(b_lens)} page={page} kv={kvn} splits={splits}"
        return ("mla_decode", shape, run, TOLERANCE[dtype])

    def prefill(lens_q, lens_k, nh, dtype, seed):
        def run():
            g = torch.Generator().manual_seed(seed)
            tq, tk = sum(lens_q), sum(lens_k)
            dn, dr, dv = k2.qk_nope_head_dim, k2.qk_rope_head_dim, k2.v_head_dim
            q = torch.randn(tq, nh, dn + dr, generator=g).to(dtype)
            kn = torch.randn(tk, nh, dn, generator=g).to(dtype)
            kr = torch.randn(tk, dr, generator=g).to(dtype)
            v = torch.randn(tk, nh, dv, generator=g).to(dtype)
            cq = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
            ck = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
            q, kn, kr, v, cq, ck = (t.to(device) for t in (q, kn, kr, v, cq, ck))
            qn, qr = q.split([dn, dr], -1)
            kw = dict(softmax_scale=k2.softmax_scale)
            return A.mla_prefill(qn, qr, kn, kr, v, cq, ck, **kw), A.mla_prefill_ref(qn, qr, kn, kr, v, cq, ck, **kw)
        return ("mla_prefill", f"H={nh} q={list(lens_q)} k={list(lens_k)} {str(dtype)[6:]}", run, TOLERANCE[dtype])

    small = _small_moe_cfg(k2)
    if preset == "small":
        out += [quant(7, 576, 1), gemm(1, 576, 384, 2), gemm(7, 576, 384, 3), gemm(83, 256, 200, 4)]
        out += [route(k2.replace(hidden_size=256), 7, 5, "E=384 k=8"), route(small, 33, 6, "E=16 k=4 groups 4/2")]
        out += [moe(small, 7, 16, 0, 7, "all experts"), moe(small, 19, 6, 5, 8, "EP slice"),
                moe(small, 9, 16, 0, 9, "one hot expert", hot=3)]
        out += [decode([1, 7, 83], 8, 16, bf16, bf16, 1, 10), decode([5, 70], 16, 32, FP8_DTYPE, bf16, 2, 11),
                decode([3, 40], 4, 16, fp32, fp32, 2, 12)]
        out += [prefill([1, 7, 83], [1, 7, 83], 2, bf16, 13), prefill([5, 30], [5, 64], 2, fp32, 14)]
    else:
        big = device.type == "cuda"
        ms = (1, 7, 83, 4096) if big else (1, 7)
        out += [quant(83, 7168, 1)] + [gemm(m, 576, 7168, 20 + m) for m in ms]
        out += [gemm(4096 if big else 16, 2 * k2.moe_intermediate_size, k2.hidden_size, 30)]
        out += [route(k2, 512 if big else 7, 31, "K2 router")]
        e_loc = 48 if big else 2
        out += [moe(k2, 512 if big else 3, e_loc, 96, 32, "K2 dims, EP slice")]
        if big:
            out += [moe(k2, 64, 48, 0, 33, "K2 dims, one hot expert", hot=5)]
        b_lens = [4096] * 64 if big else [1, 83]
        out += [decode(b_lens, 64 if big else 16, 64, bf16, bf16, None if big else 2, 34),
                decode(b_lens, 64 if big else 16, 64, FP8_DTYPE, bf16, None if big else 1, 35)]
        lq = [1, 7, 83, 2000] if big else [1, 7, 20]
        out += [prefill(lq, lq, 64 if big else 2, bf16, 36)]
    return out


def run_checks(*, preset: str = "small", device: str | None = None) -> list[CheckRow]:
    """Run every case of ``preset``; the kernels run compiled on CUDA or under the interpreter on CPU."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for kernel, shape, run, tol in cases(preset, dev):
        t0 = time.perf_counter()
        res = run()  # (out, ref), or the error itself
        err = res if isinstance(res, float) else rel_err(*res)
        rows.append(CheckRow(kernel, shape, err, tol, time.perf_counter() - t0))
    return rows


def format_table(rows: list[CheckRow]) -> str:
    head = f"{'kernel':<12} {'shape':<52} {'max error':>10} {'tolerance':>10} {'pass':>5} {'s':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.kernel:<12} {r.shape:<52} {r.error:>10.3g} {r.tolerance:>10.3g} "
                     f"{'yes' if r.ok else 'NO':>5} {r.seconds:>6.1f}")
    return "\n".join(lines)
