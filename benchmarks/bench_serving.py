"""Serving on CPU: the tiny model's throughput-latency curve through Triton, and what the Triton path costs per token.

One run, one machine, one engine dir (the ``cpu-tiny`` build: world size 1, float32, 16 sequences per batch):

1. **Curve**: ``k2trt bench --target ensemble`` (perf_analyzer, streaming gRPC) across concurrency levels.
2. **Triton-path overhead**: per-token latency (ITL) and TTFT at a few concurrency levels through the
   ``ensemble`` (preprocessing -> tensorrt_llm -> postprocessing, perf_analyzer) and through ``k2_bls`` (chat JSON,
   perf_analyzer), against the k2trt runtime called directly (``EngineService`` in this process, the same engine
   dir, the same torch thread count as the served engine model, the same closed loop and exact lengths). The three
   paths are interleaved round by round (rotating their order) and each figure is the median over rounds, so
   drift of the shared machine hits them alike.

    .venv/bin/python benchmarks/bench_serving.py --write docs/perf/serving.md

``--write`` replaces the part of the page between ``<!-- results:begin -->`` and ``<!-- results:end -->`` and
copies the plots next to it (``serving_curve.png``, ``serving_overhead.png``).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import signal
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "models" / "k2-tiny"
PATHS = ("ensemble", "bls", "direct")


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def prepare_engine(work: Path, checkpoint: Path | None) -> tuple[Path, str]:
    from k2trt.build import build
    from k2trt.synth import synthesize

    if checkpoint is None:
        if (TRAINED / "config.json").is_file():
            checkpoint, what = TRAINED, "k2-tiny (trained, models/k2-tiny)"
        else:
            checkpoint = synthesize(out=work / "ckpt", preset="tiny", seed=0, shards=2, force=True)
            what = "synthetic tiny checkpoint (k2trt synth --preset tiny, random weights)"
    else:
        what = str(checkpoint)
    engine = build(config="cpu-tiny", checkpoint=checkpoint, out=work / "engine", force=True, progress=False)
    return engine, what


CLK_TCK = None


def _ticks() -> int:
    import os

    global CLK_TCK
    if CLK_TCK is None:
        CLK_TCK = os.sysconf("SC_CLK_TCK")
    return CLK_TCK


def _stat_cpu(path: Path) -> float | None:
    """utime + stime (seconds) of a /proc/.../stat file."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _ticks()


def server_cpu(pgid: int) -> dict[str, float]:
    """CPU seconds so far of the server's processes (its process group), by role: ``tritonserver``, each Python
    model's stub (``tensorrt_llm``, ``preprocessing``, ``postprocessing``, ``k2_bls``), and ``engine process``: the
    processes a stub started (the engine stepping in its own process, and its other ranks)."""
    import os

    procs: dict[int, tuple[int, str, float]] = {}  # pid -> (parent pid, role from the command line, cpu)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getpgid(int(d.name)) != pgid:
                continue
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ProcessLookupError, ValueError, IndexError):
            continue
        role = "tritonserver"
        for part in cmd:
            if part.endswith(b"/1/model.py"):
                role = Path(part.decode()).parts[-3]
        cpu = _stat_cpu(d / "stat")
        if cpu is not None:
            procs[int(d.name)] = (ppid, role, cpu)
    stubs = {pid for pid, (_, role, _) in procs.items() if role != "tritonserver"}
    out: dict[str, float] = {}
    for pid, (ppid, role, cpu) in procs.items():
        while role == "tritonserver" and ppid in procs:  # started by a stub, or by a process a stub started
            if ppid in stubs:
                role = "engine process"
            ppid = procs[ppid][0]
        out[role] = out.get(role, 0.0) + cpu
    return out


def client_cpu(engine_thread: int | None = None) -> dict[str, float]:
    """CPU seconds so far of this process (the direct driver, or the bench runner) and of its waited children
    (perf_analyzer); with ``engine_thread`` (a native thread id) that thread's share separately."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"client": me.ru_utime + me.ru_stime, "perf_analyzer": kids.ru_utime + kids.ru_stime}
    if engine_thread is not None:
        t = _stat_cpu(Path(f"/proc/self/task/{engine_thread}/stat")) or 0.0
        out["engine (direct)"] = t
        out["client"] -= t
    return out


def _delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b)}


def overhead_round(*, server, svc, ids, tok_dir: Path, isl: int, osl: int, levels: list[int], requests: int,
                   warmup: int, rnd: int, work: Path, stop_ids) -> dict[tuple[str, int], dict]:
    """One round: every path at every level (path order rotated by round). Returns (path, c) -> figures."""
    from k2trt.bench import direct
    from k2trt.bench.metrics import drop_warmup, summarize
    from k2trt.bench.records import LevelRun
    from k2trt.bench.runner import BenchSpec, run_bench

    out = {}
    order = PATHS[rnd % 3:] + PATHS[: rnd % 3]
    pgid = server.proc.pid  # started in a session of its own: its stubs share its process group
    engine_thread = svc._thread.native_id
    for c in levels:
        for path in order:
            cpu0 = {**server_cpu(pgid), **client_cpu(engine_thread)}
            if path == "direct":
                recs = direct.run_level(svc, ids, osl=osl, concurrency=c, requests=requests, warmup=warmup,
                                        stop_ids=stop_ids)
                lv = summarize(LevelRun(c, drop_warmup(recs, warmup), warmup=warmup))
            else:
                spec = BenchSpec(url=server.grpc_url, target=path, isl=isl, osl=osl, concurrency=(c,),
                                 requests=requests, warmup=warmup, tokenizer=tok_dir, metrics_url=server.metrics_url,
                                 level_timeout_s=600)
                lv = run_bench(spec, out=work / f"round{rnd}" / f"{path}_c{c}", progress=False, plots=False).levels[0]
            cpu = _delta(cpu0, {**server_cpu(pgid), **client_cpu(engine_thread)})
            assert lv.errors == 0 and lv.output_tokens.min == lv.output_tokens.max == osl, (path, c, lv)
            tokens = (requests + warmup) * osl
            out[(path, c)] = {"itl_mean": lv.itl_ms.mean, "itl_p50": lv.itl_ms.p50, "ttft_p50": lv.ttft_ms.p50,
                              "latency_p50": lv.latency_ms.p50, "tok_s": lv.output_tokens_per_s,
                              # this process's own CPU counts for the direct run only (for the Triton paths it is
                              # the prompt building before the load starts, not serving)
                              "cpu_ms_per_token": {k: 1000 * v / tokens for k, v in cpu.items()
                                                   if v > 0 and (k != "client" or path == "direct")}}
            print(f"  round {rnd} c={c} {path:8s} ITL mean {lv.itl_ms.mean:6.2f} ms  p50 {lv.itl_ms.p50:6.2f} ms  "
                  f"TTFT p50 {lv.ttft_ms.p50:7.1f} ms  {lv.output_tokens_per_s:7.1f} tok/s", flush=True)
    return out


def median_of(rounds: list[dict], path: str, c: int, key: str) -> float:
    return statistics.median(r[(path, c)][key] for r in rounds)


def plot_overhead(rounds: list[dict], levels: list[int], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.25
    for ax, key, label in ((axes[0], "itl_mean", "ITL, mean over requests (ms)"),
                           (axes[1], "ttft_p50", "TTFT p50 (ms)")):
        for k, path in enumerate(PATHS):
            xs = [i + (k - 1) * width for i in range(len(levels))]
            ax.bar(xs, [median_of(rounds, path, c, key) for c in levels], width, label=path)
        ax.set_xticks(range(len(levels)), [f"c={c}" for c in levels])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle("Triton path vs the k2trt runtime called directly (median over rounds)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def markdown(*, what: str, curve, rounds: list[dict], levels: list[int], args, settings, wall: dict) -> str:
    from k2trt.bench.report import results_table

    lines = []
    lines.append(f"Machine: {platform.processor() or platform.machine()}, {_cpu_name()}, {_ncpu()} cores available "
                 f"(shared with other jobs), Python {platform.python_version()}, torch {metadata.version('torch')}, "
                 f"tritonserver 2.51 (nvidia-pytriton {metadata.version('nvidia-pytriton')}), perf_analyzer 2.51.0, "
                 f"{platform.system()} {platform.machine()}.")
    lines.append("")
    lines.append(f"Model: {what}; engine `cpu-tiny` (torch backend, world size 1, float32, max batch 16), "
                 f"served with `engine_threads` {settings.engine_threads}, the engine in "
                 f"{'its own process' if settings.engine_process else 'the Python stub process'}. "
                 f"ISL {args.isl}, OSL {args.osl} (exact: `min_tokens` = `max_tokens`), greedy.")
    lines.append("")
    lines.append(f"### Curve: ensemble, perf_analyzer over streaming gRPC ({wall['curve']:.0f} s)")
    lines.append("")
    lines.append(results_table(curve))
    lines.append("")
    lines.append("![throughput vs latency](serving_curve.png)")
    lines.append("")
    lines.append(f"### Triton path vs the runtime called directly ({args.rounds} rounds, {args.requests} measured "
                 f"requests per path and level per round, {wall['overhead']:.0f} s)")
    lines.append("")
    lines.append("| concurrency | path | ITL mean (ms) | vs direct | ITL p50 (ms) | vs direct | TTFT p50 (ms) | "
                 "latency p50 (ms) | output tok/s |")
    lines.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in levels:
        base_mean = median_of(rounds, "direct", c, "itl_mean")
        base_p50 = median_of(rounds, "direct", c, "itl_p50")
        for path in PATHS:
            m = median_of(rounds, path, c, "itl_mean")
            p = median_of(rounds, path, c, "itl_p50")
            vs_m = "-" if path == "direct" else f"{100 * (m / base_mean - 1):+.1f}%"
            vs_p = "-" if path == "direct" else f"{100 * (p / base_p50 - 1):+.1f}%"
            ttft, lat, tok_s = (median_of(rounds, path, c, k) for k in ("ttft_p50", "latency_p50", "tok_s"))
            lines.append(f"| {c} | {path} | {m:.2f} | {vs_m} | {p:.2f} | {vs_p} | {ttft:.1f} | {lat:.0f} | "
                         f"{tok_s:.1f} |")
    lines.append("")
    roles = ["engine process", "tensorrt_llm", "engine (direct)", "tritonserver", "preprocessing", "postprocessing",
             "k2_bls", "perf_analyzer", "client"]
    lines.append("CPU time per generated token (ms, median over rounds; warm-up requests included), by process: the "
                 "engine (its own process under the `tensorrt_llm` model, which moves requests and responses; or the "
                 "engine thread of the direct run), Triton's core, the "
                 "other Python models, and the load generator (perf_analyzer, or the direct run's driver threads: "
                 "`client`):")
    lines.append("")
    lines.append("| concurrency | path | " + " | ".join(roles) + " | total |")
    lines.append("| ---: | --- |" + " ---: |" * (len(roles) + 1))
    for c in levels:
        for path in PATHS:
            med = {k: statistics.median(r[(path, c)]["cpu_ms_per_token"].get(k, 0.0) for r in rounds) for k in roles}
            cells = " | ".join(f"{med[k]:.2f}" if med[k] >= 0.005 else "-" for k in roles)
            lines.append(f"| {c} | {path} | {cells} | {sum(med.values()):.2f} |")
    lines.append("")
    lines.append("Per round (ITL mean, ms; ensemble / bls / direct):")
    lines.append("")
    for c in levels:
        per = ", ".join(" / ".join(f"{r[(p, c)]['itl_mean']:.2f}" for p in PATHS) for r in rounds)
        lines.append(f"- c={c}: {per}")
    lines.append("")
    lines.append("![overhead](serving_overhead.png)")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _ncpu() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_page(page: Path, body: str, pngs: dict[str, Path]) -> None:
    text = page.read_text()
    a, b = "<!-- results:begin -->", "<!-- results:end -->"
    if a not in text or b not in text:
        raise SystemExit(f"{page}: no {a} ... {b} block to replace")
    head, rest = text.split(a, 1)
    _, tail = rest.split(b, 1)
    page.write_text(f"{head}{a}\n{body}\n{b}{tail}")
    for name, src in pngs.items():
        shutil.copyfile(src, page.parent / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="HF checkpoint (default: models/k2-tiny, else a "
                    "synthetic tiny one)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "work_dirs" / "bench_serving")
    ap.add_argument("--isl", type=int, default=128)
    ap.add_argument("--osl", type=int, default=64)
    ap.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8, 16], help="curve levels")
    ap.add_argument("--overhead-concurrency", type=_ints, default=[1, 4], help="overhead levels")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16, help="measured requests per path and level per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--write", type=Path, default=None, help="the Markdown page to update")
    ap.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                    help="serve with the engine in its own process (the default), or in the Python stub's")
    args = ap.parse_args()

    import torch

    from k2trt.bench.inputs import raw_prompts
    from k2trt.bench.runner import BenchSpec, run_bench
    from k2trt.runtime.service import open_service
    from k2trt.serving.server import start_local_server
    from k2trt.serving.settings import settings_for_engine, write_repo
    from k2trt.tokenizer import K2Tokenizer

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally blocks: stop the server
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    engine, what = prepare_engine(work, args.checkpoint)
    settings = settings_for_engine(engine, served_model_name="k2-tiny", engine_process=args.engine_process)
    repo = write_repo(settings=settings, out=work / "repo", force=True)
    server = start_local_server(repo, log_path=work / "tritonserver.log")
    wall = {}
    try:
        print(f"tritonserver ready at {server.grpc_url}; curve {args.concurrency}", flush=True)
        t0 = time.monotonic()
        curve = run_bench(BenchSpec(url=server.grpc_url, target="ensemble", isl=args.isl, osl=args.osl,
                                    concurrency=tuple(args.concurrency), warmup=args.warmup,
                                    tokenizer=settings.tokenizer_dir, metrics_url=server.metrics_url,
                                    level_timeout_s=900), out=work / "curve")
        wall["curve"] = time.monotonic() - t0

        # the runtime called directly: the same engine dir and torch threads as the served engine model
        torch.set_num_threads(settings.engine_threads)
        tok = K2Tokenizer.from_dir(settings.tokenizer_dir)
        ids = [tok.encode(p.text) for p in raw_prompts(tok.encode, args.isl, 64)]
        svc = open_service(engine)
        # the served engine is warm from the curve; warm this one alike (torch's first steps allocate and are slow)
        from k2trt.bench import direct

        for c in args.overhead_concurrency:
            direct.run_level(svc, ids, osl=args.osl, concurrency=c, requests=4 * c, stop_ids=tok.stop_ids)
        rounds = []
        t0 = time.monotonic()
        try:
            for rnd in range(args.rounds):
                rounds.append(overhead_round(server=server, svc=svc, ids=ids, tok_dir=settings.tokenizer_dir,
                                             isl=args.isl, osl=args.osl, levels=args.overhead_concurrency,
                                             requests=args.requests, warmup=args.warmup, rnd=rnd,
                                             work=work / "overhead", stop_ids=tok.stop_ids))
        finally:
            svc.close()
        wall["overhead"] = time.monotonic() - t0
    finally:
        server.stop()

    png = work / "serving_overhead.png"
    plot_overhead(rounds, args.overhead_concurrency, png)
    body = markdown(what=what, curve=curve, rounds=rounds, levels=args.overhead_concurrency, args=args,
                    settings=settings, wall=wall)
    print(body)
    if args.write:
        write_page(args.write, body, {"serving_curve.png": work / "curve" / "throughput_latency.png",
                                      "serving_overhead.png": png})
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
