"""The ``torch`` backend's engine directory: what ``k2trt build --backend torch`` writes and the runtime loads.

::

    ENGINE_DIR/
      config.json            TensorRT-LLM checkpoint config (from the converter)
      rank{N}.safetensors    the converter's rank shards (hard links when on one filesystem, else copies)
      manifest.json          the converter's manifest (source config, mapping, per-file sha256)
      runtime.json           RuntimeConfig: batch/sequence limits, cache size, compute dtype
      engine_manifest.json   what was built from what: inputs' hashes, runtime config, versions
      tiktoken.model, tokenizer_config.json (, chat_template.jinja)   from the source HF checkpoint
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from k2trt.errors import K2Error
from k2trt.runtime.weights import MANIFEST, read_converted
from k2trt.safetensors_io import atomic_write_text

RUNTIME_JSON = "runtime.json"
ENGINE_MANIFEST = "engine_manifest.json"
TOKENIZER_FILES = ("tiktoken.model", "tokenizer_config.json", "chat_template.jinja")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class RuntimeConfig:
    """Limits the runtime enforces and the cache it allocates (per rank: each holds its stage's layers)."""

    max_batch_size: int = 16
    """Sequences in flight at once."""
    max_seq_len: int = 2048
    """Prompt + generated tokens of one request."""
    max_num_tokens: int = 512
    """Tokens per step (decode tokens + prefill chunks)."""
    kv_cache_tokens: int = 16384
    """Cache capacity in tokens (rounded up to whole blocks)."""
    block_size: int = 32
    """Tokens per cache block."""
    dtype: str = "float32"
    """Compute and cache dtype: float32 (CPU default) or bfloat16."""
    impl: str = "auto"
    """``torch``, ``kernels`` (plugins/ Triton kernels) or ``auto``: kernels on CUDA with an fp8_block engine."""

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name not in ("dtype", "impl") and (not isinstance(v, int) or v < 1):
                raise K2Error(f"runtime config: '{f.name}' must be a positive integer, got {v!r}")
        if self.dtype not in DTYPES:
            raise K2Error(f"runtime config: 'dtype' must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.impl not in ("auto", "torch", "kernels"):
            raise K2Error(f"runtime config: 'impl' must be auto, torch or kernels, got {self.impl!r}")
        if self.max_seq_len > self.kv_cache_tokens:
            raise K2Error(f"runtime config: max_seq_len {self.max_seq_len} exceeds kv_cache_tokens "
                          f"{self.kv_cache_tokens}: no request that long could ever be admitted")

    @property
    def num_blocks(self) -> int:
        return -(-self.kv_cache_tokens // self.block_size)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def read_runtime_config(engine_dir: str | Path) -> RuntimeConfig:
    path = Path(engine_dir) / RUNTIME_JSON
    if not path.is_file():
        raise K2Error(f"{engine_dir}: no {RUNTIME_JSON}; build it with `k2trt build --backend torch`")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise K2Error(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    known = {f.name for f in dataclasses.fields(RuntimeConfig)}
    unknown = sorted(set(raw) - known - {"backend"})
    if unknown:
        raise K2Error(f"{path}: unknown field(s) {unknown}")
    if raw.get("backend") != "torch":
        raise K2Error(f"{path}: 'backend' is {raw.get('backend')!r}; this runtime runs 'torch' engines")
    rc = RuntimeConfig(**{k: v for k, v in raw.items() if k in known})
    rc.validate()
    return rc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".partial")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem, or no hard links: copy
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def build_torch_engine(*, converted: str | Path, out: str | Path, runtime: RuntimeConfig = RuntimeConfig(),
                       tokenizer_dir: str | Path | None = None, force: bool = False) -> Path:
    """Write a torch engine dir from a converted checkpoint; returns ``out``.

    Tokenizer files come from ``tokenizer_dir`` or else from the HF checkpoint the conversion read.
    """
    converted, out = Path(converted), Path(out)
    cfg, mapping, weights = read_converted(converted)
    runtime.validate()
    if runtime.max_seq_len > cfg.max_position_embeddings:
        raise K2Error(f"runtime config: max_seq_len {runtime.max_seq_len} exceeds the model's "
                      f"max_position_embeddings {cfg.max_position_embeddings}")
    if out.exists():
        if not force:
            raise K2Error(f"{out} exists; pass --force to replace it")
        if out.resolve() == converted.resolve():
            raise K2Error("--out must differ from the converted checkpoint")
    manifest = json.loads((converted / MANIFEST).read_text())
    tok_src = Path(tokenizer_dir) if tokenizer_dir else Path(manifest.get("source_path", ""))
    if not (tok_src / "tiktoken.model").is_file():
        raise K2Error(f"no tokenizer files (tiktoken.model) in {tok_src}; pass --tokenizer-dir")

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = [f"rank{r}.safetensors" for r in mapping.ranks()] + ["config.json", MANIFEST]
    for name in files:
        _link_or_copy(converted / name, tmp / name)
    for name in TOKENIZER_FILES:
        if (tok_src / name).is_file():
            shutil.copyfile(tok_src / name, tmp / name)
    atomic_write_text(tmp / RUNTIME_JSON, json.dumps({"backend": "torch", **dataclasses.asdict(runtime)}, indent=2))
    record = {
        "backend": "torch",
        "inputs": {name: manifest["files"][name]["sha256"] for name in files if name in manifest.get("files", {})},
        "source_fingerprint": manifest["params"].get("source_fingerprint"),
        "tokenizer": {n: _sha256(tmp / n) for n in TOKENIZER_FILES if (tmp / n).is_file()},
        "mapping": mapping.to_trtllm(),
        "weights": weights,
        "runtime": dataclasses.asdict(runtime),
        "model": {"model_type": cfg.model_type, "layers": cfg.num_hidden_layers, "experts": cfg.n_routed_experts},
        "versions": {"k2trt": _version(), "torch": torch.__version__, "python": platform.python_version()},
    }
    atomic_write_text(tmp / ENGINE_MANIFEST, json.dumps(record, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("k2trt")
    except PackageNotFoundError:
        return "unknown"
