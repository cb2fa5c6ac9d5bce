"""MLA kernels against the PyTorch reference (interpreter on CPU): paged absorbed decode (bf16 / fp8 / fp32 cache,
split contexts, empty and ragged sequences), ragged causal prefill (keys longer than queries, non-causal), the
cache write, and the absorbed formulation against the naive one. K2's latent (512) and rope (64) widths throughout.
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from k2trt.errors import K2Error  # noqa: E402
from k2trt.fp8 import FP8_DTYPE  # noqa: E402
from plugins import mla as A  # noqa: E402
from plugins.check import TOLERANCE, default_config, rel_err  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K2 = default_config()
C, R, DN, DV = K2.kv_lora_rank, K2.qk_rope_head_dim, K2.qk_nope_head_dim, K2.v_head_dim
SCALE = K2.softmax_scale


def _decode_case(lens, nh, page, dtype, kv_dtype, seed):
    g = torch.Generator().manual_seed(seed)
    b, s = len(lens), max(max(lens), 1)
    lat = torch.randn(b, s, C, generator=g).to(dtype)
    kr = torch.randn(b, s, R, generator=g).to(dtype)
    kvs = torch.tensor(0.01) if kv_dtype == FP8_DTYPE else None
    kv, table = A.paged_from_contiguous(lat, kr, lens, page, dtype=kv_dtype, kv_scale=kvs, generator=g)
    ql = (torch.randn(b, nh, C, generator=g) * 0.05).to(dtype)
    qr = (torch.randn(b, nh, R, generator=g) * 0.05).to(dtype)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    return [t.to(DEV) for t in (ql, qr, kv, table, lens_t)], (None if kvs is None else kvs.to(DEV))


@pytest.mark.parametrize("lens,nh,page,dtype,kv_dtype,splits", [
    ([1, 7, 83], 4, 16, torch.bfloat16, torch.bfloat16, 1),
    ([1, 7, 83], 4, 16, torch.bfloat16, torch.bfloat16, 3),
    ([130, 0, 5], 2, 32, torch.bfloat16, FP8_DTYPE, 2),
    ([40, 9], 3, 16, torch.float32, torch.float32, 2),
    ([64], 2, 64, torch.float32, FP8_DTYPE, 1),
], ids=["bf16", "bf16-splits", "fp8-empty-seq", "fp32-3heads", "fp32-fp8cache"])
def test_decode_matches_reference(lens, nh, page, dtype, kv_dtype, splits):
    args, kvs = _decode_case(lens, nh, page, dtype, kv_dtype, seed=len(lens) + nh)
    o = A.mla_decode(*args, softmax_scale=SCALE, kv_scale=kvs, num_splits=splits)
    ref = A.mla_decode_ref(*args, softmax_scale=SCALE, kv_scale=kvs)
    assert o.shape == (len(lens), nh, C) and o.dtype == dtype
    assert rel_err(o, ref) <= TOLERANCE[dtype]
    for i, n in enumerate(lens):
        if n == 0:
            assert torch.all(o[i] == 0)  # an empty sequence attends to nothing


@pytest.mark.parametrize("lens_q,lens_k,causal,dtype", [
    ([1, 7, 83], None, True, torch.bfloat16),
    ([5, 30, 1], [5, 64, 9], True, torch.float32),
    ([3, 17], [8, 17], False, torch.float32),
    ([0, 4], None, True, torch.float32),
], ids=["ragged", "chunked-prefill", "non-causal", "empty-seq"])
def test_prefill_matches_reference(lens_q, lens_k, causal, dtype):
    g = torch.Generator().manual_seed(sum(lens_q))
    nh = 2
    lens_k = lens_k or lens_q
    tq, tk = sum(lens_q), sum(lens_k)
    q = torch.randn(tq, nh, DN + R, generator=g).to(dtype).to(DEV)
    qn, qr = q.split([DN, R], -1)  # strided views: the kernel takes row and head strides
    kn = torch.randn(tk, nh, DN, generator=g).to(dtype).to(DEV)
    kr = torch.randn(tk, R, generator=g).to(dtype).to(DEV)
    v = torch.randn(tk, nh, DV, generator=g).to(dtype).to(DEV)
    cq = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32, device=DEV)
    ck = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32, device=DEV)
    o = A.mla_prefill(qn, qr, kn, kr, v, cq, ck, softmax_scale=SCALE, causal=causal)
    ref = A.mla_prefill_ref(qn, qr, kn, kr, v, cq, ck, softmax_scale=SCALE, causal=causal)
    assert o.shape == (tq, nh, DV)
    assert rel_err(o, ref) <= TOLERANCE[dtype]


def test_absorbed_decode_equals_naive_attention():
    """q . (W_UK c) == (q . W_UK) . c and softmax . (W_UV c) == W_UV (softmax . c): the absorbed decode of the last
    token equals naive attention over decompressed keys and values (float32)."""
    g = torch.Generator().manual_seed(0)
    nh, s = 3, 37
    lat = torch.randn(1, s, C, generator=g)
    kr = torch.randn(1, s, R, generator=g)
    w_kv_b = torch.randn(nh * (DN + DV), C, generator=g) / math.sqrt(C)
    q_nope = torch.randn(1, nh, DN, generator=g)
    q_rope = torch.randn(1, nh, R, generator=g)
    kv, table = A.paged_from_contiguous(lat, kr, [s], 16, generator=g)
    q_lat = A.absorb_query(q_nope, w_kv_b, nh, DN)  # [1, H, C]
    o_lat = A.mla_decode(q_lat.to(DEV), q_rope.to(DEV), kv.to(DEV), table.to(DEV),
                         torch.tensor([s], dtype=torch.int32, device=DEV), softmax_scale=SCALE)
    absorbed = A.project_values(o_lat.cpu(), w_kv_b, nh, DN)  # [1, H, Dv]
    w = w_kv_b.view(nh, DN + DV, C)
    k_nope = torch.einsum("sc,hdc->shd", lat[0], w[:, :DN])
    v = torch.einsum("sc,hdc->shd", lat[0], w[:, DN:])
    cq = torch.tensor([0, 1], dtype=torch.int32)
    ck = torch.tensor([0, s], dtype=torch.int32)
    naive = A.mla_prefill(*(t.to(DEV) for t in (q_nope, q_rope, k_nope, kr[0], v, cq, ck)), softmax_scale=SCALE)
    assert rel_err(absorbed, naive.cpu()) <= 1e-5


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, FP8_DTYPE])
def test_cache_write_exact(kv_dtype):
    g = torch.Generator().manual_seed(1)
    t, pages, page = 12, 4, 8
    lat = torch.randn(t, C, generator=g).bfloat16().to(DEV)
    kr = torch.randn(t, R, generator=g).bfloat16().to(DEV)
    slots = torch.randperm(pages * page, generator=g)[:t].int()
    slots[2] = -1  # skipped token (e.g. padding)
    slots = slots.to(DEV)
    kvs = torch.tensor(0.02, device=DEV) if kv_dtype == FP8_DTYPE else None
    kv = torch.zeros(pages, page, C + R, dtype=kv_dtype, device=DEV)
    ref = kv.clone()
    A.mla_cache_write(kv, slots, lat, kr, kv_scale=kvs)
    A.mla_cache_write_ref(ref, slots, lat, kr, kv_scale=kvs)
    assert torch.equal(kv.view(torch.uint8) if kv_dtype == FP8_DTYPE else kv,
                       ref.view(torch.uint8) if kv_dtype == FP8_DTYPE else ref)


def test_decode_num_splits_is_pure_and_bounded():
    assert A.decode_num_splits(64, 64, 16, 4096, 64) == 2  # 256 programs already ~2 waves on 132 SMs
    assert A.decode_num_splits(1, 64, 16, 4096, 64) == 16  # 4 head blocks -> 16 splits fill ~2 waves
    assert A.decode_num_splits(1, 64, 16, 100, 64) == 1  # never below 4 x 64 rows per split


def test_decode_refuses_bad_inputs():
    args, _ = _decode_case([3], 2, 16, torch.bfloat16, torch.bfloat16, 0)
    with pytest.raises(K2Error, match="kv_scale is only for"):
        A.mla_decode(*args, softmax_scale=SCALE, kv_scale=0.5)
    args8, _ = _decode_case([3], 2, 16, torch.bfloat16, FP8_DTYPE, 0)
    with pytest.raises(K2Error, match="needs kv_scale"):
        A.mla_decode(*args8, softmax_scale=SCALE)
    with pytest.raises(K2Error, match="seq_lens must have dtype"):
        A.mla_decode(*args[:4], args[4].long(), softmax_scale=SCALE)


@pytest.mark.slow
def test_k2_all_64_heads_decode_and_prefill():
    """K2's 64 heads (attention data-parallel rank) on a short ragged batch, both phases."""
    args, _ = _decode_case([1, 70], 64, 64, torch.bfloat16, torch.bfloat16, 5)
    o = A.mla_decode(*args, softmax_scale=SCALE, num_splits=2)
    assert rel_err(o, A.mla_decode_ref(*args, softmax_scale=SCALE)) <= TOLERANCE[torch.bfloat16]
    g = torch.Generator().manual_seed(6)
    lens = [1, 20]
    t = sum(lens)
    q = torch.randn(t, 64, DN + R, generator=g).bfloat16().to(DEV)
    kn = torch.randn(t, 64, DN, generator=g).bfloat16().to(DEV)
    kr = torch.randn(t, R, generator=g).bfloat16().to(DEV)
    v = torch.randn(t, 64, DV, generator=g).bfloat16().to(DEV)
    cu = torch.tensor([0, 1, t], dtype=torch.int32, device=DEV)
    qn, qr = q.split([DN, R], -1)
    o = A.mla_prefill(qn, qr, kn, kr, v, cu, softmax_scale=SCALE)
    assert rel_err(o, A.mla_prefill_ref(qn, qr, kn, kr, v, cu, softmax_scale=SCALE)) <= TOLERANCE[torch.bfloat16]
