"""`k2trt build`: a build config + a HF checkpoint -> an engine dir (torch), reusing a matching conversion."""

import json

import pytest
from typer.testing import CliRunner

from k2trt.cli import app
from k2trt.runtime import runner
from k2trt.runtime.engine import Request
from k2trt.runtime.engine_dir import read_runtime_config

cli = CliRunner()


@pytest.fixture(scope="module")
def built(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "engine"
    res = cli.invoke(app, ["build", "--config", "cpu-tiny", "--checkpoint", str(tiny_ckpt), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_cpu_tiny_build_gives_an_engine_the_runtime_serves(built):
    rc = read_runtime_config(built)
    assert (rc.max_batch_size, rc.max_seq_len) == (16, 4096)  # build_configs/cpu-tiny.yaml's limits
    got = runner.generate(built, [Request(0, [1, 2, 3], 5), Request(1, [4, 5], 3)])
    assert [len(got[0]), len(got[1])] == [5, 3]
    manifest = json.loads((built / "engine_manifest.json").read_text())
    assert manifest["backend"] == "torch" and manifest["weights"] == "bf16"
    assert set(manifest["tokenizer"]) >= {"tiktoken.model", "tokenizer_config.json"}


def test_second_build_reuses_the_conversion(built, tiny_ckpt):
    conv = built.parent / f"{tiny_ckpt.name}.trtllm-tp1-pp1-ep1-bf16"
    before = (conv / "rank0.safetensors").stat().st_mtime_ns
    res = cli.invoke(app, ["build", "--config", "cpu-tiny", "--checkpoint", str(tiny_ckpt), "--out", str(built),
                           "--force"])
    assert res.exit_code == 0, res.output
    assert (conv / "rank0.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("args,message", [
    (["--backend", "trtllm", "--config", "h200x16"], "nvcr.io/nvidia/tritonserver"),
    (["--config", "no-such-topology"], "no such build config"),
    ([], "--config is required"),
])
def test_build_refusals(tiny_ckpt, tmp_path, args, message):
    res = cli.invoke(app, ["build", "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "e"), *args])
    assert res.exit_code == 1 and message in res.stderr, res.output
    assert not (tmp_path / "e").exists()
