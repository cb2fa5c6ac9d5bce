import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from k2trt.fp8 import FP8_MAX, dequantize_block_fp8, quantize_block_fp8, scale_shape


def naive_quantize(w: torch.Tensor, block=(128, 128)):
    """Block by block, the obvious way."""
    out, inn = w.shape
    so, si = math.ceil(out / block[0]), math.ceil(inn / block[1])
    q = torch.empty(out, inn, dtype=torch.float8_e4m3fn)
    s = torch.empty(so, si)
    for i in range(so):
        for j in range(si):
            blk = w[i * block[0] : (i + 1) * block[0], j * block[1] : (j + 1) * block[1]].float()
            amax = blk.abs().max().item()
            scale = amax / FP8_MAX if amax > 0 else 1.0
            s[i, j] = scale
            q[i * block[0] : (i + 1) * block[0], j * block[1] : (j + 1) * block[1]] = (
                (blk / torch.tensor(scale, dtype=torch.float32)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            )
    return q, s


def naive_dequantize(q, s, block=(128, 128)):
    out = torch.empty(q.shape)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            sl = (slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1]))
            out[sl] = q[sl].float() * s[i, j]
    return out


DIMS = st.sampled_from([1, 2, 64, 127, 128, 129, 200, 256, 576])


@settings(max_examples=30, deadline=None)
@given(out=DIMS, inn=DIMS, seed=st.integers(0, 2**16), zero_block=st.booleans())
def test_matches_naive_block_loop(out, inn, seed, zero_block):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inn, generator=g) * torch.exp(torch.randn(1, generator=g) * 3)
    if zero_block:
        w[:128, :128] = 0
    q, s = quantize_block_fp8(w)
    nq, ns = naive_quantize(w)
    assert s.shape == scale_shape(w.shape) == (math.ceil(out / 128), math.ceil(inn / 128))
    assert torch.equal(s, ns)
    assert torch.equal(q.view(torch.uint8), nq.view(torch.uint8))
    assert torch.equal(dequantize_block_fp8(q, s), naive_dequantize(q, s))


def test_round_trip_error_within_e4m3_precision():
    w = torch.randn(576, 7168 // 8)
    q, s = quantize_block_fp8(w)
    back = dequantize_block_fp8(q, s)
    big = w.abs() > 0.05 * w.abs().max()  # e4m3 subnormals lose relative precision near zero
    rel = ((back - w).abs() / w.abs())[big]
    assert rel.max() <= 2**-4  # 3 mantissa bits: half an ulp is 2^-4 relative


def test_block_max_maps_to_448_and_nothing_saturates():
    w = torch.randn(300, 130) * 1000
    q, s = quantize_block_fp8(w)
    qf = q.float()
    assert torch.isfinite(qf).all()
    assert qf.abs().max() == FP8_MAX
    assert (qf[:128, :128].abs().max(), qf[256:, 128:].abs().max()) == (FP8_MAX, FP8_MAX)  # partial blocks too


def test_zero_block_gets_positive_scale_and_dequantizes_to_zero():
    w = torch.zeros(129, 257)
    q, s = quantize_block_fp8(w)
    assert torch.equal(s, torch.ones(2, 3))
    assert torch.equal(dequantize_block_fp8(q, s), w)


def test_k2_edge_block_shape():
    assert scale_shape((576, 7168)) == (5, 56)  # kv_a_proj_with_mqa
    assert scale_shape((7168, 2048)) == (56, 16)


def test_dequantize_rejects_wrong_scale_shape():
    q, _ = quantize_block_fp8(torch.randn(576, 256))
    with pytest.raises(ValueError, match=r"shape \(4, 2\), expected \[5, 2\]"):
        dequantize_block_fp8(q, torch.ones(4, 2))


def test_quantize_rejects_nan():
    w = torch.randn(4, 4)
    w[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize_block_fp8(w)


def test_bfloat16_output():
    q, s = quantize_block_fp8(torch.randn(130, 130))
    assert dequantize_block_fp8(q, s, dtype=torch.bfloat16).dtype == torch.bfloat16
