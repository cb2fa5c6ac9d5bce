"""Topology planner: which parallel layout, how much of each GPU goes where, and how fast it can be.

Pure functions of a model config (:class:`~k2trt.config.K2Config`) and a topology (:mod:`k2trt.gpus`). Everything
that a GPU's memory holds is accounted in bytes:

- **weights**: exactly what the converter writes for the rank (``k2trt.trtllm_layout.rank_tensor_specs``, the
  one source of truth), the largest pipeline stage's. With attention data parallelism (``llmapi`` backend) every rank
  holds the whole non-expert model and 1/EP of the expert stacks: the converter's single-rank layout with its
  3-D expert stacks divided by EP.
- **activations**: the peak working set of one decoder layer for ``max_num_tokens`` tokens plus the logits of
  ``max_batch_size`` rows (an estimate from the tensor sizes; see :func:`activation_bytes`).
- **runtime reserve**: CUDA context, NCCL and GEMM workspaces (``FIXED_RESERVE``), plus the 10% of what is left
  that TensorRT-LLM does not give to the KV cache (``KV_FREE_FRACTION``).
- **KV cache**: the rest, in MLA latent tokens (``kv_lora_rank + qk_rope_head_dim`` values per layer).

A plan *fits* when one sequence of ``max_seq_len`` tokens fits the KV cache of every rank that must hold it.
The chosen layout maximises the objective's roofline estimate (:func:`estimate`) among the layouts that fit;
every refused layout is listed with the numbers that refused it.

Worked example (``k2trt plan --topology h200x8``, K2, 131,072 tokens, bf16 KV): TP8/EP8 puts 123.1 GiB of
weights on each H200 (140.4 GiB); Hopper has no chunked MLA prefill in TensorRT-LLM, so ``max_num_tokens`` must
cover a whole 131,072-token prompt (13.3 GiB of activations); with the 2 GiB reserve that leaves 1.8 GiB of KV,
and one 131,072-token sequence needs 8.6 GiB: it does not fit. 16 H200s do. Moonshot's deployment guide
(MoonshotAI/Kimi-K2 docs/deploy_guidance.md): "The smallest deployment unit for Kimi-K2 FP8 weights with 128k
seqlen on mainstream H200 or H20 platform is a cluster with 16 GPUs".
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from k2trt.config import K2Config
from k2trt.errors import K2Error
from k2trt.gpus import GiB, Device, Topology
from k2trt.gpus import topology as parse_topology
from k2trt.mapping import Mapping

# ------------------------------------------------------------------------------------------------ model presets

_DATA = Path(__file__).parent / "data"
MODEL_PRESETS: dict[str, str] = {
    "kimi-k2-instruct": "kimi_k2_instruct_config.json",
    "deepseek-v3": "deepseek_v3_config.json",
}
"""Config files shipped in ``k2trt/data`` (sources in its README); ``tiny`` and ``slice`` come from k2trt.synth."""
SYNTH_PRESETS = ("tiny", "slice")
DEFAULT_MODEL = "kimi-k2-instruct"


@dataclass(frozen=True)
class Model:
    """A config with the name it was asked for by (a preset name or a path)."""

    name: str
    config: K2Config


def load_model(ref: str | Path | None = None) -> Model:
    """A preset (``kimi-k2-instruct``, ``deepseek-v3``, ``tiny``, ``slice``), a config.json or a checkpoint dir."""
    ref = DEFAULT_MODEL if ref is None else ref
    key = str(ref)
    if key in MODEL_PRESETS:
        return Model(key, K2Config.from_file(_DATA / MODEL_PRESETS[key]))
    if key in SYNTH_PRESETS:
        from k2trt.synth import preset_config

        return Model(key, preset_config(key))
    path = Path(key)
    if not path.exists():
        raise K2Error(
            f"--model {key!r}: not a preset ({sorted(MODEL_PRESETS) + list(SYNTH_PRESETS)}) and no such file or "
            f"directory"
        )
    return Model(key, K2Config.from_file(path))


# ------------------------------------------------------------------------------------------------ constants

KV_DTYPE_BYTES = {"bf16": 2, "fp8": 1}
WEIGHT_FORMATS = ("fp8_block", "bf16")

KV_FREE_FRACTION = 0.9
"""Share of the memory left after weights and activations that becomes KV cache: TensorRT-LLM's
``KvCacheConfig.free_gpu_memory_fraction`` default ("Default is 90%", tensorrt_llm/llmapi/llm_args.py)."""

FIXED_RESERVE = {"gpu": 2 * GiB, "cpu": 1 * GiB}
"""CUDA context, NCCL communicators, cuBLAS/DeepGEMM workspaces and CUDA-graph pools per GPU (k2trt assumption;
the PyTorch runtime's own overhead on the CPU device)."""

ALPHA_NVLINK = 5e-6
ALPHA_NETWORK = 15e-6
"""Fixed latency of one collective inside the NVLink domain / across the network (k2trt assumptions, not published
figures: the measured/estimate ratios in docs/plans.md calibrate them)."""

FP8_DISPATCH_BYTES = 1 + 4 / 128
"""Bytes per hidden element of a token dispatched to its experts: FP8 plus one float32 scale per 128 values."""
COMBINE_BYTES = 2
"""Bytes per hidden element of an expert output sent back (bf16)."""


@dataclass(frozen=True)
class Objective:
    """What the chosen layout optimises and the per-GPU limits that go with it."""

    name: str
    batch_cap: int
    """Largest max_batch_size the plan sets (per attention-DP rank, or per replica with TP attention)."""
    chunked_max_num_tokens: int
    """max_num_tokens where the GPU can chunk MLA prefill (else it must cover max_seq_len)."""
    doc: str


OBJECTIVES = {
    # 512 / 8192: TensorRT-LLM's Kimi K2 Thinking guide on B200 runs max_batch_size 128-ish per rank with
    # max_num_tokens 8448; DeepSeek-R1 on B200 max throughput used 384-896 per rank. 512 bounds decode latency.
    "throughput": Objective("throughput", 512, 8192, "most output tokens per GPU per second"),
    # A handful of concurrent users, each as fast as the GPUs allow (TensorRT-LLM's min-latency runs use batch 1).
    "latency": Objective("latency", 16, 8192, "fastest tokens per second for one user"),
}

DEFAULT_WORKLOAD = (1024, 2048)
"""(ISL, OSL) the throughput estimate and max_batch_size assume: TensorRT-LLM's DeepSeek-R1 benchmarks use 1K/2K."""


# ------------------------------------------------------------------------------------------------ weights per rank


@dataclass(frozen=True)
class RankWeights:
    """What one rank's converted shard holds, split the way the roofline needs it."""

    total: int
    """Bytes of every tensor the rank holds."""
    experts: int
    """Bytes of the routed-expert stacks (3-D ``[experts, out, in]`` tensors and their scales)."""
    embedding: int
    """Bytes of the embedding table (a lookup: only the rows in use are read per step)."""
    dense_fp8_params: int
    """Elements of non-expert FP8 weights (GEMMs at the FP8 peak)."""
    dense_other_params: int
    """Elements of the other non-expert, non-embedding tensors (bf16 GEMMs: lm_head, router, norms)."""
    expert_params: int
    """Elements of the routed-expert weights (scales excluded)."""
    tensors: int
    """Number of tensors."""

    @property
    def streamed(self) -> int:
        """Non-expert bytes a step reads in full (everything but experts and the embedding table)."""
        return self.total - self.experts - self.embedding


def _layout_fn():
    if importlib.util.find_spec("k2trt.trtllm_layout") is None:
        raise K2Error(
            "the planner takes per-rank weight bytes from the converter's layout "
            "(k2trt.trtllm_layout.rank_tensor_specs), which is not in this tree yet"
        )
    return importlib.import_module("k2trt.trtllm_layout").rank_tensor_specs


def _specs(config: K2Config, mapping: Mapping, rank: int, weights: str) -> list:
    fn = _layout_fn()
    if "rank" in inspect.signature(fn).parameters:
        return fn(config, mapping, rank=rank, weights=weights)
    return fn(config, mapping, weights=weights)[rank]


def _is_scale(name: str) -> bool:
    return "scale" in name.rsplit(".", 1)[-1]


@functools.lru_cache(maxsize=8192)
def converter_rank_weights(config: K2Config, mapping: Mapping, rank: int, weights: str = "fp8_block") -> RankWeights:
    """Summary of ``rank{rank}.safetensors`` as the converter writes it for ``mapping``."""
    total = experts = embedding = fp8_p = other_p = exp_p = n = 0
    for s in _specs(config, mapping, rank, weights):
        nbytes, numel, n = int(s.nbytes), math.prod(s.shape), n + 1
        total += nbytes
        if len(s.shape) == 3:  # routed experts are stacked [experts_on_rank, out, in] (DESIGN.md)
            experts += nbytes
            exp_p += 0 if _is_scale(s.name) else numel
        elif s.name.endswith("vocab_embedding.weight"):
            embedding += nbytes
        elif _is_scale(s.name):
            continue
        elif s.dtype == "F8_E4M3":
            fp8_p += numel
        else:
            other_p += numel
    return RankWeights(total, experts, embedding, fp8_p, other_p, exp_p, n)


# ------------------------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class Layout:
    """A parallel layout: one replica's mapping, attention DP or TP, and how many replicas share the GPUs."""

    mapping: Mapping
    attention_dp: bool
    replicas: int = 1

    @property
    def world_size(self) -> int:
        return self.mapping.world_size

    @property
    def gpus(self) -> int:
        return self.world_size * self.replicas

    @property
    def dp(self) -> int:
        """Attention data-parallel ranks per pipeline stage (1 with TP attention)."""
        return self.mapping.tp if self.attention_dp else 1

    def label(self) -> str:
        m = self.mapping
        attn = f"DP{m.tp}" if self.attention_dp else f"TP{m.tp}"
        moe = f"EP{m.moe_ep}" + (f"xTP{m.moe_tp}" if m.moe_tp > 1 else "")
        s = f"attn {attn}, MoE {moe}"
        if m.pp > 1:
            s += f", PP{m.pp}"
        if self.replicas > 1:
            s += f", {self.replicas} replicas"
        return s


def layout_rank_weights(config: K2Config, layout: Layout, weights: str) -> list[RankWeights]:
    """Weights of one rank per pipeline stage (the first rank of each stage), from the converter's layout.

    The ranks of a stage hold the same byte count whenever the mapping divides the model (equal heads, experts,
    expert width and padded vocab rows; the converter refuses any other mapping), so the first rank of a stage
    stands for all of them; stages differ (embedding, lm_head, layer counts). tests/test_planner.py checks these
    against every rank the converter writes.
    """
    m = layout.mapping
    stages = [s * m.tp for s in range(m.pp)]
    if not layout.attention_dp:
        return [converter_rank_weights(config, m, r, weights) for r in stages]
    if m.moe_tp != 1:
        raise K2Error("attention DP plans use pure expert parallelism (moe_tp 1)")
    # Attention DP: each rank holds its pipeline stage's whole non-expert model (the converter's tp=1 shard of
    # that stage) and 1/EP of the experts (stacks are split on the expert axis: exact when EP divides them).
    single = Mapping(tp=1, pp=m.pp)
    e, ep = config.n_routed_experts, m.moe_ep
    out = []
    for r in stages:
        base = converter_rank_weights(config, single, m.pp_rank(r), weights)
        exp = base.experts * (e // ep) // e
        out.append(replace(base, total=base.total - base.experts + exp, experts=exp,
                           expert_params=base.expert_params * (e // ep) // e))
    return out


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(config: K2Config, topo: Topology) -> tuple[list[Layout], list[tuple[str, str]]]:
    """Every layout the model's shapes allow on ``topo`` (replicas use all GPUs), and the shapes that refuse others.

    A replica of ``W`` GPUs is ``tp x pp``. Attention DP needs EP = tp to divide the experts. TP attention needs tp
    to divide the heads; its MoE is pure EP when EP = tp divides the experts, else the smallest ``moe_tp`` whose
    ``moe_ep`` does. (In the roofline a ``moe_tp`` split holds and reads the same bytes per GPU as pure EP, so it
    is only worth its narrower expert GEMMs where EP alone cannot divide.) The converter may still refuse a
    layout (an FP8 block cut): :func:`plan` records its message.
    """
    e, heads = config.n_routed_experts, config.num_attention_heads
    out: list[Layout] = []
    refused: list[tuple[str, str]] = []
    for w in _divisors(topo.count):
        for pp in _divisors(w):
            if pp > config.num_hidden_layers:
                continue
            tp = w // pp
            reps = topo.count // w
            stage = f", PP{pp}" if pp > 1 else ""
            if tp > 1:
                if e % tp == 0:
                    out.append(Layout(Mapping(tp=tp, pp=pp, moe_ep=tp, moe_tp=1), True, reps))
                else:
                    refused.append((f"attn DP{tp}, MoE EP{tp}{stage}",
                                    f"EP {tp} does not divide the {e} routed experts"))
            if heads % tp:
                refused.append((f"attn TP{tp}{stage}", f"TP {tp} does not divide the {heads} attention heads"))
                continue
            ep = next(d for d in sorted(_divisors(tp), reverse=True) if e % d == 0)
            out.append(Layout(Mapping(tp=tp, pp=pp, moe_ep=ep, moe_tp=tp // ep), False, reps))
    return out, refused


# ------------------------------------------------------------------------------------------------ memory


def activation_bytes(config: K2Config, layout: Layout, max_num_tokens: int, max_batch_size: int) -> int:
    """Peak activation workspace of one rank: the largest decoder layer's working set for ``max_num_tokens`` tokens
    plus float32 logits for ``max_batch_size`` rows (bf16 activations, FP8 expert inputs).

    Per token: 4 hidden-size buffers (residual, normed input, attention and MLP outputs); MLA: q_a/kv_a outputs and,
    for the rank's heads, expanded q, k, v and the attention output (TensorRT-LLM's context path expands the
    latent); MoE: the routed copies that land on this rank (``top_k x DP / EP`` per local token, uniform routing)
    each with an FP8 input, gate+up, activation and output; the shared expert; router logits.
    """
    c, m = config, layout.mapping
    h, two = c.hidden_size, 2
    heads = c.num_attention_heads // (1 if layout.attention_dp else m.tp)
    attn = two * ((c.q_lora_rank or 0) + c.kv_a_out) + two * heads * (2 * c.qk_head_dim + 2 * c.v_head_dim)
    tp_dense = 1 if layout.attention_dp else m.tp
    inter = c.moe_intermediate_size // m.moe_tp
    copies = c.num_experts_per_tok * layout.dp / m.moe_ep
    moe = copies * (h + two * 3 * inter + two * h)
    moe += two * 3 * c.shared_intermediate_size / tp_dense + 4 * c.n_routed_experts
    dense_mlp = two * 3 * c.intermediate_size / tp_dense if c.first_k_dense_replace else 0
    per_token = two * 4 * h + attn + max(moe, dense_mlp)
    vocab = c.vocab_size if layout.attention_dp else math.ceil(c.vocab_size / m.tp)
    return int(max_num_tokens * per_token + max_batch_size * vocab * 4)


@dataclass(frozen=True)
class Memory:
    """One GPU's memory, bytes. ``capacity = weights + activations + reserve + kv_cache + headroom``."""

    capacity: int
    weights: int
    activations: int
    reserve: int
    """Fixed runtime reserve (CUDA context, NCCL, workspaces)."""
    kv_cache: int
    headroom: int
    """Unused: the (1 - KV_FREE_FRACTION) of the free memory TensorRT-LLM leaves alone, plus any KV beyond
    max_batch_size full-length sequences; or the shortfall (< 0)."""


def memory_breakdown(device: Device, weights: int, activations: int) -> Memory:
    reserve = FIXED_RESERVE["cpu" if device.arch == "cpu" else "gpu"]
    free = device.memory_bytes - weights - activations - reserve
    kv = int(free * KV_FREE_FRACTION) if free > 0 else 0
    return Memory(device.memory_bytes, weights, activations, reserve, kv, free - kv)


def kv_bytes_per_token_on_rank(config: K2Config, mapping: Mapping, kv_dtype: str) -> int:
    """MLA latent bytes one token takes on a rank: its stage's layers x (kv_lora + rope) x dtype bytes. Not split
    by TP: every head reads the same latent, so TP attention replicates it on each rank."""
    layers = max(len(mapping.layers(r, config.num_hidden_layers)) for r in range(0, mapping.world_size, mapping.tp))
    return layers * config.kv_a_out * KV_DTYPE_BYTES[kv_dtype]


# ------------------------------------------------------------------------------------------------ roofline


@dataclass(frozen=True)
class StepTime:
    """One forward step of one rank, seconds, and what bounds it."""

    seconds: float
    memory_s: float
    compute_s: float
    comm_s: float
    latency_s: float

    @property
    def bound(self) -> str:
        terms = {"memory": self.memory_s, "compute": self.compute_s, "communication": self.comm_s}
        return max(terms, key=terms.get)


@dataclass(frozen=True)
class Estimate:
    """Roofline estimates for one layout (upper bounds: no kernel overheads, perfect overlap, uniform routing)."""

    batch: int
    """Sequences per attention group in the decode estimate (per DP rank, or per replica with TP attention)."""
    context: int
    """Average context length of the decode estimate (ISL + OSL/2)."""
    decode: StepTime
    decode_tok_s_per_gpu: float
    decode_tok_s_per_user: float
    latency_tok_s_per_user: float
    """Batch 1: tokens per second one user sees."""
    prefill_tokens: int
    prefill: StepTime
    prefill_tok_s_per_gpu: float
    e2e_output_tok_s_per_gpu: float
    """Output tokens per GPU per second serving ISL/OSL requests (decode and the prefill it needs)."""

    def to_json(self) -> dict[str, Any]:
        def st(s: StepTime) -> dict[str, Any]:
            return {"ms": _sig(s.seconds * 1e3), "bound": s.bound, "memory_ms": _sig(s.memory_s * 1e3),
                    "compute_ms": _sig(s.compute_s * 1e3), "communication_ms": _sig(s.comm_s * 1e3),
                    "latency_ms": _sig(s.latency_s * 1e3)}

        return {
            "decode": {"batch": self.batch, "context": self.context, "step": st(self.decode),
                       "tok_s_per_gpu": _sig(self.decode_tok_s_per_gpu),
                       "tok_s_per_user": _sig(self.decode_tok_s_per_user)},
            "batch1_tok_s_per_user": _sig(self.latency_tok_s_per_user),
            "prefill": {"tokens": self.prefill_tokens, "step": st(self.prefill),
                        "tok_s_per_gpu": _sig(self.prefill_tok_s_per_gpu)},
            "e2e_output_tok_s_per_gpu": _sig(self.e2e_output_tok_s_per_gpu),
        }


def _sig(x: float, digits: int = 4) -> float:
    """Round to significant digits so generated files do not churn on the last bits of a float."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def _group_comm(device: Device, group: int) -> tuple[int, int]:
    """(GPUs per NVLink domain inside a group of ``group`` consecutive GPUs, domains the group spans)."""
    # Without NVLink (nvlink_domain 1) the GPUs of one host talk over PCIe (nvlink_bw holds its bandwidth).
    domain = device.nvlink_domain if device.nvlink_domain > 1 else device.gpus_per_node
    d = max(1, min(group, domain))
    return d, -(-group // d)


def _allreduce_s(device: Device, group: int, nbytes: float) -> tuple[float, float]:
    """(bandwidth seconds, latency seconds) of a hierarchical ring all-reduce of ``nbytes`` on ``group`` GPUs."""
    if group <= 1:
        return 0.0, 0.0
    d, n = _group_comm(device, group)
    t = 2 * (d - 1) / d * nbytes / device.nvlink_bw if d > 1 else 0.0
    if n > 1:
        t += 2 * (n - 1) / n * nbytes / d / device.internode_bw
        return t, ALPHA_NVLINK + ALPHA_NETWORK
    return t, ALPHA_NVLINK


def _alltoall_s(config: K2Config, device: Device, ep: int, tokens: float) -> tuple[float, float]:
    """(bandwidth, latency) seconds of dispatching ``tokens`` (this rank's) to their experts and combining back.

    Copies to GPUs in the same NVLink domain go over NVLink; a token crosses the network once per remote domain
    that holds one of its experts, then fans out over that domain's NVLink (DeepEP-style forwarding)."""
    if ep <= 1:
        return 0.0, 0.0
    k, h = config.num_experts_per_tok, config.hidden_size
    d, n = _group_comm(device, ep)
    per_token = h * (FP8_DISPATCH_BYTES + COMBINE_BYTES)
    nvlink = tokens * k * (ep - 1) / ep * per_token
    t = nvlink / device.nvlink_bw
    if n > 1:
        remote_domains = (n - 1) * (1 - (1 - 1 / n) ** k)
        t = max(t, tokens * remote_domains * per_token / device.internode_bw)
        return t, 2 * (ALPHA_NVLINK + ALPHA_NETWORK)
    return t, 2 * ALPHA_NVLINK


def step_time(
    config: K2Config, device: Device, layout: Layout, rw: RankWeights, *, tokens: int, context: float,
    kv_per_token: int, decode: bool, weights: str,
) -> StepTime:
    """One step of one rank processing ``tokens`` (its own with attention DP, the replica's with TP attention).

    Decode reads the streamed weights, the experts some token routes to, and each sequence's latent KV
    (absorbed MLA: scores over kv_lora + rope, values over kv_lora). Prefill processes ``tokens`` new tokens of
    one prompt (causal attention over half of it on average, with expanded per-head K/V).
    """
    c, m = config, layout.mapping
    e, k = c.n_routed_experts, c.num_experts_per_tok
    layers = math.ceil(c.num_hidden_layers / m.pp)
    moe_layers = math.ceil(c.num_moe_layers / m.pp)
    heads = c.num_attention_heads // (1 if layout.attention_dp else m.tp)
    group_tokens = tokens * layout.dp  # tokens the EP group routes this step
    touched = 1 - (1 - k / e) ** group_tokens
    copies = group_tokens * k / m.moe_ep
    e_local = e // m.moe_ep
    fp8 = weights == "fp8_block" and device.fp8

    nbytes = rw.streamed + touched * rw.experts + tokens * c.hidden_size * 2
    if decode:
        nbytes += tokens * context * kv_per_token
        attn_flops = 2 * tokens * context * (c.kv_a_out + c.kv_lora_rank) * heads * layers
    else:
        attn_flops = 2 * tokens * (context / 2) * (c.qk_head_dim + c.v_head_dim) * heads * layers
    gemm_fp8 = 2 * tokens * rw.dense_fp8_params + 2 * copies * rw.expert_params / e_local
    gemm_other = 2 * tokens * rw.dense_other_params
    compute = (gemm_fp8 / device.gemm_flops(fp8) + (gemm_other + attn_flops) / device.bf16_flops)
    memory = nbytes / device.memory_bw

    if layout.attention_dp:
        bw, lat = _alltoall_s(c, device, m.moe_ep, tokens)
        comm, latency = bw * moe_layers, lat * moe_layers
    else:
        bw, lat = _allreduce_s(device, m.tp, tokens * c.hidden_size * 2)
        comm, latency = 2 * bw * layers, 2 * lat * layers
    return StepTime(max(memory, compute, comm) + latency, memory, compute, comm, latency)


def estimate(
    config: K2Config, device: Device, layout: Layout, rank_weights: list[RankWeights], *, batch: int,
    isl: int, osl: int, prefill_tokens: int, kv_dtype: str = "bf16", weights: str = "fp8_block",
) -> Estimate:
    """Roofline for ``layout``: decode at ``batch`` sequences of context ISL + OSL/2, batch 1, prefill, end to end."""
    m = layout.mapping
    rw = max(rank_weights, key=lambda r: r.total)
    kv_tok = kv_bytes_per_token_on_rank(config, m, kv_dtype)
    ctx = isl + osl // 2
    hop = ALPHA_NETWORK if m.pp > 1 else 0.0

    def dec(b: int) -> StepTime:
        return step_time(config, device, layout, rw, tokens=b, context=ctx, kv_per_token=kv_tok, decode=True,
                         weights=weights)

    d = dec(batch)
    per_gpu = batch * layout.dp / (d.seconds * m.world_size)
    per_user = 1 / (m.pp * d.seconds + (m.pp - 1) * hop)
    one = dec(1)
    lat_user = 1 / (m.pp * one.seconds + (m.pp - 1) * hop)
    p = step_time(config, device, layout, rw, tokens=prefill_tokens, context=min(prefill_tokens, isl) or 1,
                  kv_per_token=kv_tok, decode=False, weights=weights)
    prefill_per_gpu = prefill_tokens * layout.dp / (p.seconds * m.world_size)
    e2e = 1 / (1 / per_gpu + (isl / osl) / prefill_per_gpu)
    return Estimate(batch, ctx, d, per_gpu, per_user, lat_user, prefill_tokens, p, prefill_per_gpu, e2e)


# ------------------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class Limits:
    """Per-GPU runtime limits that go into the engine / LLM-API options."""

    max_seq_len: int
    max_num_tokens: int
    """Tokens one rank processes per step (prefill chunk plus decode tokens)."""
    max_batch_size: int
    """Sequences in flight per attention group (per DP rank, or per replica with TP attention), per PP micro-batch."""
    kv_cache_tokens: int
    """Latent tokens one GPU's KV cache holds."""
    full_length_sequences: int
    """Sequences of max_seq_len one attention group's cache holds (per DP rank, or per replica with TP)."""
    workload_sequences: int
    """Sequences of ISL + OSL tokens it holds."""
    cuda_graph_batch_sizes: tuple[int, ...]


@dataclass(frozen=True)
class Evaluation:
    """One layout judged on one topology."""

    layout: Layout
    fits: bool
    memory: Memory
    limits: Limits
    estimate: Estimate | None
    why_not: str | None
    kv_per_token: int
    """KV bytes one token takes on the rank (its stage's layers)."""
    rank_weights: tuple[RankWeights, ...] = field(repr=False, default=())

    @property
    def surplus(self) -> int:
        """KV bytes per GPU beyond one max_seq_len sequence (negative: the shortfall)."""
        free = self.memory.kv_cache if self.memory.kv_cache > 0 else self.memory.headroom
        need = self.limits.max_seq_len * self.kv_per_token
        return free - need

    def score(self, objective: str) -> float:
        if not self.fits or self.estimate is None:
            return -1.0
        if objective == "latency":
            return self.estimate.latency_tok_s_per_user
        return self.estimate.e2e_output_tok_s_per_gpu


@dataclass(frozen=True)
class PlanInputs:
    """What the user asked for."""

    model: str
    topology: str
    max_seq_len: int
    kv_dtype: str
    objective: str
    weights: str
    isl: int
    osl: int


def _gib(b: float) -> str:
    """Bytes for a reason line: GiB with one decimal, MiB/KiB when that would read 0.0."""
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(b) >= 0.05 * size or unit == "KiB":
            return f"{b / size:.1f} {unit}"
    raise AssertionError


def cuda_graph_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to max_batch_size, and max_batch_size itself (padding fills the gaps)."""
    sizes = [1 << i for i in range(max(1, max_batch_size).bit_length()) if (1 << i) <= max_batch_size]
    if max_batch_size not in sizes:
        sizes.append(max_batch_size)
    return tuple(sizes)


def max_num_tokens_for(device: Device, objective: Objective, max_seq_len: int) -> int:
    """Tokens one rank processes per step."""
    if device.mla_chunked_prefill:
        return min(objective.chunked_max_num_tokens, max_seq_len)
    # TensorRT-LLM's DeepSeek-R1 guide: "MLA chunked context support has been added on Blackwell GPUs, while it's
    # not supported on Hopper yet. On Hopper, note that max_num_tokens has to be at least larger than the max input
    # sequence length".
    return max(max_seq_len, objective.chunked_max_num_tokens)


def evaluate(model: Model, topo: Topology, layout: Layout, inputs: PlanInputs) -> Evaluation:
    """Memory, limits and roofline of ``layout``; ``fits`` iff one max_seq_len sequence fits every rank's cache."""
    c, dev, m = model.config, topo.device, layout.mapping
    obj = OBJECTIVES[inputs.objective]
    rws = layout_rank_weights(c, layout, inputs.weights)
    weights = max(r.total for r in rws)
    max_num_tokens = max_num_tokens_for(dev, obj, inputs.max_seq_len)
    act = activation_bytes(c, layout, max_num_tokens, obj.batch_cap)
    mem = memory_breakdown(dev, weights, act)
    kv_tok = kv_bytes_per_token_on_rank(c, m, inputs.kv_dtype)
    kv_tokens = mem.kv_cache // kv_tok
    work = kv_tokens // (inputs.isl + inputs.osl)
    batch = min(obj.batch_cap, work // m.pp)
    if batch >= 1:
        # No use caching more than max_batch_size full-length sequences per micro-batch: cap the pool (the LLM-API
        # options carry it as kv_cache_config.max_tokens) and leave the rest unused.
        used = min(kv_tokens, batch * m.pp * inputs.max_seq_len)
        if used < kv_tokens:
            mem = replace(mem, kv_cache=used * kv_tok, headroom=mem.headroom + mem.kv_cache - used * kv_tok)
            kv_tokens, work = used, used // (inputs.isl + inputs.osl)
    full = kv_tokens // inputs.max_seq_len
    limits = Limits(inputs.max_seq_len, max_num_tokens, batch, kv_tokens, full, work, cuda_graph_batch_sizes(batch))
    why = None
    if mem.kv_cache <= 0:
        why = (f"weights {_gib(weights)} + activations {_gib(act)} + reserve {_gib(mem.reserve)} exceed the "
               f"{_gib(dev.memory_bytes)} of a {dev.name}")
    elif full < 1:
        why = (f"weights {_gib(weights)} leave {_gib(mem.kv_cache)} for KV per GPU = {kv_tokens:,} tokens, less than "
               f"one {inputs.max_seq_len:,}-token sequence ({_gib(inputs.max_seq_len * kv_tok)} {inputs.kv_dtype})")
    elif batch < 1:
        why = f"KV cache holds {work} ISL+OSL sequences, fewer than the {m.pp} pipeline micro-batches"
    est = None
    if why is None:
        est = estimate(c, dev, layout, rws, batch=batch, isl=inputs.isl, osl=inputs.osl,
                       prefill_tokens=min(max_num_tokens, max(inputs.isl, obj.chunked_max_num_tokens)),
                       kv_dtype=inputs.kv_dtype, weights=inputs.weights)
    return Evaluation(layout, why is None, mem, limits, est, why, kv_tok, tuple(rws))


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Plan:
    """The planner's answer for one model on one topology."""

    inputs: PlanInputs
    model: Model
    topology: Topology
    chosen: Evaluation | None
    """The best layout that fits, or (when none fits) the one that came closest."""
    reasons: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]
    """(layout, why) for every layout not chosen."""

    @property
    def fits(self) -> bool:
        return self.chosen is not None and self.chosen.fits

    def to_json(self) -> dict[str, Any]:
        ev, t, dev = self.chosen, self.topology, self.topology.device
        out: dict[str, Any] = {
            "fits": self.fits,
            "model": {"name": self.model.name, "model_type": self.model.config.model_type,
                      "layers": self.model.config.num_hidden_layers,
                      "routed_experts": self.model.config.n_routed_experts},
            "topology": {"name": t.name, "device": dev.name, "device_name": dev.display, "gpus": t.count,
                         "nodes": t.nodes, "gpus_per_node": dev.gpus_per_node,
                         "nvlink_domain": dev.nvlink_domain},
            "inputs": {"max_seq_len": self.inputs.max_seq_len, "kv_dtype": self.inputs.kv_dtype,
                       "objective": self.inputs.objective, "weights": self.inputs.weights,
                       "isl": self.inputs.isl, "osl": self.inputs.osl},
            "mapping": None, "memory_per_gpu": None, "limits": None, "estimates": None,
            "reasons": list(self.reasons),
            "rejected": [{"layout": a, "why": b} for a, b in self.rejected],
        }
        if ev is not None:
            m = ev.layout.mapping
            out["mapping"] = {"tp": m.tp, "pp": m.pp, "moe_ep": m.moe_ep, "moe_tp": m.moe_tp,
                              "attention_dp": ev.layout.attention_dp, "replicas": ev.layout.replicas,
                              "world_size": m.world_size, "label": ev.layout.label()}
            mem = ev.memory
            out["memory_per_gpu"] = {k: getattr(mem, k) for k in
                                     ("capacity", "weights", "activations", "reserve", "kv_cache", "headroom")}
            out["memory_per_gpu"]["gib"] = {k: round(v / GiB, 3) for k, v in out["memory_per_gpu"].items()}
            lim = ev.limits
            out["limits"] = {"max_seq_len": lim.max_seq_len, "max_num_tokens": lim.max_num_tokens,
                             "max_batch_size": lim.max_batch_size, "kv_cache_tokens_per_gpu": lim.kv_cache_tokens,
                             "full_length_sequences": lim.full_length_sequences,
                             "workload_sequences": lim.workload_sequences,
                             "cuda_graph_batch_sizes": list(lim.cuda_graph_batch_sizes)}
            out["estimates"] = ev.estimate.to_json() if ev.estimate else None
        return out

    def render(self) -> str:
        """The human-readable plan the CLI prints."""
        t, dev, inp = self.topology, self.topology.device, self.inputs
        lines = [f"model {self.model.name} on {t.name}: {t.count} x {dev.display} ({t.nodes} node(s))",
                 f"max_seq_len {inp.max_seq_len:,}, KV {inp.kv_dtype}, weights {inp.weights}, objective "
                 f"{inp.objective}, workload ISL {inp.isl} / OSL {inp.osl}",
                 f"fits: {'yes' if self.fits else 'NO'}"]
        ev = self.chosen
        if ev is not None:
            mem, lim = ev.memory, ev.limits
            lines.append(f"layout: {ev.layout.label()}  (tp {ev.layout.mapping.tp}, pp {ev.layout.mapping.pp}, "
                         f"moe_ep {ev.layout.mapping.moe_ep}, moe_tp {ev.layout.mapping.moe_tp})")
            lines.append("memory per GPU:")
            for k in ("capacity", "weights", "activations", "reserve", "kv_cache", "headroom"):
                lines.append(f"  {k:<12} {_gib(getattr(mem, k)):>12}")
            lines.append(f"limits: max_batch_size {lim.max_batch_size}, max_num_tokens {lim.max_num_tokens:,}, "
                         f"KV {lim.kv_cache_tokens:,} tokens/GPU ({lim.full_length_sequences} x {lim.max_seq_len:,})")
            if ev.estimate:
                e = ev.estimate
                lines.append(
                    f"roofline: decode {e.decode_tok_s_per_gpu:,.0f} tok/s/GPU at batch {e.batch} "
                    f"({e.decode_tok_s_per_user:,.1f} tok/s/user, {e.decode.bound}-bound), batch 1 "
                    f"{e.latency_tok_s_per_user:,.1f} tok/s/user, prefill {e.prefill_tok_s_per_gpu:,.0f} tok/s/GPU, "
                    f"end to end {e.e2e_output_tok_s_per_gpu:,.0f} output tok/s/GPU")
        lines.append("reasons:")
        lines += [f"  - {r}" for r in self.reasons]
        if self.rejected:
            lines.append("not chosen:")
            lines += [f"  - {a}: {b}" for a, b in self.rejected]
        return "\n".join(lines)


def _explain(model: Model, topo: Topology, ev: Evaluation, inputs: PlanInputs, n_fit: int) -> list[str]:
    c, dev, lay, m = model.config, topo.device, ev.layout, ev.layout.mapping
    mem, lim = ev.memory, ev.limits
    rw = max(ev.rank_weights, key=lambda r: r.total)
    kv_tok = kv_bytes_per_token_on_rank(c, m, inputs.kv_dtype)
    r = []
    r.append(f"{lay.label()} chosen among {n_fit} layouts that fit, for the {inputs.objective} objective "
             f"({OBJECTIVES[inputs.objective].doc})")
    r.append(f"weights {_gib(mem.weights)} per GPU: the converter's rank shard for tp {m.tp} / pp {m.pp} / "
             f"moe_ep {m.moe_ep} / moe_tp {m.moe_tp} (max over ranks; experts {_gib(rw.experts)}, "
             f"{rw.tensors} tensors)"
             + (", non-expert weights replicated for attention DP" if lay.attention_dp else ""))
    r.append(f"EP {m.moe_ep}: {c.n_routed_experts // m.moe_ep} of {c.n_routed_experts} routed experts per GPU"
             + (f", each split {m.moe_tp} ways" if m.moe_tp > 1 else " (pure EP: no expert is split)"))
    if lay.attention_dp:
        r.append("attention DP: each GPU runs MLA for its own sequences, so its latent cache holds only them; with "
                 "TP attention every rank would hold the whole batch's latent (MLA's cache is not split by heads)")
    elif m.tp > 1:
        r.append(f"TP attention over {m.tp} GPUs: {c.num_attention_heads // m.tp} heads per GPU; the latent KV is "
                 f"replicated on each of them")
    else:
        r.append("one GPU per replica: nothing is split")
    if m.pp > 1:
        r.append(f"PP {m.pp}: no single-stage layout fits; {math.ceil(c.num_hidden_layers / m.pp)} layers per stage")
    if lay.replicas > 1:
        r.append(f"{lay.replicas} independent replicas of {m.world_size} GPUs: more output tokens per GPU than one "
                 f"replica over all {topo.count}")
    if not dev.mla_chunked_prefill:
        r.append(f"max_num_tokens {lim.max_num_tokens:,} >= max_seq_len: {dev.arch} has no chunked MLA prefill in "
                 f"TensorRT-LLM, so a whole prompt is one step ({_gib(mem.activations)} of activations)")
    else:
        r.append(f"max_num_tokens {lim.max_num_tokens:,}: prefill is chunked ({_gib(mem.activations)} of activations)")
    capped = " (capped at max_batch_size full-length sequences)" if lim.full_length_sequences >= max(
        1, lim.max_batch_size * m.pp) else ""
    r.append(f"KV cache {_gib(mem.kv_cache)} per GPU{capped}: at most {KV_FREE_FRACTION:.0%} of what weights, "
             f"activations and the {_gib(mem.reserve)} reserve leave; {kv_tok:,} B per token ({inputs.kv_dtype}) = "
             f"{lim.kv_cache_tokens:,} "
             f"tokens = {lim.full_length_sequences} sequence(s) of {lim.max_seq_len:,} or {lim.workload_sequences} "
             f"of {inputs.isl + inputs.osl:,} (ISL+OSL)")
    r.append(f"max_batch_size {lim.max_batch_size}: min({OBJECTIVES[inputs.objective].batch_cap} "
             f"({inputs.objective} cap), {lim.workload_sequences} ISL+OSL sequences"
             + (f" / {m.pp} micro-batches" if m.pp > 1 else "") + ")")
    if ev.estimate:
        e = ev.estimate
        r.append(f"decode step {e.decode.seconds * 1e3:.1f} ms at batch {e.batch} is {e.decode.bound}-bound "
                 f"(memory {e.decode.memory_s * 1e3:.1f}, compute {e.decode.compute_s * 1e3:.1f}, communication "
                 f"{e.decode.comm_s * 1e3:.1f}, collective latency {e.decode.latency_s * 1e3:.1f} ms)")
    return r


def plan(
    *, model: str | Path | None = None, topology: str, max_seq_len: int | None = None, kv_dtype: str = "bf16",
    objective: str = "throughput", weights: str = "fp8_block", isl: int | None = None, osl: int | None = None,
) -> Plan:
    """Plan ``model`` (preset, config.json or checkpoint dir; default Kimi-K2-Instruct) on ``topology``."""
    if kv_dtype not in KV_DTYPE_BYTES:
        raise K2Error(f"--kv-dtype {kv_dtype!r}: choose one of {sorted(KV_DTYPE_BYTES)}")
    if objective not in OBJECTIVES:
        raise K2Error(f"--objective {objective!r}: choose one of {sorted(OBJECTIVES)}")
    if weights not in WEIGHT_FORMATS:
        raise K2Error(f"--weights {weights!r}: choose one of {list(WEIGHT_FORMATS)}")
    mdl = load_model(model)
    topo = parse_topology(topology)
    c, dev = mdl.config, topo.device
    seq = c.max_position_embeddings if max_seq_len is None else max_seq_len
    if seq < 1 or seq > c.max_position_embeddings:
        raise K2Error(f"--max-seq-len {seq}: must be between 1 and the model's max_position_embeddings "
                      f"({c.max_position_embeddings:,})")
    d_isl, d_osl = DEFAULT_WORKLOAD
    i = min(isl or d_isl, max(1, seq // 2))
    o = min(osl or d_osl, max(1, seq - i))
    inputs = PlanInputs(mdl.name, topo.name, seq, kv_dtype, objective, weights, i, o)

    if weights == "fp8_block" and c.fp8_block is not None and not dev.fp8_block_scales:
        why = (f"{dev.display} ({dev.arch}, sm{dev.sm}) has no block-scaled FP8 GEMMs: FP8 block scaling needs Hopper "
               f"or Blackwell (TransformerEngine support matrix: 'No' for 8.0/8.6 Ampere and 8.9 Ada); "
               f"{'Ampere has no FP8 tensor cores at all' if not dev.fp8 else 'Ada has per-tensor FP8 only'}. "
               f"Dequantize to bf16 (--weights bf16) and plan again")
        return Plan(inputs, mdl, topo, None, (why,), ())

    layouts, refused = candidate_layouts(c, topo)
    try:  # lower bound before asking for per-rank layouts: the whole model over a replica's GPUs
        whole = converter_rank_weights(c, Mapping(tp=1, pp=1), 0, weights).total
    except K2Error as e:
        why = [f"the converter cannot write {weights} weights for {mdl.name}: " + p for p in e.problems]
        if weights == "fp8_block":
            why.append("plan with --weights bf16 (dequantized weights) instead")
        return Plan(inputs, mdl, topo, None, tuple(why), ())
    rejected: list[tuple[str, str]] = list(refused)
    evals: list[Evaluation] = []
    pruned: list[tuple[int, Layout]] = []  # (KV surplus upper bound, layout) refused by the lower bound

    def judge(group: list[Layout]) -> None:
        for lay in group:
            # Lower bound without the per-rank layout: some rank holds at least the average share of the model.
            share = whole / lay.world_size
            if share > dev.memory_bytes:
                rejected.append((lay.label(), f"the whole model ({_gib(whole)}) over {lay.world_size} GPUs is "
                                              f"{_gib(share)} each, more than a {dev.name}'s "
                                              f"{_gib(dev.memory_bytes)}"))
                continue
            obj = OBJECTIVES[objective]
            act = activation_bytes(c, lay, max_num_tokens_for(dev, obj, seq), obj.batch_cap)
            floor = memory_breakdown(dev, int(share), act)
            one_seq = inputs.max_seq_len * kv_bytes_per_token_on_rank(c, lay.mapping, kv_dtype)
            if floor.kv_cache < one_seq:
                room = floor.kv_cache if floor.kv_cache > 0 else floor.kv_cache + floor.headroom  # < 0: shortfall
                pruned.append((room - one_seq, lay))
                rejected.append((lay.label(), f"at least {_gib(share)} of weights per GPU (the model's average "
                                              f"share) and {_gib(floor.activations)} of activations leave at most "
                                              f"{_gib(floor.kv_cache)} for KV, less than one {seq:,}-token sequence "
                                              f"({_gib(one_seq)})"))
                continue
            try:
                evals.append(evaluate(mdl, topo, lay, inputs))
            except K2Error as e:  # the converter refuses the split (an FP8 block cut, a width tp does not divide)
                rejected.append((lay.label(), "converter: " + "; ".join(e.problems)))

    # Pipeline stages only when no single-stage layout fits: every token pays the stage hops and a PP replica
    # needs pp micro-batches in flight to keep its GPUs busy.
    judge([lay for lay in layouts if lay.mapping.pp == 1])
    single_stage = [e for e in evals if e.fits]
    staged = [lay for lay in layouts if lay.mapping.pp > 1]
    if single_stage and staged:
        rejected.append((f"{len(staged)} layouts with PP > 1", "not evaluated: pipeline stages are considered only "
                                                              "when no single-stage layout fits"))
    else:
        judge(staged)
    fit = [e for e in evals if e.fits]
    if not fit and pruned:
        # Nothing fits: judge exactly the layout the bound found closest, to report its real numbers.
        best = max(pruned, key=lambda x: (x[0], -x[1].mapping.pp))[1]
        rejected[:] = [r for r in rejected if r[0] != best.label()]
        try:
            evals.append(evaluate(mdl, topo, best, inputs))
        except K2Error as e:
            rejected.append((best.label(), "converter: " + "; ".join(e.problems)))
    pool = single_stage or fit
    reasons: list[str]
    if pool:
        chosen = max(pool, key=lambda e: (e.score(objective), -e.layout.mapping.pp, -e.layout.replicas))
        reasons = _explain(mdl, topo, chosen, inputs, len(fit))
    else:
        closest = max(evals, key=lambda e: e.surplus, default=None)
        chosen = closest
        reasons = [f"no layout of {c.model_type} fits {topo.count} x {dev.name} at max_seq_len {seq:,} "
                   f"with {kv_dtype} KV"]
        if closest is not None:
            reasons.append(f"closest: {closest.layout.label()}: {closest.why_not}")
            reasons.append(_suggest(mdl, topo, closest, inputs))
    for e in evals:
        if e is chosen:
            continue
        if e.fits:
            score = e.score(objective)
            unit = "tok/s/user at batch 1" if objective == "latency" else "output tok/s/GPU"
            rejected.append((e.layout.label(), f"fits, roofline {score:,.0f} {unit}"))
        else:
            rejected.append((e.layout.label(), e.why_not or "does not fit"))
    return Plan(inputs, mdl, topo, chosen, tuple(reasons), tuple(rejected))


def _suggest(model: Model, topo: Topology, ev: Evaluation, inputs: PlanInputs) -> str:
    """What would make the closest layout fit: the longest max_seq_len (a multiple of 1024) or another KV dtype."""
    c, m = model.config, ev.layout.mapping
    lo, hi = 0, inputs.max_seq_len // 1024
    while lo < hi:  # activations grow with max_seq_len on Hopper, so search rather than divide
        mid = (lo + hi + 1) // 2
        if evaluate(model, topo, ev.layout, replace(inputs, max_seq_len=mid * 1024, isl=min(inputs.isl, mid * 512),
                                                    osl=min(inputs.osl, mid * 512))).fits:
            lo = mid
        else:
            hi = mid - 1
    parts = []
    if lo:
        parts.append(f"max_seq_len {lo * 1024:,} fits with {inputs.kv_dtype} KV")
    if inputs.kv_dtype != "fp8" and evaluate(model, topo, ev.layout, replace(inputs, kv_dtype="fp8")).fits:
        parts.append(f"fp8 KV fits {inputs.max_seq_len:,}")
    need = math.ceil(inputs.max_seq_len * kv_bytes_per_token_on_rank(c, m, inputs.kv_dtype) / GiB * 10) / 10
    parts.append(f"one {inputs.max_seq_len:,}-token sequence needs {need} GiB of KV per GPU")
    return "; ".join(parts)


def plan_json(p: Plan) -> str:
    return json.dumps(p.to_json(), indent=2)


# ------------------------------------------------------------------------------------------------ published facts


@dataclass(frozen=True)
class Published:
    """A published measurement and the layout/workload to estimate it with."""

    name: str
    source: str
    model: str
    device: str
    layout: Layout
    batch: int
    isl: int
    osl: int
    prefill_tokens: int
    metric: str
    """Estimate field compared: e2e_output_tok_s_per_gpu, latency_tok_s_per_user, decode_tok_s_per_gpu or
    prefill_tok_s_per_gpu."""
    measured: float
    unit: str
    note: str


PUBLISHED: tuple[Published, ...] = (
    # TensorRT-LLM docs/source/blogs/Best_perf_practice_on_DeepSeek-R1_in_TensorRT-LLM.md, "H200 max-throughput":
    # trtllm-bench --tp 8 --ep 8, enable_attention_dp, --max_batch_size 128 --max_num_tokens 1151, ISL 1K / OSL 2K,
    # concurrency 1024: "Per GPU Output Throughput (tokens/sec/gpu): 1436.1584".
    Published("DeepSeek-R1 FP8, 8xH200, max throughput (TensorRT-LLM)",
              "TensorRT-LLM blog Best_perf_practice_on_DeepSeek-R1_in_TensorRT-LLM.md, H200 max-throughput",
              "deepseek-v3", "h200", Layout(Mapping(tp=8, moe_ep=8), True), 128, 1024, 2048, 1151,
              "e2e_output_tok_s_per_gpu", 1436.1584, "output tok/s/GPU",
              "attention DP 8, EP 8, batch 128 per rank, ISL 1K / OSL 2K; the measurement includes prefill"),
    # Same blog, "H200 min-latency": --tp 8 --ep 4, --max_batch_size 1, concurrency 1, MTP with 3 draft layers:
    # "Per User Output Throughput (tokens/sec/user): 158.1196".
    Published("DeepSeek-R1 FP8, 8xH200, min latency (TensorRT-LLM)",
              "TensorRT-LLM blog Best_perf_practice_on_DeepSeek-R1_in_TensorRT-LLM.md, H200 min-latency",
              "deepseek-v3", "h200", Layout(Mapping(tp=8, moe_ep=4, moe_tp=2), False), 1, 1024, 2048, 1024,
              "latency_tok_s_per_user", 158.1196, "tok/s/user",
              "TP 8, EP 4 x moe_tp 2, batch 1; measured WITH MTP speculative decoding (3 layers), which the "
              "roofline does not model"),
    # lmsys.org/blog/2025-07-20-k2-large-scale-ep: Kimi K2 on 128 H200, 1P1D with 4 prefill and 12 decode nodes,
    # ISL 2000 / OSL 100, decode batch size 480: "Decode Throughput 288k tokens/sec (12 D Nodes)" = 3,000 per GPU.
    Published("Kimi K2, 96 decode H200s of 128, SGLang PD + large EP",
              "lmsys.org/blog/2025-07-20-k2-large-scale-ep (Mooncake team), cluster-level performance",
              "kimi-k2-instruct", "h200", Layout(Mapping(tp=96, moe_ep=96), True), 480, 2000, 100, 8192,
              "decode_tok_s_per_gpu", 288_000 / 96, "decode tok/s/GPU",
              "12 decode nodes, attention DP + EP 96 (SGLang also places 96 redundant experts), batch 480 per GPU"),
    # Same blog: "Prefill Throughput 224k tokens/sec (4 P Nodes)" = 7,000 per GPU.
    Published("Kimi K2, 32 prefill H200s of 128, SGLang PD + large EP",
              "lmsys.org/blog/2025-07-20-k2-large-scale-ep (Mooncake team), cluster-level performance",
              "kimi-k2-instruct", "h200", Layout(Mapping(tp=32, moe_ep=32), True), 1, 2000, 100, 8192,
              "prefill_tok_s_per_gpu", 224_000 / 32, "prefill tok/s/GPU",
              "4 prefill nodes, attention DP + EP 32, 2000-token prompts, 8,192 tokens per rank per step (assumed)"),
)


def estimate_published(p: Published, weights: str = "fp8_block") -> Estimate:
    """The roofline estimate for a published configuration."""
    mdl = load_model(p.model)
    dev = parse_topology(f"{p.device}x{p.layout.gpus}").device
    rws = layout_rank_weights(mdl.config, p.layout, weights)
    return estimate(mdl.config, dev, p.layout, rws, batch=p.batch, isl=p.isl, osl=p.osl,
                    prefill_tokens=p.prefill_tokens, weights=weights)


# ------------------------------------------------------------------------------------------------ docs/plans.md

DOC_TOPOLOGIES = ("h200x8", "h200x16", "h100x16", "h20x16", "b200x8", "gb200-nvl72", "a100x16")


def _md_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _plan_row(p: Plan) -> list[Any]:
    ev = p.chosen
    if ev is None:
        return [p.topology.name, "**no**", "refused", "", "", "", "", "", "", "", "", ""]
    mem, lim, e = ev.memory, ev.limits, ev.estimate
    fmt = (lambda x: f"{x:,.0f}") if e else (lambda x: "")
    return [
        p.topology.name, "yes" if p.fits else "**no**", ev.layout.label(), _gib(mem.weights), _gib(mem.activations),
        _gib(mem.kv_cache), f"{lim.kv_cache_tokens:,}", lim.full_length_sequences,
        lim.max_batch_size if p.fits else "", f"{lim.max_num_tokens:,}",
        fmt(e.decode_tok_s_per_gpu) if e else "", fmt(e.e2e_output_tok_s_per_gpu) if e else "",
    ]


def plans_markdown() -> str:
    """``docs/plans.md``: K2 on every topology, the published facts, the standard builds, roofline vs measured."""
    from k2trt.build_config import STANDARD_BUILDS

    k2 = load_model(DEFAULT_MODEL).config
    out = [
        "# Kimi-K2 plans per GPU topology",
        "",
        "Generated by `python scripts/gen_build_configs.py` from `k2trt plan` (`k2trt/planner.py`, devices in "
        "`k2trt/gpus.py`); do not edit by hand. Bytes are GiB (2^30). Weights are the bytes the converter writes "
        "per rank (`k2trt.trtllm_layout.rank_tensor_specs`), maximum over ranks.",
        "",
        f"Kimi-K2-Instruct: {k2.total_params:,} stored parameters ({k2.total_weights:,} weights), "
        f"{k2.num_hidden_layers} layers, {k2.n_routed_experts} experts top-{k2.num_experts_per_tok}; MLA KV "
        f"{k2.kv_cache_bytes_per_token(2):,} B/token in bf16 ({k2.kv_cache_bytes_per_token(1):,} in fp8), "
        f"{k2.max_position_embeddings * k2.kv_cache_bytes_per_token(2) / GiB:.1f} GiB for one "
        f"{k2.max_position_embeddings:,}-token sequence in bf16.",
        "",
        "## Published facts the planner reproduces",
        "",
        _md_row(["fact (source)", "command", "k2trt says"]),
        _md_row(["---"] * 3),
    ]
    facts = [
        ("K2 FP8 at 128k does not fit 8 H200 (Moonshot deploy guide: 16 GPUs is the smallest unit on H200/H20)",
         "k2trt plan --topology h200x8", dict(topology="h200x8")),
        ("K2 FP8 at 128k fits 16 H200", "k2trt plan --topology h200x16", dict(topology="h200x16")),
        ("K2 FP8 at 128k fits 16 H20", "k2trt plan --topology h20x16", dict(topology="h20x16")),
        ("DeepSeek-V3 FP8 fits 8 H200", "k2trt plan --gpus h200x8 --model deepseek-v3",
         dict(topology="h200x8", model="deepseek-v3")),
        ("DeepSeek-V3 FP8 does not fit 8 H100", "k2trt plan --gpus h100x8 --model deepseek-v3",
         dict(topology="h100x8", model="deepseek-v3")),
        ("FP8 block scales are refused on A100", "k2trt plan --gpus a100x16", dict(topology="a100x16")),
    ]
    for fact, cmd, kw in facts:
        p = plan(**kw)
        if p.fits:
            ev = p.chosen
            said = (f"fits: {ev.layout.label()}, {_gib(ev.memory.weights)} weights and {_gib(ev.memory.kv_cache)} KV "
                    f"per GPU, {ev.limits.full_length_sequences} sequence(s) of {p.inputs.max_seq_len:,} per "
                    f"attention group")
        else:
            said = "does not fit: " + (p.reasons[1].removeprefix("closest: ") if len(p.reasons) > 1
                                        else p.reasons[0])
        out.append(_md_row([fact, f"`{cmd}`", said.replace("|", "/")]))

    out += ["", "## K2 at 128k on every topology", "",
            f"`k2trt plan --topology NAME` (max_seq_len {k2.max_position_embeddings:,}, bf16 KV, throughput "
            f"objective, ISL {DEFAULT_WORKLOAD[0]} / OSL {DEFAULT_WORKLOAD[1]}). *Activations* are sized for "
            "max_num_tokens, which on Hopper must cover a whole prompt (no chunked MLA prefill there). *Full seqs*: "
            "128k-token sequences one attention group (a DP rank, or a TP replica) holds. Throughputs are roofline "
            "upper bounds (see below).", "",
            _md_row(["topology", "fits", "layout", "weights/GPU", "activations", "KV/GPU", "KV tokens/GPU",
                     "full seqs", "max batch", "max tokens/step", "decode tok/s/GPU", "e2e tok/s/GPU"]),
            _md_row(["---"] * 12)]
    details: list[tuple[str, Plan]] = []
    for t in DOC_TOPOLOGIES:
        p = plan(topology=t)
        out.append(_md_row(_plan_row(p)))
        details.append((f"{t}, 128k", p))

    out += ["", "## Standard build configs (`build_configs/`)", "",
            "What `k2trt build --config build_configs/NAME.yaml` builds. Where 128k does not fit, the config plans "
            "the context that does.", "",
            _md_row(["config", "model", "max_seq_len", "backend", "layout", "weights/GPU", "KV/GPU", "max batch",
                     "max tokens/step", "decode tok/s/GPU", "e2e tok/s/GPU", "batch-1 tok/s/user"]),
            _md_row(["---"] * 12)]
    for name, spec in STANDARD_BUILDS.items():
        kw = {k: v for k, v in spec.items() if k != "backend"}
        p = plan(**kw)
        ev = p.chosen
        e = ev.estimate
        out.append(_md_row([f"`{name}.yaml`", p.model.name, f"{p.inputs.max_seq_len:,}", spec["backend"],
                            ev.layout.label(), _gib(ev.memory.weights), _gib(ev.memory.kv_cache),
                            ev.limits.max_batch_size, f"{ev.limits.max_num_tokens:,}",
                            f"{e.decode_tok_s_per_gpu:,.0f}", f"{e.e2e_output_tok_s_per_gpu:,.0f}",
                            f"{e.latency_tok_s_per_user:,.0f}"]))
        if kw.get("max_seq_len") or kw.get("model"):
            details.append((f"{name} (build config)", p))

    out += ["", "## Roofline against published measurements", "",
            "The estimate runs the published layout and workload through `k2trt.planner.estimate`. A roofline is an "
            "upper bound (peak bandwidth and FLOPS, uniform expert routing, perfect overlap, no kernel-launch or "
            "scheduling overhead), so measured/roofline below 1 is expected; it is the calibration factor for the "
            "other rows of this page.", "",
            _md_row(["measurement", "layout (batch)", "measured", "roofline", "measured / roofline", "notes"]),
            _md_row(["---"] * 6)]
    for pub in PUBLISHED:
        e = estimate_published(pub)
        est = getattr(e, pub.metric)
        bound = e.prefill.bound if pub.metric.startswith("prefill") else e.decode.bound
        out.append(_md_row([f"{pub.name} ({pub.source})", f"{pub.layout.label()} ({pub.batch})",
                            f"{pub.measured:,.0f} {pub.unit}", f"{est:,.0f}", f"{pub.measured / est:.2f}",
                            f"{pub.note}; roofline bound: {bound}"]))

    out += ["", "## How the planner decides", "",
            "- **Layouts**: every `tp x pp` that divides the GPUs (the rest run as replicas); attention DP with pure "
            "EP, or TP attention with pure EP (a `moe_tp` split only where EP cannot divide the experts); pipeline "
            "stages only when no single-stage layout fits.",
            "- **Memory per GPU** = weights (converter's layout) + activations (one layer's working set for "
            "max_num_tokens, logits for max_batch_size) + a fixed 2 GiB runtime reserve + KV cache, where the KV "
            f"cache is {KV_FREE_FRACTION:.0%} of what is left (TensorRT-LLM's `free_gpu_memory_fraction` default).",
            "- **Fits** when one max_seq_len sequence fits the KV cache of a rank that must hold it (MLA's latent is "
            "not split by heads, so with TP attention every rank of a replica holds every sequence).",
            "- **Chosen**: the best roofline for the objective: end-to-end output tokens per GPU (throughput) or "
            "batch-1 tokens per user (latency).",
            "- **Roofline step** = max(bytes / HBM bandwidth, FLOPs / peak, bytes on the wire / link bandwidth) + "
            f"collective latencies ({ALPHA_NVLINK * 1e6:.0f} us in an NVLink domain, {ALPHA_NETWORK * 1e6:.0f} us "
            "across "
            "the network, k2trt assumptions). Decode reads the non-expert weights, the experts some token routes to "
            "and every sequence's latent KV; attention DP pays an all-to-all per MoE layer (FP8 dispatch, bf16 "
            "combine, one network copy per remote node), TP attention two all-reduces per layer.",
            "", "## Plans in full", ""]
    for title, p in details:
        out += [f"### {title}", "", "```text", p.render(), "```", ""]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ CLI entry


@dataclass(frozen=True)
class PlanOutput:
    """What ``k2trt plan`` prints and its exit status (0 fits, 2 does not fit)."""

    text: str
    fits: bool
    written: Path | None = None


def plan_command(
    *, topology: str | None = None, gpus: str | None = None, model: str | None = None,
    max_seq_len: int | None = None, kv_dtype: str = "bf16", objective: str = "throughput",
    weights: str = "fp8_block", as_json: bool = False, write_config: Path | None = None, backend: str = "llmapi",
) -> PlanOutput:
    """``k2trt plan``: one of --topology / --gpus, the plan as text or JSON, optionally written as a build config."""
    if (topology is None) == (gpus is None):
        raise K2Error("give exactly one of --topology NAME and --gpus DEVICExCOUNT (e.g. --gpus h200x16)")
    p = plan(model=model, topology=topology or gpus, max_seq_len=max_seq_len, kv_dtype=kv_dtype,
             objective=objective, weights=weights)
    text = plan_json(p) if as_json else p.render()
    written = None
    if write_config is not None:
        from k2trt.build_config import BACKENDS, build_config_data, to_yaml, validate

        if backend not in BACKENDS:
            raise K2Error(f"--backend {backend!r}: choose one of {list(BACKENDS)}")
        dest = Path(write_config)
        data = build_config_data(p, name=dest.stem, backend=backend)
        validate(data, source=str(dest))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(to_yaml(data))
        written = dest
    return PlanOutput(text, p.fits, written)
