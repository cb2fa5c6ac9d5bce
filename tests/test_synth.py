import hashlib
import math
import json

import pytest
import torch
from typer.testing import CliRunner

from k2trt.checkpoint import HFCheckpoint, expected_tensors
from k2trt.cli import app
from k2trt.errors import K2Error
from k2trt.synth import preset_config, synthesize, tensor_plan

runner = CliRunner()


def digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_k2_layout(tiny_ckpt):
    names = sorted(p.name for p in tiny_ckpt.iterdir())
    assert names == sorted([
        "config.json", "model-1-of-3.safetensors", "model-2-of-3.safetensors", "model-3-of-3.safetensors",
        "model.safetensors.index.json", "tiktoken.model", "tokenizer_config.json",
    ])
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    assert cfg["model_type"] == "kimi_k2" and cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert cfg["quantization_config"] == {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    ck = HFCheckpoint(tiny_ckpt)
    dt = {n: ck.info(n).dtype for n in ck.names()}
    assert dt["model.layers.1.mlp.experts.7.down_proj.weight"] == "F8_E4M3"
    assert dt["model.layers.1.mlp.experts.7.down_proj.weight_scale_inv"] == "F32"
    assert dt["model.layers.0.mlp.gate_proj.weight"] == "F8_E4M3"
    assert dt["model.layers.1.mlp.gate.weight"] == "BF16"
    assert dt["model.layers.1.mlp.gate.e_score_correction_bias"] == "F32"
    assert dt["model.embed_tokens.weight"] == dt["lm_head.weight"] == dt["model.norm.weight"] == "BF16"
    assert dt["model.layers.2.self_attn.rotary_emb.inv_freq"] == "F32"
    # every expected tensor, its scale when FP8, and one inv_freq per layer; nothing else
    exp = expected_tensors(ck.config)
    n_fp8 = sum(1 for n in exp if dt[n] == "F8_E4M3")
    assert len(dt) == len(exp) + n_fp8 + ck.config.num_hidden_layers


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synthesize(out=tmp_path / "a", seed=7, shards=2)
    b = synthesize(out=tmp_path / "b", seed=7, shards=2)
    c = synthesize(out=tmp_path / "c", seed=8, shards=2)
    assert digest(a) == digest(b)
    assert digest(a)["model-1-of-2.safetensors"] != digest(c)["model-1-of-2.safetensors"]


def test_tensor_values_independent_of_shard_count(tmp_path):
    a = HFCheckpoint(synthesize(out=tmp_path / "a", seed=3, shards=1))
    b = HFCheckpoint(synthesize(out=tmp_path / "b", seed=3, shards=4))
    for n in a.names():
        assert torch.equal(a.get(n).view(torch.uint8), b.get(n).view(torch.uint8)), n


def test_cli_overrides_and_refusals(tmp_path):
    ov = tmp_path / "ov.json"
    ov.write_text(json.dumps({"n_group": 4, "topk_group": 2, "num_experts_per_tok": 3}))
    out = tmp_path / "g"
    res = runner.invoke(app, ["synth", "--out", str(out), "--config", str(ov), "--shards", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["n_group"] == 4
    res = runner.invoke(app, ["synth", "--out", str(out)])
    assert res.exit_code == 1 and "exists; pass --force" in res.stderr
    ov.write_text(json.dumps({"n_group": 3}))
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "h"), "--config", str(ov)])
    assert res.exit_code == 1 and "'n_group' (3) must divide 'n_routed_experts' (8)" in res.stderr
    assert not (tmp_path / "h").exists() and not (tmp_path / "h.partial").exists()


def test_unknown_preset_and_field():
    with pytest.raises(K2Error, match="unknown preset"):
        preset_config("huge")
    with pytest.raises(K2Error, match="unknown config field 'colour'"):
        preset_config("tiny", {"colour": 1})


def test_slice_preset_has_k2_layer_dims():
    c = preset_config("slice")
    assert (c.hidden_size, c.num_attention_heads, c.q_lora_rank, c.kv_lora_rank, c.moe_intermediate_size) == (
        7168, 64, 1536, 512, 2048)
    nbytes = sum(math.prod(shape) * dtype.itemsize for _, dtype, shape, _ in tensor_plan(c))
    assert nbytes > 2e9  # the converter benchmark needs at least 2 GB
