"""Grouped block-FP8 MoE kernels against the PyTorch reference (interpreter on CPU).

Covers: sigmoid + bias routing (plain top-8 over K2's 384 experts, and group-limited 4/2), the permutation
(every local assignment exactly once, padding rows, experts with no tokens get no blocks), the whole layer for
awkward token counts, expert-parallel slices that sum to the full layer, all tokens on one expert, and the
shared expert. Metric: max |out - ref| / max |ref| <= plugins.check.TOLERANCE[dtype].
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from k2trt.errors import K2Error  # noqa: E402
from plugins import moe as M  # noqa: E402
from plugins.check import TOLERANCE, default_config, moe_case, rel_err  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K2 = default_config()
# small layer: 8 experts in 4 groups of 2, top-3 from the best 2 groups; h=256, I=128
SMALL = K2.replace(hidden_size=256, moe_intermediate_size=128, n_routed_experts=8, num_experts_per_tok=3, n_group=4,
                   topk_group=2)
FLAT = SMALL.replace(n_group=1, topk_group=1)
BF16 = TOLERANCE[torch.bfloat16]


def _same_sets(a, b):
    return torch.equal(a.sort(1).values.cpu(), b.sort(1).values.cpu())


@pytest.mark.parametrize("cfg,t", [(K2.replace(hidden_size=128), 7), (K2.replace(hidden_size=128, n_group=8, topk_group=4), 5),
                                   (SMALL, 33)], ids=["k2-384x8", "dsv3-groups-8/4", "small-groups-4/2"])
def test_route_matches_reference_and_model(cfg, t):
    from k2trt.model import route

    x, router, bias, *_ = moe_case(cfg.replace(moe_intermediate_size=128), t, 1, 0, DEV, seed=t)
    ids, wts, counts = M.moe_route(x, router, bias, cfg)
    idr, wr = M.moe_route_ref(x, router, bias, cfg)
    assert ids.dtype == torch.int32 and wts.dtype == torch.float32
    assert _same_sets(ids, idr)
    order, order_r = ids.sort(1).indices, idr.sort(1).indices
    assert rel_err(wts.gather(1, order), wr.gather(1, order_r)) <= TOLERANCE[torch.float32]
    wm, im = route(x.float() @ router.float().t(), bias, cfg)  # the reference model's router
    assert _same_sets(ids, im)
    # counts: per token block, assignments to each local expert (all experts local here); last bin = the rest
    assert torch.equal(counts[:, : cfg.n_routed_experts].sum(0).cpu(),
                       torch.bincount(ids.flatten().long().cpu(), minlength=cfg.n_routed_experts).int())


def test_route_weights_renormalised_and_scaled():
    x, router, bias, *_ = moe_case(FLAT, 9, 1, 0, DEV, seed=1)
    _, wts, _ = M.moe_route(x, router, bias, FLAT)
    assert torch.allclose(wts.sum(1).cpu(), torch.full((9,), FLAT.routed_scaling_factor), rtol=1e-6)


@pytest.mark.parametrize("t,e_loc,start", [(7, 8, 0), (16, 3, 2), (1, 2, 6)])
def test_scatter_groups_every_local_assignment_once(t, e_loc, start):
    x, router, bias, *_ = moe_case(FLAT, t, 1, 0, DEV, seed=t)
    tiles = M.moe_tiles(t, FLAT.num_experts_per_tok, e_loc, "interpret")
    ids, _, counts = M.moe_route(x, router, bias, FLAT, expert_start=start, n_local=e_loc, tiles=tiles)
    sorted_ids, bexp, nrows = (v.cpu() for v in M.moe_scatter(ids, counts, expert_start=start, n_local=e_loc, tiles=tiles))
    bm, k, n = tiles.block_m, FLAT.num_experts_per_tok, int(nrows)
    flat = ids.cpu().flatten().long()
    local = ((flat >= start) & (flat < start + e_loc)).nonzero().flatten()
    used = sorted_ids[:n]
    real = used[used < t * k]
    assert sorted(real.tolist()) == local.tolist()  # each local assignment exactly once
    assert n % bm == 0 and torch.all(used[used >= t * k] == t * k)  # padding rows carry the sentinel
    for blk in range(n // bm):  # each block holds one expert's rows
        rows = used[blk * bm:(blk + 1) * bm]
        rows = rows[rows < t * k]
        assert rows.numel() > 0 and torch.all(flat[rows] - start == bexp[blk])
    assert torch.all(bexp[n // bm:] == -1)
    hit = set((flat[local] - start).tolist())
    assert set(bexp[: n // bm].tolist()) == hit  # experts with no tokens get no blocks


@pytest.mark.parametrize("t", [1, 7, 33])
def test_moe_forward_matches_reference(t):
    x, router, bias, w13, w13_s, w2, w2_s, shared = moe_case(SMALL, t, 8, 0, DEV, seed=10 + t)
    y = M.moe_forward(x, router, bias, w13, w13_s, w2, w2_s, SMALL, shared=shared)
    yr = M.moe_forward_ref(x, router, bias, w13, w13_s, w2, w2_s, SMALL, shared=shared)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert rel_err(y, yr) <= BF16


def test_all_tokens_on_one_expert_and_idle_experts():
    x, router, bias, w13, w13_s, w2, w2_s, _ = moe_case(FLAT, 3, 8, 0, DEV, seed=3, hot_expert=5)
    ids, _, _ = M.moe_route(x, router, bias, FLAT)
    assert torch.all((ids == 5).any(1))  # every token picked expert 5 ...
    assert len(set(ids.flatten().tolist())) < 8  # ... and some experts got nothing
    y = M.moe_forward(x, router, bias, w13, w13_s, w2, w2_s, FLAT)
    assert rel_err(y, M.moe_forward_ref(x, router, bias, w13, w13_s, w2, w2_s, FLAT)) <= BF16


def test_expert_parallel_slices_sum_to_the_full_layer():
    """Two EP ranks (experts [0, 5) and [5, 8)); the shared expert on rank 0; outputs in float32 to add exactly."""
    x, router, bias, w13, w13_s, w2, w2_s, shared = moe_case(FLAT, 11, 8, 0, DEV, seed=4)
    x = x.float()
    full = M.moe_forward(x, router.float(), bias, w13, w13_s, w2, w2_s, FLAT, shared=shared)
    r0 = M.moe_forward(x, router.float(), bias, w13[:5], w13_s[:5], w2[:5], w2_s[:5], FLAT, shared=shared)
    r1 = M.moe_forward(x, router.float(), bias, w13[5:], w13_s[5:], w2[5:], w2_s[5:], FLAT, expert_start=5)
    assert rel_err(r0 + r1, full) <= TOLERANCE[torch.float32]
    ref1 = M.moe_forward_ref(x, router.float(), bias, w13[5:], w13_s[5:], w2[5:], w2_s[5:], FLAT, expert_start=5)
    assert rel_err(r1, ref1) <= TOLERANCE[torch.float32]


def test_up_gate_weight_order():
    """TensorRT-LLM's fused fc stacks up before gate; w13_order="up_gate" reads it."""
    x, router, bias, w13, w13_s, w2, w2_s, _ = moe_case(FLAT, 5, 8, 0, DEV, seed=5)
    inter = FLAT.moe_intermediate_size
    swap = lambda w: torch.cat([w[:, inter // (1 if w.dtype != torch.float32 else 128):],  # noqa: E731
                                w[:, : inter // (1 if w.dtype != torch.float32 else 128)]], 1).contiguous()
    y = M.moe_forward(x, router, bias, w13, w13_s, w2, w2_s, FLAT)
    y2 = M.moe_forward(x, router, bias, swap(w13), swap(w13_s), w2, w2_s, FLAT, w13_order="up_gate")
    assert torch.equal(y, y2)


def test_bad_weights_are_refused():
    x, router, bias, w13, w13_s, w2, w2_s, _ = moe_case(FLAT, 2, 8, 0, DEV, seed=6)
    with pytest.raises(K2Error, match="w2 must have shape"):
        M.moe_forward(x, router, bias, w13, w13_s, w2[:, :128].contiguous(), w2_s, FLAT)
    with pytest.raises(K2Error, match="fall outside"):
        M.moe_forward(x, router, bias, w13, w13_s, w2, w2_s, FLAT, expert_start=4)
    with pytest.raises(K2Error, match="w13_order"):
        M.moe_forward(x, router, bias, w13, w13_s, w2, w2_s, FLAT, w13_order="gate-up")


@pytest.mark.slow
def test_k2_dimensions_ep_slice():
    """K2's real layer: h=7168, I=2048, routing over 384 experts top-8; this rank owns one expert."""
    cfg = K2
    x, router, bias, w13, w13_s, w2, w2_s, shared = moe_case(cfg, 2, 1, 0, DEV, seed=7)
    ids, _, _ = M.moe_route(x, router, bias, cfg)
    start = int(ids[0, 0])  # the slice an expert that receives a token
    y = M.moe_forward(x, router, bias, w13, w13_s, w2, w2_s, cfg, expert_start=start)
    yr = M.moe_forward_ref(x, router, bias, w13, w13_s, w2, w2_s, cfg, expert_start=start)
    assert yr.abs().max() > 0
    assert rel_err(y, yr) <= BF16
