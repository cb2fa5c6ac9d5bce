"""The reference model (k2trt.model) with its MLA and MoE run through the plugin kernels still gives its logits.

k2trt.model has no kernel switch yet, so this test swaps the modules' ``forward`` for kernel-backed ones (the
hook the lead can turn into ``attn_impl="kernels"`` / ``moe_impl="kernels"``): MLA prefill through
``plugins.mla.mla_prefill`` on the decompressed keys, the MoE layer through ``plugins.moe.moe_forward`` on the
checkpoint's block-FP8 experts. The model itself matches transformers (tests/test_model.py).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from k2trt.fp8 import quantize_block_fp8  # noqa: E402
from plugins import mla as A  # noqa: E402
from plugins import moe as M  # noqa: E402
from plugins.check import rel_err  # noqa: E402


def _mla_forward(self, x, cos, sin, mask, cache=None, layer=0, start=0):
    assert cache is None and start == 0, "this adapter covers prefill without a cache"
    c = self.cfg
    b, t, _ = x.shape
    q_nope, q_rope, latent, k_rope = self.project(x, cos, sin)
    n, dn, dv = c.num_attention_heads, c.qk_nope_head_dim, c.v_head_dim
    w = self.kv_b_proj.weight.view(n, dn + dv, c.kv_lora_rank)
    k_nope = torch.einsum("btc,hdc->bthd", latent, w[:, :dn])
    v = torch.einsum("btc,hdc->bthd", latent, w[:, dn:])
    cu = torch.arange(0, (b + 1) * t, t, dtype=torch.int32)
    flat = lambda z: z.reshape(b * t, *z.shape[2:]).contiguous()  # noqa: E731
    out = A.mla_prefill(flat(q_nope), flat(q_rope), flat(k_nope), flat(k_rope), flat(v), cu,
                        softmax_scale=c.softmax_scale)
    return self.o_proj(out.view(b, t, n * dv))


def _moe_kernels(moe):
    """Stack the module's experts back into block-FP8 (exact: the checkpoint was block-FP8) and return a forward."""
    q = lambda lin: quantize_block_fp8(lin.weight.data)  # noqa: E731
    experts = [(*q(e.gate_proj), *q(e.up_proj), *q(e.down_proj)) for e in moe.experts]
    w13, w13_s, w2, w2_s = M.stack_experts(experts)
    s = moe.shared_experts
    sg, sgs, su, sus, sd, sds = (*q(s.gate_proj), *q(s.up_proj), *q(s.down_proj))
    shared = (torch.cat([sg, su]).contiguous(), torch.cat([sgs, sus]).contiguous(), sd, sds)

    def forward(x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        y = M.moe_forward(x2, moe.gate.weight.data.contiguous(), moe.gate.e_score_correction_bias.float().contiguous(),
                          w13, w13_s, w2, w2_s, moe.cfg, shared=shared)
        return y.view(shape)

    return forward


@pytest.fixture(scope="module")
def model128(tmp_path_factory):
    from k2trt.model import Transformer
    from k2trt.synth import synthesize

    # the tiny preset with a 128-wide expert (the fused gate/up layout needs I % 128 == 0, as K2's 2048)
    ckpt = synthesize(out=tmp_path_factory.mktemp("ckpt") / "tiny128", preset="tiny",
                      overrides={"moe_intermediate_size": 128}, seed=3, shards=1)
    return Transformer.from_checkpoint(ckpt, dtype=torch.float32, attn_impl="naive")


def test_model_logits_with_mla_through_the_prefill_kernel(model128, monkeypatch):
    from k2trt.model import MLA

    ids = torch.tensor([[1, 5, 9, 200, 7, 3, 3, 42, 11], [4, 4, 8, 15, 16, 23, 42, 99, 100]])
    ref = model128(ids)
    monkeypatch.setattr(MLA, "forward", _mla_forward)
    assert rel_err(model128(ids), ref) <= 1e-5


@pytest.mark.slow
def test_model_moe_layer_through_the_grouped_kernels(model128):
    """Against the FP8-aware reference: float32 tolerance. Against the model's float layer: the size of K2's
    dynamic FP8 activation quantization (e4m3 keeps 3 mantissa bits, ~3% per element)."""
    from k2trt.model import MoE

    moe = next(b.mlp for b in model128.layers if isinstance(b.mlp, MoE))
    x = torch.randn(13, model128.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    y = _moe_kernels(moe)(x)
    q = lambda lin: quantize_block_fp8(lin.weight.data)  # noqa: E731
    w13, w13_s, w2, w2_s = M.stack_experts([(*q(e.gate_proj), *q(e.up_proj), *q(e.down_proj)) for e in moe.experts])
    s = moe.shared_experts
    shared = (torch.cat([q(s.gate_proj)[0], q(s.up_proj)[0]]), torch.cat([q(s.gate_proj)[1], q(s.up_proj)[1]]),
              *q(s.down_proj))
    yr = M.moe_forward_ref(x, moe.gate.weight.data, moe.gate.e_score_correction_bias.float(), w13, w13_s, w2, w2_s,
                           moe.cfg, shared=shared)
    assert rel_err(y, yr) <= 1e-5
    with torch.inference_mode():
        assert rel_err(y, moe(x)) <= 0.1
