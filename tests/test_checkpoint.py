import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from k2trt.checkpoint import HFCheckpoint, inspect_checkpoint
from k2trt.cli import app
from k2trt.errors import CheckpointError

runner = CliRunner()


def copy_ckpt(src, tmp_path, name="c"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def rewrite_tensor(ckpt_dir, name, fn):
    """Rewrite one tensor with plain safetensors (as a third-party tool would)."""
    shard = json.loads((ckpt_dir / "model.safetensors.index.json").read_text())["weight_map"][name]
    tensors = load_file(ckpt_dir / shard)
    tensors[name] = fn(tensors[name])
    save_file(tensors, ckpt_dir / shard, metadata={"format": "pt"})


def test_clean_checkpoint_has_no_problems(tiny_ckpt):
    r = inspect_checkpoint(tiny_ckpt)
    assert r.problems == []
    assert (r.layers, r.dense_layers, r.moe_layers, r.routed_experts, r.shards) == (3, 1, 2, 8, 3)
    on_disk = sum(p.stat().st_size for p in tiny_ckpt.glob("*.safetensors"))
    assert 0 < sum(r.bytes_by_dtype.values()) < on_disk  # data bytes, without the headers
    assert set(r.bytes_by_dtype) == {"BF16", "F8_E4M3", "F32"}


def test_inspect_cli_json(tiny_ckpt):
    res = runner.invoke(app, ["inspect", str(tiny_ckpt), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] is True and data["tensors"] == len(HFCheckpoint(tiny_ckpt).names())


def test_fp8_weight_paired_with_scale_in_another_shard(tiny_ckpt_split_scales):
    ck = HFCheckpoint(tiny_ckpt_split_scales)
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    assert ck.weight_map[name] != ck.weight_map[name + "_scale_inv"]
    w, s = ck.get_fp8(name)
    assert w.dtype == torch.float8_e4m3fn and s.shape == (1, 2)  # [96, 192] in 128-blocks
    assert inspect_checkpoint(tiny_ckpt_split_scales).problems == []


def test_each_corruption_reported_on_its_own_line(tiny_ckpt, tmp_path):
    c = copy_ckpt(tiny_ckpt, tmp_path)
    wm = json.loads((c / "model.safetensors.index.json").read_text())["weight_map"]
    # 1) a wrong-shape scale and 2) a NaN scale, both in shard 1
    rewrite_tensor(c, "model.layers.0.self_attn.q_a_proj.weight_scale_inv", lambda s: torch.ones(3, 3))
    rewrite_tensor(c, "model.layers.0.self_attn.kv_b_proj.weight_scale_inv",
                   lambda s: torch.full_like(s, float("nan")))
    # 3) a deleted shard and 4) a truncated shard
    (c / "model-2-of-3.safetensors").unlink()
    p3 = c / "model-3-of-3.safetensors"
    p3.write_bytes(p3.read_bytes()[:-1000])
    res = runner.invoke(app, ["inspect", str(c)])
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("problem: ")]
    n2 = sum(1 for s in wm.values() if s == "model-2-of-3.safetensors")
    expected = [
        f"shard model-2-of-3.safetensors (listed in the index) is missing ({n2} tensors unavailable)",
        "model-3-of-3.safetensors: truncated",
        "tensor 'model.layers.0.self_attn.q_a_proj.weight_scale_inv' has shape [3, 3], expected [1, 2]",
        "tensor 'model.layers.0.self_attn.kv_b_proj.weight_scale_inv' has ",
    ]
    for want in expected:
        assert sum(want in ln for ln in lines) == 1, (want, lines)
    assert any("kv_b_proj.weight_scale_inv' has 2 NaN/Inf" in ln for ln in lines), lines
    assert len(lines) == 4, lines
    assert "Traceback" not in res.output


def test_non_positive_scale_and_unexplained_tensor(tiny_ckpt, tmp_path):
    c = copy_ckpt(tiny_ckpt, tmp_path)
    rewrite_tensor(c, "model.layers.2.mlp.experts.0.down_proj.weight_scale_inv", lambda s: -s)
    rewrite_tensor(c, "model.norm.weight", lambda t: t)
    idx = json.loads((c / "model.safetensors.index.json").read_text())
    shard = idx["weight_map"]["model.norm.weight"]
    tensors = load_file(c / shard)
    tensors["model.layers.0.mystery.weight"] = torch.zeros(2)
    save_file(tensors, c / shard)
    idx["weight_map"]["model.layers.0.mystery.weight"] = shard
    (c / "model.safetensors.index.json").write_text(json.dumps(idx))
    problems = inspect_checkpoint(c).problems
    assert any("down_proj.weight_scale_inv' has 2 non-positive" in p for p in problems), problems
    assert "tensor 'model.layers.0.mystery.weight' is not explained by the config" in problems


def test_missing_tensor_and_shape_vs_config(tiny_ckpt, tmp_path):
    c = copy_ckpt(tiny_ckpt, tmp_path)
    cfg = json.loads((c / "config.json").read_text())
    cfg["n_routed_experts"] = 9  # the checkpoint holds 8: expert 8 missing, router rows wrong
    cfg["num_experts_per_tok"] = 2
    (c / "config.json").write_text(json.dumps(cfg))
    problems = inspect_checkpoint(c, verify_data=False).problems
    assert "tensor 'model.layers.1.mlp.gate.weight' has shape [8, 192], config implies [9, 192]" in problems
    assert any("'model.layers.2.mlp.experts.8.up_proj.weight' is missing" in p for p in problems)


def test_extra_shard_not_in_index(tiny_ckpt, tmp_path):
    c = copy_ckpt(tiny_ckpt, tmp_path)
    shutil.copy(c / "model-1-of-3.safetensors", c / "model-4-of-3.safetensors")
    assert "shard model-4-of-3.safetensors is on disk but not in the index" in inspect_checkpoint(c).problems


def test_unusable_checkpoint_is_one_clear_error(tmp_path):
    res = runner.invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 1
    assert res.stderr.startswith("error: ") and "config.json" in res.stderr
    with pytest.raises(CheckpointError, match="not a directory"):
        HFCheckpoint(tmp_path / "nope")


def test_get_from_truncated_shard_names_file(tiny_ckpt, tmp_path):
    c = copy_ckpt(tiny_ckpt, tmp_path)
    p = c / "model-3-of-3.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    ck = HFCheckpoint(c)
    name = next(n for n, s in ck.weight_map.items() if s == p.name)
    with pytest.raises(CheckpointError, match="model-3-of-3.safetensors: truncated"):
        ck.get(name)
