"""--backend llmapi files (LLM-API options, Triton llmapi model) and the --backend trtllm adapter's refusals."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
import sys
import types

import pytest
import yaml

from k2trt import trtllm_build
from k2trt.build_config import BUILD_CONFIGS_DIR, load_build_config, validate
from k2trt.errors import K2Error
from k2trt.llmapi import (
    LLMAPI_INPUTS, build_llmapi_engine_dir, llm_api_options, options_yaml, triton_config_pbtxt, triton_model_yaml,
)

CONTAINER = "nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3"


@pytest.fixture(scope="module")
def raw16() -> dict:
    return yaml.safe_load((BUILD_CONFIGS_DIR / "h200x16.yaml").read_text())


def test_options_follow_the_plan():
    bc = load_build_config("h200x16")
    o = llm_api_options(bc)
    assert o["tensor_parallel_size"] == bc.mapping.tp == 16
    assert (o["pipeline_parallel_size"], o["moe_expert_parallel_size"], o["moe_tensor_parallel_size"]) == (1, 16, 1)
    assert o["enable_attention_dp"] is True
    assert (o["max_batch_size"], o["max_num_tokens"], o["max_seq_len"]) == (
        bc.max_batch_size, bc.max_num_tokens, bc.max_seq_len)
    assert o["kv_cache_config"] == {"max_tokens": bc.kv_cache_tokens_per_gpu, "free_gpu_memory_fraction": 0.9,
                                    "dtype": "auto"}
    assert o["cuda_graph_config"] == {"enable_padding": True, "batch_sizes": list(bc.cuda_graph_batch_sizes)}
    assert o["gpus_per_node"] == 8  # 16 ranks over two 8-GPU nodes
    assert "gpus_per_node" not in llm_api_options(load_build_config("b200x8"))
    assert yaml.safe_load(options_yaml(bc)) == o


def test_fp8_kv_and_tp_attention(raw16):
    d = copy.deepcopy(raw16)
    d["plan"]["kv_dtype"] = "fp8"
    d["plan"]["mapping"].update(attention_dp=False)
    o = llm_api_options(validate(d, source="t"))
    assert o["kv_cache_config"]["dtype"] == "fp8" and o["enable_attention_dp"] is False


def test_triton_model_yaml():
    bc = load_build_config("h200x16")
    m = triton_model_yaml(bc, model_path="/models/Kimi-K2-Instruct")
    assert m["model"] == "/models/Kimi-K2-Instruct" and m["backend"] == "pytorch"
    assert m["triton_config"] == {"max_batch_size": 0, "decoupled": True}
    rest = {k: v for k, v in m.items() if k not in ("model", "backend", "triton_config")}
    assert rest == llm_api_options(bc)  # everything else goes to tensorrt_llm.LLM(**kwargs)
    with pytest.raises(K2Error, match="model_path"):
        triton_model_yaml(bc, model_path="")


def test_triton_config_pbtxt():
    text = triton_config_pbtxt(load_build_config("h200x16"))
    assert re.search(r'^name: "tensorrt_llm"$', text, re.M) and re.search(r'^backend: "python"$', text, re.M)
    # max_batch_size / decoupled belong to model.yaml's triton_config, never config.pbtxt
    assert "max_batch_size" not in text and "decoupled" not in text
    names = re.findall(r'name: "([a-z_]+)"', text)
    assert names[1:1 + len(LLMAPI_INPUTS)] == [n for n, *_ in LLMAPI_INPUTS] and "text_output" in names
    block = text[text.index('name: "text_input"'):text.index('name: "streaming"')]
    assert "optional" not in block and "TYPE_STRING" in block
    assert text.count("{") == text.count("}")


def test_build_llmapi_engine_dir(tmp_path, k2_reference_dir):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_bytes((k2_reference_dir / "config.json").read_bytes())
    (ckpt / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    bc = load_build_config("h200x16")
    out = build_llmapi_engine_dir(build_config=bc, checkpoint=ckpt, out=tmp_path / "eng", model_path="/m/k2")
    model_yaml = yaml.safe_load((out / "triton/tensorrt_llm/1/model.yaml").read_text())
    assert model_yaml["model"] == "/m/k2" and model_yaml["tensor_parallel_size"] == 16
    assert yaml.safe_load((out / "extra_llm_api_options.yaml").read_text()) == llm_api_options(bc)
    man = json.loads((out / "manifest.json").read_text())
    assert man["backend"] == "llmapi" and man["plan"]["mapping"]["moe_ep"] == 16
    assert man["inputs"]["checkpoint_config"]["sha256"] == hashlib.sha256(
        (ckpt / "config.json").read_bytes()).hexdigest()
    assert set(man["outputs"]) == {"extra_llm_api_options.yaml", "triton/tensorrt_llm/config.pbtxt",
                                   "triton/tensorrt_llm/1/model.yaml"}
    with pytest.raises(K2Error, match="exists and is not empty"):
        build_llmapi_engine_dir(build_config=bc, checkpoint=ckpt, out=out)
    with pytest.raises(K2Error, match="no config.json"):
        build_llmapi_engine_dir(build_config=bc, checkpoint=tmp_path, out=tmp_path / "e2")


# ------------------------------------------------------------------------------------------------ trtllm adapter


@pytest.fixture
def no_trtllm(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorrt_llm" else real(n, *a))


def test_trtllm_missing_names_the_container(no_trtllm, tmp_path, raw16):
    d = copy.deepcopy(raw16)
    d["backend"] = "trtllm"
    d["plan"]["mapping"]["attention_dp"] = False
    bc = validate(d, source="t")
    out = tmp_path / "engines"
    with pytest.raises(K2Error) as e:
        # the checkpoint does not exist: the adapter must stop on TensorRT-LLM before looking at any input
        trtllm_build.build_trtllm_engines(build_config=bc, checkpoint_dir=tmp_path / "missing", out=out)
    msg = str(e.value)
    assert CONTAINER in msg and "TensorRT-LLM 1.2.x" in msg and "not installed" in msg
    assert not out.exists()


def test_trtllm_wrong_version_names_the_container(monkeypatch):
    fake = types.ModuleType("tensorrt_llm")
    fake.__version__ = "1.3.0rc5"
    monkeypatch.setitem(sys.modules, "tensorrt_llm", fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: object() if n == "tensorrt_llm" else real(n, *a))
    with pytest.raises(K2Error, match=r"needs TensorRT-LLM 1\.2\.x .*found 1\.3\.0rc5.*" + re.escape(CONTAINER)):
        trtllm_build.require_tensorrt_llm()


def test_trtllm_build_args(raw16):
    d = copy.deepcopy(raw16)
    d["backend"] = "trtllm"
    d["plan"]["mapping"]["attention_dp"] = False
    bc = validate(d, source="t")
    args = trtllm_build.trtllm_build_args(bc)
    assert (args["max_batch_size"], args["max_seq_len"], args["max_num_tokens"]) == (
        bc.max_batch_size, bc.max_seq_len, bc.max_num_tokens)
    assert args["max_input_len"] == bc.max_seq_len - 1 and args["kv_cache_type"] == "paged"
    with pytest.raises(K2Error, match="no attention DP"):
        trtllm_build.trtllm_build_args(load_build_config("h200x16"))
