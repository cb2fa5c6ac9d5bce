"""A kernel launch as data: the one description both the PyTorch wrappers and the TensorRT AOT plugins use.

Every kernel in ``plugins`` declares its parameters in TensorRT's AOT order (``tensorrt.plugin.aot_impl`` launches
a PTX kernel with the plugin's input pointers, then the extra int32 scalars, then the output pointers: TensorRT
``samples/python/quickly_deployable_plugins/qdp_defs.py``), followed by ``tl.constexpr`` parameters. A
:class:`KernelSpec` holds that signature, the constexpr values, the grid and the launch options; the wrappers
call :meth:`KernelSpec.launch`, ``plugins.trt_registration`` compiles the same spec to PTX. Grids are written with
``+ - * //`` only, so the same functions evaluate on ints and on TensorRT shape expressions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

_TL_TYPES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float8_e4m3fn: "fp8e4nv",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.uint8: "u8",
}


def ptr(dtype: torch.dtype) -> str:
    """Triton signature string of a pointer to ``dtype`` ('*bf16', '*fp8e4nv', ...)."""
    try:
        return "*" + _TL_TYPES[dtype]
    except KeyError:
        raise ValueError(f"no Triton pointer type for {dtype}") from None


def tl_dtype(dtype: torch.dtype):
    """The ``triton.language`` dtype for a torch dtype (for constexpr dtype parameters)."""
    import triton.language as tl

    return {
        torch.float32: tl.float32,
        torch.bfloat16: tl.bfloat16,
        torch.float16: tl.float16,
        torch.float8_e4m3fn: tl.float8e4nv,
    }[dtype]


@dataclass(frozen=True)
class KernelSpec:
    """One launch of one Triton kernel.

    ``signature`` lists the runtime parameters in declaration order (name -> Triton type string): first
    ``n_inputs`` input pointers, then ``n_scalars`` int32 scalars, then the output pointers. ``grid`` has up to
    three entries (ints, or TensorRT shape expressions when built from them).
    """

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    grid: tuple
    n_inputs: int
    n_scalars: int
    num_warps: int = 4
    num_stages: int = 2
    notes: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_outputs(self) -> int:
        return len(self.signature) - self.n_inputs - self.n_scalars

    @property
    def input_names(self) -> list[str]:
        return list(self.signature)[: self.n_inputs]

    @property
    def scalar_names(self) -> list[str]:
        return list(self.signature)[self.n_inputs : self.n_inputs + self.n_scalars]

    @property
    def output_names(self) -> list[str]:
        return list(self.signature)[self.n_inputs + self.n_scalars :]

    def check_declaration(self) -> None:
        """The kernel's Python parameters must be exactly ``signature`` then ``constexprs``, in that order."""
        fn = getattr(self.kernel, "fn", self.kernel)
        params = list(inspect.signature(fn).parameters)
        want = list(self.signature) + list(self.constexprs)
        if params != want:
            raise AssertionError(f"{self.name}: kernel parameters {params} != spec {want}")
        for i, (n, t) in enumerate(self.signature.items()):
            is_ptr = t.startswith("*")
            in_scalars = self.n_inputs <= i < self.n_inputs + self.n_scalars
            if is_ptr == in_scalars:
                raise AssertionError(f"{self.name}: parameter {n} ({t}) is out of AOT order (inputs, scalars, outputs)")

    def launch(self, *args) -> None:
        """Launch with positional runtime args in ``signature`` order."""
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} args for {len(self.signature)} parameters")
        grid = tuple(int(g) for g in self.grid)
        if min(grid) <= 0:
            return  # nothing to do (e.g. zero tokens)
        self.kernel[grid](*args, **self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages)
