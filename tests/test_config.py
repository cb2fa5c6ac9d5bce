import json
import math

import pytest

from k2trt.config import K2Config, yarn_mscale
from k2trt.errors import ConfigError


@pytest.fixture(scope="module")
def k2(k2_reference_dir) -> K2Config:
    return K2Config.from_file(k2_reference_dir / "config.json")


@pytest.fixture
def k2_raw(k2_reference_dir) -> dict:
    return json.loads((k2_reference_dir / "config.json").read_text())


def test_k2_parameter_counts(k2):
    # Weights: embeddings + lm_head + 61 x attention + 1 dense MLP + 60 x (384 + 1 experts, router, bias) + norms.
    assert k2.total_weights == 1_026_408_232_448
    # Stored parameters (weights + FP8 scales) round to the 1.0265e12 of the model card; the checkpoint's own
    # count, 1,026,470,731,056, adds 3,416 elements of rotary_emb.inv_freq buffers.
    assert k2.total_scale_elements == 62_495_192
    assert k2.total_params == 1_026_470_727_640
    assert f"{k2.total_params:.4e}" == "1.0265e+12"
    assert 1_026_470_731_056 - k2.total_params == 3_416


def test_k2_activated_parameters(k2):
    # 8 routed + 1 shared expert per MoE layer, embedding and lm_head included (published: 32.6B).
    assert k2.activated_params_per_token == 32_861_500_928
    assert 32e9 < k2.activated_params_per_token < 33e9


def test_k2_mla_cache_and_derived_sizes(k2):
    assert k2.kv_cache_bytes_per_token() == 70_272
    assert k2.kv_cache_bytes_per_token(1) == 35_136
    assert k2.full_kv_cache_bytes_per_token() == 61 * 64 * (192 + 128) * 2  # ~2.5 MB
    assert k2.qk_head_dim == 192 and k2.kv_a_out == 576
    assert k2.num_moe_layers == 60 and not k2.is_moe_layer(0) and k2.is_moe_layer(1)
    assert k2.fp8_block == (128, 128)
    m = 0.1 * math.log(32) + 1
    assert k2.softmax_scale == pytest.approx(192**-0.5 * m * m, rel=1e-12)
    assert k2.rope_attention_factor == 1.0
    assert yarn_mscale(1.0) == 1.0


def test_deepseek_v3_model_type_accepted(k2_raw):
    k2_raw["model_type"] = "deepseek_v3"
    assert K2Config.from_dict(k2_raw).model_type == "deepseek_v3"


def test_round_trip_through_hf_dict(k2, k2_raw):
    again = K2Config.from_dict(k2.to_hf_dict())
    assert again == k2
    assert again.extra["auto_map"] == k2_raw["auto_map"]  # uninterpreted keys survive


@pytest.mark.parametrize("field", ["hidden_size", "kv_lora_rank", "n_routed_experts", "rope_theta"])
def test_missing_field_is_named(k2_raw, field):
    del k2_raw[field]
    with pytest.raises(ConfigError, match=f"missing required field '{field}'"):
        K2Config.from_dict(k2_raw)


def test_missing_nested_field_is_named(k2_raw):
    del k2_raw["quantization_config"]["weight_block_size"]
    with pytest.raises(ConfigError, match="quantization_config.weight_block_size"):
        K2Config.from_dict(k2_raw)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("architectures", ["LlamaForCausalLM"], "field 'architectures'"),
        ("model_type", "llama", "field 'model_type'"),
        ("n_group", 5, "'n_group' \\(5\\) must divide 'n_routed_experts' \\(384\\)"),
        ("num_key_value_heads", 8, "'num_key_value_heads' \\(8\\) must equal"),
        ("scoring_func", "softmax", "field 'scoring_func'"),
        ("hidden_size", -1, "field 'hidden_size' must be a positive integer"),
        ("first_k_dense_replace", 99, "'first_k_dense_replace' \\(99\\) exceeds"),
        ("tie_word_embeddings", True, "tie_word_embeddings"),
    ],
)
def test_inconsistent_values_are_named(k2_raw, key, value, message):
    k2_raw[key] = value
    with pytest.raises(ConfigError, match=message):
        K2Config.from_dict(k2_raw)


def test_group_limited_routing_limits(k2_raw):
    k2_raw.update(n_group=8, topk_group=1, num_experts_per_tok=49)  # 8 groups of 48: 49 cannot fit in one
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        K2Config.from_dict(k2_raw)


def test_replace_revalidates(k2):
    assert k2.replace(n_group=8, topk_group=4).n_group == 8
    with pytest.raises(ConfigError, match="topk_group"):
        k2.replace(n_group=8, topk_group=9)
    with pytest.raises(ConfigError, match="unknown field"):
        k2.replace(not_a_field=1)


def test_bad_json_names_line(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{\n  "hidden_size": 7168,\n  oops\n}')
    with pytest.raises(ConfigError, match="line 3"):
        K2Config.from_file(tmp_path)
