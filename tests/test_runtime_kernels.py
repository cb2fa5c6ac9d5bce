"""The runtime's ``kernels`` implementation (plugins/ Triton kernels, interpreted on CPU) against its torch path.

Attention goes through the paged MLA decode and the varlen prefill kernels and must match the torch path to
float32 precision. The grouped MoE kernel quantizes activations to FP8 per 128-channel group (K2's dynamic
scheme), so the MoE layer is checked against its FP8-aware reference (plugins.moe.moe_forward_ref) instead.
"""

import pytest
import torch

from k2trt.convert import convert
from k2trt.runtime.cache import PagedMLACache
from k2trt.runtime.comm import Comm
from k2trt.runtime.engine import Engine, Request
from k2trt.runtime.model import RankModel
from k2trt.runtime.weights import rank_weights, read_converted
from k2trt.synth import synthesize

pytestmark = pytest.mark.slow

ALIGNED = dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256, q_lora_rank=128, kv_lora_rank=128,
               qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, num_hidden_layers=3)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("kern")
    ck = synthesize(out=d / "ckpt", overrides=ALIGNED, seed=2, shards=1)
    return convert(checkpoint=ck, out=d / "conv", tp=1, progress=False).out


def _model(path, impl):
    cfg, m, _ = read_converted(path)
    return RankModel(cfg, m, 0, rank_weights(path, 0), dtype=torch.float32, comm=Comm(), impl=impl)


def test_attention_kernels_match_torch_over_prefill_and_decode(converted, monkeypatch):
    torch_model, kern = _model(converted, "torch"), _model(converted, "kernels")
    monkeypatch.setattr(kern, "_moe", torch_model._moe)  # isolate attention: MoE on the torch path in both
    prompts = [[5, 9, 200, 17, 3], [42], [7, 7, 1, 300, 12, 99, 4, 18, 250]]
    results = {}
    for name, model in (("torch", torch_model), ("kernels", kern)):
        cache = PagedMLACache(model.cfg, num_blocks=16, block_size=4, layers=model.layers, dtype=torch.float32)
        eng = Engine(model, cache, max_num_tokens=6)  # chunked prefill: later chunks attend to cached context
        logits = eng.prefill_logits(prompts)
        results[name] = (logits, eng.generate([Request(i, p, 4) for i, p in enumerate(prompts)]))
    (a, ga), (b, gb) = results["torch"], results["kernels"]
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    assert ga == gb


def test_moe_kernels_match_fp8_aware_reference(converted):
    from plugins.moe import moe_forward_ref

    kern = _model(converted, "kernels")
    layer = next(i for i in kern.layers if kern.cfg.is_moe_layer(i))
    x = torch.randn(11, kern.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    got = kern._moe(layer, x)
    p = f"layers.{layer}.mlp"
    want = moe_forward_ref(x, kern.w[f"{p}.gate.weight"], kern.w[f"{p}.gate.e_score_correction_bias"],
                           *kern.w[f"{p}.fp8"], kern.cfg, shared=kern.w[f"{p}.fp8_shared"], w13_order="up_gate")
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    # and within FP8 activation-quantization distance of the float (torch-path) layer
    ref = _model(converted, "torch")._moe(layer, x)
    assert (got - ref).abs().max() <= 0.1 * ref.abs().max()


def test_kernels_need_an_fp8_block_engine(tmp_path, converted):
    from k2trt.errors import K2Error

    ck = synthesize(out=tmp_path / "ck", overrides=ALIGNED, seed=2, shards=1)
    conv = convert(checkpoint=ck, out=tmp_path / "bf16", tp=1, weights="bf16", progress=False).out
    with pytest.raises(K2Error, match="fp8_block"):
        _model(conv, "kernels")
