"""Reading a Hugging Face K2 / DeepSeek-V3 checkpoint lazily, and validating it (``k2trt inspect``).

A checkpoint is ``config.json`` + ``model.safetensors.index.json`` (``weight_map``: tensor -> shard file) +
shards named ``model-{i}-of-{n}.safetensors`` (the 0905 release zero-pads: ``model-00001-of-000062``); a single
``model.safetensors`` without an index is accepted too. Tensors are read one at a time through safetensors'
mmap (``safe_open``), never the whole checkpoint. An FP8 weight ``X.weight`` is paired with
``X.weight_scale_inv`` wherever the index puts it (they may sit in different shards).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from k2trt.config import K2Config
from k2trt.errors import CheckpointError
from k2trt.fp8 import dequantize_block_fp8, scale_shape
from k2trt.safetensors_io import Header, read_header

if TYPE_CHECKING:  # torch is imported where tensors are made: reading headers and moving bytes never need it
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
SCALE_SUFFIX = "_scale_inv"  # X.weight -> X.weight_scale_inv
# Non-persistent RoPE buffers that K2's checkpoint carries per layer; nothing reads them.
IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
FLOAT_DTYPES = ("BF16", "F16", "F32")


class Kind(Enum):
    """How a tensor is stored in a block-FP8 K2 checkpoint (DESIGN.md)."""

    FP8 = "fp8"  # float8_e4m3fn with a weight_scale_inv
    HIGH = "high"  # bf16 in K2 (embeddings, lm_head, norms, router); any float when dequantized
    BIAS = "bias"  # e_score_correction_bias: fp32 in K2


@dataclass(frozen=True)
class Expected:
    shape: tuple[int, ...]
    kind: Kind


def expected_tensors(cfg: K2Config) -> dict[str, Expected]:
    """Every tensor (without scales) a checkpoint of ``cfg`` must hold, with its shape and storage kind."""
    h = cfg.hidden_size
    out: dict[str, Expected] = {
        "model.embed_tokens.weight": Expected((cfg.vocab_size, h), Kind.HIGH),
        "model.norm.weight": Expected((h,), Kind.HIGH),
        "lm_head.weight": Expected((cfg.vocab_size, h), Kind.HIGH),
    }
    for name, shape in cfg.fp8_weight_shapes():
        out[name] = Expected(shape, Kind.FP8)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        out[f"{p}.input_layernorm.weight"] = Expected((h,), Kind.HIGH)
        out[f"{p}.post_attention_layernorm.weight"] = Expected((h,), Kind.HIGH)
        if cfg.q_lora_rank:
            out[f"{p}.self_attn.q_a_layernorm.weight"] = Expected((cfg.q_lora_rank,), Kind.HIGH)
        out[f"{p}.self_attn.kv_a_layernorm.weight"] = Expected((cfg.kv_lora_rank,), Kind.HIGH)
        if cfg.is_moe_layer(i):
            out[f"{p}.mlp.gate.weight"] = Expected((cfg.n_routed_experts, h), Kind.HIGH)
            out[f"{p}.mlp.gate.e_score_correction_bias"] = Expected((cfg.n_routed_experts,), Kind.BIAS)
    return out


def _is_mtp(name: str, cfg: K2Config) -> bool:
    """Multi-token-prediction layers stored after the decoder layers (DeepSeek-V3 has one; K2 none)."""
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return bool(m) and cfg.num_hidden_layers <= int(m.group(1)) < cfg.num_hidden_layers + cfg.num_nextn_predict_layers


class HFCheckpoint:
    """Lazy, per-tensor access to a HF checkpoint directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CheckpointError(f"{self.root}: not a directory")
        self.config = K2Config.from_file(self.root / "config.json")
        self.weight_map = self._read_weight_map()
        self._handles: dict[str, object] = {}
        self._headers: dict[str, Header] = {}

    def _read_weight_map(self) -> dict[str, str]:
        index = self.root / INDEX_NAME
        if index.is_file():
            try:
                data = json.loads(index.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{index.name}: not valid JSON (line {e.lineno}: {e.msg})") from None
            wm = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
                raise CheckpointError(f"{index.name}: no 'weight_map' object of tensor -> shard file")
            return dict(wm)
        single = self.root / SINGLE_NAME
        if single.is_file():
            return {name: SINGLE_NAME for name in read_header(single).tensors}
        raise CheckpointError(f"{self.root}: neither {INDEX_NAME} nor {SINGLE_NAME} found")

    # --------------------------------------------------------------------------------------- metadata

    @property
    def shard_files(self) -> list[str]:
        """Shard file names the index refers to, in name order."""
        return sorted(set(self.weight_map.values()), key=_shard_sort_key)

    def names(self) -> list[str]:
        return list(self.weight_map)

    def header(self, shard: str) -> Header:
        if shard not in self._headers:
            path = self.root / shard
            if not path.is_file():
                raise CheckpointError(f"shard {shard} (listed in the index) is missing")
            self._headers[shard] = read_header(path)
        return self._headers[shard]

    def info(self, name: str):
        """Header entry (dtype, shape, bytes) of ``name`` without reading its data."""
        shard = self._shard_of(name)
        try:
            return self.header(shard).tensors[name]
        except KeyError:
            raise CheckpointError(f"tensor '{name}': the index puts it in {shard}, which does not hold it") from None

    def _shard_of(self, name: str) -> str:
        try:
            return self.weight_map[name]
        except KeyError:
            raise CheckpointError(f"tensor '{name}' is not in the checkpoint") from None

    # ------------------------------------------------------------------------------------------ data

    def get(self, name: str) -> torch.Tensor:
        """The stored tensor ``name`` (FP8 stays FP8), read through mmap."""
        shard = self._shard_of(name)
        self.info(name)  # validates presence and truncation before safetensors sees the file
        handle = self._handles.get(shard)
        if handle is None:
            try:
                handle = safe_open(str(self.root / shard), framework="pt")
            except Exception as e:  # safetensors raises its own error types for malformed files
                raise CheckpointError(f"{shard}: cannot open ({e})") from None
            self._handles[shard] = handle
        return handle.get_tensor(name)

    def scale_name(self, name: str) -> str:
        return name + SCALE_SUFFIX

    def is_fp8(self, name: str) -> bool:
        return self.info(name).dtype == "F8_E4M3"

    def get_fp8(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(``float8_e4m3fn`` weight, float32 ``weight_scale_inv``), checked against each other."""
        w = self.get(name)
        sname = self.scale_name(name)
        if sname not in self.weight_map:
            raise CheckpointError(f"tensor '{name}' is FP8 but '{sname}' is not in the checkpoint")
        s = self.get(sname)
        block = self.config.fp8_block or (128, 128)
        if tuple(s.shape) != scale_shape(w.shape, block):
            raise CheckpointError(
                f"tensor '{sname}' has shape {list(s.shape)}, expected {list(scale_shape(w.shape, block))} for "
                f"weight {list(w.shape)} with {list(block)} blocks"
            )
        return w, s.float()

    def get_real(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The real-valued tensor: FP8 weights dequantized with their scales, others cast to ``dtype`` (default
        float32)."""
        if self.is_fp8(name):
            w, s = self.get_fp8(name)
            return dequantize_block_fp8(w, s, self.config.fp8_block or (128, 128), dtype=dtype)
        t = self.get(name)
        return t.to(dtype) if dtype is not None else t.float()

    def close(self) -> None:
        self._handles.clear()


def _shard_sort_key(name: str):
    m = re.match(r"model-(\d+)-of-(\d+)\.safetensors$", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


# ------------------------------------------------------------------------------------------- inspect


@dataclass
class InspectReport:
    """What ``k2trt inspect`` prints; ``problems`` non-empty means exit 1."""

    root: str
    model_type: str
    layers: int
    dense_layers: int
    moe_layers: int
    routed_experts: int
    experts_per_token: int
    shards: int
    tensors: int
    bytes_by_dtype: dict[str, int]
    count_by_dtype: dict[str, int]
    total_params: int
    kv_cache_bytes_per_token: int
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["ok"] = not self.problems
        return d

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        con = Console()
        con.print(f"[bold]{self.root}[/] ({self.model_type})")
        con.print(
            f"layers {self.layers} ({self.dense_layers} dense, {self.moe_layers} MoE), "
            f"{self.routed_experts} routed experts, {self.experts_per_token} per token; "
            f"{self.tensors} tensors in {self.shards} shard(s); {self.total_params:,} params (config); "
            f"MLA cache {self.kv_cache_bytes_per_token:,} B/token (bf16)"
        )
        t = Table("dtype", "tensors", "bytes")
        for k in sorted(self.bytes_by_dtype):
            t.add_row(k, f"{self.count_by_dtype[k]:,}", f"{self.bytes_by_dtype[k]:,}")
        t.add_row("total", f"{sum(self.count_by_dtype.values()):,}", f"{sum(self.bytes_by_dtype.values()):,}")
        con.print(t)
        con.print("[green]OK[/]" if not self.problems else f"[red]{len(self.problems)} problem(s)[/]")


def inspect_checkpoint(root: str | Path, *, verify_data: bool = True) -> InspectReport:
    """Summarise and validate a checkpoint; structural errors that stop reading at all raise K2Error."""
    ckpt = HFCheckpoint(root)
    cfg = ckpt.config
    problems: list[str] = []

    # Files: index entries vs shard files on disk.
    listed = ckpt.shard_files
    readable: dict[str, Header] = {}
    for shard in listed:
        try:
            readable[shard] = ckpt.header(shard)
        except CheckpointError as e:
            n = sum(1 for s in ckpt.weight_map.values() if s == shard)
            problems.append(f"{e} ({n} tensors unavailable)")
    on_disk = {p.name for p in ckpt.root.glob("*.safetensors")}
    for extra in sorted(on_disk - set(listed), key=_shard_sort_key):
        problems.append(f"shard {extra} is on disk but not in the index")

    # Index vs shard headers.
    present: dict[str, tuple[str, object]] = {}  # name -> (shard, TensorInfo)
    for name, shard in ckpt.weight_map.items():
        hdr = readable.get(shard)
        if hdr is None:
            continue
        info = hdr.tensors.get(name)
        if info is None:
            problems.append(f"tensor '{name}': the index puts it in {shard}, which does not hold it")
        else:
            present[name] = (shard, info)
    for shard, hdr in readable.items():
        for name in hdr.tensors:
            if ckpt.weight_map.get(name) != shard:
                problems.append(f"tensor '{name}' is in {shard} but the index does not list it there")

    # Tensors vs what the config explains.
    expected = expected_tensors(cfg)
    block = cfg.fp8_block
    unavailable = {n for n, s in ckpt.weight_map.items() if s not in readable}
    for name, exp in expected.items():
        if name in unavailable:
            continue
        if name not in present:
            problems.append(f"tensor '{name}' is missing (config {cfg.model_type} expects shape {list(exp.shape)})")
            continue
        info = present[name][1]
        if tuple(info.shape) != exp.shape:
            problems.append(f"tensor '{name}' has shape {list(info.shape)}, config implies {list(exp.shape)}")
        if exp.kind is Kind.FP8 and block is not None:
            if info.dtype != "F8_E4M3":
                problems.append(f"tensor '{name}' is {info.dtype}, expected F8_E4M3 (quantization_config is fp8)")
            _check_scale(name + SCALE_SUFFIX, info.shape, block, present, unavailable, problems)
        elif info.dtype not in FLOAT_DTYPES:
            problems.append(f"tensor '{name}' is {info.dtype}, expected one of {list(FLOAT_DTYPES)}")
    scales = {n + SCALE_SUFFIX for n, e in expected.items() if e.kind is Kind.FP8} if block else set()
    for name in present:
        if name in expected or name in scales or IGNORED.match(name) or _is_mtp(name, cfg):
            continue
        problems.append(f"tensor '{name}' is not explained by the config")

    if verify_data and block is not None:
        import torch

        for sname in sorted(scales & set(present)):
            s = ckpt.get(sname).float()
            bad = (~torch.isfinite(s)).sum().item()
            nonpos = (s <= 0).sum().item()
            if bad:
                problems.append(f"tensor '{sname}' has {bad} NaN/Inf value(s)")
            if nonpos:
                problems.append(f"tensor '{sname}' has {nonpos} non-positive value(s)")

    by_bytes: Counter[str] = Counter()
    by_count: Counter[str] = Counter()
    for _, info in present.values():
        by_bytes[info.dtype] += info.nbytes
        by_count[info.dtype] += 1
    return InspectReport(
        root=str(ckpt.root), model_type=cfg.model_type, layers=cfg.num_hidden_layers,
        dense_layers=cfg.first_k_dense_replace, moe_layers=cfg.num_moe_layers,
        routed_experts=cfg.n_routed_experts, experts_per_token=cfg.num_experts_per_tok, shards=len(listed),
        tensors=len(ckpt.weight_map), bytes_by_dtype=dict(by_bytes), count_by_dtype=dict(by_count),
        total_params=cfg.total_params, kv_cache_bytes_per_token=cfg.kv_cache_bytes_per_token(),
        problems=problems,
    )


def _check_scale(sname, wshape, block, present, unavailable, problems) -> None:
    if sname in unavailable:
        return
    if sname not in present:
        problems.append(f"tensor '{sname}' is missing (its FP8 weight has no scale)")
        return
    info = present[sname][1]
    want = scale_shape(wshape, block)
    if tuple(info.shape) != want:
        problems.append(
            f"tensor '{sname}' has shape {list(info.shape)}, expected {list(want)} "
            f"(weight {list(wshape)}, {list(block)} blocks)"
        )
    if info.dtype != "F32":
        problems.append(f"tensor '{sname}' is {info.dtype}, expected F32")


def dequantize_checkpoint(src: str | Path, dst: str | Path, *, dtype: torch.dtype | None = None,
                          model_type: str | None = None) -> Path:
    """Write ``src`` as an unquantized single-file checkpoint (what transformers loads), one tensor at a time.

    FP8 weights are dequantized with their scales and the scales dropped; ``rotary_emb.inv_freq`` extras are
    dropped; ``quantization_config`` is removed from config.json. ``model_type`` overrides the config's (the
    transformers release this project tests against knows ``deepseek_v3`` but not ``kimi_k2``).
    """
    import torch

    from k2trt.safetensors_io import StreamingWriter, atomic_write_text

    dtype = dtype or torch.float32
    ckpt = HFCheckpoint(src)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    names = [n for n in ckpt.names() if not n.endswith(SCALE_SUFFIX) and not IGNORED.match(n)]
    specs = []
    for n in names:
        info = ckpt.info(n)
        keep = torch.float32 if n.endswith("e_score_correction_bias") else dtype
        specs.append((n, keep, tuple(info.shape)))
    with StreamingWriter(dst / SINGLE_NAME, specs, metadata={"format": "pt"}) as w:
        for n, d, _ in specs:
            w.add(n, ckpt.get_real(n, d).contiguous())
    raw = ckpt.config.to_hf_dict()
    raw.pop("quantization_config", None)
    raw["torch_dtype"] = str(dtype).removeprefix("torch.")
    if model_type:
        raw["model_type"] = model_type
    atomic_write_text(dst / "config.json", json.dumps(raw, indent=2))
    return dst
