"""TensorRT registrations of the k2trt plugins (``tensorrt.plugin``, TensorRT 10.x quickly deployable plugins).

Thin on purpose: every shape, dtype, grid, signature and scalar comes from :mod:`plugins.plugin_defs` (pure,
tested); this module only hands them to TensorRT. Facts used (TensorRT ``tensorrt.plugin`` API docs and the
``samples/python/quickly_deployable_plugins`` sample):

- ``@trtp.register("ns::name")`` describes outputs from ``TensorDesc`` inputs (``shape_expr``, ``dtype``);
  ``trtp.from_shape_expr(shape, dtype=...)`` builds an output descriptor;
- ``@trtp.aot_impl("ns::name")`` returns ``(kernel_name, ptx, KernelLaunchParams, SymIntExprs)``; the kernel is
  launched with the input pointers, then the extra int32 scalars (``trtp.SymInt32``), then the output pointers;
  ``KernelLaunchParams`` has ``grid_x/y/z``, ``block_x/y/z`` and ``shared_mem``; plugin attributes are not
  serialized with an AOT implementation (so everything is baked into the PTX here, and ``attributes`` are empty).

TensorRT cannot be installed on k2trt's development machines; :func:`register_plugins` imports it lazily and
fails with the container to use.
"""

from __future__ import annotations

from plugins.aot import compile_spec
from plugins.plugin_defs import PluginDef, PluginSettings, plugin_defs

CONTAINER = "nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3"
_REGISTERED: dict[str, PluginDef] = {}


def _import_trt():
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:  # pragma: no cover - TensorRT is absent on the CPU machines
        from k2trt.errors import K2Error

        raise K2Error(f"TensorRT (tensorrt.plugin, 10.x) is not installed here ({e}); build engines in {CONTAINER}") from None
    return trt, trtp


def trt_dtype(trt, dtype):
    import torch

    return {torch.bfloat16: trt.bfloat16, torch.float16: trt.float16, torch.float32: trt.float32,
            torch.int32: trt.int32, torch.float8_e4m3fn: trt.fp8}[dtype]


def _make_register(trt, trtp, d: PluginDef):
    n_in = len(d.inputs)

    def desc(*inputs):
        shapes = [list(t.shape_expr) for t in inputs[:n_in]]
        outs = [trtp.from_shape_expr(tuple(shape), dtype=trt_dtype(trt, dt)) for _, shape, dt in d.outputs(shapes)]
        if d.aliases:
            for o, i in d.aliases.items():
                outs[o] = inputs[i].aliased()
        return outs[0] if len(outs) == 1 else tuple(outs)

    _with_signature(desc, d.inputs, trtp.TensorDesc)
    trtp.register(d.plugin_id)(desc)


def _make_aot(trt, trtp, d: PluginDef):
    n_in = len(d.inputs)

    def aot(*args):
        inputs = args[:n_in]  # the output buffer args[n_in] is written by the kernel launch
        shapes = [list(t.shape_expr) for t in inputs]
        spec = d.spec(shapes)
        compiled = compile_spec(spec)
        lp = trtp.KernelLaunchParams()
        grid = list(spec.grid) + [1] * (3 - len(spec.grid))
        lp.grid_x, lp.grid_y, lp.grid_z = grid
        lp.block_x = compiled.block_x
        lp.shared_mem = compiled.shared_mem
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in d.scalars(shapes)])
        return compiled.name.encode(), compiled.ptx.encode(), lp, extra

    _with_signature(aot, d.inputs + ("outputs", "tactic"), trtp.TensorDesc, n_tensor=n_in)
    trtp.aot_impl(d.plugin_id)(aot)


def _with_signature(fn, names, desc_type, n_tensor=None) -> None:
    """tensorrt.plugin reads the decorated function's parameter names and annotations."""
    import inspect

    n_tensor = len(names) if n_tensor is None else n_tensor
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=desc_type if i < n_tensor else inspect.Parameter.empty)
              for i, n in enumerate(names)]
    fn.__signature__ = inspect.Signature(params)


def register_plugins(settings: PluginSettings) -> list[str]:
    """Register every MLA / MoE plugin for one engine build; returns the plugin ids. Idempotent per id."""
    trt, trtp = _import_trt()
    ids = []
    for d in plugin_defs(settings):
        if d.plugin_id not in _REGISTERED:
            _make_register(trt, trtp, d)
            _make_aot(trt, trtp, d)
            _REGISTERED[d.plugin_id] = d
        ids.append(d.plugin_id)
    return ids


def add_plugin(network, plugin_id: str, inputs: list):
    """Add a registered plugin layer with its AOT implementation (``network.add_plugin(op, aot=True)``)."""
    _, trtp = _import_trt()
    ns, name = plugin_id.split("::")
    op = getattr(getattr(trtp.op, ns), name)
    return network.add_plugin(op(*inputs), aot=True)
