"""``k2trt kernels ...``: check the plugin kernels against their references, and benchmark them on a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from k2trt.cli_errors import user_errors
from k2trt.errors import K2Error

kernels_app = typer.Typer(
    name="kernels",
    help="The MLA and grouped block-FP8 MoE Triton kernels: parity checks and GPU benchmarks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _command(fn):
    return kernels_app.command()(user_errors(fn))


@_command
def check(
    preset: Annotated[str, typer.Option(help="small (awkward small shapes) or k2 (K2's real dimensions).")] = "small",
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu (default: cuda when available).")] = None,
) -> None:
    """Run every kernel against its PyTorch reference on random data; exit 1 if any exceeds its tolerance.

    On CPU the kernels run under Triton's interpreter: set TRITON_INTERPRET=1.
    """
    import torch

    from plugins.check import PRESETS

    if preset not in PRESETS:
        raise K2Error(f"--preset must be one of {list(PRESETS)}, got {preset!r}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "cuda" and not torch.cuda.is_available():
        raise K2Error("--device cuda: no CUDA device here")
    from plugins._runtime import kernel_mode

    kernel_mode(torch.empty(0, device=dev))  # the clear error when neither CUDA nor the interpreter is available
    from plugins.check import format_table, run_checks

    rows = run_checks(preset=preset, device=dev)
    typer.echo(format_table(rows))
    bad = [r for r in rows if not r.ok]
    if bad:
        for r in bad:
            typer.echo(f"error: {r.kernel} {r.shape}: max error {r.error:.3g} > tolerance {r.tolerance:.3g}", err=True)
        raise typer.Exit(1)
    typer.echo(f"all {len(rows)} kernel checks passed ({preset}, {dev})")


@_command
def bench(
    out: Annotated[Optional[Path], typer.Option(help="Directory for kernels_bench.json and kernels_bench.md.")] = None,
    quick: Annotated[bool, typer.Option(help="Smaller shapes (a smoke run).")] = False,
) -> None:
    """Time the kernels on a GPU against the torch references and the measured hardware ceilings."""
    from plugins.bench import format_report, run_bench, write_report

    rep = run_bench(quick=quick)
    typer.echo(format_report(rep))
    if out is not None:
        write_report(rep, out)
        typer.echo(f"wrote {out / 'kernels_bench.md'}")
