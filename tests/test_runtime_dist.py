"""Converted, sharded and multi-process: the runtime on engine dirs against the single-process reference model."""

import pytest
import torch
from typer.testing import CliRunner

from k2trt.cli import app
from k2trt.convert import convert
from k2trt.errors import K2Error
from k2trt.model import Transformer, greedy_generate
from k2trt.runtime import runner
from k2trt.runtime.engine import Request
from k2trt.runtime.engine_dir import RuntimeConfig, build_torch_engine, read_runtime_config
from k2trt.synth import synthesize

# K2's head dims and 128-multiples per rank, so fp8_block shards need no block-cutting split at tp 2.
ALIGNED = dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256, q_lora_rank=128, kv_lora_rank=128,
               qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, num_hidden_layers=4)
MAPPINGS = {"tp1": (1, 1, 1), "tp2-ep2": (2, 2, 1), "tp2-pp2": (2, 2, 2)}
RT = RuntimeConfig(max_batch_size=8, max_seq_len=128, max_num_tokens=64, kv_cache_tokens=1024, block_size=16)


@pytest.fixture(scope="module")
def aligned_ckpt(tmp_path_factory):
    return synthesize(out=tmp_path_factory.mktemp("aligned") / "ckpt", overrides=ALIGNED, seed=4, shards=2)


@pytest.fixture(scope="module")
def reference(aligned_ckpt):
    return Transformer.from_checkpoint(aligned_ckpt)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(9)
    return [torch.randint(0, 768, (n,), generator=g).tolist() for n in (3, 17, 40, 1)]


@pytest.fixture(scope="module", params=list(MAPPINGS))
def engine(request, aligned_ckpt, tmp_path_factory):
    tp, ep, pp = MAPPINGS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    convert(checkpoint=aligned_ckpt, out=d / "conv", tp=tp, ep=ep, pp=pp, progress=False)
    return build_torch_engine(converted=d / "conv", out=d / "engine", runtime=RT)


@pytest.mark.slow
def test_sharded_logits_and_greedy_match_reference(engine, reference, prompts):
    logits = runner.prefill_logits(engine, prompts)
    for row, p in enumerate(prompts):
        ref = reference(torch.tensor([p]))[0, -1]
        assert (logits[row] - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    reqs = [Request(i, p, 12) for i, p in enumerate(prompts)]
    got = runner.generate(engine, reqs)
    assert got == {i: greedy_generate(reference, p, 12).new_ids for i, p in enumerate(prompts)}


def test_engine_dir_contents_and_runtime_config(engine):
    assert (engine / "runtime.json").is_file() and (engine / "engine_manifest.json").is_file()
    assert (engine / "tiktoken.model").is_file()
    assert read_runtime_config(engine) == RT


def test_generate_cli_on_engine_dir(engine):
    res = CliRunner().invoke(app, ["generate", str(engine), "--prompt", "Hello", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("ids: ") and "text: " in res.stdout


def test_build_refusals(aligned_ckpt, tmp_path):
    with pytest.raises(K2Error, match="no manifest.json"):
        build_torch_engine(converted=aligned_ckpt, out=tmp_path / "e")
    conv = convert(checkpoint=aligned_ckpt, out=tmp_path / "c", tp=1, progress=False).out
    with pytest.raises(K2Error, match="max_seq_len 4096 exceeds kv_cache_tokens 1024"):
        build_torch_engine(converted=conv, out=tmp_path / "e", runtime=RuntimeConfig(max_seq_len=4096,
                                                                                      kv_cache_tokens=1024))
    build_torch_engine(converted=conv, out=tmp_path / "e", runtime=RT)
    with pytest.raises(K2Error, match="exists; pass --force"):
        build_torch_engine(converted=conv, out=tmp_path / "e", runtime=RT)
