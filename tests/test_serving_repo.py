"""``k2trt repo``: the template repository filled from typed settings, checked against Triton's config schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2trt.errors import K2Error
from k2trt.serving.settings import (
    MODELS,
    REPO_RECORD,
    RepoSettings,
    engine_backend,
    fill_template,
    parse_model_config,
    read_repo_settings,
    settings_for_engine,
    template_dir,
    write_repo,
)


@pytest.fixture(scope="module")
def torch_engine(tiny_ckpt, tmp_path_factory) -> Path:
    from k2trt.convert import convert
    from k2trt.runtime.engine_dir import RuntimeConfig, build_torch_engine

    d = tmp_path_factory.mktemp("torch")
    convert(checkpoint=tiny_ckpt, out=d / "conv", tp=2, ep=2, weights="bf16", progress=False)
    return build_torch_engine(converted=d / "conv", out=d / "engine", tokenizer_dir=tiny_ckpt,
                              runtime=RuntimeConfig(max_batch_size=8, max_seq_len=512, kv_cache_tokens=4096))


@pytest.fixture(scope="module")
def trtllm_engine(tiny_ckpt, tmp_path_factory) -> Path:
    """The files `k2trt build --backend trtllm` leaves (TensorRT-LLM's engine config.json, the k2trt manifest);
    the engines themselves are never read here."""
    d = tmp_path_factory.mktemp("trtllm") / "engine"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "version": "1.2.0",
        "pretrained_config": {"architecture": "DeepseekV3ForCausalLM",
                              "mapping": {"world_size": 8, "tp_size": 8, "pp_size": 1, "moe_ep_size": 8}},
        "build_config": {"max_batch_size": 64, "max_input_len": 8191, "max_seq_len": 8192, "max_num_tokens": 8192},
    }))
    (d / "manifest.json").write_text(json.dumps({"k2trt_manifest": 1, "backend": "trtllm"}))
    for r in range(8):
        (d / f"rank{r}.engine").write_bytes(b"")
    return d


def configs(repo: Path) -> dict:
    return {m: parse_model_config((repo / m / "config.pbtxt").read_text(), where=m) for m in MODELS}


def test_torch_repository(torch_engine, tmp_path):
    s = settings_for_engine(torch_engine, served_model_name="k2-tiny")
    assert (s.backend, s.world_size, s.max_batch_size, s.max_seq_len) == ("torch", 2, 8, 512)
    repo = write_repo(settings=s, out=tmp_path / "repo")
    for m in MODELS:
        text = (repo / m / "config.pbtxt").read_text()
        assert "${" not in text
        assert (repo / m / "1").is_dir()
    for m in ("tensorrt_llm", "preprocessing", "postprocessing", "k2_bls"):
        assert (repo / m / "1" / "model.py").is_file()
    c = configs(repo)
    eng = c["tensorrt_llm"]
    assert eng.backend == "python" and eng.max_batch_size == 8 and eng.model_transaction_policy.decoupled
    assert eng.parameters["engine_dir"].string_value == str(torch_engine.resolve())
    assert c["k2_bls"].parameters["max_seq_len"].string_value == "512"
    assert c["k2_bls"].parameters["served_model_name"].string_value == "k2-tiny"
    assert c["k2_bls"].max_batch_size == 0 and c["k2_bls"].model_transaction_policy.decoupled
    assert [st.model_name for st in c["ensemble"].ensemble_scheduling.step] == [
        "preprocessing", "tensorrt_llm", "postprocessing"]
    assert read_repo_settings(repo) == s


def test_trtllm_repository_is_the_tensorrtllm_backends(trtllm_engine, tiny_ckpt, tmp_path):
    s = settings_for_engine(trtllm_engine, tokenizer_dir=tiny_ckpt, kv_cache_free_gpu_mem_fraction=0.85)
    assert (s.backend, s.world_size, s.max_batch_size, s.max_seq_len) == ("trtllm", 8, 64, 8192)
    repo = write_repo(settings=s, out=tmp_path / "repo")
    eng = configs(repo)["tensorrt_llm"]
    assert eng.backend == "tensorrtllm" and eng.model_transaction_policy.decoupled
    assert not (repo / "tensorrt_llm" / "1" / "model.py").exists() and (repo / "tensorrt_llm" / "1").is_dir()
    p = {k: v.string_value for k, v in eng.parameters.items()}
    assert p["gpt_model_type"] == "inflight_fused_batching"
    assert p["gpt_model_path"] == str(trtllm_engine.resolve())
    assert p["kv_cache_free_gpu_mem_fraction"] == "0.85"
    assert p["exclude_input_in_output"] == "true"
    assert p["batch_scheduler_policy"] == "max_utilization" and p["max_beam_width"] == "1"
    assert list(eng.dynamic_batching.preferred_batch_size) == [64]
    assert configs(repo)["preprocessing"].parameters["tokenizer_dir"].string_value == str(tiny_ckpt.resolve())


def test_both_engine_models_have_the_same_tensors(torch_engine, trtllm_engine, tiny_ckpt, tmp_path):
    a = configs(write_repo(settings=settings_for_engine(torch_engine), out=tmp_path / "a"))["tensorrt_llm"]
    b = configs(write_repo(settings=settings_for_engine(trtllm_engine, tokenizer_dir=tiny_ckpt),
                           out=tmp_path / "b"))["tensorrt_llm"]
    assert list(a.input) == list(b.input) and list(a.output) == list(b.output)


def test_a_missing_value_is_an_error_naming_file_and_key():
    with pytest.raises(K2Error, match=r"x/config.pbtxt: no value for \$\{nope\}"):
        fill_template("max_batch_size: ${nope}", {}, where="x/config.pbtxt")
    with pytest.raises(K2Error, match="bad placeholder"):
        fill_template("a: $1", {}, where="x")
    assert fill_template("a: ${v} $$", {"v": "1"}, where="x") == "a: 1 $"


def _copy_template(tmp_path: Path) -> Path:
    t = tmp_path / "template"
    shutil.copytree(template_dir(), t)
    return t


def test_template_with_an_unknown_placeholder_fails(torch_engine, tmp_path):
    t = _copy_template(tmp_path)
    cfg = t / "postprocessing" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("${skip_special_tokens}", "${skip_specials}"))
    with pytest.raises(K2Error, match=r"postprocessing/config.pbtxt: no value for \$\{skip_specials\}"):
        write_repo(settings=settings_for_engine(torch_engine), out=tmp_path / "repo", template=t)
    assert not (tmp_path / "repo").exists()


def test_template_that_breaks_the_contract_fails(torch_engine, tmp_path):
    t = _copy_template(tmp_path)
    cfg = t / "tensorrt_llm" / "config.torch.pbtxt"
    text = cfg.read_text()
    i = text.index('name: "runtime_top_k"')
    cfg.write_text(text[:i] + text[i:].replace("TYPE_INT32", "TYPE_INT64", 1))
    with pytest.raises(K2Error, match="input 'runtime_top_k' is .*TYPE_INT64.*contract says.*TYPE_INT32"):
        write_repo(settings=settings_for_engine(torch_engine), out=tmp_path / "repo", template=t)


def test_template_that_is_not_a_model_config_fails(torch_engine, tmp_path):
    t = _copy_template(tmp_path)
    (t / "k2_bls" / "config.pbtxt").write_text('name: "k2_bls"\nbackend: "python"\nmax_batch_sise: 0\n')
    with pytest.raises(K2Error, match="k2_bls/config.pbtxt: not a valid Triton model config.*max_batch_sise"):
        write_repo(settings=settings_for_engine(torch_engine), out=tmp_path / "repo", template=t)


def test_existing_output_needs_force(torch_engine, tmp_path):
    s = settings_for_engine(torch_engine)
    write_repo(settings=s, out=tmp_path / "repo")
    with pytest.raises(K2Error, match="exists and is not empty"):
        write_repo(settings=s, out=tmp_path / "repo")
    write_repo(settings=s, out=tmp_path / "repo", force=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(K2Error, match="not a k2trt repository"):
        write_repo(settings=s, out=other, force=True)


def test_settings_are_validated(torch_engine):
    s = settings_for_engine(torch_engine)
    import dataclasses

    bad = dataclasses.replace(s, max_batch_size=0, kv_cache_free_gpu_mem_fraction=1.5, backend="onnx",
                              default_max_tokens="many")
    with pytest.raises(K2Error) as e:
        bad.validate()
    text = "\n".join(e.value.problems)
    for what in ("max_batch_size: must be >= 1", "kv_cache_free_gpu_mem_fraction", "backend: expected one of",
                 "default_max_tokens: expected an integer"):
        assert what in text


def test_engine_dirs_that_are_not_for_this_repository(tmp_path):
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "manifest.json").write_text(json.dumps({"backend": "llmapi"}))
    with pytest.raises(K2Error, match="llmapi engine dir"):
        engine_backend(tmp_path / "llm")
    with pytest.raises(K2Error, match="no such directory"):
        engine_backend(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(K2Error, match="not an engine dir"):
        engine_backend(tmp_path / "empty")


def test_trtllm_engine_without_tokenizer_asks_for_one(trtllm_engine):
    with pytest.raises(K2Error, match="pass --tokenizer-dir"):
        settings_for_engine(trtllm_engine)


def test_cli_repo(torch_engine, tmp_path):
    from k2trt.cli import app

    out = tmp_path / "repo"
    r = CliRunner().invoke(app, ["repo", "--engine", str(torch_engine), "--out", str(out),
                                 "--served-model-name", "tiny", "--default-max-tokens", "99"])
    assert r.exit_code == 0, r.output
    assert "torch engine, world size 2" in r.output
    assert json.loads((out / REPO_RECORD).read_text())["default_max_tokens"] == 99
    r = CliRunner().invoke(app, ["repo", "--engine", str(torch_engine), "--out", str(out)])
    assert r.exit_code == 1 and "error: --out" in r.output


def test_record_rejects_unknown_fields():
    with pytest.raises(K2Error, match="unknown field"):
        RepoSettings.from_json({"engine_dir": "/x", "surprise": 1})


@pytest.mark.slow
def test_trtllm_engine_config_passes_tritonservers_own_validation(trtllm_engine, tiny_ckpt, tmp_path):
    """tritonserver validates a config before it looks for the backend: with no tensorrtllm backend here, a valid
    config fails only at 'unable to find backend library'; an invalid one fails in validation, before that."""
    import subprocess

    from k2trt.serving.server import find_tritonserver, server_env

    install = find_tritonserver()
    repo = write_repo(settings=settings_for_engine(trtllm_engine, tokenizer_dir=tiny_ckpt), out=tmp_path / "repo")

    def load_error() -> str:
        cmd = [str(install.binary), f"--model-repository={repo}", "--model-control-mode=explicit",
               "--load-model=tensorrt_llm", "--allow-http=false", "--allow-grpc=false", "--allow-metrics=false",
               "--disable-auto-complete-config"]
        if install.backend_dir is not None:
            cmd.append(f"--backend-directory={install.backend_dir}")
        r = subprocess.run(cmd, env=server_env(install), capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        return r.stdout + r.stderr

    if (install.backend_dir or Path("/opt/tritonserver/backends")).joinpath("tensorrtllm").exists():
        pytest.skip("this tritonserver has the tensorrtllm backend: loading would start TensorRT-LLM")
    assert "unable to find backend library for backend 'tensorrtllm'" in load_error()
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: [ 2, -1 ]", "dims: [ ]", 1))  # what the schema alone allows
    assert "model input 'stop_words_list' must specify 'dims'" in load_error()
