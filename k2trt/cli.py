"""The ``k2trt`` command line: parses options and calls one keyword-only library function per command.

A :class:`~k2trt.errors.K2Error` becomes one line per problem on stderr and its exit code; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from k2trt.errors import K2Error

app = typer.Typer(
    name="k2trt",
    help="Kimi-K2 from its Hugging Face block-FP8 checkpoint to TensorRT-LLM + Triton Inference Server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def command(fn):
    """Register a command whose K2Error becomes ``error: ...`` lines on stderr and its exit code."""

    @functools.wraps(fn)  # typer reads the signature through __wrapped__
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except K2Error as err:
            for line in err.problems:
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(err.exit_code) from None

    return app.command()(run)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise K2Error(f"--prompt-ids must be comma-separated integers, got {text!r}") from None


@command
def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="HF checkpoint directory (config.json + shards + index).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verify_data: Annotated[
        bool, typer.Option("--verify-data/--no-verify-data", help="Scan every FP8 scale for NaN/Inf/<=0.")
    ] = True,
) -> None:
    """Summarise a HF checkpoint (layers, experts, tensors and bytes by dtype) and validate it."""
    from k2trt.checkpoint import inspect_checkpoint

    report = inspect_checkpoint(checkpoint, verify_data=verify_data)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        report.print()
    if report.problems:
        for p in report.problems:
            typer.echo(f"problem: {p}", err=True)
        raise typer.Exit(1)


@command
def synth(
    out: Annotated[Path, typer.Option("--out", help="Directory to write (must not exist unless --force).")],
    preset: Annotated[str, typer.Option(help="tiny (a few MB, for tests) or slice (K2's real layer dims).")] = "tiny",
    config: Annotated[
        Optional[Path], typer.Option("--config", help="JSON object of config.json fields to override.")
    ] = None,
    seed: Annotated[int, typer.Option(help="RNG seed; the same seed gives byte-identical files.")] = 0,
    shards: Annotated[int, typer.Option(help="Number of safetensors shards.")] = 2,
    force: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Write a synthetic checkpoint in K2's exact HF layout (block-FP8, index, tokenizer files)."""
    from k2trt.synth import synthesize

    overrides = _read_overrides(config) if config else {}
    path = synthesize(out=out, preset=preset, overrides=overrides, seed=seed, shards=shards, force=force)
    typer.echo(f"wrote {path}")


def _read_overrides(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise K2Error(f"--config {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise K2Error(f"--config {path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise K2Error(f"--config {path}: expected a JSON object of config fields")
    return data


@command
def generate(
    model_dir: Annotated[Path, typer.Argument(help="HF checkpoint directory.")],
    prompt_ids: Annotated[Optional[str], typer.Option(help="Comma-separated prompt token ids.")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Prompt text (needs the checkpoint's tokenizer).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate (greedy).")] = 16,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    attn_impl: Annotated[str, typer.Option(help="MLA path: naive or absorb.")] = "absorb",
    dump_logits: Annotated[
        Optional[Path], typer.Option(help="Save the prompt's float32 logits [prompt_len, vocab] as .npy.")
    ] = None,
) -> None:
    """Greedy generation with the reference model on a HF checkpoint."""
    from k2trt.model import generate_cli

    if (prompt_ids is None) == (prompt is None):
        raise K2Error("give exactly one of --prompt-ids and --prompt")
    ids = _parse_ids(prompt_ids) if prompt_ids is not None else None
    result = generate_cli(
        model_dir=model_dir, prompt_ids=ids, prompt=prompt, max_new_tokens=max_new_tokens, dtype=dtype,
        attn_impl=attn_impl, dump_logits=dump_logits,
    )
    typer.echo("ids: " + ",".join(str(i) for i in result.new_ids))
    if result.text is not None:
        typer.echo("text: " + result.text)


@command
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its files.")] = Path("work_dirs/demo"),
) -> None:
    """Run every pipeline stage that exists so far on a tiny K2-architecture model, on this machine."""
    from k2trt.demo import run_demo

    run_demo(workdir=workdir)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
