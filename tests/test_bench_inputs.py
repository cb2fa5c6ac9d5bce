"""k2trt.bench.inputs and targets: prompts of exact token lengths, request payloads for each target."""

from __future__ import annotations

import json

import pytest

from k2trt.bench import inputs, targets
from k2trt.chat import render_chat
from k2trt.errors import K2Error
from k2trt.tokenizer import K2Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_ckpt) -> K2Tokenizer:
    return K2Tokenizer.from_dir(tiny_ckpt)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 64, 257])
def test_raw_prompts_have_exact_lengths(tok, n):
    prompts = inputs.raw_prompts(tok.encode, n, 5, seed=3)
    assert [len(tok.encode(p.text)) for p in prompts] == [n] * 5
    if n >= 17:  # distinct prompts (a 1-token prompt has few choices)
        assert len({p.text for p in prompts}) == 5
    assert all(p.tokens == n and not p.chat for p in prompts)


def test_prompts_are_reproducible(tok):
    a = inputs.raw_prompts(tok.encode, 40, 3, seed=1)
    assert a == inputs.raw_prompts(tok.encode, 40, 3, seed=1)
    assert a != inputs.raw_prompts(tok.encode, 40, 3, seed=2)


@pytest.mark.parametrize("isl", [60, 128, 300])
def test_chat_prompts_count_the_whole_templated_prompt(tok, isl):
    _, render_ids = inputs.tokenizer_encoders(tok)
    prompts = inputs.chat_prompts(render_ids, isl, 4, seed=0)
    for p in prompts:
        ids = render_chat(p.messages, tokenizer=tok).ids
        assert len(ids) == isl and p.chat and p.tokens == isl


def test_chat_prompt_shorter_than_the_template_is_refused(tok):
    _, render_ids = inputs.tokenizer_encoders(tok)
    overhead = len(render_ids(""))
    with pytest.raises(K2Error, match=f"--isl {overhead + 1} or more"):
        inputs.chat_prompts(render_ids, overhead, 1)


def test_exact_length_with_an_awkward_encoder():
    """A byte-level encoder (every character a token) and one where words cost 3 tokens: still exact."""

    def bytes_enc(s: str) -> list[int]:
        return list(s.encode())

    for n in (1, 2, 9, 50):
        assert len(bytes_enc(inputs.exact_length_text(bytes_enc, n, seed=n))) == n

    def coarse(s: str) -> list[int]:  # 3 tokens per word, 1 per space
        return [0] * (3 * len(s.split()) + s.count(" "))

    for n in (3, 7, 11):
        assert len(coarse(inputs.exact_length_text(coarse, n))) == n
    with pytest.raises(K2Error):
        inputs.exact_length_text(coarse, 2)  # no text of 2 tokens exists
    with pytest.raises(K2Error):
        inputs.exact_length_text(bytes_enc, 0)


# ----------------------------------------------------------------------------------------------- targets

ENSEMBLE_CONFIG = {"config": {
    "name": "ensemble", "platform": "ensemble", "max_batch_size": 64,
    "input": [{"name": "text_input", "data_type": "TYPE_STRING", "dims": ["1"]},
              {"name": "max_tokens", "data_type": "TYPE_INT32", "dims": ["1"]},
              {"name": "min_tokens", "data_type": "TYPE_INT32", "dims": ["1"], "optional": True},
              {"name": "stream", "data_type": "TYPE_BOOL", "dims": ["1"], "optional": True},
              {"name": "temperature", "data_type": "TYPE_FP32", "dims": ["1"], "optional": True},
              {"name": "end_id", "data_type": "TYPE_INT32", "dims": ["1"], "optional": True}],
    "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": ["-1"]},
               {"name": "output_ids", "data_type": "TYPE_INT32", "dims": ["-1"]}],
    "model_transaction_policy": {"decoupled": True},
    "parameters": {"tokenizer_dir": {"string_value": "/x"}}}}


def test_ensemble_plan_and_input_data():
    model = targets.TritonModel.from_config(ENSEMBLE_CONFIG)
    assert model.parameters == {"tokenizer_dir": "/x"} and model.decoupled
    plan = targets.plan_ensemble(model, osl=32)
    assert plan.values == {"max_tokens": 32, "stream": True, "min_tokens": 32, "temperature": 0.0}
    assert plan.ids_output == "output_ids" and "output_ids" in plan.token_count
    data = targets.ensemble_input_data(model, plan, [inputs.Prompt("a b", 2), inputs.Prompt("c", 1)])
    assert data["data"][0] == {"text_input": {"content": ["a b"], "shape": [1]},
                               "max_tokens": {"content": [32], "shape": [1]},
                               "stream": {"content": [True], "shape": [1]},
                               "min_tokens": {"content": [32], "shape": [1]},
                               "temperature": {"content": [0.0], "shape": [1]}}
    assert len(data["data"]) == 2


def _model(**changes) -> targets.TritonModel:
    cfg = json.loads(json.dumps(ENSEMBLE_CONFIG))["config"]
    for k, v in changes.items():
        cfg[k] = v
    return targets.TritonModel.from_config(cfg)


def test_ensemble_without_a_length_input_or_streaming_is_refused():
    ins = [i for i in ENSEMBLE_CONFIG["config"]["input"] if i["name"] != "min_tokens"]
    with pytest.raises(K2Error, match="forces the output length"):
        targets.plan_ensemble(_model(input=ins), osl=4)
    with pytest.raises(K2Error, match="not decoupled"):
        targets.plan_ensemble(_model(model_transaction_policy={}), osl=4)
    with pytest.raises(K2Error, match="no text_input"):
        targets.plan_ensemble(_model(input=ins[1:]), osl=4)
    req = ins + [{"name": "lora_weights", "data_type": "TYPE_FP16", "dims": ["-1"]}]
    with pytest.raises(K2Error, match="lora_weights"):
        targets.plan_ensemble(_model(input=req + [ENSEMBLE_CONFIG["config"]["input"][2]]), osl=4)


def test_ensemble_without_ids_counts_responses():
    outs = [{"name": "text_output", "data_type": "TYPE_STRING", "dims": ["-1"]}]
    plan = targets.plan_ensemble(_model(output=outs), osl=4)
    assert plan.ids_output is None and "one token per streamed response" in plan.token_count


def test_bls_input_data():
    model = targets.TritonModel.from_config({
        "name": "k2_bls", "input": [{"name": "request", "data_type": "TYPE_STRING", "dims": ["1"]}],
        "output": [{"name": "response", "data_type": "TYPE_STRING", "dims": ["1"]}],
        "model_transaction_policy": {"decoupled": True}})
    assert targets.bls_io(model) == ("request", "response")
    data = targets.bls_input_data(model, [inputs.Prompt("hi there", 40, chat=True)], osl=16)
    req = json.loads(data["data"][0]["request"]["content"][0])
    assert req["messages"] == [{"role": "user", "content": "hi there"}]
    assert req["max_tokens"] == 16 and req["stream"] is True and req["sampling"]["min_tokens"] == 16
