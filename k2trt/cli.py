"""The ``k2trt`` command line: parses options and calls one keyword-only library function per command.

A :class:`~k2trt.errors.K2Error` becomes one line per problem on stderr and its exit code; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from k2trt.cli_errors import user_errors
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
    return app.command()(user_errors(fn))


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


# ---- k2trt bench (issue 11): `k2trt bench --url ...` runs a benchmark, `k2trt bench compare A B` compares two.
bench_app = typer.Typer(help="Serving benchmarks: TTFT, ITL, latency and throughput across concurrency levels.",
                        pretty_exceptions_enable=False)


@bench_app.callback(invoke_without_command=True)
@user_errors
def bench(
    ctx: typer.Context,
    url: Annotated[Optional[str], typer.Option(help="HOST:PORT: Triton's gRPC port (ensemble, bls) or the "
                                               "OpenAI-compatible server (openai).")] = None,
    target: Annotated[str, typer.Option(help="ensemble, bls or openai.")] = "ensemble",
    isl: Annotated[Optional[int], typer.Option(help="Input tokens per request (exact, with the deployment's "
                                               "tokenizer; chat targets count the whole templated prompt).")] = None,
    osl: Annotated[Optional[int], typer.Option(help="Output tokens per request (forced exactly).")] = None,
    concurrency: Annotated[str, typer.Option(help="Concurrency levels, comma-separated.")] = "1,2,4,8,16",
    requests: Annotated[Optional[int], typer.Option(help="Measured requests per level (default max(16, 4 x "
                                                    "concurrency)).")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Seconds per level instead of --requests.")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up requests per level, sent first and excluded.")] = 2,
    out: Annotated[Optional[Path], typer.Option(help="Report directory (default bench_results/TARGET_islN_oslM).")]
    = None,
    model: Annotated[Optional[str], typer.Option(help="Model name (default: ensemble, k2_bls, or the OpenAI "
                                                 "server's model).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="The deployment's tokenizer dir (default: found from "
                                                      "the served models' tokenizer_dir).")] = None,
    metrics_url: Annotated[Optional[str], typer.Option(help="Triton's Prometheus endpoint (default "
                                                       "http://HOST:8002/metrics).")] = None,
    perf_analyzer: Annotated[Optional[Path], typer.Option(help="perf_analyzer binary (default: the "
                                                          "tritonclient wheel's, else PATH's).")] = None,
    prompts: Annotated[int, typer.Option(help="Distinct prompts, cycled through.")] = 64,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the prompt text.")] = 0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")] = True,
    timeout: Annotated[Optional[float], typer.Option(help="Fail a level that runs longer than this (seconds).")]
    = None,
) -> None:
    """Benchmark a running deployment: perf_analyzer (streaming gRPC) per concurrency level for Triton targets,
    an async client for openai; writes results.json, results.csv, report.md and plots."""
    if ctx.invoked_subcommand is not None:
        return
    from k2trt.bench.cli import bench_command

    typer.echo(bench_command(url=url, target=target, isl=isl, osl=osl, concurrency=concurrency, requests=requests,
                             duration=duration, warmup=warmup, out=out, model=model, tokenizer=tokenizer,
                             metrics_url=metrics_url, perf_analyzer=perf_analyzer, prompts=prompts,
                             temperature=temperature, seed=seed, plots=plots, timeout=timeout))


@bench_app.command("compare")
@user_errors
def bench_compare(
    a: Annotated[Path, typer.Argument(help="Run A: a bench --out directory or its results.json.")],
    b: Annotated[Path, typer.Argument(help="Run B.")],
    out: Annotated[Optional[Path], typer.Option(help="Also write compare.md and compare.png here.")] = None,
) -> None:
    """Put two bench runs side by side, level by level (B's change against A)."""
    from k2trt.bench.cli import compare_command

    typer.echo(compare_command(a=a, b=b, out=out))


app.add_typer(bench_app, name="bench")
# ---- end k2trt bench


# ---- k2trt api (issue 10): the OpenAI/Anthropic-compatible gateway over a running tritonserver.
@command
def api(
    triton_url: Annotated[str, typer.Option(help="Triton's gRPC address, HOST:PORT.")] = "127.0.0.1:8001",
    port: Annotated[int, typer.Option(help="HTTP port of the API.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback needs --api-key.")] = "127.0.0.1",
    api_key: Annotated[
        Optional[str], typer.Option(help="Required key: 'Authorization: Bearer KEY' or 'x-api-key: KEY'.",
                                    envvar="K2TRT_API_KEY")
    ] = None,
    model_name: Annotated[
        Optional[str], typer.Option(help="The model name clients send (others get 404); default: k2_bls's "
                                    "served_model_name, asked from Triton.")
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413 beyond).")] = 8 * 2**20,
    max_concurrency: Annotated[int, typer.Option(help="Requests served at once (429 beyond).")] = 64,
) -> None:
    """Serve /v1/chat/completions (OpenAI), /v1/messages (Anthropic), /v1/models, /health and /metrics over k2_bls."""
    from k2trt.api.server import run_api

    run_api(triton_url=triton_url, port=port, host=host, api_key=api_key, model_name=model_name,
            max_body_bytes=max_body_bytes, max_concurrency=max_concurrency)
# ---- end k2trt api


# ---- k2trt repo / serve / chat (issue 8): the Triton model repository, tritonserver, a tritonclient chat.
@command
def repo(
    engine: Annotated[Path, typer.Option("--engine", help="Engine dir from `k2trt build`: torch or trtllm.")],
    out: Annotated[Path, typer.Option("--out", help="The model repository to write.")],
    tokenizer_dir: Annotated[
        Optional[Path], typer.Option(help="tiktoken.model + tokenizer_config.json (default: the engine dir).")
    ] = None,
    served_model_name: Annotated[
        Optional[str], typer.Option(help="The model name k2_bls answers with (default: the engine dir's name).")
    ] = None,
    default_max_tokens: Annotated[int, typer.Option(help="k2_bls: max_tokens of a request without one.")] = 512,
    exclude_input_in_output: Annotated[
        bool, typer.Option(help="Engine model default: return only the generated ids.")
    ] = True,
    kv_cache_free_gpu_mem_fraction: Annotated[
        float, typer.Option(help="trtllm: GPU memory share (after the weights) for the KV cache.")
    ] = 0.9,
    engine_threads: Annotated[int, typer.Option(help="torch: torch threads of rank 0.")] = 1,
    engine_process: Annotated[
        bool, typer.Option(help="torch: step the engine in its own process (else in the Python stub's).")
    ] = True,
    force: Annotated[bool, typer.Option(help="Replace an existing repository at --out.")] = False,
) -> None:
    """Write the Triton model repository (tensorrt_llm, preprocessing, postprocessing, k2_bls, ensemble) for an
    engine dir, filled from triton_repo/ and checked against Triton's model config schema."""
    from k2trt.serving.settings import make_repo

    path, s = make_repo(engine=engine, out=out, tokenizer_dir=tokenizer_dir, served_model_name=served_model_name,
                        default_max_tokens=default_max_tokens, exclude_input_in_output=exclude_input_in_output,
                        kv_cache_free_gpu_mem_fraction=kv_cache_free_gpu_mem_fraction, engine_threads=engine_threads,
                        engine_process=engine_process, force=force)
    typer.echo(f"wrote {path} ({s.backend} engine, world size {s.world_size}, max_batch_size {s.max_batch_size}, "
               f"max_seq_len {s.max_seq_len}); serve it with `k2trt serve --repo {path}`")


@command
def serve(
    repo_dir: Annotated[Path, typer.Option("--repo", help="A repository written by `k2trt repo`.")],
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    world_size: Annotated[
        Optional[int], typer.Option(help="Ranks (checked against the engine; trtllm > 1 runs under mpirun).")
    ] = None,
    address: Annotated[str, typer.Option(help="Address the endpoints listen on.")] = "0.0.0.0",
    log_file: Annotated[Optional[Path], typer.Option(help="tritonserver's log (default: a temporary file).")] = None,
    verbose: Annotated[bool, typer.Option(help="Also print tritonserver's log here.")] = False,
    tritonserver: Annotated[
        Optional[Path], typer.Option(help="The tritonserver binary (default: PATH, /opt/tritonserver, the "
                                     "nvidia-pytriton wheel).")
    ] = None,
    api_port: Annotated[
        Optional[int], typer.Option(help="Also serve the OpenAI/Anthropic API (k2trt api) on this port.")
    ] = None,
    api_host: Annotated[str, typer.Option(help="Address the API listens on.")] = "127.0.0.1",
    api_key: Annotated[Optional[str], typer.Option(help="Key the API requires (Bearer or x-api-key).")] = None,
) -> None:
    """Start tritonserver on a repository, wait until every model is ready, print the endpoints, and run until
    Ctrl-C or SIGTERM (then stop it cleanly). A model that fails to load stops it with the server's own error.
    With --api-port, the OpenAI/Anthropic gateway runs beside it (its /health is 503 until Triton is ready)."""
    from k2trt.serving.server import ServeOptions, serve as run_serve

    api = None
    if api_port is not None:
        from k2trt.api.server import start_api

        api = start_api(triton_url=f"127.0.0.1:{grpc_port}", port=api_port, host=api_host, api_key=api_key)
        typer.echo(f"  API      {api.url}/v1 (OpenAI and Anthropic)")
    try:
        code = run_serve(ServeOptions(repo=repo_dir, http_port=http_port, grpc_port=grpc_port,
                                      metrics_port=metrics_port, address=address, world_size=world_size,
                                      tritonserver=tritonserver), log_path=log_file, verbose=verbose,
                         print_fn=typer.echo)
    finally:
        if api is not None:
            api.stop()
    if code:
        raise typer.Exit(code)


@command
def chat(
    message: Annotated[Optional[str], typer.Argument(help="One message; without it, chat interactively.")] = None,
    url: Annotated[str, typer.Option(help="Triton's gRPC address, HOST:PORT.")] = "localhost:8001",
    tools: Annotated[Optional[Path], typer.Option(help="JSON file of OpenAI function tools.")] = None,
    system: Annotated[Optional[str], typer.Option(help="A system message.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Tokens to generate at most.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0 is greedy (default: K2's 0.6).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    stream: Annotated[bool, typer.Option(help="Stream the answer as it is generated.")] = True,
    model: Annotated[str, typer.Option(help="The chat model in Triton.")] = "k2_bls",
) -> None:
    """Chat with k2_bls over gRPC streaming (tritonclient): prints the text as it streams and the tool calls."""
    from k2trt.serving.client import chat_cli

    chat_cli(url=url, message=message, tools_file=tools, system=system, max_tokens=max_tokens,
             temperature=temperature, seed=seed, stream=stream, model=model)
# ---- end k2trt repo / serve / chat


@command
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its files.")] = Path("work_dirs/demo"),
) -> None:
    """The whole pipeline on a tiny K2-architecture model, on this machine: convert, build, repository,
    tritonserver, a chat and a tools request through tritonclient."""
    from k2trt.demo import run_demo

    run_demo(workdir=workdir)


from plugins.cli import kernels_app  # noqa: E402  (the `k2trt kernels` sub-app lives with the kernels)

app.add_typer(kernels_app, name="kernels")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
