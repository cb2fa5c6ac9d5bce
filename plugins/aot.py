"""Ahead-of-time compilation of a :class:`~plugins._spec.KernelSpec` to PTX, for TensorRT's AOT plugins.

Triton compiles for a named target without a GPU (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90,
32))`` runs LLVM and the bundled ptxas on any Linux machine), so this module is tested on CPU: every kernel of
every plugin compiles for Hopper (sm_90) in the test suite, which catches what the interpreter cannot (layout
and MMA shape limits, shared-memory overflow).

Triton >= 3.3 appends two pointer parameters to every kernel (global and profile scratch). TensorRT's AOT launch
passes only the plugin's inputs, extra int32 scalars and outputs (TensorRT ``quickly_deployable_plugins``
sample), so :func:`strip_trailing_params` drops them from the PTX entry after checking that the kernel needs no
scratch and never reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from plugins._spec import KernelSpec

HOPPER = (90, 32)  # sm_90 (H100 / H200), warp size 32
H200_SHARED_MEM = 227 * 1024  # usable shared memory per block on sm_90 (CUDA programming guide, compute capability 9.0)


@dataclass(frozen=True)
class CompiledKernel:
    name: str  # PTX entry name
    ptx: str
    num_warps: int
    shared_mem: int  # bytes of dynamic shared memory to launch with
    n_params: int  # PTX entry parameters after stripping

    @property
    def block_x(self) -> int:
        return self.num_warps * 32


def _entry_params(ptx: str, name: str) -> tuple[int, int, list[str]]:
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\(", ptx)
    if not m:
        raise ValueError(f"no .entry {name} in the PTX")
    close = ptx.index(")", m.end())
    params = [p.strip() for p in ptx[m.end():close].split(",") if p.strip()]
    return m.end(), close, params


def strip_trailing_params(ptx: str, name: str, keep: int) -> str:
    """Drop entry parameters ``keep..`` (Triton's scratch pointers) after checking the body never loads them."""
    start, close, params = _entry_params(ptx, name)
    if len(params) < keep:
        raise ValueError(f"{name}: PTX has {len(params)} parameters, the plugin passes {keep}")
    for i in range(keep, len(params)):
        if re.search(rf"\[{re.escape(name)}_param_{i}\]", ptx[close:]):
            raise ValueError(f"{name}: PTX parameter {i} (Triton scratch) is used; TensorRT would not pass it")
    return ptx[:start] + "\n" + ",\n".join(params[:keep]) + "\n" + ptx[close:]


def compile_spec(spec: KernelSpec, target: tuple[int, int] = HOPPER) -> CompiledKernel:
    """Compile ``spec``'s kernel for ``target`` (cc, warp size) -> PTX with exactly the plugin's parameters."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    if not isinstance(spec.kernel, JITFunction):
        raise RuntimeError(
            "the plugins' kernels were decorated for Triton's interpreter (TRITON_INTERPRET=1); AOT compilation "
            "needs a process without it"
        )
    src = triton.compiler.ASTSource(fn=spec.kernel, signature=dict(spec.signature), constexprs=dict(spec.constexprs))
    k = triton.compile(src, target=GPUTarget("cuda", target[0], target[1]),
                       options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    md = k.metadata
    for field in ("global_scratch_size", "profile_scratch_size"):
        if getattr(md, field, 0):
            raise RuntimeError(f"{spec.name}: kernel needs {field}={getattr(md, field)}; TensorRT cannot provide it")
    ptx = strip_trailing_params(k.asm["ptx"], md.name, len(spec.signature))
    if md.shared > H200_SHARED_MEM:
        raise RuntimeError(f"{spec.name}: {md.shared} B of shared memory exceeds sm_90's {H200_SHARED_MEM}")
    return CompiledKernel(name=md.name, ptx=ptx, num_warps=md.num_warps, shared_mem=md.shared,
                          n_params=len(spec.signature))
