"""`k2trt kernels check` / `k2trt kernels bench` through typer's CliRunner."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import plugins.check as check  # noqa: E402
from k2trt.cli import app  # noqa: E402

runner = CliRunner()


def _text(res) -> str:
    return res.output + (getattr(res, "stderr", "") if getattr(res, "stderr_bytes", None) else "")


def test_check_prints_a_table_and_exits_1_on_a_failure(monkeypatch):
    real = check.cases

    def few(preset, device):
        rows = [c for c in real(preset, device) if c[0] in ("act_quant", "fp8_gemm")][:2]
        return rows + [("broken", "M=1", lambda: 0.5, 1e-2)]

    monkeypatch.setattr(check, "cases", few)
    res = runner.invoke(app, ["kernels", "check", "--preset", "small"])
    out = _text(res)
    assert res.exit_code == 1, out
    assert "kernel" in out and "tolerance" in out and "act_quant" in out
    assert "error: broken M=1: max error 0.5 > tolerance 0.01" in out

    monkeypatch.setattr(check, "cases", lambda preset, device: [c for c in few(preset, device) if c[0] != "broken"])
    res = runner.invoke(app, ["kernels", "check"])
    assert res.exit_code == 0, _text(res)
    assert "all 2 kernel checks passed" in res.output


def test_unknown_preset_is_an_error():
    res = runner.invoke(app, ["kernels", "check", "--preset", "huge"])
    assert res.exit_code == 1
    assert "error: --preset must be one of ['small', 'k2']" in _text(res)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message")
def test_bench_needs_a_gpu():
    res = runner.invoke(app, ["kernels", "bench"])
    assert res.exit_code == 1
    assert "error: kernels bench needs a CUDA GPU" in _text(res)


@pytest.mark.slow
def test_check_small_preset_passes_end_to_end():
    """The acceptance command on this machine: every kernel of the small preset within tolerance."""
    res = runner.invoke(app, ["kernels", "check", "--preset", "small"])
    assert res.exit_code == 0, _text(res)
    assert "all 14 kernel checks passed" in res.output
