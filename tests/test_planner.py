"""The planner: the GPU catalog, the published facts it must reproduce, its arithmetic against the bytes the converter
writes (on a converted synthetic checkpoint), the roofline's properties, and `k2trt plan`."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2trt.cli import app
from k2trt.config import K2Config
from k2trt.convert import convert
from k2trt.errors import K2Error
from k2trt.gpus import DEVICES, GiB, TOPOLOGIES, topology
from k2trt.mapping import Mapping
from k2trt.planner import (
    DEFAULT_MODEL, KV_FREE_FRACTION, PUBLISHED, Layout, candidate_layouts, converter_rank_weights, estimate,
    estimate_published, layout_rank_weights, load_model, plan, step_time,
)

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ catalog


def test_catalog_block_fp8_only_on_hopper_and_blackwell():
    for d in DEVICES.values():
        if d.arch in ("hopper", "blackwell"):
            assert d.fp8_block_scales and d.fp8 and d.fp8_flops == 2 * d.bf16_flops, d.name
        elif d.arch in ("ampere", "ada"):
            assert not d.fp8_block_scales, d.name
    assert not DEVICES["a100"].fp8 and DEVICES["l40s"].fp8  # Ada has per-tensor FP8, Ampere none


def test_catalog_figures():
    # nvidia-smi totals, datasheet bandwidths, dense FLOPS (H100/H200 FP8 3,958 TFLOPS is *with* sparsity)
    h200, h100, b200 = DEVICES["h200"], DEVICES["h100"], DEVICES["b200"]
    assert h200.memory_bytes == 143771 * 2**20 and h100.memory_bytes == 81559 * 2**20
    assert (h200.memory_bw, h100.memory_bw) == (4.8e12, 3.35e12)
    assert h200.fp8_flops == h100.fp8_flops == 1979e12
    assert b200.fp8_flops == 4500e12 and b200.nvlink_bw == 2 * h200.nvlink_bw
    assert DEVICES["gb200"].nvlink_domain == 72 and h200.nvlink_domain == 8
    assert not h200.mla_chunked_prefill and b200.mla_chunked_prefill


def test_topologies():
    assert set(TOPOLOGIES) >= {"h200x8", "h200x16", "h100x16", "h20x16", "b200x8", "gb200-nvl72", "cpu-tiny"}
    assert (topology("gb200-nvl72").count, topology("gb200-nvl72").nodes) == (72, 18)
    t = topology("A100x32")
    assert (t.device.name, t.count, t.nodes) == ("a100", 32, 4)
    with pytest.raises(K2Error, match="unknown device 'mi300'"):
        topology("mi300x8")
    with pytest.raises(K2Error, match="unknown topology"):
        topology("h200")


def test_shipped_k2_config_is_the_reference(k2_reference_dir):
    assert load_model(DEFAULT_MODEL).config == K2Config.from_file(k2_reference_dir / "config.json")
    v3 = load_model("deepseek-v3").config
    assert (v3.n_routed_experts, v3.num_attention_heads, v3.n_group, v3.topk_group, v3.vocab_size) == (
        256, 128, 8, 4, 129280)
    assert v3.total_weights == 671_026_419_200  # DeepSeek-V3: 671B main-model parameters


# ------------------------------------------------------------------------------------------------ published facts


def test_k2_at_128k_needs_16_h200_not_8():
    p8 = plan(topology="h200x8")
    assert p8.inputs.max_seq_len == 131072 and not p8.fits
    ev = p8.chosen  # the closest layout, judged exactly
    assert ev is not None and ev.layout.mapping.tp == 8 and ev.memory.weights > 120 * GiB
    one_seq = 131072 * 70272
    assert ev.memory.kv_cache < one_seq
    assert any("leave" in r and "GiB for KV" in r and "131,072-token sequence" in r for r in p8.reasons)
    p16 = plan(topology="h200x16")
    assert p16.fits and p16.chosen.limits.full_length_sequences >= 1
    assert p16.chosen.memory.kv_cache >= one_seq


def test_k2_at_128k_on_h20x16_fits_and_h100x16_does_not():
    # Moonshot's deploy guide: 16 GPUs is the smallest unit for K2 FP8 at 128k on H200 or H20.
    assert plan(topology="h20x16").fits
    assert not plan(topology="h100x16").fits


def test_deepseek_v3_fits_8_h200_not_8_h100():
    p = plan(topology="h200x8", model="deepseek-v3")
    assert p.fits and p.inputs.max_seq_len == 163840
    q = plan(topology="h100x8", model="deepseek-v3")
    assert not q.fits
    assert q.chosen.memory.weights > DEVICES["h100"].memory_bytes - 2 * GiB  # the weights alone nearly fill it


@pytest.mark.parametrize("gpus", ["a100x16", "l40sx32"])
def test_fp8_block_scales_refused_without_hopper(gpus):
    p = plan(topology=gpus)
    assert not p.fits and p.chosen is None
    assert "no block-scaled FP8" in p.reasons[0] and "--weights bf16" in p.reasons[0]


def test_blackwell_chunks_prefill_and_holds_k2():
    p = plan(topology="b200x8")
    assert p.fits and p.chosen.limits.max_num_tokens == 8192  # chunked MLA prefill: activations stay small
    h = plan(topology="h200x16")
    assert h.chosen.limits.max_num_tokens == 131072  # Hopper: a whole prompt per step


def test_gb200_nvl72_uses_replicas_that_divide_the_experts():
    p = plan(topology="gb200-nvl72")
    m = p.chosen.layout.mapping
    assert p.fits and 384 % m.moe_ep == 0 and m.world_size * p.chosen.layout.replicas == 72
    layouts, refused = candidate_layouts(load_model().config, topology("gb200-nvl72"))
    assert ("attn DP72, MoE EP72", "EP 72 does not divide the 384 routed experts") in refused
    assert ("attn TP72", "TP 72 does not divide the 64 attention heads") in refused


# ------------------------------------------------------------------------------------------------ arithmetic


def _file_bytes(path: Path) -> tuple[int, int]:
    """(bytes of all tensors, bytes of 3-D tensors) from a safetensors header."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    total = stacked = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        nb = t["data_offsets"][1] - t["data_offsets"][0]
        total += nb
        stacked += nb if len(t["shape"]) == 3 else 0
    return total, stacked


# conftest's session checkpoint (tiny preset): its widths are not 128-multiples, so it converts with --weights bf16;
# the FP8 block layout of K2 itself is pinned by test_weights_per_gpu_of_k2_on_tp8.
@pytest.mark.parametrize("tp,ep,pp", [(2, 2, 1), (4, 2, 1), (2, 2, 3), (1, 1, 1)])
def test_weights_per_rank_are_the_bytes_the_converter_writes(tiny_ckpt, tmp_path, tp, ep, pp):
    cfg = K2Config.from_file(tiny_ckpt)
    m = Mapping(tp=tp, pp=pp, moe_ep=ep)
    out = tmp_path / "conv"
    convert(checkpoint=tiny_ckpt, out=out, tp=tp, ep=ep, pp=pp, weights="bf16", progress=False)
    written = [_file_bytes(out / f"rank{r}.safetensors") for r in m.ranks()]
    for r in m.ranks():
        rw = converter_rank_weights(cfg, m, r, "bf16")
        assert (rw.total, rw.experts) == written[r], r
    # The planner reads the first rank of each stage; every rank of a stage holds the same bytes.
    sampled = layout_rank_weights(cfg, Layout(m, attention_dp=False), "bf16")
    assert [s.total for s in sampled] == [written[s * tp][0] for s in range(pp)]
    assert all(written[r][0] == written[m.pp_rank(r) * tp][0] for r in m.ranks())
    assert max(s.total for s in sampled) == max(w[0] for w in written)


def test_attention_dp_weights_are_the_single_rank_shard_with_experts_split(tiny_ckpt, tmp_path):
    cfg = K2Config.from_file(tiny_ckpt)
    convert(checkpoint=tiny_ckpt, out=tmp_path / "tp1", tp=1, weights="bf16", progress=False)
    convert(checkpoint=tiny_ckpt, out=tmp_path / "ep4", tp=4, ep=4, weights="bf16", progress=False)
    whole, whole_experts = _file_bytes(tmp_path / "tp1" / "rank0.safetensors")
    (dp,) = layout_rank_weights(cfg, Layout(Mapping(tp=4, moe_ep=4), attention_dp=True), "bf16")
    assert dp.total == whole - whole_experts + whole_experts // 4
    # Its experts are exactly what an EP-4 conversion puts on a rank.
    assert dp.experts == _file_bytes(tmp_path / "ep4" / "rank3.safetensors")[1]


@pytest.mark.parametrize("name", ["h200x16", "b200x8", "gb200-nvl72", "h200x8"])
def test_memory_breakdown_adds_up(name):
    ev = plan(topology=name).chosen
    mem = ev.memory
    assert mem.weights + mem.activations + mem.reserve + mem.kv_cache + mem.headroom == mem.capacity
    if ev.fits:
        free = mem.capacity - mem.weights - mem.activations - mem.reserve
        assert mem.kv_cache <= KV_FREE_FRACTION * free + 1
        assert ev.limits.kv_cache_tokens == mem.kv_cache // ev.kv_per_token
        assert ev.limits.full_length_sequences == ev.limits.kv_cache_tokens // ev.limits.max_seq_len >= 1


def test_weights_per_gpu_of_k2_on_tp8():
    rw = converter_rank_weights(load_model().config, Mapping(tp=8), 0)
    # 48 of 384 experts x 60 MoE layers x (3 x 7168 x 2048 FP8 + scales), the embedding whole, lm_head / 8
    experts = 60 * 48 * (3 * 7168 * 2048 + 4 * (32 * 56 + 56 * 16))  # fc [4096, 7168], proj [7168, 2048]
    assert rw.experts == experts
    assert rw.embedding == 163840 * 7168 * 2


def test_kv_cache_cap_for_small_models():
    p = plan(topology="cpu-tiny", model="tiny", weights="bf16", objective="latency")
    lim = p.chosen.limits
    assert p.fits and lim.max_batch_size == 16
    assert lim.kv_cache_tokens == lim.max_batch_size * lim.max_seq_len  # no bigger pool than the batch can fill


def test_converter_refusal_is_reported():
    p = plan(topology="cpu-tiny", model="tiny")  # tiny's widths cut 128x128 blocks: fp8_block cannot be converted
    assert not p.fits and any("cuts its 128x128 FP8 blocks" in r for r in p.reasons)
    assert "--weights bf16" in p.reasons[-1]


# ------------------------------------------------------------------------------------------------ roofline


def test_memory_bound_decode_scales_with_bandwidth():
    cfg = load_model().config
    lay = Layout(Mapping(tp=16, moe_ep=16), attention_dp=False)
    rws = layout_rank_weights(cfg, lay, "fp8_block")
    t = {d: step_time(cfg, DEVICES[d], lay, rws[0], tokens=1, context=1024, kv_per_token=70272, decode=True,
                      weights="fp8_block") for d in ("h100", "h200")}
    assert t["h200"].bound == t["h100"].bound == "memory"
    assert math.isclose(t["h100"].memory_s / t["h200"].memory_s, 4.8 / 3.35, rel_tol=1e-9)


def test_batching_trades_latency_for_throughput():
    cfg = load_model("deepseek-v3").config
    lay = Layout(Mapping(tp=8, moe_ep=8), attention_dp=True)
    rws = layout_rank_weights(cfg, lay, "fp8_block")
    est = [estimate(cfg, DEVICES["h200"], lay, rws, batch=b, isl=1024, osl=2048, prefill_tokens=2048)
           for b in (1, 8, 64, 256)]
    per_gpu = [e.decode_tok_s_per_gpu for e in est]
    per_user = [e.decode_tok_s_per_user for e in est]
    assert per_gpu == sorted(per_gpu) and per_user == sorted(per_user, reverse=True)


@pytest.mark.parametrize("pub", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_roofline_bounds_published_measurements(pub):
    est = getattr(estimate_published(pub), pub.metric)
    ratio = pub.measured / est
    # An upper bound that is not absurdly loose: measured runs reach 15-100% of it.
    assert 0.15 < ratio < 1.0, (pub.name, est, ratio)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_plan_json_fits():
    r = runner.invoke(app, ["plan", "--topology", "h200x16", "--json"])
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    assert j["fits"] is True
    assert j["mapping"]["tp"] * j["mapping"]["replicas"] == 16
    mem = j["memory_per_gpu"]
    assert sum(mem[k] for k in ("weights", "activations", "reserve", "kv_cache", "headroom")) == mem["capacity"]
    assert j["limits"]["max_batch_size"] >= 1 and j["estimates"]["decode"]["tok_s_per_gpu"] > 0
    assert j["reasons"]


def test_cli_plan_refuses_with_numbers():
    r = runner.invoke(app, ["plan", "--gpus", "h200x8"])
    assert r.exit_code == 2
    assert "fits: NO" in r.stdout and "leave" in r.stdout and "GiB for KV" in r.stdout
    r = runner.invoke(app, ["plan", "--gpus", "h200x8", "--max-seq-len", "32768", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["fits"] is True


@pytest.mark.parametrize("args,msg", [
    ([], "give exactly one of --topology"),
    (["--topology", "h200x8", "--gpus", "h200x8"], "give exactly one of --topology"),
    (["--gpus", "h200x8", "--kv-dtype", "int4"], "--kv-dtype 'int4'"),
    (["--gpus", "h200x8", "--max-seq-len", "999999"], "max_position_embeddings"),
    (["--gpus", "h200x8", "--model", "nope"], "not a preset"),
])
def test_cli_plan_errors(args, msg):
    r = runner.invoke(app, ["plan", *args])
    assert r.exit_code == 1 and "error: " in r.stderr and msg in r.stderr, r.stderr


def test_cli_plan_write_config(tmp_path):
    from k2trt.build_config import load_build_config

    dest = tmp_path / "mine.yaml"
    r = runner.invoke(app, ["plan", "--topology", "cpu-tiny", "--model", "tiny", "--weights", "bf16",
                            "--objective", "latency", "--write-config", str(dest), "--backend", "torch"])
    assert r.exit_code == 0, r.output
    bc = load_build_config(dest)
    assert (bc.name, bc.backend, bc.world_size, bc.weights) == ("mine", "torch", 1, "bf16")
