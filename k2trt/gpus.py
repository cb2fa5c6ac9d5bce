"""The devices k2trt plans for, and the topologies built from them: data, with the source of every number.

Units: bytes and bytes/s (decimal: 1 TB/s = 1e12 B/s), FLOP/s **dense** (datasheets quote FP8/BF16 "with
sparsity", twice the dense figure; the planner never assumes 2:4 sparsity). ``memory_bytes`` is what the driver
reports as the device's total (``nvidia-smi`` ``memory.total``), not the marketing figure: an "H200 141GB" shows
143,771 MiB. Link bandwidths are per GPU and per direction (NVLink datasheets quote the bidirectional sum).

A topology is ``<device>x<count>`` (``h200x16``) or a named entry of :data:`TOPOLOGIES` (``gb200-nvl72``,
``cpu-tiny``). ``cpu-tiny`` is one host-memory "device" running k2trt's torch backend on the tiny model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from k2trt.errors import K2Error

GiB = 1024**3
MiB = 1024**2
TB = 1e12
GB = 1e9
TFLOPS = 1e12


@dataclass(frozen=True)
class Device:
    """One accelerator model (per-GPU figures)."""

    name: str
    """Catalog key, as typed in ``--gpus NAMExCOUNT``."""
    display: str
    """Product name."""
    arch: str
    """``ampere`` | ``ada`` | ``hopper`` | ``blackwell`` | ``cpu``."""
    sm: int | None
    """CUDA compute capability x10 (90 for sm_90), None for the CPU."""
    memory_bytes: int
    """Device memory the driver reports (nvidia-smi memory.total)."""
    memory_bw: float
    """Peak memory bandwidth, B/s."""
    bf16_flops: float
    """Dense BF16 tensor-core peak, FLOP/s."""
    fp8_flops: float | None
    """Dense FP8 tensor-core peak, FLOP/s; None where the device has no FP8 tensor cores."""
    fp8_block_scales: bool
    """Block-scaled (128x128 weight, 1x128 activation) FP8 GEMMs exist for this architecture."""
    mla_chunked_prefill: bool
    """TensorRT-LLM can chunk MLA context (prefill); without it max_num_tokens must cover the longest prompt."""
    nvlink_bw: float
    """GPU-to-GPU bandwidth inside the NVLink domain, per direction, B/s (PCIe where there is no NVLink)."""
    nvlink_domain: int
    """GPUs that share that fabric (8 for an HGX board, 72 for an NVL72 rack, 1 without NVLink)."""
    internode_bw: float
    """Scale-out (InfiniBand/RoCE) bandwidth per GPU, per direction, B/s."""
    gpus_per_node: int
    """GPUs per host (the mpirun slots of one hostfile line)."""
    source: str
    """Where the figures come from."""

    @property
    def fp8(self) -> bool:
        return self.fp8_flops is not None

    def gemm_flops(self, fp8: bool) -> float:
        """Peak for a GEMM whose weights are FP8 (if the device runs FP8) or BF16."""
        return self.fp8_flops if fp8 and self.fp8_flops else self.bf16_flops


# Scale-out: every 8-GPU DGX H100/H200/B200 has eight single-port ConnectX-7 at up to 400 Gb/s, one per GPU
# (NVIDIA DGX BasePOD reference architecture, "Core Components": "Four OSFP ports serving eight single-port NVIDIA
# ConnectX-7 VPI ... up to 400 Gb/s InfiniBand/Ethernet"; DGX B200: "4x OSFP ports serving 8x single-port
# ConnectX-7 VPI, up to 400Gb/s"). 400 Gb/s = 50 GB/s per GPU per direction.
_CX7_400G = 400e9 / 8

DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        # H100 SXM5 80GB: 3.35 TB/s HBM3, FP8 3,958 / BF16 1,979 TFLOPS *with sparsity* (NVIDIA H100 datasheet;
        # the H100/H200 comparison table at lzwjava.github.io/nvidia-h200-gpu-specs-en footnotes "Performance
        # figures include sparsity"), NVLink 4 900 GB/s bidirectional. nvidia-smi: 81,559 MiB.
        Device(
            "h100", "NVIDIA H100 SXM5 80GB", "hopper", 90, 81559 * MiB, 3.35 * TB, 989.5 * TFLOPS, 1979 * TFLOPS,
            fp8_block_scales=True, mla_chunked_prefill=False, nvlink_bw=450 * GB, nvlink_domain=8,
            internode_bw=_CX7_400G, gpus_per_node=8, source="NVIDIA H100 datasheet; DGX BasePOD RA",
        ),
        # H200 SXM 141GB: same GH100 die as H100 (same FLOPS), 4.8 TB/s HBM3e, NVLink 4 900 GB/s bidirectional
        # (NVIDIA H200 datasheet; DGX H200 1,128 GB total). nvidia-smi: 143,771 MiB.
        Device(
            "h200", "NVIDIA H200 SXM 141GB", "hopper", 90, 143771 * MiB, 4.8 * TB, 989.5 * TFLOPS, 1979 * TFLOPS,
            fp8_block_scales=True, mla_chunked_prefill=False, nvlink_bw=450 * GB, nvlink_domain=8,
            internode_bw=_CX7_400G, gpus_per_node=8, source="NVIDIA H200 datasheet; DGX BasePOD RA",
        ),
        # H20 96GB: export-limited Hopper, 4.0 TB/s HBM3, FP16/BF16 148 TFLOPS, FP8/INT8 296 (dense), NVLink 4
        # 900 GB/s retained (willitrunai.com/gpus/h20-96gb: "96 GB HBM3 - 4,000 GB/s", "148 TFLOPS FP16",
        # "NVLink 4.0 (900 GB/s)"). nvidia-smi: 97,871 MiB. Scale-out as HGX H100 (one 400G NIC per GPU).
        Device(
            "h20", "NVIDIA H20 96GB", "hopper", 90, 97871 * MiB, 4.0 * TB, 148 * TFLOPS, 296 * TFLOPS,
            fp8_block_scales=True, mla_chunked_prefill=False, nvlink_bw=450 * GB, nvlink_domain=8,
            internode_bw=_CX7_400G, gpus_per_node=8, source="NVIDIA H20 spec as republished by willitrunai.com",
        ),
        # B200 (HGX/DGX B200, 1,000 W): 7.7 TB/s (DGX B200: 64 TB/s for 8 GPUs is 8 TB/s; HGX B200 62 TB/s is
        # 7.7), FP8 4.5 / BF16 2.25 PFLOPS dense (glennklockwood.com/garden/processors/B200, HGX variant table),
        # NVLink 5 1.8 TB/s bidirectional. nvidia-smi: 183,359 MiB.
        Device(
            "b200", "NVIDIA B200 180GB (HGX)", "blackwell", 100, 183359 * MiB, 7.7 * TB, 2250 * TFLOPS,
            4500 * TFLOPS, fp8_block_scales=True, mla_chunked_prefill=True, nvlink_bw=900 * GB, nvlink_domain=8,
            internode_bw=_CX7_400G, gpus_per_node=8, source="NVIDIA DGX/HGX B200 specs; DGX BasePOD RA",
        ),
        # GB200 (NVL72, 1,200 W): FP8 5 / BF16 2.5 PFLOPS dense (glennklockwood.com B200 page, GB200 variant
        # table), 8 TB/s HBM3e (NVL72: 576 TB/s for 72 GPUs), 72 GPUs in one NVLink 5 domain at 1.8 TB/s per GPU
        # bidirectional (aiwiki.ai/wiki/nvidia_gb200_nvl72). nvidia-smi: 189,471 MiB. A compute tray holds 2
        # superchips = 4 GPUs, each with one 400G ConnectX-7 for scale-out.
        Device(
            "gb200", "NVIDIA GB200 (NVL72)", "blackwell", 100, 189471 * MiB, 8.0 * TB, 2500 * TFLOPS,
            5000 * TFLOPS, fp8_block_scales=True, mla_chunked_prefill=True, nvlink_bw=900 * GB, nvlink_domain=72,
            internode_bw=_CX7_400G, gpus_per_node=4, source="NVIDIA GB200 NVL72 specs",
        ),
        # A100 SXM4 80GB: 2,039 GB/s HBM2e, BF16 312 TFLOPS dense, no FP8 (glennklockwood.com/garden/processors/
        # A100 from the A100 datasheet), NVSwitch 600 GB/s bidirectional. DGX A100: one 200 Gb/s HDR NIC per GPU.
        # nvidia-smi: 81,920 MiB. FP8 block scaling: "No" on 8.0 (TransformerEngine support matrix).
        Device(
            "a100", "NVIDIA A100 SXM4 80GB", "ampere", 80, 81920 * MiB, 2.039 * TB, 312 * TFLOPS, None,
            fp8_block_scales=False, mla_chunked_prefill=False, nvlink_bw=300 * GB, nvlink_domain=8,
            internode_bw=200e9 / 8, gpus_per_node=8, source="NVIDIA A100 datasheet; TransformerEngine matrix",
        ),
        # L40S 48GB: GDDR6 864 GB/s, BF16 362.05 / FP8 733 TFLOPS dense (733 / 1,466 with sparsity), PCIe Gen4 x16
        # 64 GB/s bidirectional, no NVLink (NVIDIA L40/L40S spec table, "* With Sparsity"). nvidia-smi: 46,068 MiB.
        # Ada (8.9) has per-tensor FP8 but no FP8 block scaling (TransformerEngine support matrix). Scale-out is
        # k2trt's assumption for a PCIe server: one 200 Gb/s NIC per 2 GPUs.
        Device(
            "l40s", "NVIDIA L40S 48GB", "ada", 89, 46068 * MiB, 864 * GB, 362 * TFLOPS, 733 * TFLOPS,
            fp8_block_scales=False, mla_chunked_prefill=False, nvlink_bw=32 * GB, nvlink_domain=1,
            internode_bw=200e9 / 8 / 2, gpus_per_node=8, source="NVIDIA L40S datasheet; TransformerEngine matrix",
        ),
        # The CPU "device" of the cpu-tiny topology: 24 GiB of host memory for k2trt's torch backend, which runs
        # block-FP8 by dequantizing in its reference kernels (hence fp8_block_scales True, fp8_flops None). The
        # bandwidth and FLOPS are k2trt's assumptions for a laptop-class 2-channel DDR5 host, not measurements.
        Device(
            "cpu", "host CPU (k2trt torch backend)", "cpu", None, 24 * GiB, 50 * GB, 1 * TFLOPS, None,
            fp8_block_scales=True, mla_chunked_prefill=True, nvlink_bw=10 * GB, nvlink_domain=1,
            internode_bw=1.25 * GB, gpus_per_node=1, source="k2trt assumption",
        ),
    )
}


@dataclass(frozen=True)
class Topology:
    """``count`` identical devices; nodes hold ``device.gpus_per_node`` each."""

    name: str
    device: Device
    count: int
    description: str = ""

    @property
    def nodes(self) -> int:
        return -(-self.count // self.device.gpus_per_node)

    def gpus_on_node(self, node: int) -> int:
        return min(self.device.gpus_per_node, self.count - node * self.device.gpus_per_node)


TOPOLOGIES: dict[str, Topology] = {
    t.name: t
    for t in (
        Topology("h200x8", DEVICES["h200"], 8, "one HGX/DGX H200"),
        Topology("h200x16", DEVICES["h200"], 16, "two HGX/DGX H200 over 400G InfiniBand"),
        Topology("h100x16", DEVICES["h100"], 16, "two HGX/DGX H100 over 400G InfiniBand"),
        Topology("h20x16", DEVICES["h20"], 16, "two HGX H20 over 400G InfiniBand"),
        Topology("b200x8", DEVICES["b200"], 8, "one HGX/DGX B200"),
        Topology("gb200-nvl72", DEVICES["gb200"], 72, "one GB200 NVL72 rack: 18 trays x 4 GPUs, one NVLink domain"),
        Topology("cpu-tiny", DEVICES["cpu"], 1, "this machine's CPU, the tiny K2-architecture model"),
    )
}

_GPUS_RE = re.compile(r"^([a-z0-9]+)x([1-9][0-9]*)$")


def topology(name: str) -> Topology:
    """A named topology (``gb200-nvl72``) or ``<device>x<count>`` (``h200x16``, ``a100x32``)."""
    key = name.strip().lower()
    if key in TOPOLOGIES:
        return TOPOLOGIES[key]
    m = _GPUS_RE.match(key)
    if not m:
        raise K2Error(
            f"unknown topology {name!r}: use one of {sorted(TOPOLOGIES)} or <device>x<count> with a device of "
            f"{sorted(DEVICES)} (e.g. h200x16)"
        )
    dev, count = m.group(1), int(m.group(2))
    if dev not in DEVICES:
        raise K2Error(f"unknown device {dev!r} in {name!r}: the catalog has {sorted(DEVICES)}")
    return Topology(key, DEVICES[dev], count, f"{count} x {DEVICES[dev].display}")
