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
    model_dir: Annotated[Path, typer.Argument(help="HF checkpoint directory, or a torch engine dir.")],
    prompt_ids: Annotated[Optional[str], typer.Option(help="Comma-separated prompt token ids.")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Prompt text (needs the checkpoint's tokenizer).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 16,
    dtype: Annotated[str, typer.Option(help="HF checkpoints: float32 or bfloat16.")] = "float32",
    attn_impl: Annotated[str, typer.Option(help="HF checkpoints: MLA path, naive or absorb.")] = "absorb",
    dump_logits: Annotated[
        Optional[Path], typer.Option(help="HF checkpoints: save the prompt's float32 logits [prompt_len, vocab] (.npy).")
    ] = None,
    temperature: Annotated[float, typer.Option(help="Engine dirs: 0 is greedy.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Engine dirs: 0 keeps every token.")] = 0,
    top_p: Annotated[float, typer.Option(help="Engine dirs: nucleus mass.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Engine dirs: sampling seed.")] = None,
) -> None:
    """Generate: with the reference model on a HF checkpoint (greedy), or with the k2trt runtime on a torch
    engine dir (any world size: one process per rank is started here)."""
    if (prompt_ids is None) == (prompt is None):
        raise K2Error("give exactly one of --prompt-ids and --prompt")
    ids = _parse_ids(prompt_ids) if prompt_ids is not None else None
    if (model_dir / "runtime.json").is_file():
        from k2trt.runtime.runner import generate_cli as engine_generate

        result = engine_generate(engine_dir=model_dir, prompt_ids=ids, prompt=prompt, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    else:
        from k2trt.model import generate_cli

        result = generate_cli(
            model_dir=model_dir, prompt_ids=ids, prompt=prompt, max_new_tokens=max_new_tokens, dtype=dtype,
            attn_impl=attn_impl, dump_logits=dump_logits,
        )
    typer.echo("ids: " + ",".join(str(i) for i in result.new_ids))
    if result.text is not None:
        typer.echo("text: " + result.text)


@command
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="HF checkpoint directory (config.json + shards + index).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for config.json + rank{N}.safetensors + manifest.")],
    tp: Annotated[int, typer.Option("--tp", help="Tensor parallelism: heads, dense and shared MLP, lm_head.")],
    ep: Annotated[
        Optional[int], typer.Option("--ep", help="Expert parallelism within tp (default: tp); moe_tp = tp / ep.")
    ] = None,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline stages (contiguous layer ranges).")] = 1,
    weights: Annotated[str, typer.Option(help="fp8_block (FP8 + weight_scale_inv) or bf16 (dequantized).")] = "fp8_block",
    workers: Annotated[int, typer.Option(help="Rank files written in parallel (processes).")] = 1,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted conversion in --out.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing conversion in --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Convert a HF block-FP8 checkpoint to a TensorRT-LLM checkpoint: streaming, sharded, resumable."""
    from k2trt.convert import convert as run_convert

    summary = run_convert(checkpoint=checkpoint, out=out, tp=tp, ep=ep, pp=pp, weights=weights, workers=workers,
                          resume=resume, force=force, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        summary.print()


@command
def plan(
    topology: Annotated[Optional[str], typer.Option("--topology", help="Named topology: h200x8, h200x16, h100x16, "
                                                    "h20x16, b200x8, gb200-nvl72, cpu-tiny.")] = None,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="DEVICExCOUNT, e.g. h200x16 or a100x32.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Preset (kimi-k2-instruct, deepseek-v3, tiny, slice), a "
                                                 "config.json or a checkpoint dir. Default: Kimi-K2-Instruct.")] = None,
    max_seq_len: Annotated[Optional[int], typer.Option(help="Longest sequence. Default: the model's "
                                                       "max_position_embeddings.")] = None,
    kv_dtype: Annotated[str, typer.Option(help="KV cache dtype: bf16 or fp8.")] = "bf16",
    objective: Annotated[str, typer.Option(help="throughput (tokens per GPU) or latency (tokens per user).")]
    = "throughput",
    weights: Annotated[str, typer.Option(help="fp8_block (as stored) or bf16 (dequantized).")] = "fp8_block",
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON (with a boolean 'fits').")] = False,
    write_config: Annotated[
        Optional[Path], typer.Option(help="Also write the plan as a build config YAML (build_configs/NAME.yaml).")
    ] = None,
    backend: Annotated[str, typer.Option(help="Backend recorded in --write-config: torch, trtllm or llmapi.")]
    = "llmapi",
) -> None:
    """Plan TP/EP/PP/attention-DP, per-GPU memory, limits and a roofline for a model on a GPU topology.

    Exits 2 when the model does not fit (the plan says why, with the numbers).
    """
    from k2trt.planner import plan_command

    out = plan_command(topology=topology, gpus=gpus, model=model, max_seq_len=max_seq_len, kv_dtype=kv_dtype,
                       objective=objective, weights=weights, as_json=as_json, write_config=write_config,
                       backend=backend)
    typer.echo(out.text)
    if out.written is not None:
        typer.echo(f"wrote {out.written}", err=True)
    if not out.fits:
        raise typer.Exit(2)


@command
def build(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="HF checkpoint (or, torch without --config, a "
                                             "converted one).")],
    out: Annotated[Path, typer.Option("--out", help="Engine dir to write.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="build_configs/X.yaml or a name (h200x16).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="torch, trtllm or llmapi (default: the config's).")] = None,
    converted: Annotated[
        Optional[Path], typer.Option(help="Where the conversion lives (reused when it matches; default: beside --out).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Converter worker processes.")] = 1,
    force: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Build an engine dir for a topology's plan: torch (k2trt runtime), trtllm (TensorRT-LLM engines) or llmapi."""
    from k2trt.build import build as run_build

    path = run_build(config=config, checkpoint=checkpoint, out=out, backend=backend, converted=converted,
                     workers=workers, force=force)
    typer.echo(f"wrote {path}")


@command
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its files.")] = Path("work_dirs/demo"),
) -> None:
    """Run every pipeline stage that exists so far on a tiny K2-architecture model, on this machine."""
    from k2trt.demo import run_demo

    run_demo(workdir=workdir)


from plugins.cli import kernels_app  # noqa: E402  (the `k2trt kernels` sub-app lives with the kernels)

app.add_typer(kernels_app, name="kernels")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
