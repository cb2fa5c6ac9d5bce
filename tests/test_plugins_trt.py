"""TensorRT plugin definitions (pure) and the AOT path: shapes, signatures, grids and scalars of every plugin,
evaluated on ints and on symbolic shape expressions; PTX for Hopper compiled on CPU (slow, in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from plugins._spec import ptr  # noqa: E402
from plugins.aot import strip_trailing_params  # noqa: E402
from plugins.check import default_config  # noqa: E402
from plugins.plugin_defs import PluginSettings, plugin_def, plugin_defs  # noqa: E402

K2 = default_config()
SETTINGS = PluginSettings(cfg=K2, expert_start=96, n_local_experts=48, max_batch=64, max_context=4096)
T, H, I, E = 64, K2.hidden_size, K2.moe_intermediate_size, K2.n_routed_experts


def _inputs(settings: PluginSettings, t: int = T, b: int = 8, pages: int = 100, max_pages: int = 64) -> dict:
    """Example input shapes per plugin (what the network would wire in), for K2 on an EP rank of 48 experts."""
    el = settings.e_local
    from plugins import moe as M

    tiles = M.moe_tiles(settings.max_batch, 8, el, "cuda")
    p = M.max_rows(t, 8, el, tiles.block_m)
    nb = p // tiles.block_m
    splits = __import__("plugins.mla", fromlist=["x"]).decode_tiles(settings.max_batch, 64, settings.max_context, "cuda").num_splits
    return {
        "act_quant": [[t, H]],
        "fp8_gemm": [[t, H], [t, H // 128], [576, H], [5, H // 128]],
        "moe_route": [[t, H], [E, H], [E]],
        "moe_scatter": [[t, 8], [(t + 15) // 16, 64]],
        "moe_gemm1": [[t, H], [t, H // 128], [el, 2 * I, H], [el, 2 * I // 128, H // 128], [p], [nb], [1]],
        "moe_gemm2": [[p, I], [p, I // 128], [el, H, I], [el, H // 128, I // 128], [p], [nb], [1], [t, 8]],
        "moe_shared_gemm1": [[t, H], [t, H // 128], [2 * I, H], [2 * I // 128, H // 128], [t, 8], [t, 8], [t, 8]],
        "moe_shared_gemm2": [[t, I], [t, I // 128], [H, I], [H // 128, I // 128], [t, 8], [t, 8], [t, 8], [t, 8]],
        "moe_combine": [[t * 8, H], [t, 8], [t, H]],
        "mla_decode": [[b, 64, 512], [b, 64, 64], [pages, 64, 576], [1], [b, max_pages], [b]],
        "mla_decode_reduce": [[b, 64, splits, 512], [b, 64, splits]],
        "mla_prefill": [[t, 64, 128], [t, 64, 64], [t, 64, 128], [t, 64], [t, 64, 128], [b + 1], [b + 1]],
    }


def test_every_plugin_is_one_kernel_in_aot_order():
    shapes = _inputs(SETTINGS)
    defs = plugin_defs(SETTINGS)
    assert {d.name for d in defs} == set(shapes)
    for d in defs:
        sh = shapes[d.name]
        spec = d.spec(sh)
        spec.check_declaration()  # kernel params = inputs, int32 scalars, outputs, then constexprs
        assert spec.n_inputs == len(d.inputs) == len(sh), d.name
        assert [spec.signature[n] for n in spec.input_names] == [ptr(t) for t in d.input_dtypes], d.name
        outs = d.outputs(sh)
        assert [spec.signature[n] for n in spec.output_names] == [ptr(dt) for _, _, dt in outs], d.name
        assert len(d.scalars(sh)) == spec.n_scalars, d.name
        assert all(isinstance(g, int) and g > 0 for g in spec.grid), (d.name, spec.grid)
        assert d.plugin_id == f"k2trt::{d.name}"


def test_moe_plugin_shapes_match_the_wrappers():
    """The buffers the plugins declare are the ones the PyTorch path allocates for the same tokens."""
    from plugins import moe as M

    el, t = 48, 37
    tiles = M.moe_tiles(SETTINGS.max_batch, 8, el, "cuda")
    spec = M.scatter_spec(t, 8, el, tiles)
    outs = plugin_def(SETTINGS, "moe_scatter").outputs([[t, 8], [(t + 15) // 16, 64]])
    assert outs[0][1] == (spec.notes["max_rows"],) and outs[1][1] == (spec.notes["max_blocks"],)
    route = plugin_def(SETTINGS, "moe_route").outputs([[t, H], [E, H], [E]])
    assert route == [("ids", (t, 8), torch.int32), ("weights", (t, 8), torch.float32),
                     ("counts", (3, 64), torch.int32)]
    assert plugin_def(SETTINGS, "moe_scatter").scalars([[t, 8], [3, 64]]) == [t, 96, spec.notes["max_blocks"]]


def test_prefill_scalars_are_contiguous_strides():
    sh = _inputs(SETTINGS)["mla_prefill"]
    b, sqn_t, sqn_h, sqr_t, sqr_h, skn_t, skn_h, skr_t, sv_t, sv_h, so_t, so_h = plugin_def(SETTINGS, "mla_prefill").scalars(sh)
    q = torch.empty(T, 64, 128)
    assert (b, sqn_t, sqn_h) == (8, *q.stride()[:2])
    assert (sqr_t, sqr_h, skr_t) == (64 * 64, 64, 64)
    assert (sv_t, sv_h, so_t, so_h) == (64 * 128, 128, 64 * 128, 128)


class Sym:
    """A stand-in for TensorRT's shape expressions: only + - * // exist (no int(), no min)."""

    def __init__(self, s):
        self.s = s

    def _op(self, o, sym, rev=False):
        a, b = (o, self) if rev else (self, o)
        return Sym(f"({getattr(a, 's', a)} {sym} {getattr(b, 's', b)})")

    __add__ = lambda self, o: self._op(o, "+")  # noqa: E731
    __radd__ = lambda self, o: self._op(o, "+", True)  # noqa: E731
    __sub__ = lambda self, o: self._op(o, "-")  # noqa: E731
    __rsub__ = lambda self, o: self._op(o, "-", True)  # noqa: E731
    __mul__ = lambda self, o: self._op(o, "*")  # noqa: E731
    __rmul__ = lambda self, o: self._op(o, "*", True)  # noqa: E731
    __floordiv__ = lambda self, o: self._op(o, "//")  # noqa: E731
    __rfloordiv__ = lambda self, o: self._op(o, "//", True)  # noqa: E731

    def __int__(self):
        raise TypeError("a shape expression has no value at build time")

    __index__ = __int__

    def __bool__(self):
        raise TypeError("a shape expression cannot be compared at build time")


def test_definitions_evaluate_on_symbolic_shapes():
    """Dynamic token / batch dims stay expressions: nothing calls int(), min() or compares them."""
    shapes = _inputs(SETTINGS)
    dyn = {"act_quant": [0], "fp8_gemm": [0, 1], "moe_route": [0], "moe_scatter": [0, 1], "moe_gemm1": [0, 1, 4, 5],
           "moe_gemm2": [0, 1, 4, 5, 7], "moe_shared_gemm1": [0, 1], "moe_shared_gemm2": [0, 1], "moe_combine": [0, 1, 2],
           "mla_decode": [0, 1, 4, 5], "mla_decode_reduce": [0, 1], "mla_prefill": [0, 1, 2, 3, 4, 5, 6]}
    for d in plugin_defs(SETTINGS):
        sh = [list(s) for s in shapes[d.name]]
        for i in dyn[d.name]:
            sh[i][0] = Sym(f"{d.name}_in{i}_d0")
        outs = d.outputs(sh)
        spec = d.spec(sh)
        d.scalars(sh)
        assert any(isinstance(g, Sym) for g in spec.grid), d.name
        assert any(isinstance(x, Sym) for _, shape, _ in outs for x in shape), d.name


def test_strip_trailing_params():
    ptx = textwrap.dedent("""
        .visible .entry k(
        \t.param .u64 k_param_0,
        \t.param .u32 k_param_1,
        \t.param .u64 k_param_2,
        \t.param .u64 k_param_3
        )
        {
        \tld.param.u64 %rd1, [k_param_0];
        \tld.param.u32 %r1, [k_param_1];
        }""")
    out = strip_trailing_params(ptx, "k", 2)
    assert "k_param_1" in out and "k_param_2" not in out and "k_param_3" not in out
    with pytest.raises(ValueError, match="parameter 1 .* is used"):
        strip_trailing_params(ptx, "k", 1)
    with pytest.raises(ValueError, match="no .entry"):
        strip_trailing_params(ptx, "nope", 1)


@pytest.mark.slow
def test_kernels_compile_to_hopper_ptx_without_a_gpu(tmp_path):
    """triton.compile for sm_90 runs on CPU: the GEMM, the fused SwiGLU MoE GEMM and the fp8-cache decode kernel
    compile with TensorRT's parameter list and fit sm_90's shared memory. (The interpreter cannot catch MMA or
    layout limits; this can.) A subprocess, because this process decorated the kernels for the interpreter."""
    code = textwrap.dedent(f"""
        import json, sys, torch
        sys.path.insert(0, {os.getcwd()!r})
        from plugins.aot import compile_spec
        from plugins.check import default_config
        from plugins.plugin_defs import PluginSettings, plugin_def
        from tests.test_plugins_trt import _inputs
        s = PluginSettings(cfg=default_config(), expert_start=96, n_local_experts=48, kv_dtype=torch.float8_e4m3fn)
        shapes = _inputs(s)
        out = {{}}
        for name in ("fp8_gemm", "moe_gemm1", "mla_decode"):
            d = plugin_def(s, name)
            spec = d.spec(shapes[name])
            k = compile_spec(spec)
            entry = k.ptx[k.ptx.index(".entry"):]
            entry = entry[: entry.index(")")]
            out[name] = dict(params=entry.count(".param"), expected=len(spec.signature), shared=k.shared_mem,
                             block=k.block_x)
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for name, r in got.items():
        assert r["params"] == r["expected"], (name, r)
        assert 0 < r["shared"] <= 227 * 1024 and r["block"] in (128, 256), (name, r)
