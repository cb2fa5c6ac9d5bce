"""The reference model against transformers' DeepseekV3ForCausalLM (an independent implementation)."""

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

from k2trt.checkpoint import dequantize_checkpoint
from k2trt.cli import app
from k2trt.model import Transformer, greedy_generate, route
from k2trt.synth import preset_config, synthesize

runner = CliRunner()

CONFIGS = {
    "k2-tiny": {},
    # DeepSeek-V3-style group-limited routing, every layer MoE
    "group-limited": {"n_group": 4, "topk_group": 2, "num_experts_per_tok": 3, "first_k_dense_replace": 0},
    # no q LoRA, no yarn, widths that are not multiples of 128 (transformers' grouped_mm wants 16-byte strides)
    "no-qlora-plain-rope": {"q_lora_rank": None, "hidden_size": 136, "rope_scaling": None},
    # yarn with a short original context, two dense layers
    "yarn-short": {"rope_scaling": {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16,
                                    "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707},
                   "first_k_dense_replace": 2, "num_hidden_layers": 4},
}


def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    ck = synthesize(out=d / "fp8", overrides=CONFIGS[request.param], seed=11, shards=2)
    hf = hf_model(dequantize_checkpoint(ck, d / "hf", model_type="deepseek_v3"))
    return ck, hf


@pytest.mark.parametrize("attn_impl", ["naive", "absorb", "sdpa"])
def test_logits_and_greedy_match_transformers(pair, attn_impl):
    ck, hf = pair
    ids = torch.randint(0, 700, (1, 37), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf(ids).logits[0]
    model = Transformer.from_checkpoint(ck, attn_impl=attn_impl)
    out = model(ids)[0]
    scale = ref.abs().max().item()
    assert scale > 1.0  # logits of a random model are O(1): a vanishing model would pass trivially
    assert (out - ref).abs().max().item() <= 1e-3 * scale
    mine = greedy_generate(model, ids[0].tolist(), 16).new_ids
    theirs = hf.generate(ids, max_new_tokens=16, do_sample=False, min_new_tokens=16)[0, 37:].tolist()
    assert mine == theirs


def test_checkpoint_written_by_transformers(tmp_path):
    """A checkpoint k2trt did not write: transformers' own save_pretrained of a random DeepseekV3."""
    cfg = preset_config("tiny").to_hf_dict()
    cfg.pop("quantization_config")
    cfg["model_type"] = "deepseek_v3"
    hf_cfg = transformers.DeepseekV3Config(**{k: v for k, v in cfg.items() if k not in ("architectures",)})
    torch.manual_seed(0)
    hf = transformers.DeepseekV3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # transformers initialises the router bias to zero: make it matter
        for layer in hf.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)
            layer.mlp.gate.weight.normal_(0, 0.2)
    hf.save_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 700, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits[0]
    out = Transformer.from_checkpoint(tmp_path / "hf")(ids)[0]
    assert (out - ref).abs().max().item() <= 1e-3 * ref.abs().max().item()


def test_group_limited_routing_never_leaves_the_chosen_groups():
    cfg = preset_config("tiny", {"n_group": 4, "topk_group": 2, "num_experts_per_tok": 3})
    logits = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    bias = torch.randn(8, generator=torch.Generator().manual_seed(1)) * 0.1
    w, ids = route(logits, bias, cfg)
    groups = (ids // 2).tolist()
    assert all(len(set(g)) <= 2 for g in groups)
    assert torch.allclose(w.sum(-1), torch.full((500,), cfg.routed_scaling_factor))


def test_generate_cli_and_logit_dump(tiny_ckpt, tmp_path):
    out = tmp_path / "logits.npy"
    res = runner.invoke(app, ["generate", str(tiny_ckpt), "--prompt-ids", "1,2,3,4", "--max-new-tokens", "5",
                              "--dump-logits", str(out)])
    assert res.exit_code == 0, res.output
    ids = [int(t) for t in res.stdout.split("ids: ")[1].split("\n")[0].split(",")]
    assert len(ids) <= 5
    logits = np.load(out)
    assert logits.shape == (4, 768) and logits.dtype == np.float32
    assert int(logits[-1].argmax()) == ids[0]


def test_generate_cli_text_prompt_and_bf16(tiny_ckpt):
    res = runner.invoke(app, ["generate", str(tiny_ckpt), "--prompt", "Hello", "--max-new-tokens", "3",
                              "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output
    assert "text: " in res.stdout


@pytest.mark.parametrize("args,message", [
    (["--prompt-ids", "1,x"], "--prompt-ids must be comma-separated integers"),
    (["--prompt-ids", "99999"], "outside the vocabulary"),
    ([], "exactly one of --prompt-ids and --prompt"),
    (["--prompt-ids", "1", "--dtype", "float8"], "--dtype must be one of"),
])
def test_generate_cli_bad_input(tiny_ckpt, args, message):
    res = runner.invoke(app, ["generate", str(tiny_ckpt), *args])
    assert res.exit_code == 1 and message in res.stderr, res.output


def test_fan_in_init_scales_each_matrix_by_its_inputs():
    from k2trt.errors import K2Error
    from k2trt.model import Transformer
    from k2trt.synth import preset_config

    m = Transformer(preset_config("tiny"))
    m.init_weights(seed=0, scheme="fan_in")
    p = dict(m.named_parameters())
    attn = "layers.0.self_attn."
    assert abs(p["embed_tokens.weight"].std().item() - 1.0) < 0.02
    kv_b = p[attn + "kv_b_proj.weight"]
    assert abs(kv_b.std().item() * kv_b.shape[1] ** 0.5 - 1.0) < 0.05
    o = p[attn + "o_proj.weight"]
    assert abs(o.std().item() * o.shape[1] ** 0.5 - 0.5) < 0.03  # writes into the residual stream: halved
    gate = next(v for k, v in p.items() if k.endswith("mlp.gate.weight"))
    assert abs(gate.std().item() - 0.02) < 0.005  # routers keep the small init
    assert all(v.eq(1).all() for k, v in p.items() if k.endswith("norm.weight"))
    with pytest.raises(K2Error, match="init scheme"):
        m.init_weights(scheme="xavier")
