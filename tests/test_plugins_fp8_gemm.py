"""Block-FP8 GEMM and dynamic activation quantization against their PyTorch references (interpreter on CPU).

Metric and tolerances: plugins.check (max |out - ref| / max |ref|; bf16 1e-2, fp32 1e-5, fp8 exact here).
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():  # before the kernel modules are imported: Triton picks its mode at decoration
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from k2trt.errors import K2Error  # noqa: E402
from k2trt.fp8 import FP8_DTYPE, quantize_block_fp8  # noqa: E402
from plugins import _runtime  # noqa: E402
from plugins import fp8_gemm as G  # noqa: E402
from plugins.check import TOLERANCE, rel_err  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _x(m, k, seed, scale_rows=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    if scale_rows:  # rows of very different magnitude: per-token scales must not leak across rows
        x = x * torch.logspace(-3, 3, m)[:, None]
    return x.to(torch.bfloat16).to(DEV)


def test_rounding_helpers_match_torch_rne_on_every_code_and_midpoint():
    """Regression: the interpreter's own fp32->fp8 cast drops the mantissa carry (1.98 -> 1.0)."""
    codes = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    grid = codes[codes.isfinite()].unique().sort().values
    mids = (grid[1:] + grid[:-1]) / 2  # exact ties: round half to even
    x = torch.cat([grid, mids, torch.tensor([1.9788, 1e-12])])[None, :]  # |x| <= 448 so the scale can be 1
    pad = -x.shape[1] % 128
    x = torch.nn.functional.pad(x, (0, pad))
    # the quantizer divides by amax / 448; force scale 1 by adding a 448 element to the row's every group
    x = x.view(-1, 128)
    x[:, 0] = 448.0
    q, s = G.act_quant(x.to(DEV))
    assert torch.all(s.cpu() == 1.0)
    ref = x.clamp(-448, 448).to(FP8_DTYPE)
    assert torch.equal(q.cpu().view(torch.uint8), ref.view(torch.uint8))


@pytest.mark.parametrize("m,k", [(1, 7168), (7, 576), (83, 200)])
def test_act_quant_bit_exact(m, k):
    x = _x(m, k, m)
    x[0, :128] = 0  # an all-zero group gets a finite scale and zeros
    q, s = G.act_quant(x)
    qr, sr = G.act_quant_ref(x)
    assert s.shape == (m, math.ceil(k / 128)) and q.dtype == FP8_DTYPE
    assert torch.equal(s.cpu(), sr.cpu())
    assert torch.equal(q.cpu().view(torch.uint8), qr.cpu().view(torch.uint8))
    assert torch.all(q[0, :128].float() == 0)


@pytest.mark.parametrize("m", [1, 7, 83])
def test_fp8_gemm_awkward_m_n576(m):
    """N = 576 (kv_a_proj_with_mqa): a partial 64-row weight block at the edge."""
    k, n = 384, 576
    g = torch.Generator().manual_seed(m)
    wq, ws = quantize_block_fp8(torch.randn(n, k, generator=g) / math.sqrt(k))
    x = _x(m, k, 100 + m)
    y = G.block_fp8_linear(x, wq.to(DEV), ws.to(DEV))
    yr = G.block_fp8_linear_ref(x, wq.to(DEV), ws.to(DEV))
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    assert rel_err(y, yr) <= TOLERANCE[torch.bfloat16]


def test_fp8_gemm_k2_kv_a_proj_decode():
    """K2's kv_a_proj_with_mqa [576, 7168] on one decode token, and partial K (K=200) in float32 output."""
    g = torch.Generator().manual_seed(0)
    wq, ws = quantize_block_fp8(torch.randn(576, 7168, generator=g) / 84.0)
    assert ws.shape == (5, 56)
    x = _x(1, 7168, 1)
    q, s = G.act_quant(x)
    y = G.fp8_gemm(q, s, wq.to(DEV), ws.to(DEV), out_dtype=torch.float32)
    assert rel_err(y, G.fp8_gemm_ref(q, s, wq.to(DEV), ws.to(DEV), torch.float32)) <= TOLERANCE[torch.float32]


def test_fp8_gemm_every_tile_config_masks_edges():
    """The CUDA tile configs run under the interpreter too: edges of M, N, K inside partial tiles."""
    m, n, k = 19, 200, 260
    g = torch.Generator().manual_seed(3)
    wq, ws = quantize_block_fp8(torch.randn(n, k, generator=g))
    q, s = G.act_quant(_x(m, k, 4))
    ref = G.fp8_gemm_ref(q, s, wq.to(DEV), ws.to(DEV), torch.float32)
    for cfg in {G.gemm_config(mm, n, k, "cuda") for mm in (1, 64, 4096)}:
        y = G.fp8_gemm(q, s, wq.to(DEV), ws.to(DEV), torch.float32, config=cfg)
        assert rel_err(y, ref) <= TOLERANCE[torch.float32], cfg


def test_wrappers_refuse_bad_inputs_with_k2error():
    x = _x(4, 256, 0)
    q, s = G.act_quant(x)
    wq, ws = quantize_block_fp8(torch.randn(64, 256))
    with pytest.raises(K2Error, match="a_q must have dtype"):
        G.fp8_gemm(x, s, wq, ws)
    with pytest.raises(K2Error, match="w_s must have shape"):
        G.fp8_gemm(q, s, wq, ws[:, :1])
    with pytest.raises(K2Error, match="input channels"):
        G.fp8_gemm(q, s, wq[:, :128].contiguous(), ws[:, :1].contiguous())
    with pytest.raises(K2Error, match="contiguous"):
        G.act_quant(x.t())


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_runtime, "_INTERPRET_AT_IMPORT", False)
    with pytest.raises(K2Error, match="TRITON_INTERPRET=1"):
        _runtime.kernel_mode(torch.zeros(1))
    with pytest.raises(K2Error, match="cannot run on device type 'meta'"):
        _runtime.kernel_mode(torch.zeros(1, device="meta"))
