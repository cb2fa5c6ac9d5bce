"""Synthetic checkpoints in Kimi-K2's exact Hugging Face layout (``k2trt synth``).

What makes them "exact": ``config.json`` with K2's keys (``model_type kimi_k2``, ``quantization_config`` fp8/e4m3/
[128, 128]/dynamic), K2's tensor names and dtypes (FP8 weights + float32 ``weight_scale_inv``; bf16 embeddings,
lm_head, norms and router; float32 ``e_score_correction_bias``; the per-layer ``rotary_emb.inv_freq`` extras),
shards named ``model-{i}-of-{n}.safetensors`` with ``model.safetensors.index.json``, and tokenizer files in K2's
format (``tiktoken.model`` + ``tokenizer_config.json`` with the 256 special tokens after the base vocabulary).

Each tensor is drawn from its own generator seeded by (seed, name), so files are byte-identical for a seed and
independent of shard count. Files are streamed tensor by tensor: ``slice`` checkpoints of several GB need
only one tensor in memory.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path
from typing import Any, Callable

import torch

from k2trt.checkpoint import INDEX_NAME, IGNORED, Kind, expected_tensors
from k2trt.config import K2Config
from k2trt.errors import K2Error
from k2trt.fp8 import quantize_block_fp8, scale_shape
from k2trt.safetensors_io import StreamingWriter, atomic_write_text

# Fields shared by every preset: K2's own (../shared/kimi-k2-reference/config.json).
_K2_COMMON: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "kimi_k2",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "moe_layer_freq": 1,
    "n_group": 1,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.827,
    "n_shared_experts": 1,
    "num_nextn_predict_layers": 0,
    "rms_norm_eps": 1e-6,
    "rope_theta": 50000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "quantization_config": {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128],
    },
}

# What a checkpoint carries besides config, index and shards.
TOKENIZER_FILES = ("tiktoken.model", "tokenizer_config.json", "chat_template.jinja")

# Base vocabulary sizes (the BPE part); the 256 special tokens follow, as in K2 (163,584 + 256).
PRESETS: dict[str, dict[str, Any]] = {
    # A few MB. Widths are deliberately not multiples of 128 so every FP8 weight has partial edge blocks.
    "tiny": {
        "vocab_size": 512 + 256, "hidden_size": 192, "intermediate_size": 320, "moe_intermediate_size": 96,
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
        "q_lora_rank": 96, "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
        "n_routed_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 4096,
        "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "original_max_position_embeddings": 128, "type": "yarn"},
    },
    # K2's real per-layer dimensions with few layers and experts (about 2.2 GB): converter/kernel benchmarks.
    "slice": {
        "vocab_size": 512 + 256, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_attention_heads": 64, "num_key_value_heads": 64,
        "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "v_head_dim": 128, "n_routed_experts": 16, "num_experts_per_tok": 8, "max_position_embeddings": 131072,
        "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "original_max_position_embeddings": 4096, "type": "yarn"},
    },
}

# Text the synthetic tokenizer's BPE merges are learned from: chat-flavoured English and a little Chinese.
_TOKENIZER_TEXT = (
    "You are Kimi, an AI assistant created by Moonshot AI. Hello! How can I help you today? "
    "What's the weather like in Beijing? Let me check the weather for you. The temperature is 23 degrees "
    "Celsius with light rain and a gentle northern wind. Please give a brief self-introduction. I am a "
    "helpful assistant that can answer questions, write code, translate languages and call tools. "
    "The time in Tokyo is 10:30 in the morning; in London it is 02:30, in New York 21:30 yesterday. "
    "Convert 12 kilometers to miles: 7.46 miles. Calculate 345 * 18 + 27 = 6237. "
    "functions.get_weather functions.get_time functions.calculator.evaluate unit_conversion "
    '{"city": "Paris", "unit": "celsius", "expression": "2 + 2", "value": 3.5, "from": "km", "to": "mi"} '
    "Quick brown foxes jump over lazy dogs; sphinx of black quartz, judge my vow. Question, answer, result, "
    "error, success, request, response, message, content, system, user, assistant, tool, return. "
    "你好，今天天气怎么样？北京的天气很好，上海下雨，广州很热。我是月之暗面开发的人工智能助手。 "
    "Emoji: 🌧️ ☀️ 🚀 — naïve café, façade, jalapeño, Zürich, São Paulo, Kraków, Reykjavík. "
)


def preset_config(preset: str, overrides: dict[str, Any] | None = None) -> K2Config:
    """The K2Config of a preset with HF-field overrides applied (and validated)."""
    if preset not in PRESETS:
        raise K2Error(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    raw = {**_K2_COMMON, **PRESETS[preset]}
    for k, v in (overrides or {}).items():
        if k not in raw and k not in {"bos_token_id", "eos_token_id", "torch_dtype"}:
            known = {f for f in K2Config.__dataclass_fields__} - {"extra"}
            if k not in known:
                raise K2Error(f"--config: unknown config field {k!r}")
        raw[k] = v
    base = raw["vocab_size"] - 256
    if base < 256:
        raise K2Error(f"--config: vocab_size {raw['vocab_size']} leaves no room for 256 bytes + 256 special tokens")
    raw.setdefault("bos_token_id", base)  # [BOS] is the first special id, as in K2 (163584)
    raw.setdefault("eos_token_id", base + 1)
    return K2Config.from_dict(raw, source=f"preset {preset}")


def _generator(seed: int, name: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF_FFFF)
    return g


def _real_tensor(name: str, shape: tuple[int, ...], kind: Kind, seed: int) -> torch.Tensor:
    """A float32 tensor with magnitudes that keep a random model's activations O(1)."""
    g = _generator(seed, name)
    if kind is Kind.BIAS:
        return 0.05 * torch.randn(shape, generator=g)
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if name == "model.embed_tokens.weight":
        return torch.randn(shape, generator=g)
    fan_in = shape[-1]
    w = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    if kind is Kind.FP8:
        # Vary the magnitude between 128x128 blocks so scales differ (as in real checkpoints).
        rows = torch.exp(0.5 * torch.randn(math.ceil(shape[0] / 128), generator=g))
        w *= rows.repeat_interleave(128)[: shape[0], None]
    return w


def tensor_plan(cfg: K2Config) -> list[tuple[str, torch.dtype, tuple[int, ...], Kind | None]]:
    """Every stored tensor in checkpoint order: (name, dtype, shape, kind); kind None marks scales and extras."""
    quant = cfg.fp8_block is not None
    plan: list[tuple[str, torch.dtype, tuple[int, ...], Kind | None]] = []
    exp = expected_tensors(cfg)

    def layer_of(name: str) -> tuple[int, str]:
        parts = name.split(".")
        if name.startswith("model.layers."):
            return int(parts[2]), name
        return (-1 if "embed" in name else 1 << 30), name

    for name in sorted(exp, key=layer_of):
        e = exp[name]
        if e.kind is Kind.FP8 and quant:
            plan.append((name, torch.float8_e4m3fn, e.shape, e.kind))
            plan.append((name + "_scale_inv", torch.float32, scale_shape(e.shape, cfg.fp8_block), None))
        elif e.kind is Kind.BIAS:
            plan.append((name, torch.float32, e.shape, e.kind))
        else:
            plan.append((name, torch.bfloat16, e.shape, e.kind))
        if name.endswith("self_attn.kv_a_layernorm.weight"):
            inv = name.replace("kv_a_layernorm.weight", "rotary_emb.inv_freq")
            assert IGNORED.match(inv)
            plan.append((inv, torch.float32, (cfg.qk_rope_head_dim // 2,), None))
    return plan


def synthesize(
    *,
    out: str | Path,
    preset: str = "tiny",
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    shards: int = 2,
    force: bool = False,
    split_scales: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic checkpoint with random weights to ``out``; returns its path.

    ``split_scales`` puts each FP8 scale in the shard after its weight, to exercise readers that must pair them
    across shards.
    """
    cfg = preset_config(preset, overrides)
    return write_hf_checkpoint(
        out=out, cfg=cfg, tensor_fn=lambda name, shape, kind: _real_tensor(name, shape, kind, seed),
        shards=shards, force=force, split_scales=split_scales, progress=progress,
    )


def write_hf_checkpoint(
    *,
    out: str | Path,
    cfg: K2Config,
    tensor_fn: Callable[[str, tuple[int, ...], Kind], torch.Tensor],
    shards: int = 2,
    force: bool = False,
    split_scales: bool = False,
    progress: bool = False,
    tokenizer_dir: Path | None = None,
) -> Path:
    """Write a checkpoint of ``cfg`` in K2's exact layout; ``tensor_fn(name, shape, kind)`` gives each real tensor.

    FP8 weights are quantized here (128x128 blocks) when ``cfg`` is block-FP8. Tokenizer files are copied from
    ``tokenizer_dir``, or a small BPE is trained for synthetic checkpoints. Everything is written under
    ``out.partial`` and renamed at the end; at most one tensor is in memory at a time.
    """
    out = Path(out)
    if shards < 1:
        raise K2Error(f"--shards must be >= 1, got {shards}")
    if out.exists() and not force:
        raise K2Error(f"{out} exists; pass --force to replace it")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    plan = tensor_plan(cfg)
    total = sum(math.prod(s) * d.itemsize for _, d, s, _ in plan)
    # Assign tensors to shards by cumulative bytes; a scale follows its weight unless split_scales.
    assignment: list[int] = []
    done = 0
    for name, dtype, shape, _ in plan:
        idx = min(shards - 1, done * shards // max(total, 1))
        if split_scales and name.endswith("_scale_inv"):
            idx = min(shards - 1, assignment[-1] + 1) if shards > 1 else 0
        assignment.append(idx)
        done += math.prod(shape) * dtype.itemsize
    names = [f"model-{i + 1}-of-{shards}.safetensors" for i in range(shards)]

    bar = _progress(progress, total)
    writers = [
        StreamingWriter(tmp / fname, [(n, d, s) for (n, d, s, _), a in zip(plan, assignment) if a == i],
                        metadata={"format": "pt"})
        for i, fname in enumerate(names)
    ]
    weight_map: dict[str, str] = {}
    scale: torch.Tensor | None = None  # an FP8 weight's scale, written as the next plan entry
    try:
        # One pass in plan order: each shard receives its tensors in the order its header lists them.
        for (name, dtype, shape, kind), a in zip(plan, assignment):
            if kind is Kind.FP8 and cfg.fp8_block is not None:
                t, scale = quantize_block_fp8(_checked(tensor_fn(name, shape, kind), name, shape), cfg.fp8_block)
            elif name.endswith("_scale_inv"):
                t, scale = scale, None
            elif name.endswith("rotary_emb.inv_freq"):
                t = _inv_freq(cfg)
            else:
                t = _checked(tensor_fn(name, shape, kind), name, shape).to(dtype)
            writers[a].add(name, t)
            weight_map[name] = names[a]
            if bar:
                bar[0].update(bar[1], advance=t.numel() * t.element_size())
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar:
            bar[0].stop()

    atomic_write_text(
        tmp / INDEX_NAME,
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2),
    )
    atomic_write_text(tmp / "config.json", json.dumps(cfg.to_hf_dict(), indent=2))
    if tokenizer_dir is not None:
        for f in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / f).is_file():
                shutil.copy(Path(tokenizer_dir) / f, tmp / f)
    else:
        _write_tokenizer(tmp, cfg)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _checked(t: torch.Tensor, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(t.shape) != tuple(shape):
        raise K2Error(f"tensor '{name}' has shape {list(t.shape)}, the config implies {list(shape)}")
    return t.detach().float().contiguous()


def _inv_freq(cfg: K2Config) -> torch.Tensor:
    """The plain RoPE inverse frequencies K2 stores as ``rotary_emb.inv_freq`` (unused by inference)."""
    d = cfg.qk_rope_head_dim
    return 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))


def _write_tokenizer(out: Path, cfg: K2Config) -> None:
    from k2trt.tokenizer import train_bpe, write_tokenizer_files

    ranks = train_bpe([_TOKENIZER_TEXT], cfg.vocab_size - 256)
    write_tokenizer_files(out, ranks)


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    p = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                 TimeRemainingColumn())
    p.start()
    return p, p.add_task("synth", total=total)
