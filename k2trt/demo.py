"""``k2trt demo``: the pipeline on a tiny K2-architecture model, on this machine, stage by stage with timings.

Stages that exist today: synthesize a block-FP8 checkpoint in K2's exact layout, inspect it, convert it to
TensorRT-LLM rank shards, and generate from it with the reference model. Serving stages join as they land.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

console = Console()


@contextmanager
def _stage(name: str, timings: dict[str, float]):
    console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0
    console.print(f"[dim]{name}: {timings[name]:.2f} s[/]")


def run_demo(*, workdir: Path) -> dict[str, float]:
    """Run every stage; a failing stage raises K2Error. Returns the time of each stage in seconds."""
    from k2trt.checkpoint import inspect_checkpoint
    from k2trt.errors import K2Error
    from k2trt.model import Transformer, greedy_generate
    from k2trt.synth import synthesize
    from k2trt.tokenizer import K2Tokenizer

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    ckpt = workdir / "k2-tiny-synthetic"

    with _stage("synth", timings):
        synthesize(out=ckpt, preset="tiny", seed=0, shards=3, force=True)
        console.print(f"checkpoint: {ckpt}")

    with _stage("inspect", timings):
        report = inspect_checkpoint(ckpt)
        report.print()
        if report.problems:
            raise K2Error(report.problems)

    try:
        from k2trt.convert import convert
    except ImportError:  # the converter is not part of this build
        convert = None
    if convert is not None:
        with _stage("convert (tp 2, ep 2)", timings):
            convert(checkpoint=ckpt, out=workdir / "trtllm-tp2-ep2", tp=2, ep=2, force=True, progress=False)

    with _stage("generate (reference model, greedy)", timings):
        tok = K2Tokenizer.from_dir(ckpt)
        model = Transformer.from_checkpoint(ckpt)
        prompt = "Hello! How can I help you today?"
        ids = tok.encode(prompt)
        gen = greedy_generate(model, ids, 16, tuple(tok.stop_ids))
        console.print(f"prompt ids ({len(ids)}): {ids}")
        console.print(f"generated ids: {gen.new_ids}")
        console.print(f"text (random weights, so not meaningful): {tok.decode(gen.new_ids)!r}")

    console.rule("[bold]timings")
    for name, secs in timings.items():
        console.print(f"{name:<40} {secs:8.2f} s")
    return timings
