"""``k2trt kernels bench``: time the kernels on a GPU against their PyTorch references and the hardware ceilings.

Ceilings are measured on the machine, not taken from a datasheet: the copy bandwidth is a large device-to-device
``copy_`` (bytes read + written per second); the FP8 dense peak is ``torch._scaled_mm`` on an 8192^3 e4m3 GEMM.
The datasheet figures are printed beside them for context (NVIDIA H200 SXM: 4.8 TB/s HBM3e, 1,979 dense FP8
TFLOP/s = half the 3,958 "with sparsity" figure).

Targets (issue 5): MLA decode >= 60% of the measured copy bandwidth at batch 64 x 4k context; grouped MoE GEMM
>= 40% of the FP8 dense peak at 4096 tokens; each at least 3x the torch reference.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from k2trt.errors import K2Error
from k2trt.fp8 import FP8_DTYPE

DATASHEET = {"NVIDIA H200": {"hbm_tb_s": 4.8, "fp8_dense_tflops": 1979.0}}


@dataclass
class BenchRow:
    kernel: str
    shape: str
    ms: float
    ref_ms: float | None
    achieved: float  # TB/s or TFLOP/s
    unit: str
    ceiling: float  # the measured ceiling in the same unit
    target_pct: float | None

    @property
    def pct(self) -> float:
        return 100.0 * self.achieved / self.ceiling if self.ceiling else float("nan")

    @property
    def speedup(self) -> float | None:
        return None if self.ref_ms is None else self.ref_ms / self.ms


def _time_ms(fn, reps: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]  # median


def copy_bandwidth_tb_s(nbytes: int = 2 << 30) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), reps=10)
    return 2 * nbytes / (ms * 1e-3) / 1e12


def fp8_peak_tflops(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda").to(FP8_DTYPE)
    b = torch.randn(n, n, device="cuda").to(FP8_DTYPE).t()  # column-major second operand, as _scaled_mm wants
    one = torch.ones((), device="cuda")
    ms = _time_ms(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), reps=10)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def run_bench(*, quick: bool = False) -> dict:
    """All figures as a dict (ceilings, rows); raises K2Error without a CUDA device."""
    if not torch.cuda.is_available():
        raise K2Error("kernels bench needs a CUDA GPU (the figures are hardware throughput)")
    from plugins import fp8_gemm as G
    from plugins import mla as A
    from plugins import moe as M
    from plugins.check import default_config, moe_case

    cfg = default_config()
    name = torch.cuda.get_device_name()
    bw = copy_bandwidth_tb_s()
    peak = fp8_peak_tflops()
    rows: list[BenchRow] = []

    # --- MLA decode: batch 64 x 4k context, all 64 heads (attention data parallel), bf16 and fp8 cache
    b, ctx, nh, page = (8, 1024, 64, 64) if quick else (64, 4096, 64, 64)
    g = torch.Generator().manual_seed(0)
    for kv_dtype in (torch.bfloat16, FP8_DTYPE):
        lat = torch.randn(b, ctx, cfg.kv_lora_rank, generator=g).bfloat16()
        kr = torch.randn(b, ctx, cfg.qk_rope_head_dim, generator=g).bfloat16()
        kvs = torch.tensor(0.02) if kv_dtype == FP8_DTYPE else None
        kv, table = A.paged_from_contiguous(lat, kr, [ctx] * b, page, dtype=kv_dtype, kv_scale=kvs, generator=g)
        ql = (torch.randn(b, nh, cfg.kv_lora_rank, generator=g) * 0.05).bfloat16().cuda()
        qr = (torch.randn(b, nh, cfg.qk_rope_head_dim, generator=g) * 0.05).bfloat16().cuda()
        kv, table = kv.cuda(), table.cuda()
        lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
        kw = dict(softmax_scale=cfg.softmax_scale, kv_scale=None if kvs is None else kvs.cuda())
        best = None
        for bh in (16, 64):  # a small sweep (each tile is one compile): the fastest head block and split count
            for splits in (1, 2, 4):
                tiles = A.DecodeTiles(block_h=bh, block_n=64 if bh < 64 else 32, num_splits=splits,
                                      num_warps=4 if bh == 16 else 8, num_stages=2)
                try:
                    ms = _time_ms(lambda: A.mla_decode(ql, qr, kv, table, lens, tiles=tiles, **kw))
                except Exception:  # a tile that does not compile on this GPU (registers / shared memory)
                    continue
                if best is None or ms < best[0]:
                    best = (ms, tiles)
        ref_ms = _time_ms(lambda: A.mla_decode_ref(ql, qr, kv, table, lens, **kw), reps=3, warmup=1)
        nbytes = kv.element_size() * b * ctx * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
        tb_s = nbytes / (best[0] * 1e-3) / 1e12
        t = best[1]
        rows.append(BenchRow("mla_decode", f"B={b} ctx={ctx} H={nh} kv={str(kv_dtype)[6:]} "
                             f"[bh={t.block_h} bn={t.block_n} splits={t.num_splits}]",
                             best[0], ref_ms, tb_s, "TB/s", bw, 60.0))

    # --- grouped MoE GEMMs at 4096 tokens over all 384 experts (K2: ~85 rows per expert)
    t_tok = 512 if quick else 4096
    e_loc = 384
    x, router, bias, w13, w13_s, w2, w2_s, shared = moe_case(cfg, t_tok, e_loc, 0, torch.device("cuda"), 1)
    tiles = M.moe_tiles(t_tok, cfg.num_experts_per_tok, e_loc, "cuda")
    ids, wts, counts = M.moe_route(x, router, bias, cfg, tiles=tiles)
    xq, xs = G.act_quant(x)
    run_experts = lambda: M.moe_experts(xq, xs, ids, wts, counts, w13, w13_s, w2, w2_s, expert_start=0,  # noqa: E731
                                        tiles=tiles)
    ms = _time_ms(run_experts)
    flops = 2 * t_tok * cfg.num_experts_per_tok * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    ref_ms = _time_ms(lambda: M.moe_forward_ref(x, router, bias, w13, w13_s, w2, w2_s, cfg), reps=2, warmup=1)
    rows.append(BenchRow("moe_grouped_gemm", f"T={t_tok} E={e_loc} k=8 h=7168 I=2048 (scatter+gemm1+gemm2)",
                         ms, ref_ms, flops / (ms * 1e-3) / 1e12, "TFLOP/s", peak, 40.0))
    ms_full = _time_ms(lambda: M.moe_forward(x, router, bias, w13, w13_s, w2, w2_s, cfg, shared=shared, tiles=tiles))
    flops_full = flops + 2 * t_tok * 3 * cfg.hidden_size * cfg.shared_intermediate_size
    rows.append(BenchRow("moe_forward", f"T={t_tok} E={e_loc} + shared (route..combine)", ms_full, ref_ms,
                         flops_full / (ms_full * 1e-3) / 1e12, "TFLOP/s", peak, None))
    del w13, w2
    torch.cuda.empty_cache()

    # --- dense block-FP8 GEMMs (K2 shapes: kv_a_proj 576x7168, a 4096-row prefill of an expert-sized GEMM)
    for m, n, k in ((1, 576, 7168), (64, 576, 7168), (4096, 4096, 7168), (4096, 7168, 2048)):
        a = torch.randn(m, k, device="cuda").bfloat16()
        from k2trt.fp8 import quantize_block_fp8

        wq, ws = quantize_block_fp8(torch.randn(n, k, device="cuda") / math.sqrt(k))
        aq, as_ = G.act_quant(a)
        ms = _time_ms(lambda: G.fp8_gemm(aq, as_, wq, ws))
        ref_ms = _time_ms(lambda: G.fp8_gemm_ref(aq, as_, wq, ws), reps=5)
        rows.append(BenchRow("fp8_gemm", f"M={m} N={n} K={k}", ms, ref_ms, 2 * m * n * k / (ms * 1e-3) / 1e12,
                             "TFLOP/s", peak, None))

    return {
        "device": name,
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "copy_bandwidth_tb_s": bw,
        "fp8_dense_peak_tflops_measured": peak,
        "datasheet": DATASHEET.get(name.split(" NVL")[0].replace(" SXM", ""), None),
        "rows": [dict(asdict(r), pct=r.pct, speedup=r.speedup) for r in rows],
    }


def format_report(rep: dict) -> str:
    lines = [f"device: {rep['device']} (torch {rep['torch']}, triton {rep['triton']})",
             f"measured copy bandwidth: {rep['copy_bandwidth_tb_s']:.2f} TB/s; "
             f"measured FP8 dense peak (torch._scaled_mm 8192^3): {rep['fp8_dense_peak_tflops_measured']:.0f} TFLOP/s",
             "", "| kernel | shape | ms | torch ref ms | speed-up | achieved | % of ceiling | target |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rep["rows"]:
        ref = "-" if r["ref_ms"] is None else f"{r['ref_ms']:.3f}"
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        tgt = "-" if r["target_pct"] is None else f">= {r['target_pct']:.0f}%"
        lines.append(f"| {r['kernel']} | {r['shape']} | {r['ms']:.3f} | {ref} | {sp} | {r['achieved']:.2f} {r['unit']} "
                     f"| {r['pct']:.0f}% | {tgt} |")
    return "\n".join(lines)


def write_report(rep: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels_bench.json").write_text(json.dumps(rep, indent=2))
    (out / "kernels_bench.md").write_text(format_report(rep) + "\n")
