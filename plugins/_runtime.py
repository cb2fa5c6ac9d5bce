"""Where a kernel runs: compiled on a CUDA device, or Triton's interpreter on CPU with ``TRITON_INTERPRET=1``.

Triton decides between the compiler and the interpreter when a ``@triton.jit`` function is *decorated*, i.e.
when a ``plugins`` kernel module is first imported (``triton.runtime.jit.jit`` reads ``knobs.runtime.interpret``).
So ``TRITON_INTERPRET=1`` has to be in the environment before ``plugins.fp8_gemm``, ``plugins.moe`` or
``plugins.mla`` is imported; :func:`kernel_mode` checks that the tensors and the mode agree and says what to do
when they do not, instead of letting Triton fail on a CPU pointer.
"""

from __future__ import annotations

import os

import torch

from k2trt.errors import K2Error

_INTERPRET_AT_IMPORT = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def interpreting() -> bool:
    """True when the kernel modules were (or will be) decorated for Triton's interpreter."""
    return _INTERPRET_AT_IMPORT


def kernel_mode(*tensors: torch.Tensor | None) -> str:
    """``"cuda"`` or ``"interpret"`` for a launch on ``tensors``; raises K2Error when neither can run them."""
    ts = [t for t in tensors if t is not None]
    devices = {t.device.type for t in ts}
    if len(devices) > 1:
        raise K2Error(f"kernel inputs are on several devices {sorted(devices)}; put them on one")
    dev = devices.pop() if devices else "cpu"
    if dev == "cuda":
        if _INTERPRET_AT_IMPORT:
            return "interpret"  # the interpreter copies CUDA tensors to the host and back; slow but correct
        return "cuda"
    if dev == "cpu":
        if _INTERPRET_AT_IMPORT:
            return "interpret"
        raise K2Error(
            "the plugins' Triton kernels need a CUDA GPU; on CPU run them under Triton's interpreter by setting "
            "TRITON_INTERPRET=1 in the environment before k2trt's plugins are imported"
        )
    raise K2Error(f"the plugins' Triton kernels cannot run on device type {dev!r} (CUDA, or CPU with TRITON_INTERPRET=1)")


def cdiv(a, b):
    """Ceiling division; works on ints and on TensorRT shape expressions (only ``+ - //`` are used)."""
    return (a + b - 1) // b


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (Triton's ``tl.arange`` needs power-of-two extents)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def require(cond: bool, message: str) -> None:
    """Raise K2Error(message) unless cond: wrappers check shapes, dtypes and contiguity with it."""
    if not cond:
        raise K2Error(message)


def check_tensor(name: str, t: torch.Tensor, *, dtype=None, dims: int | None = None, shape=None,
                 contiguous: bool = True) -> None:
    """One line per broken promise about a kernel argument (dtype, rank, shape, contiguity)."""
    if not isinstance(t, torch.Tensor):
        raise K2Error(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, (tuple, list)) else (dtype,)
        require(t.dtype in allowed, f"{name} must have dtype {' or '.join(str(d) for d in allowed)}, got {t.dtype}")
    if dims is not None:
        require(t.dim() == dims, f"{name} must be {dims}-D, got shape {list(t.shape)}")
    if shape is not None:
        want = list(shape)
        got = list(t.shape)
        ok = len(want) == len(got) and all(w is None or w == g for w, g in zip(want, got))
        require(ok, f"{name} must have shape {['*' if w is None else w for w in want]}, got {got}")
    if contiguous:
        require(t.is_contiguous(), f"{name} must be contiguous (shape {list(t.shape)}, strides {list(t.stride())})")
