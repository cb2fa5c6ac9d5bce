"""The naming/split table, as pure functions of config and mapping (no files): K2's real shapes, coverage of every
source element, block-boundary refusals, and the TRT-LLM config.json."""

import numpy as np
import pytest

from k2trt.checkpoint import SCALE_SUFFIX, expected_tensors
from k2trt.config import K2Config
from k2trt.errors import K2Error
from k2trt.fp8 import scale_shape
from k2trt.mapping import Mapping
from k2trt.safetensors_io import torch_dtype
from k2trt.synth import preset_config
from k2trt.trtllm_layout import (LAYOUT, check_mapping, pad_vocab, rank_tensor_specs, rank_weight_bytes,
                                 trtllm_config)

FP8, BF16, F32 = "F8_E4M3", "BF16", "F32"  # safetensors dtype names, as TensorSpec carries them
# Tiny, but with K2's head dims and 128-multiples wherever a split or fusion meets a block boundary, so fp8_block
# works for tp/ep up to 4; vocab 770 is not a multiple of 4 (lm_head padding).
ALIGNED = dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=512, num_attention_heads=8,
               num_key_value_heads=8, q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=128, qk_rope_head_dim=64,
               v_head_dim=128, vocab_size=770)


@pytest.fixture(scope="module")
def k2(k2_reference_dir) -> K2Config:
    return K2Config.from_file(k2_reference_dir / "config.json")


def by_name(specs):
    return {s.name: s for s in specs}


def test_k2_tp8_ep8_rank0(k2):
    specs = rank_tensor_specs(k2, Mapping(tp=8), 0)
    s = by_name(specs)
    assert specs[0].name == "transformer.vocab_embedding.weight" and specs[-1].name == "lm_head.weight"
    want = {  # name: (shape, dtype)
        "transformer.vocab_embedding.weight": ((163840, 7168), BF16),
        "transformer.layers.0.attention.fused_a.weight": ((1536 + 576, 7168), FP8),
        "transformer.layers.0.attention.fused_a.weight_scale_inv": ((17, 56), F32),  # 12 + 5 row blocks
        "transformer.layers.0.attention.q_b_proj.weight": ((8 * 192, 1536), FP8),
        "transformer.layers.0.attention.kv_b_proj.weight": ((8 * 256, 512), FP8),
        "transformer.layers.0.attention.dense.weight": ((7168, 8 * 128), FP8),
        "transformer.layers.0.mlp.fc.weight": ((18432 // 8, 7168), FP8),
        "transformer.layers.0.mlp.proj.weight_scale_inv": ((56, 18), F32),
        "transformer.layers.1.mlp.router.weight": ((384, 7168), F32),
        "transformer.layers.1.mlp.e_score_correction_bias": ((384,), F32),
        "transformer.layers.1.mlp.fc.weight": ((48, 2 * 2048, 7168), FP8),
        "transformer.layers.1.mlp.fc.weight_scale_inv": ((48, 32, 56), F32),
        "transformer.layers.1.mlp.proj.weight": ((48, 7168, 2048), FP8),
        "transformer.layers.1.mlp.shared_expert.fc.weight": ((2 * 256, 7168), FP8),
        "transformer.layers.60.post_layernorm.weight": ((7168,), BF16),
        "transformer.ln_f.weight": ((7168,), BF16),
        "lm_head.weight": ((163840 // 8, 7168), BF16),
    }
    for name, (shape, dtype) in want.items():
        assert (s[name].shape, s[name].dtype) == (shape, dtype), name
    assert "transformer.layers.0.mlp.router.weight" not in s  # layer 0 is dense
    # fc: expert 0's up rows then its gate rows; experts in EP order
    fc = s["transformer.layers.1.mlp.fc.weight"]
    assert [p.source for p in fc.slots[0]] == ["model.layers.1.mlp.experts.0.up_proj.weight",
                                              "model.layers.1.mlp.experts.0.gate_proj.weight"]
    assert fc.slots[47][0].source == "model.layers.1.mlp.experts.47.up_proj.weight"
    # kv_b: k_nope of heads 0..7, then v of heads 0..7
    kvb = s["transformer.layers.0.attention.kv_b_proj.weight"].slots[0]
    assert [p.rows for p in kvb] == [(h * 256, h * 256 + 128) for h in range(8)] + \
        [(h * 256 + 128, (h + 1) * 256) for h in range(8)]
    # rank 9 would not exist; rank 3 takes heads 24..31 and experts 144..191
    s3 = by_name(rank_tensor_specs(k2, Mapping(tp=8), 3))
    assert s3["transformer.layers.0.attention.q_b_proj.weight"].slots[0][0].rows == (24 * 192, 32 * 192)
    assert s3["transformer.layers.1.mlp.proj.weight"].slots[0][0].source.endswith("experts.144.down_proj.weight")


def test_k2_rank_bytes_and_pipeline_local_layers(k2):
    total = sum(e.shape[0] * (e.shape[1] if len(e.shape) > 1 else 1) * (1 if e.kind.value == "fp8" else 2)
                for e in expected_tensors(k2).values())
    per_rank = rank_weight_bytes(k2, Mapping(tp=8))
    assert 125e9 < min(per_rank) and max(per_rank) < 135e9
    # everything but the replicated tensors is split: total bytes exceed the checkpoint by (tp-1) x replicated
    assert sum(per_rank) > total
    s = by_name(rank_tensor_specs(k2, Mapping(tp=4, pp=2), 4))  # stage 1: layers 31..60, numbered from 0
    assert "transformer.layers.29.attention.dense.weight" in s
    assert "transformer.layers.30.input_layernorm.weight" not in s
    dense = s["transformer.layers.0.attention.dense.weight"]
    assert dense.slots[0][0].source == "model.layers.31.self_attn.o_proj.weight"
    assert "transformer.vocab_embedding.weight" not in s and "lm_head.weight" in s


MAPPINGS = [(1, 1, 1), (2, 2, 1), (2, 1, 1), (4, 4, 1), (4, 2, 2), (4, 1, 2), (2, 2, 3)]


@pytest.mark.parametrize("weights", ["fp8_block", "bf16"])
@pytest.mark.parametrize("tp, ep, pp", MAPPINGS)
def test_every_source_element_is_covered(tp, ep, pp, weights):
    """Per stage, split tensors are covered exactly once and replicated ones once per rank; all stages: everything."""
    cfg = preset_config("tiny", ALIGNED)
    m = Mapping(tp=tp, pp=pp, moe_ep=ep)
    shapes = {n: e.shape for n, e in expected_tensors(cfg).items()}
    if weights == "fp8_block":
        shapes |= {n + SCALE_SUFFIX: scale_shape(shapes[n]) for n, e in expected_tensors(cfg).items()
                   if e.kind.value == "fp8"}
    seen_in_stage: dict[str, int] = {}
    for stage in range(pp):
        counts = {}
        for r in range(stage * tp, (stage + 1) * tp):
            for spec in rank_tensor_specs(cfg, m, r, weights=weights):
                for slot in spec.slots:
                    for p in slot:
                        if p.source is None:
                            continue
                        c = counts.setdefault(p.source, np.zeros(shapes[p.source], dtype=np.int32))
                        idx = (slice(*p.rows),) if p.cols is None else (slice(*p.rows), slice(*p.cols))
                        c[idx] += 1
        for name, c in counts.items():
            assert name not in seen_in_stage, f"{name} in stages {seen_in_stage[name]} and {stage}"
            seen_in_stage[name] = stage
            assert c.min() == c.max() and int(c.min()) in (1, tp), name
    assert set(seen_in_stage) == set(shapes)


def test_lm_head_padding_and_shapes_match_pieces():
    cfg = preset_config("tiny", ALIGNED)
    assert pad_vocab(770, 4) == 772
    last = by_name(rank_tensor_specs(cfg, Mapping(tp=4), 3))["lm_head.weight"]
    assert last.shape == (193, 256)
    assert [(p.source, p.rows) for p in last.slots[0]] == [("lm_head.weight", (579, 770)), (None, (0, 2))]
    for r in range(4):
        for spec in rank_tensor_specs(cfg, Mapping(tp=4, moe_ep=2), r):
            rows = sum(p.nrows for p in spec.slots[0])
            assert spec.shape[-2 if len(spec.shape) > 1 else 0] == rows, spec.name
            assert spec.nbytes == spec.numel * torch_dtype(spec.dtype).itemsize


def test_k2_tp64_refused_with_the_numbers(k2):
    with pytest.raises(K2Error) as e:
        rank_tensor_specs(k2, Mapping(tp=64), 0)
    text = str(e.value)
    assert "q_b_proj.weight takes rows [0, 192) of model.layers.0.self_attn.q_b_proj.weight [12288, 1536]" in text
    assert "tp 64 leaves 1 head(s) x 192 rows = 192 rows per rank" in text and "128x128" in text
    assert "(and the same in 60 more layer(s))" in text
    assert rank_tensor_specs(k2, Mapping(tp=64), 0, weights="bf16")  # bf16 has no blocks to cut
    assert check_mapping(k2, Mapping(tp=16)) == []
    probs = check_mapping(k2, Mapping(tp=32))  # dense 576 and shared 64 rows per rank cut blocks; heads do not
    assert any("mlp.fc.weight takes rows [0, 576)" in p for p in probs)
    assert not any("q_b_proj" in p for p in probs)


def test_k2_moe_tp32_and_ep5_refused(k2):
    probs = check_mapping(k2, Mapping(tp=32, moe_ep=1))
    assert any("moe_tp 32 leaves 64 of each expert's 2048" in p for p in probs)
    assert check_mapping(k2, Mapping(tp=5)) == [
        "mapping: tp (5) does not divide the 64 attention heads",
        "mapping: ep (5) does not divide the 384 routed experts",
        "mapping: tp (5) does not divide the shared-expert width 2048",
        "mapping: tp (5) does not divide the dense MLP width 18432",
    ]


def test_fusion_of_a_partial_block_refused():
    cfg = preset_config("tiny", {**ALIGNED, "q_lora_rank": 96})  # fused_a = [q_a (96 rows); kv_a]: mid-block join
    probs = check_mapping(cfg, Mapping(tp=1))
    assert any("fused_a.weight takes rows [0, 96)" in p and "joins it to the next tensor mid-block" in p
               for p in probs)


def test_weights_option_checked(k2):
    with pytest.raises(K2Error, match="--weights must be one of"):
        rank_tensor_specs(k2, Mapping(), weights="fp16")
    unquantized = preset_config("tiny", {"quantization_config": None})
    with pytest.raises(K2Error, match="needs a block-FP8 checkpoint"):
        rank_tensor_specs(unquantized, Mapping())
    specs = rank_tensor_specs(unquantized, Mapping(), weights="bf16")
    assert {s.read for s in specs} == {"cast"} and FP8 not in {s.dtype for s in specs}


def test_dequantized_tensor_reads_its_scale():
    cfg = preset_config("tiny")
    s = by_name(rank_tensor_specs(cfg, Mapping(tp=2), 0, weights="bf16"))["transformer.layers.0.attention.dense.weight"]
    assert s.read == "dequant" and s.dtype == BF16
    assert s.sources == ("model.layers.0.self_attn.o_proj.weight", "model.layers.0.self_attn.o_proj.weight_scale_inv")


def test_table_rows_are_unique_per_config_kind():
    keys = [(r.target, r.where, r.needs) for r in LAYOUT]
    assert len(keys) == len(set(keys))
    assert {r.store for r in LAYOUT} == {"fp8", "model", "fp32"}


def test_trtllm_config(k2):
    c = trtllm_config(k2, Mapping(tp=8, pp=2, moe_ep=4))
    assert c["architecture"] == "DeepseekV2ForCausalLM" and c["dtype"] == "bfloat16"
    assert c["mapping"]["world_size"] == 16 and (c["mapping"]["moe_tp_size"], c["mapping"]["moe_ep_size"]) == (2, 4)
    assert c["quantization"]["quant_algo"] == "FP8_BLOCK_SCALES" and c["quantization"]["kv_cache_quant_algo"] is None
    assert (c["moe"]["num_experts"], c["moe"]["top_k"], c["moe"]["shared_expert_intermediate_size"]) == (384, 8, 2048)
    assert (c["moe_num_experts"], c["moe_top_k"], c["moe_n_group"], c["moe_topk_group"]) == (384, 8, 1, 1)
    assert c["moe_routed_scaling_factor"] == 2.827 and c["topk_method"] == "noaux_tc"
    assert c["rotary_scaling"] == {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0,
                                   "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"}
    assert (c["kv_lora_rank"], c["q_lora_rank"], c["head_size"], c["num_key_value_heads"]) == (512, 1536, 576, 1)
    assert c["vocab_size"] == 163840 and c["k2trt"]["vocab_size_padded"] == 163840
    assert trtllm_config(k2, Mapping(tp=8), weights="bf16")["quantization"]["quant_algo"] is None
