"""Mapping follows TensorRT-LLM's rank conventions (tensorrt_llm/mapping.py, 1.2.x): checked against the rank groups
its own docstring lists and against torch.tensor_split, which its pp_layers uses."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from k2trt.errors import K2Error
from k2trt.mapping import Mapping


def groups(m: Mapping, key) -> list[list[int]]:
    """Ranks grouped by everything but ``key``'s own coordinate, in TRT-LLM's order."""
    out: dict = {}
    for r in m.ranks():
        out.setdefault(key(r), []).append(r)
    return sorted(out.values())


def test_trtllm_docstring_example_moe_tp2_ep4_pp2():
    # "2 nodes with 16 GPUs, moe_tp_size = 2, moe_ep_size = 4, pp_size = 2" (so tp_size 8)
    m = Mapping(tp=8, pp=2, moe_ep=4, moe_tp=2)
    moe_tp_groups = groups(m, lambda r: (m.pp_rank(r), m.moe_ep_rank(r)))
    moe_ep_groups = groups(m, lambda r: (m.pp_rank(r), m.moe_tp_rank(r)))
    pp_groups = groups(m, lambda r: m.tp_rank(r))
    assert moe_tp_groups == [[0, 4], [1, 5], [2, 6], [3, 7], [8, 12], [9, 13], [10, 14], [11, 15]]
    assert moe_ep_groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert pp_groups == [[0, 8], [1, 9], [2, 10], [3, 11], [4, 12], [5, 13], [6, 14], [7, 15]]


def test_trtllm_docstring_example_tp4_pp2():
    m = Mapping(tp=4, pp=2)
    assert groups(m, lambda r: m.pp_rank(r)) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # tp groups
    assert groups(m, lambda r: m.tp_rank(r)) == [[0, 4], [1, 5], [2, 6], [3, 7]]  # pp groups


def test_module_docstring_table():
    m = Mapping(tp=4, pp=2, moe_ep=2)
    rows = {  # rank: tp_rank, pp_rank, moe_ep_rank, moe_tp_rank, layers, heads, experts, width
        0: (0, 0, 0, 0, (0, 31), (0, 16), (0, 192), (0, 1024)),
        1: (1, 0, 1, 0, (0, 31), (16, 32), (192, 384), (0, 1024)),
        2: (2, 0, 0, 1, (0, 31), (32, 48), (0, 192), (1024, 2048)),
        5: (1, 1, 1, 0, (31, 61), (16, 32), (192, 384), (0, 1024)),
    }
    span = lambda rg: (rg.start, rg.stop)  # noqa: E731
    for r, want in rows.items():
        got = (m.tp_rank(r), m.pp_rank(r), m.moe_ep_rank(r), m.moe_tp_rank(r), span(m.layers(r, 61)),
               span(m.heads(r, 64)), span(m.experts(r, 384)), span(m.expert_width(r, 2048)))
        assert got == want, r


@given(layers=st.integers(1, 200), pp=st.integers(1, 16))
def test_layers_are_torch_tensor_split(layers, pp):
    if pp > layers:
        with pytest.raises(K2Error, match="exceeds"):
            Mapping(pp=pp).layers(0, layers)
        return
    m = Mapping(pp=pp)
    want = [t.tolist() for t in torch.tensor_split(torch.arange(layers), pp)]
    assert [list(m.layers(r, layers)) for r in m.ranks()] == want


@given(ep=st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16]), mtp=st.sampled_from([1, 2, 4]))
def test_experts_and_width_partition(ep, mtp):
    m = Mapping(tp=ep * mtp, moe_ep=ep, moe_tp=mtp)
    experts = sorted(e for r in m.ranks() if m.moe_tp_rank(r) == 0 for e in m.experts(r, 384))
    assert experts == list(range(384))
    width = sorted(w for r in m.ranks() if m.moe_ep_rank(r) == 0 for w in m.expert_width(r, 2048))
    assert width == list(range(2048))


def test_defaults_and_explicit_sizes():
    assert (Mapping(tp=8).moe_ep, Mapping(tp=8).moe_tp) == (8, 1)  # pure EP (TRT-LLM's default is pure TP)
    assert (Mapping(tp=8, moe_tp=2).moe_ep, Mapping(tp=8, moe_ep=2).moe_tp) == (4, 4)
    assert Mapping(tp=4, pp=2, moe_ep=1).to_trtllm() == {
        "world_size": 8, "tp_size": 4, "pp_size": 2, "moe_tp_size": 4, "moe_ep_size": 1,
        "cp_size": 1, "moe_cluster_size": 1, "attn_tp_size": 4, "attn_cp_size": 1,
    }
    m = Mapping(tp=2, pp=3)
    assert [m.is_first_stage(r) for r in m.ranks()] == [True, True, False, False, False, False]
    assert [m.is_last_stage(r) for r in m.ranks()] == [False, False, False, False, True, True]


@pytest.mark.parametrize("kwargs, match", [
    (dict(tp=0), "tp must be a positive integer"),
    (dict(tp=4, moe_ep=3), r"moe_ep \(3\) does not fit tp \(4\)"),
    (dict(tp=4, moe_tp=3), r"moe_tp \(3\) does not fit tp \(4\)"),
    (dict(tp=4, moe_ep=2, moe_tp=4), r"moe_ep \(2\) x moe_tp \(4\) does not fit tp \(4\)"),
    (dict(tp=2, moe_ep=True), "moe_ep must be a positive integer"),
])
def test_invalid_mappings(kwargs, match):
    with pytest.raises(K2Error, match=match):
        Mapping(**kwargs)


def test_model_that_does_not_divide():
    m = Mapping(tp=5, moe_ep=5)
    with pytest.raises(K2Error, match=r"moe_ep \(5\) does not divide the 384 routed experts"):
        m.experts(0, 384)
    with pytest.raises(K2Error, match=r"tp \(5\) does not divide the 64 attention heads"):
        m.heads(0, 64)
    with pytest.raises(K2Error, match="rank 5 outside world size 5"):
        m.tp_rank(5)
