"""k2-tiny: the shipped checkpoint (K2's exact layout, special-token layout) really calls tools; the evaluation
itself scores what it claims to.

The behavioural checks run the shipped FP8 checkpoint through the reference model, greedy: the Kimi-K2 model
card's example (Beijing, ``get_weather``, ``{"weather": "Sunny"}`` back) and held-out conversations.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from k2trt.chat import load_chat_template, render_chat
from k2trt.checkpoint import inspect_checkpoint
from k2trt.config import K2Config
from k2trt.corpus import (
    Conversation,
    announcement,
    card_get_weather,
    eval_conversations,
    seed_example,
    training_conversations,
)
from k2trt.model import Transformer, greedy_generate
from k2trt.tiny_eval import evaluate, evaluate_case, reference_generate, run_tool_loop
from k2trt.tokenizer import K2_NAMED_SPECIAL_OFFSETS, K2Tokenizer, default_chat_template, train_bpe
from k2trt.toolcall import parse

K2_TINY = Path(__file__).resolve().parents[1] / "models" / "k2-tiny"


@pytest.fixture(scope="module")
def ckpt() -> Path:
    if not (K2_TINY / "config.json").is_file():
        pytest.fail(f"{K2_TINY} is missing: it is committed; regenerate it with scripts/train_tiny.py")
    return K2_TINY


@pytest.fixture(scope="module")
def tok(ckpt) -> K2Tokenizer:
    return K2Tokenizer.from_dir(ckpt)


@pytest.fixture(scope="module")
def model(ckpt) -> Transformer:
    torch.manual_seed(0)
    return Transformer.from_checkpoint(ckpt)


# ----------------------------------------------------------------------------------------------- layout


def test_checkpoint_has_no_problems(ckpt):
    report = inspect_checkpoint(ckpt)
    assert report.problems == []
    assert report.model_type == "kimi_k2"


def test_k2_file_layout(ckpt):
    files = {p.name for p in ckpt.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors.index.json", "model-1-of-2.safetensors", "model-2-of-2.safetensors",
            "tiktoken.model", "tokenizer_config.json", "chat_template.jinja"} <= files
    assert sum(p.stat().st_size for p in ckpt.iterdir() if p.is_file()) < 8e6  # a few MB, committed
    raw = json.loads((ckpt / "config.json").read_text())
    assert raw["architectures"] == ["DeepseekV3ForCausalLM"] and raw["model_type"] == "kimi_k2"
    assert raw["quantization_config"] == {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    cfg = K2Config.from_file(ckpt / "config.json")
    assert cfg.first_k_dense_replace == 1 and cfg.num_hidden_layers > 1
    assert (cfg.scoring_func, cfg.topk_method, cfg.n_shared_experts) == ("sigmoid", "noaux_tc", 1)
    assert cfg.rope_scaling is not None and cfg.rope_scaling.type == "yarn"
    assert cfg.q_lora_rank and cfg.kv_lora_rank


def test_k2_tensor_dtypes(ckpt):
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    seen = set()
    for shard in sorted(set(index.values())):
        with safe_open(ckpt / shard, "pt") as f:
            for name in f.keys():
                seen.add(name)
                t = f.get_slice(name)
                dtype, shape = t.get_dtype(), t.get_shape()
                if name.endswith("_scale_inv"):
                    w = f.get_slice(name.removesuffix("_scale_inv")).get_shape() if name.removesuffix(
                        "_scale_inv") in f.keys() else None
                    assert dtype == "F32"
                    if w is not None:
                        assert shape == [math.ceil(w[0] / 128), math.ceil(w[1] / 128)]
                elif re.search(r"_proj(_with_mqa)?\.weight$", name):
                    assert dtype == "F8_E4M3", name
                    assert name + "_scale_inv" in index, name
                elif name.endswith("e_score_correction_bias") or name.endswith("rotary_emb.inv_freq"):
                    assert dtype == "F32", name
                else:  # embeddings, lm_head, norms, routers
                    assert dtype == "BF16", name
    assert seen == set(index)
    assert "model.layers.1.mlp.experts.0.up_proj.weight_scale_inv" in seen
    assert "model.layers.0.mlp.gate_proj.weight" in seen  # the dense first layer


def test_special_token_layout_is_k2s(ckpt, tok):
    n = tok.base_vocab_size
    cfg = K2Config.from_file(ckpt / "config.json")
    assert cfg.vocab_size == n + 256 == tok.vocab_size
    raw = json.loads((ckpt / "config.json").read_text())
    assert (raw["bos_token_id"], raw["eos_token_id"]) == (n, n + 1)
    assert tok.special_ids["[BOS]"] == n and tok.special_ids["[EOS]"] == n + 1
    assert tok.special_ids["<|im_end|>"] == n + 2 and tok.special_ids["<|im_middle|>"] == n + 17
    assert [tok.special_ids[s] - n for s in ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>",
                                             "<|tool_call_begin|>", "<|tool_call_argument_begin|>",
                                             "<|tool_call_end|>")] == [11, 12, 13, 14, 15]
    assert tok.special_ids["[UNK]"] == n + 254 and tok.special_ids["[PAD]"] == n + 255
    assert tok.special_names[n + 5] == f"<|reserved_token_{n + 5}|>"
    decoder = json.loads((ckpt / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {int(k) - n: v["content"] for k, v in decoder.items()} == K2_NAMED_SPECIAL_OFFSETS
    assert tok.stop_ids == [n + 2, n + 1]


def test_chat_template_is_k2trts_current_k2_format(ckpt):
    assert load_chat_template(ckpt) == default_chat_template()
    assert json.loads((ckpt / "tokenizer_config.json").read_text())["chat_template"] == default_chat_template()


# ----------------------------------------------------------------------------------------------- behaviour


def _turn(model, tok, messages, tools) -> tuple[str, object]:
    ids = render_chat(messages, tools=tools, tokenizer=tok).ids
    new = greedy_generate(model, ids, 96, tuple(tok.stop_ids)).new_ids
    assert new[-1] == tok.im_end_id, tok.decode(new)
    text = tok.decode(new[:-1])
    return text, parse(text, declared_tools=[t["function"]["name"] for t in tools])


def test_model_card_example_end_to_end(model, tok):
    """The seed's own example, as the model card's client runs it: call, run the tool locally, answer."""
    tools, messages = seed_example()
    text, res = _turn(model, tok, messages, tools)
    assert [(c.id, c.name, json.loads(c.arguments)) for c in res.tool_calls] == [
        ("functions.get_weather:0", "get_weather", {"city": "Beijing"})]
    # a model trained on announcements (--announce) names the tool before its call; the others write nothing
    shipped = json.loads((K2_TINY / "training" / "metrics.json").read_text())
    said = announcement(["get_weather"], declared=True) if shipped.get("announce") else ""
    assert res.content == said and not res.unparsed and res.partial_call is None
    # the same through the reusable client loop (what the demo runs)
    convo = run_tool_loop(reference_generate(model, tok), tok, messages, tools, {"get_weather": card_get_weather})
    assert [m["role"] for m in convo] == ["system", "user", "assistant", "tool", "assistant"]
    assert convo[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": json.dumps({"city": "Beijing"})}
    assert convo[3] == {"role": "tool", "tool_call_id": "functions.get_weather:0", "name": "get_weather",
                        "content": '{"weather": "Sunny"}'}
    answer = convo[-1]["content"]
    assert "Sunny" in answer and "Beijing" in answer and "<|" not in answer


def test_heldout_cases_through_the_shipped_checkpoint(model, tok):
    """One held-out conversation of each kind (cities, weather words and numbers never seen in training)."""
    convs = eval_conversations(1, seed=1)
    gen = reference_generate(model, tok)
    failures = []
    for conv in convs[1:]:
        r = evaluate_case(gen, tok, conv)
        if r.failures:
            failures.append((conv.kind, r.user, r.failures))
    assert failures == []


# ----------------------------------------------------------------------------------------------- the evaluation


@pytest.fixture(scope="module")
def small_tok() -> K2Tokenizer:
    pat = re.compile("|".join(re.escape(n) for n in K2_NAMED_SPECIAL_OFFSETS.values()))
    texts = [render_chat(c.messages, tools=c.tools, add_generation_prompt=False).text
             for c in training_conversations(100, 0)]
    return K2Tokenizer(train_bpe([p for t in texts for p in pat.split(t) if p], 500))


def _oracle(conv: Conversation, tok: K2Tokenizer):
    """A generate that answers like a perfect model: the conversation's own turns, from its own rendering."""
    full = render_chat(conv.messages, tools=conv.tools, add_generation_prompt=False, tokenizer=tok).ids
    prompt = render_chat(conv.prompt_messages, tools=conv.tools, tokenizer=tok).ids
    first = full[len(prompt): full.index(tok.im_end_id, len(prompt)) + 1]
    answer = tok.encode(conv.messages[-1]["content"]) + [tok.im_end_id]

    def generate(ids: list[int], max_new_tokens: int) -> list[int]:
        out = first if ids == prompt else answer
        return out[:max_new_tokens]

    return generate


def _reference_conversations() -> list[Conversation]:
    """Complete conversations, up to four of every kind (held-out pools, with reference replies)."""
    from k2trt.corpus import conversations

    by_kind: dict[str, list[Conversation]] = {}
    for c in conversations(400, 5, "heldout"):
        if c.kind != "two_exchanges" and len(by_kind.setdefault(c.kind, [])) < 4:
            by_kind[c.kind].append(c)
    return [c for convs in by_kind.values() for c in convs]


def test_a_perfect_model_scores_100(small_tok):
    convs = _reference_conversations()
    cases = [evaluate_case(_oracle(c, small_tok), small_tok, c) for c in convs]
    assert [c.failures for c in cases] == [[] for _ in cases]
    assert {c.kind for c in convs} >= {"weather", "calculate", "two_calls", "chat", "no_tool"}


def test_rates_count_what_they_claim(small_tok):
    convs = _reference_conversations()
    tool_convs = [c for c in convs if c.calls]
    hello = small_tok.encode("Hello!") + [small_tok.im_end_id]
    report = evaluate(lambda ids, n: hello, small_tok, convs)
    assert report.n_tool_requests == len(tool_convs) and report.n_no_call == len(convs) - len(tool_convs)
    assert report.tool_call_rate == 0.0 and report.answer_rate == 0.0 and report.no_call_rate == 1.0
    assert not report.passed()
    assert len(report.failures) == len(tool_convs)


def test_wrong_arguments_fail_the_call_but_the_answer_is_scored_on_its_own(small_tok):
    conv = next(c for c in _reference_conversations() if c.kind == "weather")
    good = _oracle(conv, small_tok)
    city = conv.calls[0][1]["city"]
    bad_call = small_tok.decode(good(render_chat(conv.prompt_messages, tools=conv.tools, tokenizer=small_tok).ids,
                                     200)).replace(city, city.lower())

    def generate(ids, n):
        if ids == render_chat(conv.prompt_messages, tools=conv.tools, tokenizer=small_tok).ids:
            return small_tok.encode(bad_call, allow_special=True)
        return good(ids, n)

    r = evaluate_case(generate, small_tok, conv)
    assert r.call_ok is False and r.answer_ok is True
    assert any("!= expected" in f for f in r.failures)


def test_an_unterminated_turn_fails(small_tok):
    conv = next(c for c in _reference_conversations() if c.kind in ("chat", "chat_tools"))
    endless = small_tok.encode("Hello! Hello! Hello!")
    r = evaluate_case(lambda ids, n: endless[:n], small_tok, conv, max_new_tokens=4)
    assert r.no_call_ok is False and "no end of turn within 4 tokens" in r.failures[0]


def test_a_call_where_none_is_needed_fails(small_tok):
    conv = next(c for c in _reference_conversations() if c.kind == "no_tool")
    call = ('<|tool_calls_section_begin|><|tool_call_begin|>functions.get_time:0<|tool_call_argument_begin|>'
            '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|><|im_end|>')
    r = evaluate_case(lambda ids, n: small_tok.encode(call, allow_special=True), small_tok, conv)
    assert r.no_call_ok is False and "made a call" in r.failures[0]


def test_tool_loop_runs_the_card_client_flow(small_tok):
    conv = eval_conversations(1, seed=1)[0]  # the model card's example with its reference turns
    tools, messages = seed_example()
    convo = run_tool_loop(_oracle(conv, small_tok), small_tok, messages, tools, {"get_weather": card_get_weather})
    assert convo[:2] == messages and len(convo) == 5
    assert convo[3]["content"] == '{"weather": "Sunny"}'
    assert convo[-1] == {"role": "assistant", "content": "The weather in Beijing today is Sunny."}


@pytest.mark.parametrize("output, error", [
    ("Hello! Hello!", "did not end its turn"),
    ('<|tool_calls_section_begin|><|tool_call_begin|>functions.get_time:0<|tool_call_argument_begin|>'
     '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|><|im_end|>', "malformed or undeclared"),
    ('<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>'
     '{"city": Paris}<|tool_call_end|><|tool_calls_section_end|><|im_end|>', "not a JSON object"),
])
def test_tool_loop_refuses_output_it_cannot_act_on(small_tok, output, error):
    from k2trt.errors import K2Error

    tools, messages = seed_example()
    ids = small_tok.encode(output, allow_special=True)
    with pytest.raises(K2Error, match=error):
        run_tool_loop(lambda p, n: ids, small_tok, messages, tools, {"get_weather": card_get_weather})
