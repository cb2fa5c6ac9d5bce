"""build_configs/*.yaml: schema validation with errors naming the field, regeneration, manifests, launch scripts."""

from __future__ import annotations

import copy
import hashlib
import shutil
import subprocess

import pytest
import yaml

from k2trt import build_config as bcm
from k2trt.build_config import (
    BUILD_CONFIGS_DIR, REPO_ROOT, STANDARD_BUILDS, fingerprint, generate_all, load_build_config, make_manifest,
    validate,
)
from k2trt.errors import ConfigError
from k2trt.launch import mpirun_script, placement, slurm_script


@pytest.fixture(scope="module")
def h200x16() -> dict:
    return yaml.safe_load((BUILD_CONFIGS_DIR / "h200x16.yaml").read_text())


def test_every_standard_config_is_checked_in_and_valid():
    on_disk = {p.stem for p in BUILD_CONFIGS_DIR.glob("*.yaml")}
    assert on_disk == set(STANDARD_BUILDS) == {"h200x8", "h200x16", "h100x16", "h20x16", "b200x8", "gb200-nvl72",
                                               "cpu-tiny"}
    for name in on_disk:
        bc = load_build_config(BUILD_CONFIGS_DIR / f"{name}.yaml")
        assert bc.world_size * bc.replicas == bc.topology.count
        assert bc.kv_cache_tokens_per_gpu >= bc.max_seq_len  # every checked-in plan fits
    assert load_build_config("h200x16").name == "h200x16"  # a bare name finds build_configs/NAME.yaml


def test_regenerating_changes_nothing():
    """build_configs/, scripts/launch/ and docs/plans.md are exactly what the planner produces now."""
    stale = [str(rel) for rel, text in generate_all().items()
             if not (REPO_ROOT / rel).is_file() or (REPO_ROOT / rel).read_text() != text]
    assert not stale, f"run `python scripts/gen_build_configs.py`: stale {stale}"


def _problems(data: dict, source: str = "x.yaml") -> list[str]:
    with pytest.raises(ConfigError) as e:
        validate(data, source=source)
    return e.value.problems


def _set(path: str, value):
    """An edit that sets the dotted field ``path`` of a parsed build config."""
    *parents, leaf = path.split(".")

    def edit(d):
        for k in parents:
            d = d[k]
        d[leaf] = value
    return edit


@pytest.mark.parametrize("edit,msg", [
    (_set("plan.mapping.tp", "sixteen"),
     "x.yaml: field 'plan.mapping.tp' must be a positive integer, got 'sixteen'"),
    (_set("plan.mapping.tp", 0), "field 'plan.mapping.tp' must be a positive integer, got 0"),
    (_set("plan.kv_dtype", "int4"), "field 'plan.kv_dtype' must be one of ['bf16', 'fp8'], got 'int4'"),
    (_set("backend", "onnx"), "field 'backend' must be one of ['torch', 'trtllm', 'llmapi']"),
    (_set("plan.limits.max_batch_sizes", 4), "unknown field 'plan.limits.max_batch_sizes'"),
    (lambda d: d["plan"].pop("mapping"), "missing required field 'plan.mapping'"),
    (_set("plan.limits.cuda_graph_batch_sizes", [8, 4]),
     "field 'plan.limits.cuda_graph_batch_sizes' must be a non-empty ascending list"),
    (_set("plan.kv_cache_free_gpu_memory_fraction", 1.5),
     "field 'plan.kv_cache_free_gpu_memory_fraction' must be in (0, 1]"),
    (_set("plan.mapping.attention_dp", "yes"), "field 'plan.mapping.attention_dp' must be true or false"),
    (_set("schema", 2), "field 'schema' must be one of [1], got 2"),
])
def test_bad_field_is_named(h200x16, edit, msg):
    d = copy.deepcopy(h200x16)
    edit(d)
    probs = _problems(d)
    assert any(msg in p for p in probs), probs


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d["plan"]["mapping"].update(replicas=2), "tp x pp x replicas = 32 but topology 'h200x16' has 16"),
    (lambda d: d["plan"]["mapping"].update(moe_ep=5), "field 'plan.mapping': moe_ep (5)"),
    (lambda d: d["plan"]["mapping"].update(moe_ep=8, moe_tp=2), "attention DP plans use pure EP"),
    (lambda d: d.update(backend="trtllm"), "trtllm (TensorRT engines) has no attention DP"),
    (lambda d: d["plan"]["limits"].update(kv_cache_tokens_per_gpu=1000), "this plan does not fit"),
    (lambda d: d.update(topology="h300x16"), "field 'topology': unknown device 'h300'"),
    (lambda d: d["plan"]["limits"].update(max_num_tokens=8), "is below max_batch_size"),
])
def test_cross_field_rules(h200x16, edit, msg):
    d = copy.deepcopy(h200x16)
    edit(d)
    probs = _problems(d)
    assert any(msg in p for p in probs), probs


def test_every_problem_at_once(h200x16):
    d = copy.deepcopy(h200x16)
    d["plan"]["mapping"]["tp"] = -1
    d["plan"]["kv_dtype"] = "fp4"
    d["extra"] = 1
    assert len(_problems(d)) == 3


def test_yaml_syntax_error_has_a_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("schema: 1\nplan: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line \d+"):
        load_build_config(p)


def test_name_must_match_file(tmp_path):
    p = tmp_path / "other.yaml"
    shutil.copy(BUILD_CONFIGS_DIR / "h200x16.yaml", p)
    with pytest.raises(ConfigError, match="field 'name' is 'h200x16' but the file is other.yaml"):
        load_build_config(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such build config"):
        load_build_config("build_configs/nope.yaml")


def test_runtime_limits_feed_the_torch_runtime():
    from k2trt.runtime.engine_dir import RuntimeConfig

    bc = load_build_config("cpu-tiny")
    rc = RuntimeConfig(**bc.runtime_limits())
    rc.validate()
    assert (rc.max_batch_size, rc.max_seq_len, rc.kv_cache_tokens) == (16, 4096, 16 * 4096)


# ------------------------------------------------------------------------------------------------ manifest


def test_fingerprint_file_dir_and_sampled(tmp_path, monkeypatch):
    f = tmp_path / "d" / "a.bin"
    f.parent.mkdir()
    f.write_bytes(b"x" * 1000)
    (tmp_path / "d" / "b.txt").write_text("hi")
    assert fingerprint(f) == {"sha256": hashlib.sha256(b"x" * 1000).hexdigest(), "bytes": 1000}
    d1 = fingerprint(tmp_path / "d")
    assert d1["files"] == 2 and d1["bytes"] == 1002
    (tmp_path / "d" / "b.txt").write_text("ho")
    assert fingerprint(tmp_path / "d")["sha256"] != d1["sha256"]
    monkeypatch.setattr(bcm, "_FULL_HASH_LIMIT", 100)
    monkeypatch.setattr(bcm, "_SAMPLE", 10)
    big = fingerprint(f)
    assert big["sampled"] is True and big["sha256"] == hashlib.sha256(b"x" * 20).hexdigest()


def test_manifest(tmp_path):
    bc = load_build_config("cpu-tiny")
    cfg = tmp_path / "config.json"
    cfg.write_text("{}")
    m = make_manifest(build_config=bc, backend="torch", inputs={"config": cfg}, outputs=["b", "a"],
                      versions={"torch": "x"})
    assert m["inputs"]["config"]["sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert m["outputs"] == ["a", "b"] and m["plan"]["mapping"]["tp"] == 1 and m["versions"]["torch"] == "x"
    assert m["build_config"]["sha256"] == hashlib.sha256(bc.to_yaml().encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ launch scripts


def test_placement_gb200_replicas_on_their_own_trays():
    bc = load_build_config("gb200-nvl72")
    pl = placement(bc)
    assert len(pl) == bc.replicas
    nodes = [n for p in pl for n in p.nodes]
    assert nodes == list(range(bc.topology.nodes)) and all(p.ranks == bc.world_size for p in pl)


def test_placement_shares_a_node_with_distinct_ports(h200x16):
    d = copy.deepcopy(h200x16)
    d["topology"] = "h200x8"
    d["plan"]["mapping"].update(tp=4, moe_ep=4, replicas=2)
    bc = validate(d, source="t")
    pl = placement(bc)
    assert [p.slots for p in pl] == [((0, 0, 4),), ((0, 4, 4),)] and pl[1].port_base_offset == 10
    text = mpirun_script(bc)
    assert "CUDA_VISIBLE_DEVICES=4,5,6,7" in text and "PORT_BASE + 10" in text


def test_trtllm_backend_script_runs_one_server_per_rank(h200x16):
    d = copy.deepcopy(h200x16)
    d["topology"], d["backend"] = "h200x8", "trtllm"
    d["plan"]["mapping"].update(tp=8, moe_ep=8, attention_dp=False)
    bc = validate(d, source="t")
    text = mpirun_script(bc)
    assert text.count("-np 1 tritonserver") == 8 and text.count("shm-region-prefix-name=rank") == 8
    assert text.count("--load-model=tensorrt_llm") == 7
    assert "SLURM_PROCID" in slurm_script(bc)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_generated_scripts_parse():
    scripts = sorted((REPO_ROOT / "scripts" / "launch").glob("*.sh"))
    assert len(scripts) == 2 * len(STANDARD_BUILDS)
    for s in scripts:
        r = subprocess.run(["bash", "-n", str(s)], capture_output=True, text=True)
        assert r.returncode == 0, (s.name, r.stderr)
    text = (REPO_ROOT / "scripts" / "launch" / "h200x16.slurm.sh").read_text()
    assert "#SBATCH --nodes=2" in text and "--ntasks=16 --ntasks-per-node=8" in text
    assert "trtllm-llmapi-launch tritonserver" in text and "--mpi=pmix" in text
