"""``k2trt demo``: the whole pipeline on a tiny K2-architecture model, on this machine, stage by stage with timings.

1. the checkpoint: ``models/k2-tiny`` (the trained tiny model that really calls tools) when it is there, else a
   synthetic one (random weights: every stage runs, the answers are gibberish);
2. inspect it; 3. convert it to TensorRT-LLM rank shards (tp 2, ep 2); 4. build the torch engine dir;
5. write the Triton model repository; 6. start tritonserver on it;
7. a chat request and 8. a tools request (the Kimi-K2 model card's ``get_weather`` example: the tool call, the
   tool's result, the answer), both through tritonclient with gRPC streaming;
9. stop the server.

It takes 10 to 20 s on 2 CPU cores (about half of it tritonserver starting and stopping its five Python
models); CI runs it (``tests/test_demo.py``).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

console = Console()

TRAINED = Path(__file__).resolve().parents[1] / "models" / "k2-tiny"
"""The trained tiny model (scripts/train_tiny.py), in K2's exact HF layout."""

CHAT_MESSAGE = "Please give a brief self-introduction."


@dataclass
class DemoReport:
    """What the demo did: the time of each stage (seconds) and what came back."""

    checkpoint: Path
    trained: bool
    timings: dict[str, float] = field(default_factory=dict)
    chat: object | None = None
    """:class:`~k2trt.serving.client.ChatResult` of the chat request."""
    tool_turn: object | None = None
    """ChatResult of the tools request's first turn (the tool calls)."""
    answer: object | None = None
    """ChatResult of the turn after the tool results (None when the model called no tool)."""


@contextmanager
def _stage(name: str, timings: dict[str, float]):
    console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0
    console.print(f"[dim]{name}: {timings[name]:.2f} s[/]")


def _stream_turn(client, messages, **kwargs):
    """Send one chat turn with streaming; print the text as it arrives; return (ChatResult, TTFT s, total s)."""
    from k2trt.serving.client import collect

    t0 = time.perf_counter()
    first = None
    chunks = []
    for chunk in client.chat(messages, stream=True, **kwargs):
        chunks.append(chunk)
        delta = chunk["choices"][0].get("delta") or {}
        if first is None and delta:
            first = time.perf_counter() - t0
        if delta.get("content"):
            console.out(delta["content"], end="", highlight=False)
    total = time.perf_counter() - t0
    result = collect(chunks)
    if result.content:
        console.out("")
    for call in result.tool_calls:
        console.print(f"[cyan]tool call[/] {call['id']}: {call['function']['name']}({call['function']['arguments']})",
                      highlight=False)
    n = result.usage.get("completion_tokens", 0)
    console.print(f"[dim]{len(chunks)} streamed responses; finish_reason {result.finish_reason}; "
                  f"{result.usage.get('prompt_tokens')} prompt + {n} completion tokens; first delta "
                  f"{1000 * (first or total):.0f} ms; total {total:.2f} s ({n / total:.0f} tokens/s)[/]")
    return result


def run_demo(*, workdir: Path, checkpoint: Path | None = None) -> DemoReport:
    """Run every stage; a failing stage raises K2Error. ``checkpoint``: default ``models/k2-tiny`` if trained,
    else a synthetic one written under ``workdir``."""
    from k2trt.checkpoint import inspect_checkpoint
    from k2trt.convert import convert
    from k2trt.corpus import card_get_weather, seed_example
    from k2trt.errors import K2Error
    from k2trt.runtime.engine_dir import RuntimeConfig, build_torch_engine
    from k2trt.serving.client import ChatClient
    from k2trt.serving.server import start_local_server
    from k2trt.serving.settings import settings_for_engine, write_repo
    from k2trt.synth import synthesize

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    trained = checkpoint is None and (TRAINED / "config.json").is_file()
    ckpt = Path(checkpoint) if checkpoint else TRAINED if trained else workdir / "k2-tiny-synthetic"
    report = DemoReport(checkpoint=ckpt, trained=trained)
    timings = report.timings

    with _stage("checkpoint", timings):
        if trained:
            console.print(f"trained k2-tiny: {ckpt}")
        elif checkpoint is None:
            synthesize(out=ckpt, preset="tiny", seed=0, shards=3, force=True)
            console.print(f"no trained model at {TRAINED}; synthetic checkpoint (random weights: the answers are "
                          f"gibberish, every stage still runs): {ckpt}")
        else:
            console.print(f"checkpoint: {ckpt}")

    with _stage("inspect", timings):
        report_ = inspect_checkpoint(ckpt)
        report_.print()
        if report_.problems:
            raise K2Error(report_.problems)

    converted = workdir / "trtllm-tp2-ep2"
    with _stage("convert (tp 2, ep 2)", timings):
        # bf16: the tiny widths split over 2 ranks are not whole 128x128 FP8 blocks, which fp8_block refuses
        summary = convert(checkpoint=ckpt, out=converted, tp=2, ep=2, weights="bf16", force=True, progress=False)
        summary.print()

    engine = workdir / "engine-torch-tp2"
    with _stage("build (torch engine)", timings):
        cfg = json.loads((ckpt / "config.json").read_text())
        seq = min(1024, int(cfg["max_position_embeddings"]))
        build_torch_engine(converted=converted, out=engine, tokenizer_dir=ckpt, force=True,
                           runtime=RuntimeConfig(max_batch_size=16, max_seq_len=seq, max_num_tokens=512,
                                                 kv_cache_tokens=16 * seq))
        console.print(f"engine dir: {engine} (max_batch_size 16, max_seq_len {seq})")

    repo = workdir / "triton_repo"
    with _stage("repo", timings):
        settings = settings_for_engine(engine, served_model_name="k2-tiny" if trained else "k2-tiny-synthetic")
        write_repo(settings=settings, out=repo, force=True)
        console.print(f"model repository: {repo} (tensorrt_llm: the torch engine in the Python "
                      f"backend; preprocessing, postprocessing, k2_bls, ensemble)")

    with _stage("serve (tritonserver)", timings):
        server = start_local_server(repo, log_path=workdir / "tritonserver.log", exit_timeout_s=10)
        console.print(f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics "
                      f"{server.metrics_url}; log {server.log_path}")
    try:
        with ChatClient(server.grpc_url) as client:
            with _stage("chat request (gRPC streaming)", timings):
                messages = [{"role": "user", "content": CHAT_MESSAGE}]
                console.print(f"[bold]user:[/] {CHAT_MESSAGE}")
                report.chat = _stream_turn(client, messages, max_tokens=64, temperature=0)

            with _stage("tools request (gRPC streaming)", timings):
                tools, messages = seed_example()
                console.print(f"[bold]tools:[/] {[t['function']['name'] for t in tools]}; [bold]user:[/] "
                              f"{messages[-1]['content']}")
                report.tool_turn = turn = _stream_turn(client, messages, tools=tools, max_tokens=64, temperature=0)
                if turn.tool_calls:
                    messages.append(turn.message())
                    for call in turn.tool_calls:
                        try:
                            args = json.loads(call["function"]["arguments"])
                        except json.JSONDecodeError:
                            args = {}
                        result = card_get_weather(args.get("city", "")) if call["function"]["name"] == \
                            "get_weather" else {"error": "unknown tool"}
                        console.print(f"[cyan]tool result[/] {call['id']}: {json.dumps(result)}")
                        messages.append({"role": "tool", "tool_call_id": call["id"],
                                         "name": call["function"]["name"], "content": json.dumps(result)})
                    report.answer = _stream_turn(client, messages, tools=tools, max_tokens=64, temperature=0)
                else:
                    console.print("[dim]no tool call (a synthetic model has random weights)[/]")
    finally:
        with _stage("stop server", timings):
            server.stop()

    console.rule("[bold]timings")
    for name, secs in timings.items():
        console.print(f"{name:<40} {secs:8.2f} s")
    console.print(f"{'total':<40} {sum(timings.values()):8.2f} s")
    return report
