"""The converter on real files: round trips for several mappings (synthetic and hand-made checkpoints), interrupted
and resumed runs that must give byte-identical files, corrupt inputs, refusals and the CLI."""

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import k2trt.convert as C
from k2trt.checkpoint import IGNORED, INDEX_NAME, HFCheckpoint, Kind, expected_tensors
from k2trt.cli import app
from k2trt.config import K2Config
from k2trt.convert import convert, reassemble
from k2trt.errors import CheckpointError, K2Error
from k2trt.fp8 import scale_shape
from k2trt.mapping import Mapping
from k2trt.synth import preset_config, synthesize
from k2trt.trtllm_layout import all_rank_specs

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
# Same as tests/test_trtllm_layout.py: K2 head dims and 128-multiples wherever fp8_block splits or fuses, so tp/ep up
# to 4 are allowed; vocab 770 is not a multiple of 4 (lm_head padding).
ALIGNED = dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=512, num_attention_heads=8,
               num_key_value_heads=8, q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=128, qk_rope_head_dim=64,
               v_head_dim=128, vocab_size=770)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> Path:
    """K2 layout, scales in the shard after their weights (pairs are split across files)."""
    return synthesize(out=tmp_path_factory.mktemp("conv") / "aligned", preset="tiny", overrides=ALIGNED, seed=3,
                      shards=3, split_scales=True)


def handmade(root: Path, *, shards: int = 2) -> Path:
    """A checkpoint k2trt did not write: plain safetensors.save_file, DeepSeek-V3's model_type, zero-padded shard
    names (the 0905 release's), tensors in reverse name order, norms in float32, a hand-written index."""
    raw = {**preset_config("tiny", ALIGNED).to_hf_dict(), "model_type": "deepseek_v3"}
    cfg = K2Config.from_dict(raw)
    g = torch.Generator().manual_seed(11)
    tensors = {}
    for name, e in expected_tensors(cfg).items():
        if e.kind is Kind.FP8:
            tensors[name] = (torch.randn(e.shape, generator=g) * 64).to(torch.float8_e4m3fn)
            tensors[name + "_scale_inv"] = torch.rand(scale_shape(e.shape), generator=g) + 1e-3
        elif e.kind is Kind.BIAS:
            tensors[name] = torch.randn(e.shape, generator=g)
        elif name.endswith("norm.weight"):
            tensors[name] = 1 + 0.1 * torch.randn(e.shape, generator=g)  # float32: the converter casts to bf16
        else:
            tensors[name] = torch.randn(e.shape, generator=g).to(torch.bfloat16)
    names = sorted(tensors, reverse=True)
    files = [f"model-{i + 1:05d}-of-{shards:06d}.safetensors" for i in range(shards)]
    root.mkdir(parents=True)
    weight_map = {}
    for i, f in enumerate(files):
        part = {n: tensors[n] for n in names[i::shards]}
        save_file(part, root / f, metadata={"format": "pt"})
        weight_map |= {n: f for n in part}
    (root / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(raw))
    return root


def assert_round_trip(ckpt: Path, out: Path, weights: str) -> None:
    """Every source tensor comes back bit for bit (dequantized to bf16 for --weights bf16)."""
    got = reassemble(out)
    src = HFCheckpoint(ckpt)
    want = {n for n in src.names() if not IGNORED.match(n)}
    if weights == "bf16":
        want = {n for n in want if not n.endswith("_scale_inv")}
    assert set(got) == want
    for n in sorted(want):
        g = got[n]
        s = src.get_real(n, torch.bfloat16) if weights == "bf16" and src.is_fp8(n) else src.get(n).to(g.dtype)
        assert g.dtype == s.dtype and torch.equal(g.view(torch.uint8), s.view(torch.uint8)), n


def files_of(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != C.MANIFEST}


@pytest.mark.parametrize("tp, ep, pp, weights", [
    (1, 1, 1, "fp8_block"), (2, 2, 1, "fp8_block"), (2, 1, 1, "fp8_block"), (4, 4, 1, "fp8_block"),
    (4, 2, 2, "fp8_block"), (4, 1, 2, "fp8_block"), (2, 2, 2, "bf16"),
])
def test_round_trip_synthetic(aligned, tmp_path, tp, ep, pp, weights):
    s = convert(checkpoint=aligned, out=tmp_path / "o", tp=tp, ep=ep, pp=pp, weights=weights, progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(
        ["config.json", "manifest.json"] + [f"rank{r}.safetensors" for r in range(tp * pp)])
    assert s.ranks_written == tp * pp and s.skipped_sources and all(IGNORED.match(n) for n in s.skipped_sources)
    assert s.bytes_out == sum((tmp_path / "o" / f).stat().st_size for f in s.files)
    assert_round_trip(aligned, tmp_path / "o", weights)
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["mapping"]["world_size"] == tp * pp and cfg["mapping"]["moe_ep_size"] == ep


def test_round_trip_handmade_checkpoint(tmp_path):
    ck = handmade(tmp_path / "hm")
    for tp, ep, pp in [(2, 2, 2), (4, 2, 1)]:
        out = tmp_path / f"o{tp}{ep}{pp}"
        convert(checkpoint=ck, out=out, tp=tp, ep=ep, pp=pp, progress=False)
        assert_round_trip(ck, out, "fp8_block")
    convert(checkpoint=ck, out=tmp_path / "bf", tp=2, ep=1, weights="bf16", progress=False)
    assert_round_trip(ck, tmp_path / "bf", "bf16")


def test_bf16_on_unaligned_dims_and_small_chunks(tiny_ckpt, tmp_path, monkeypatch):
    """The default tiny preset (head dims not 128-multiples) converts with bf16; small reads cross every boundary."""
    convert(checkpoint=tiny_ckpt, out=tmp_path / "big", tp=2, ep=2, weights="bf16", progress=False)
    monkeypatch.setattr(C, "CHUNK", 1000)
    convert(checkpoint=tiny_ckpt, out=tmp_path / "small", tp=2, ep=2, weights="bf16", progress=False)
    assert files_of(tmp_path / "big") == files_of(tmp_path / "small")
    assert_round_trip(tiny_ckpt, tmp_path / "small", "bf16")


def test_manifest_records_hashes_and_sources(aligned, tmp_path):
    convert(checkpoint=aligned, out=tmp_path / "o", tp=2, ep=2, progress=False)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["complete"] and m["params"]["weights"] == "fp8_block"
    rec = m["files"]["rank1.safetensors"]
    data = (tmp_path / "o" / "rank1.safetensors").read_bytes()
    assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["bytes"] == len(data)
    assert rec["tensors"]["transformer.layers.1.mlp.fc.weight"][:2] == [
        "model.layers.1.mlp.experts.4.up_proj.weight", "model.layers.1.mlp.experts.4.gate_proj.weight"]
    assert m["config_sha256"] == hashlib.sha256((tmp_path / "o" / "config.json").read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------- interrupt and resume


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs but the closing of the file descriptor."""


def die_after(monkeypatch, nbytes: int) -> None:
    real = C._write_all
    left = [nbytes]

    def dying(fd, data, report):
        mv = memoryview(data).cast("B")
        if left[0] < len(mv):
            os.write(fd, mv[: left[0]])
            raise Killed
        left[0] -= len(mv)
        return real(fd, data, report)

    monkeypatch.setattr(C, "_write_all", dying)


MAPPING = dict(tp=4, ep=2, pp=2)


@pytest.fixture(scope="module")
def reference(aligned, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "o"
    convert(checkpoint=aligned, out=out, **MAPPING, progress=False)
    return files_of(out)


def test_killed_at_random_points_then_resumed_is_byte_identical(aligned, reference, tmp_path, monkeypatch):
    total = sum(len(v) for k, v in reference.items() if k.startswith("rank"))
    m = Mapping(tp=MAPPING["tp"], pp=MAPPING["pp"], moe_ep=MAPPING["ep"])
    largest = max(s.nbytes for specs in all_rank_specs(HFCheckpoint(aligned).config, m) for s in specs)
    rng = random.Random(1234)
    monkeypatch.setattr(C, "CHECKPOINT_EVERY", 64 << 10)  # several resume points per rank file
    resumed_mid_file = 0
    for point in sorted(rng.randrange(total) for _ in range(6)) + [0, total - 1]:
        out = tmp_path / f"k{point}"
        with monkeypatch.context() as mp:
            die_after(mp, point)
            with pytest.raises(Killed):
                convert(checkpoint=aligned, out=out, **MAPPING, progress=False)
        assert not (out / "config.json").exists()
        marks = list(out.glob("*.partial.json"))
        s = convert(checkpoint=aligned, out=out, **MAPPING, resume=True, progress=False)
        assert files_of(out) == reference, point
        resumed_mid_file += bool(marks)
        assert s.ranks_reused + s.ranks_written == 8
        if marks:  # a resume point was used: at most one checkpoint interval and one tensor are rewritten
            assert s.bytes_out <= total - point + (64 << 10) + largest
    assert resumed_mid_file >= 3


def test_killed_process_then_resumed(aligned, reference, tmp_path):
    """A real process exits abruptly mid-write (the worker's fault hook); a second process resumes."""
    out = tmp_path / "o"
    code = ("import k2trt.convert as C; C.CHECKPOINT_EVERY = 1 << 16; "
            f"C.convert(checkpoint={str(aligned)!r}, out={str(out)!r}, tp=4, ep=2, pp=2, progress=False)")
    total = sum(len(v) for k, v in reference.items() if k.startswith("rank"))
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, C.FAULT_ENV: str(total // 2)}, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 77, r.stderr
    assert list(out.glob("*.partial")) and not (out / "config.json").exists()
    res = runner.invoke(app, ["convert", str(aligned), "--out", str(out), "--tp", "4", "--ep", "2", "--pp", "2",
                              "--resume", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ranks_reused"] >= 3
    assert files_of(out) == reference


@pytest.mark.slow
def test_sigkill_at_random_times_then_resume(tmp_path):
    """SIGKILL a real `k2trt convert` at random moments of a ~30 MB conversion with 2 workers; resume each time."""
    ck = synthesize(out=tmp_path / "ck", preset="tiny", seed=5, shards=4,
                    overrides={**ALIGNED, "n_routed_experts": 32, "num_hidden_layers": 4, "hidden_size": 512})
    ref = tmp_path / "ref"
    convert(checkpoint=ck, out=ref, tp=2, ep=2, pp=2, progress=False)
    want = files_of(ref)
    cmd = [sys.executable, "-m", "k2trt.cli", "convert", str(ck), "--out", str(tmp_path / "o"), "--tp", "2", "--ep",
           "2", "--pp", "2", "--workers", "2", "--json"]
    rng = random.Random(7)
    for _ in range(2):
        p = subprocess.Popen(cmd + (["--resume"] if (tmp_path / "o").exists() else []), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not list((tmp_path / "o").glob("*.partial")) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.5))
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the CLI and its workers, as a crash or OOM kill would
        except ProcessLookupError:  # it finished first
            pass
        p.wait()
    res = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert files_of(tmp_path / "o") == want


def test_small_reads_give_the_same_bytes(aligned, reference, tmp_path, monkeypatch):
    """Reads of a few rows at a time: many chunks in flight to the writer thread, and buffers recycled."""
    monkeypatch.setattr(C, "CHUNK", 4096)
    convert(checkpoint=aligned, out=tmp_path / "o", **MAPPING, progress=False)
    assert files_of(tmp_path / "o") == reference


def test_resume_rewrites_a_damaged_finished_file(aligned, reference, tmp_path):
    out = tmp_path / "o"
    convert(checkpoint=aligned, out=out, **MAPPING, progress=False)
    data = bytearray((out / "rank3.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "rank3.safetensors").write_bytes(bytes(data))
    s = convert(checkpoint=aligned, out=out, **MAPPING, resume=True, progress=False)
    assert (s.ranks_reused, s.ranks_written) == (7, 1)
    assert files_of(out) == reference


def test_disk_full_mid_write_leaves_no_final_file_and_resumes(aligned, reference, tmp_path, monkeypatch):
    out = tmp_path / "o"
    written = [0]
    real_write = os.write

    def full_disk(fd, data):
        if written[0] > 300_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(C, "CHECKPOINT_EVERY", 64 << 10)
    with monkeypatch.context() as mp:
        mp.setattr(C.os, "write", full_disk)
        with pytest.raises(K2Error, match=r"disk full writing .*rank\d\.safetensors\.partial"):
            convert(checkpoint=aligned, out=out, **MAPPING, progress=False)
    assert not (out / "config.json").exists()
    finals = {p.name for p in out.glob("rank*.safetensors")}
    assert all(reference[f] == (out / f).read_bytes() for f in finals)  # whatever is named final is whole
    convert(checkpoint=aligned, out=out, **MAPPING, resume=True, progress=False)
    assert files_of(out) == reference


def test_not_enough_space_refused_before_writing(aligned, tmp_path, monkeypatch):
    monkeypatch.setattr(C.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(K2Error, match=r"not enough disk space .* need [\d,]+ more bytes, 1,000 are free"):
        convert(checkpoint=aligned, out=tmp_path / "o", tp=2, ep=2, progress=False)
    assert not list((tmp_path / "o").glob("*"))


# --------------------------------------------------------------------------------------- existing output


def test_existing_output_needs_force_or_resume(aligned, tmp_path):
    out = tmp_path / "o"
    convert(checkpoint=aligned, out=out, tp=2, ep=2, progress=False)
    with pytest.raises(K2Error, match="is not empty; pass --force"):
        convert(checkpoint=aligned, out=out, tp=2, ep=2, progress=False)
    with pytest.raises(K2Error, match=r"--resume: .* started with different mapping"):
        convert(checkpoint=aligned, out=out, tp=2, ep=1, resume=True, progress=False)
    s = convert(checkpoint=aligned, out=out, tp=2, ep=2, resume=True, progress=False)
    assert (s.ranks_reused, s.ranks_written, s.bytes_out) == (2, 0, 0)
    s = convert(checkpoint=aligned, out=out, tp=1, force=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "rank0.safetensors"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(K2Error, match=r"refusing to empty .* \['notes.txt'\]"):
        convert(checkpoint=aligned, out=out, tp=1, force=True, progress=False)


# ------------------------------------------------------------------------------------------ bad inputs


def broken_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite(ck: Path, fn) -> None:
    """Apply ``fn(tensors)`` to every shard (as a third-party tool would rewrite them)."""
    wm = json.loads((ck / INDEX_NAME).read_text())["weight_map"]
    for shard in sorted(set(wm.values())):
        t = load_file(ck / shard)
        fn(t, shard, wm)
        save_file(t, ck / shard, metadata={"format": "pt"})
    (ck / INDEX_NAME).write_text(json.dumps({"weight_map": wm}))


def expect_refusal(ck: Path, out: Path, *patterns: str, **kw) -> None:
    with pytest.raises(K2Error) as e:
        convert(checkpoint=ck, out=out, progress=False, **{"tp": 2, "ep": 2, **kw})
    text = "\n".join(e.value.problems)
    for p in patterns:
        assert p in text, text
    assert not out.exists(), "a refused conversion must leave no output"


def test_missing_shard(aligned, tmp_path):
    ck = broken_copy(aligned, tmp_path / "c")
    (ck / "model-2-of-3.safetensors").unlink()
    expect_refusal(ck, tmp_path / "o", "shard model-2-of-3.safetensors (listed in the index) is missing")


def test_truncated_shard(aligned, tmp_path):
    ck = broken_copy(aligned, tmp_path / "c")
    p = ck / "model-3-of-3.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    expect_refusal(ck, tmp_path / "o", "model-3-of-3.safetensors: truncated")


def test_bad_scale_shape(aligned, tmp_path):
    ck = broken_copy(aligned, tmp_path / "c")
    name = "model.layers.1.mlp.experts.5.down_proj.weight_scale_inv"

    def bad(t, shard, wm):
        if name in t:
            t[name] = torch.ones(3, 3)

    rewrite(ck, bad)
    expect_refusal(ck, tmp_path / "o", f"tensor '{name}' has shape [3, 3], expected [2, 4]")


def test_leftover_and_missing_tensors(aligned, tmp_path):
    ck = broken_copy(aligned, tmp_path / "c")
    gone = "model.layers.2.mlp.experts.7.gate_proj.weight"

    def edit(t, shard, wm):
        if gone in t:
            del t[gone]
            del wm[gone]
            t["model.layers.1.mlp.experts.8.up_proj.weight"] = torch.zeros(4, 4)  # a 9th expert of an 8-expert model
            wm["model.layers.1.mlp.experts.8.up_proj.weight"] = shard

    rewrite(ck, edit)
    expect_refusal(ck, tmp_path / "o",
                   f"tensor '{gone}' (needed for transformer.layers.0.mlp.fc.weight of rank3) is not in",
                   "1 tensor(s) in the checkpoint that no TensorRT-LLM tensor takes: "
                   "'model.layers.1.mlp.experts.8.up_proj.weight'", pp=2)


def test_mappings_refused(aligned, tiny_ckpt, tmp_path):
    expect_refusal(aligned, tmp_path / "o", "mapping: ep (3) does not divide the 8 routed experts", tp=3, ep=3)
    expect_refusal(tiny_ckpt, tmp_path / "o",
                   "q_b_proj.weight takes rows [0, 96) of model.layers.0.self_attn.q_b_proj.weight [192, 96]",
                   "tp 2 leaves 2 head(s) x 48 rows = 96 rows per rank", tp=2, ep=2)
    expect_refusal(aligned, tmp_path / "o", "--weights must be one of", weights="int4")


def test_cli(aligned, tmp_path):
    res = runner.invoke(app, ["convert", str(aligned), "--out", str(tmp_path / "o"), "--tp", "2", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["world_size"] == 2 and summary["bytes_out"] > 0 and summary["peak_rss_bytes"] > 0
    res = runner.invoke(app, ["convert", str(aligned), "--out", str(tmp_path / "o"), "--tp", "2"])
    assert res.exit_code == 1 and "error: --out" in res.output and "not empty" in res.output
    res = runner.invoke(app, ["convert", str(aligned), "--out", str(tmp_path / "o2"), "--tp", "3"])
    assert res.exit_code == 1 and "error: mapping: tp (3) does not divide the 8 attention heads" in res.output
    res = runner.invoke(app, ["convert", str(aligned), "--out", str(tmp_path / "o3"), "--tp", "1", "--force"])
    assert res.exit_code == 0 and "written" in res.stdout and "peak RSS" in res.stdout


@pytest.mark.slow
def test_parallel_workers_match_one_worker(aligned, reference, tmp_path):
    s = convert(checkpoint=aligned, out=tmp_path / "o", **MAPPING, workers=3, progress=False)
    assert files_of(tmp_path / "o") == reference and s.ranks_written == 8


def test_refused_checkpoint_error_type(aligned, tmp_path):
    ck = broken_copy(aligned, tmp_path / "c")
    (ck / "model-1-of-3.safetensors").unlink()
    with pytest.raises(CheckpointError):
        convert(checkpoint=ck, out=tmp_path / "o", tp=1, progress=False)


def test_fp8_block_conversion_never_imports_torch(aligned, reference, tmp_path):
    """Importing torch is most of a conversion's start-up; fp8_block moves bytes and widens the bf16 router, which
    numpy does exactly. Same files as the in-process reference (made in a process where torch is loaded)."""
    out = tmp_path / "o"
    code = (f"import sys; from k2trt.convert import convert; convert(checkpoint={str(aligned)!r}, out={str(out)!r}, "
            f"tp={MAPPING['tp']}, ep={MAPPING['ep']}, pp={MAPPING['pp']}, progress=False); "
            "print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"
    assert files_of(out) == reference


@pytest.mark.parametrize("dtype, name", [(torch.bfloat16, "BF16"), (torch.float16, "F16")])
def test_widening_casts_match_torch(dtype, name):
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(4096, generator=g) * 10.0 ** torch.randint(-8, 5, (4096,), generator=g),
                   torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-40, -3e-39, 65504.0])]).to(dtype)
    got = torch.frombuffer(bytearray(C._widen(x.view(torch.uint8).numpy(), name).cast("B")), dtype=torch.float32)
    assert torch.equal(got.view(torch.int32), x.float().view(torch.int32))
