"""The torch runtime: paged MLA cache, continuous batching, sampling (single process; TP/EP/PP in test_runtime_dist)."""

import pytest
import torch

from k2trt.checkpoint import HFCheckpoint
from k2trt.config import K2Config
from k2trt.errors import K2Error
from k2trt.mapping import Mapping
from k2trt.model import Transformer, greedy_generate
from k2trt.runtime.cache import PagedMLACache
from k2trt.runtime.comm import Comm
from k2trt.runtime.engine import Engine, Request
from k2trt.runtime.model import RankModel, reference_slices
from k2trt.runtime.sampling import SamplingParams


@pytest.fixture(scope="module")
def rank_model(tiny_ckpt):
    ck = HFCheckpoint(tiny_ckpt)
    m = Mapping(1)
    return RankModel(ck.config, m, 0, reference_slices(ck.config, m, 0, ck.get_real), dtype=torch.float32,
                     comm=Comm())


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    return Transformer.from_checkpoint(tiny_ckpt)


def make_engine(model, num_blocks=64, block_size=8, **kw):
    cache = PagedMLACache(model.cfg, num_blocks=num_blocks, block_size=block_size, layers=model.layers,
                          dtype=torch.float32)
    return Engine(model, cache, **kw)


def random_requests(n, seed=0, max_tokens=(4, 14), sampling=lambda i: SamplingParams()):
    g = torch.Generator().manual_seed(seed)
    reqs = []
    for i in range(n):
        length = int(torch.randint(1, 40, (1,), generator=g))
        mt = int(torch.randint(*max_tokens, (1,), generator=g))
        reqs.append(Request(i, torch.randint(0, 768, (length,), generator=g).tolist(), mt, sampling(i)))
    return reqs


def test_kv_cache_bytes_per_token_is_mla_minimum(rank_model, k2_reference_dir):
    cache = PagedMLACache(rank_model.cfg, num_blocks=4, block_size=8, layers=rank_model.layers, dtype=torch.bfloat16)
    c = rank_model.cfg
    assert cache.bytes_per_token == c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 2
    k2 = K2Config.from_file(k2_reference_dir)
    for dtype, want in ((torch.bfloat16, 70_272), (torch.float8_e4m3fn, 35_136)):
        # K2's cache allocated for real, with one block of one token
        k2_cache = PagedMLACache(k2, num_blocks=1, block_size=1, layers=range(61), dtype=dtype)
        assert k2_cache.bytes_per_token == want
    assert k2.full_kv_cache_bytes_per_token() / 70_272 > 35  # a per-head K/V cache: 2.5 MB per token


def test_batched_greedy_equals_reference_alone(rank_model, reference):
    reqs = random_requests(16)
    eng = make_engine(rank_model, max_num_tokens=48)  # small budget: long prompts prefill in chunks
    got = eng.generate(reqs)
    for r in reqs:
        assert got[r.request_id] == greedy_generate(reference, r.input_ids, r.max_tokens).new_ids, r.request_id
    assert eng.cache.allocator.free == 64  # every block back


def test_staggered_arrivals_and_sampling_match_running_alone(rank_model):
    def params(i):
        return SamplingParams(temperature=0.0 if i % 3 == 0 else 0.9, top_k=(0, 20, 5)[i % 3],
                              top_p=(1.0, 0.9, 0.7)[i % 3], seed=100 + i)

    reqs = random_requests(16, seed=1, sampling=params)
    alone = {r.request_id: make_engine(rank_model).generate([r])[r.request_id] for r in reqs}
    eng = make_engine(rank_model, max_num_tokens=32)
    got = {r.request_id: [] for r in reqs}
    pending = list(reqs)
    steps = 0
    while pending or eng.has_work:
        if pending and steps % 2 == 0:  # a new request every other step
            eng.submit(pending.pop(0))
        for out in eng.step():
            got[out.request_id].extend(out.new_ids)
        steps += 1
    assert got == alone
    assert len({tuple(v) for v in got.values()}) > 8  # sampling really varies


def test_admission_waits_for_blocks_and_refuses_the_impossible(rank_model):
    eng = make_engine(rank_model, num_blocks=6, block_size=8)  # 48 tokens of cache
    with pytest.raises(K2Error, match="exceeds the engine's max sequence length 48"):
        eng.submit(Request(0, [1] * 40, 9))
    a, b = Request(1, [1] * 20, 10), Request(2, [2] * 20, 10)  # 4 blocks each: only one fits at a time
    eng.submit(a)
    eng.submit(b)
    eng.step()
    assert list(eng.running) == [1] and [r.request_id for r in eng.waiting] == [2]
    got = eng.generate([])
    assert eng.cache.allocator.free == 6 and not eng.has_work
    assert sorted(got) == [1, 2] and len(got[2]) == 10


def test_cancel_frees_blocks_at_once(rank_model):
    eng = make_engine(rank_model, num_blocks=10, block_size=8)
    eng.submit(Request(7, [3] * 10, 30))
    eng.step()
    assert eng.cache.allocator.free == 10 - 5
    eng.cancel(7)
    assert eng.cache.allocator.free == 10
    outs = eng.step()
    assert [(o.request_id, o.finish_reason) for o in outs] == [(7, "cancelled")]
    assert not eng.has_work


def test_stop_ids_min_tokens_and_length(rank_model, reference):
    prompt = [5, 6, 7, 8]
    free = greedy_generate(reference, prompt, 10).new_ids
    stop = free[2]
    eng = make_engine(rank_model)
    outs = list(eng.run([Request(1, prompt, 10, stop_token_ids=(stop,))]))
    ids = [t for o in outs for t in o.new_ids]
    assert ids == free[: free.index(stop) + 1] and outs[-1].finish_reason == "stop"
    outs = list(eng.run([Request(2, prompt, 3)]))
    assert outs[-1].finish_reason == "length" and sum(len(o.new_ids) for o in outs) == 3
    # min_tokens masks the stop id until enough tokens exist
    outs = list(eng.run([Request(3, prompt, 10, SamplingParams(min_tokens=10), stop_token_ids=(free[0],))]))
    ids = [t for o in outs for t in o.new_ids]
    assert len(ids) == 10 and free[0] not in ids[:10]
    outs = list(eng.run([Request(4, prompt, 10, stop_sequences=(tuple(free[1:3]),))]))
    assert [t for o in outs for t in o.new_ids] == free[:3]


@pytest.mark.parametrize("req,message", [
    (Request(1, [], 4), "input_ids is empty"),
    (Request(1, [99999], 4), "outside the vocabulary"),
    (Request(1, [1], 0), "max_tokens must be >= 1"),
    (Request(1, [1], 4, SamplingParams(top_p=0.0)), "top_p must be in"),
    (Request(1, [1], 4, stop_strings=("x",)), "stop strings need an engine with a tokenizer"),
])
def test_bad_requests(rank_model, req, message):
    with pytest.raises(K2Error, match=message):
        make_engine(rank_model).submit(req)
