"""``k2trt bench``: check the server, build exact-length inputs, run every concurrency level, write the report.

Triton targets run perf_analyzer once per level (streaming gRPC, ``--profile-export-file``) while a thread
scrapes Triton's ``/metrics``; the ``openai`` target runs :mod:`k2trt.bench.openai_driver`. Raw artifacts
(input data, each level's profile export and perf_analyzer log) stay under ``OUT/raw/``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from k2trt.bench import inputs as inp
from k2trt.bench import perf_analyzer as pa
from k2trt.bench import profile, server_metrics, targets
from k2trt.bench.metrics import drop_warmup, summarize
from k2trt.bench.records import LevelRun, RequestRecord
from k2trt.bench.report import BenchResult, write
from k2trt.errors import K2Error

TOKENIZER_PARAMS = ("tokenizer_dir", "tokenizer_path", "engine_dir")
"""Model-config parameters that may name the deployment's tokenizer directory (tensorrtllm_backend's
preprocessing uses ``tokenizer_dir``)."""


@dataclass(frozen=True)
class BenchSpec:
    """One ``k2trt bench`` run."""

    url: str
    target: str
    isl: int
    osl: int
    concurrency: tuple[int, ...]
    requests: int | None = None
    """Measured requests per level (default: max(16, 4 x concurrency) when no duration is given)."""
    duration_s: float | None = None
    warmup: int = 2
    model: str | None = None
    tokenizer: Path | None = None
    metrics_url: str | None = None
    perf_analyzer: Path | None = None
    num_prompts: int = 64
    seed: int = 0
    temperature: float = 0.0
    extra_body: dict = field(default_factory=lambda: {"min_tokens": None})
    """openai: fields added to each request; ``None`` values are filled with the OSL."""
    level_timeout_s: float | None = None
    """Stop a level (with an error) that runs longer than this."""

    def validate(self) -> None:
        problems = []
        if self.target not in targets.TARGETS:
            problems.append(f"--target must be one of {', '.join(targets.TARGETS)}, got {self.target!r}")
        if self.isl < 1 or self.osl < 1:
            problems.append(f"--isl and --osl must be >= 1, got {self.isl} and {self.osl}")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            problems.append(f"--concurrency must be positive integers, got {list(self.concurrency)}")
        if len(set(self.concurrency)) != len(self.concurrency):
            problems.append(f"--concurrency repeats a level: {list(self.concurrency)}")
        if self.requests is not None and self.duration_s is not None:
            problems.append("give --requests or --duration, not both")
        if self.requests is not None and self.requests < 1:
            problems.append(f"--requests must be >= 1, got {self.requests}")
        if self.duration_s is not None and self.duration_s <= 0:
            problems.append(f"--duration must be > 0, got {self.duration_s}")
        if self.warmup < 0:
            problems.append(f"--warmup must be >= 0, got {self.warmup}")
        if self.requests is not None and self.concurrency and self.warmup + self.requests < max(self.concurrency):
            problems.append(f"--requests {self.requests} + --warmup {self.warmup} is less than concurrency "
                            f"{max(self.concurrency)}: that level would never have that many requests in flight")
        if self.num_prompts < 1:
            problems.append(f"--prompts must be >= 1, got {self.num_prompts}")
        if problems:
            raise K2Error(problems)

    def requests_at(self, concurrency: int) -> int | None:
        if self.duration_s is not None:
            return None
        return self.requests if self.requests is not None else max(16, 4 * concurrency)


def parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise K2Error(f"--concurrency must be comma-separated integers, got {text!r}") from None


def grpc_url(url: str) -> str:
    """``host:port`` for tritonclient and perf_analyzer (a scheme, if given, is dropped)."""
    u = url.split("://", 1)[-1].rstrip("/")
    if ":" not in u.rsplit("]", 1)[-1]:
        raise K2Error(f"--url {url!r}: give HOST:PORT (Triton's gRPC port, 8001 by default)")
    return u


def http_url(url: str) -> str:
    u = url.rstrip("/")
    return u if "://" in u else "http://" + u


# ----------------------------------------------------------------------------------------------- servers


def triton_model(url: str, model: str) -> targets.TritonModel:
    """The served model's config; K2Error if the server is down or the model is not ready (listing those that
    are)."""
    try:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
    except ImportError:
        raise K2Error("tritonclient is not installed: pip install tritonclient[all]==2.51.0") from None
    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            live = client.is_server_live()
        except InferenceServerException as e:
            raise K2Error(f"cannot reach Triton at {url} (gRPC): {e.message()}; is the server running "
                          f"(`k2trt serve`), and is {url} its gRPC port?") from None
        if not live:
            raise K2Error(f"Triton at {url} is not live")
        if not client.is_model_ready(model):
            index = client.get_model_repository_index(as_json=True).get("models", [])
            ready = sorted(m["name"] for m in index if m.get("state") == "READY")
            raise K2Error(f"model '{model}' is not ready on Triton at {url}; ready models: "
                          f"{', '.join(ready) or 'none'}")
        return targets.TritonModel.from_config(client.get_model_config(model, as_json=True))
    finally:
        client.close()


def find_tokenizer_dir(url: str, first: str) -> Path | None:
    """A local tokenizer directory named by the served models' parameters (``tokenizer_dir``, ...)."""
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        return None
    client = grpcclient.InferenceServerClient(url)
    try:
        index = client.get_model_repository_index(as_json=True).get("models", [])
        names = [first] + sorted({m["name"] for m in index if m.get("state") == "READY"} - {first})
        for name in names:
            try:
                cfg = targets.TritonModel.from_config(client.get_model_config(name, as_json=True))
            except Exception:  # noqa: BLE001  (a model we cannot read tells us nothing)
                continue
            for key in TOKENIZER_PARAMS:
                d = cfg.parameters.get(key)
                if d and (Path(d) / "tiktoken.model").is_file():
                    return Path(d)
    finally:
        client.close()
    return None


def openai_model(base_url: str, model: str | None) -> str:
    """The model to request: ``model`` if the server lists it, else its only/first model; K2Error when the
    server is down or does not serve ``model``."""
    import httpx

    try:
        resp = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=10)
    except httpx.HTTPError as e:
        raise K2Error(f"cannot reach the OpenAI-compatible server at {base_url}: {e}; is it running "
                      f"(`k2trt serve --api`)?") from None
    if resp.status_code != 200:
        raise K2Error(f"{base_url}/v1/models answered HTTP {resp.status_code}: {resp.text[:200]}")
    ids = [m.get("id") for m in resp.json().get("data", [])]
    if model is None:
        if not ids:
            raise K2Error(f"{base_url} serves no models")
        return ids[0]
    if model not in ids:
        raise K2Error(f"model '{model}' is not served at {base_url}; served: {', '.join(map(str, ids)) or 'none'}")
    return model


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class _Prepared:
    model: str
    token_count: str
    prompts: list[inp.Prompt]
    input_data: Path | None = None
    counting: profile.Counting | None = None
    tokenizer_dir: Path | None = None
    extra_body: dict = field(default_factory=dict)


def _tokenizer(spec: BenchSpec, found: Path | None):
    from k2trt.tokenizer import K2Tokenizer

    d = spec.tokenizer or found
    if d is None:
        raise K2Error("pass --tokenizer DIR (the deployment's tiktoken.model + tokenizer_config.json): prompts are "
                      "built to exact lengths with the deployment's own tokenizer")
    return K2Tokenizer.from_dir(d), Path(d)


def _chat_template(tok_dir: Path) -> str | None:
    from k2trt.chat import ChatError, load_chat_template

    try:
        return load_chat_template(tok_dir)
    except ChatError:
        return None  # k2trt's default K2 template


def prepare(spec: BenchSpec, out: Path) -> _Prepared:
    """Check the server and build the inputs (no load is sent)."""
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    n = spec.num_prompts
    if spec.target == "openai":
        model = openai_model(http_url(spec.url), spec.model)
        tok, tok_dir = _tokenizer(spec, None)
        _, render_ids = inp.tokenizer_encoders(tok, _chat_template(tok_dir))
        prompts = inp.chat_prompts(render_ids, spec.isl, n, seed=spec.seed)
        extra = {k: (spec.osl if v is None else v) for k, v in spec.extra_body.items()}
        return _Prepared(model, "usage.completion_tokens of each stream (the server's count of generated ids)",
                         prompts, tokenizer_dir=tok_dir, extra_body=extra)
    url = grpc_url(spec.url)
    name = spec.model or targets.DEFAULT_MODEL[spec.target]
    model = triton_model(url, name)
    tok, tok_dir = _tokenizer(spec, None if spec.tokenizer else find_tokenizer_dir(url, name))
    encode, render_ids = inp.tokenizer_encoders(tok, _chat_template(tok_dir))
    if spec.target == "ensemble":
        plan = targets.plan_ensemble(model, osl=spec.osl, temperature=spec.temperature)
        prompts = inp.raw_prompts(encode, spec.isl, n, seed=spec.seed)
        data = targets.ensemble_input_data(model, plan, prompts)
        count = profile.ids_counter(plan.ids_output) if plan.ids_output else profile.response_counter()
        counting = profile.PerResponse(count, profile.null_response(tok.vocab_size))
        token_count = plan.token_count
    else:
        prompts = inp.chat_prompts(render_ids, spec.isl, n, seed=spec.seed)
        data = targets.bls_input_data(model, prompts, osl=spec.osl, temperature=spec.temperature)
        _, output = targets.bls_io(model)
        counting = profile.ChatChunks(output)
        token_count = (f"usage.completion_tokens of each '{output}' stream (the model's count of generated ids), "
                       f"spread over the chunks that carry content")
    path = raw / "input_data.json"
    path.write_text(json.dumps(data, ensure_ascii=False))
    return _Prepared(name, token_count, prompts, path, counting, tok_dir)


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console, disable=not enabled,
                    transient=False)


def _run_perf_analyzer(cmd: pa.LevelCommand, binary: Path, log: Path, scraper, progress: Progress,
                       task, total: float | None, timeout_s: float | None = None) -> str:
    """Run one level; returns perf_analyzer's output. Progress: completed requests from /metrics (or time).

    perf_analyzer waits forever for responses from a server that died mid-run, so the server's liveness is
    polled (gRPC ``is_server_live``) and perf_analyzer is stopped with an error when it stops answering, or
    when the level outlasts ``timeout_s``.
    """
    t0 = time.monotonic()
    base = server_metrics.completed(scraper.latest(), cmd.model) if scraper else math.nan
    alive, close_liveness = _liveness(cmd.url)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd.argv(str(binary)), stdout=f, stderr=subprocess.STDOUT, env=pa.environment())
        try:
            next_check, misses = t0 + 2.0, 0
            while proc.poll() is None:
                time.sleep(0.25)
                now = time.monotonic()
                if cmd.duration_s is not None:
                    progress.update(task, completed=min(now - t0, total or 0))
                elif scraper is not None:
                    done = server_metrics.completed(scraper.latest(), cmd.model) - base
                    if not math.isnan(done):
                        progress.update(task, completed=min(done, total or done))
                if timeout_s is not None and now - t0 > timeout_s:
                    raise K2Error(f"concurrency {cmd.concurrency} did not finish within {timeout_s:.0f} s "
                                  f"(perf_analyzer stopped; log: {log})")
                if now >= next_check:
                    next_check = now + 2.0
                    misses = 0 if alive() else misses + 1
                    if misses >= 3:
                        raise K2Error(f"the server at {cmd.url} stopped answering during concurrency "
                                      f"{cmd.concurrency} (perf_analyzer stopped; its log: {log}); the server's own "
                                      f"log says why")
        finally:
            close_liveness()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    output = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise K2Error(pa.explain_failure(proc.returncode, output, model=cmd.model, url=cmd.url)
                      + f" (log: {log})")
    return output


def _liveness(url: str):
    """``(alive, close)``: whether Triton at ``url`` answers ``is_server_live`` within 2 s, and closing its
    channel."""
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        return (lambda: True), (lambda: None)
    client = grpcclient.InferenceServerClient(url)

    def alive() -> bool:
        try:
            return bool(client.is_server_live(client_timeout=2.0))
        except Exception:  # noqa: BLE001  (any failure to answer is "not live")
            return False

    return alive, client.close


def run_bench(spec: BenchSpec, *, out: str | Path, console: Console | None = None,
              progress: bool = True, plots: bool = True) -> BenchResult:
    """Run every level of ``spec`` against the server and write the report into ``out``."""
    spec.validate()
    out = Path(out)
    console = console or Console(stderr=True)
    prep = prepare(spec, out)
    binary = pa.find_perf_analyzer(spec.perf_analyzer) if spec.target != "openai" else None
    murl = spec.metrics_url or server_metrics.metrics_url_for(spec.url)
    config = {
        "target": spec.target, "model": prep.model, "url": spec.url, "isl": spec.isl, "osl": spec.osl,
        "concurrency": list(spec.concurrency), "requests": spec.requests, "duration_s": spec.duration_s,
        "requests_per_level": {str(c): spec.requests_at(c) for c in spec.concurrency} if spec.duration_s is None
        else None,
        "warmup": spec.warmup, "prompts": len(prep.prompts), "temperature": spec.temperature,
        "token_count": prep.token_count, "tokenizer": str(prep.tokenizer_dir), "metrics_url": murl,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "driver": "perf_analyzer" if binary else "k2trt.bench.openai_driver (httpx, async)",
    }
    if prep.extra_body:
        config["extra_body"] = prep.extra_body
    levels, records, server = [], {}, {}
    metrics_note = None
    with _progress(console, progress) as bar:
        for c in spec.concurrency:
            n = spec.requests_at(c)
            total = float(spec.duration_s) if n is None else float(spec.warmup + n)
            task = bar.add_task(f"{spec.target} c={c}", total=total,
                                note="seconds" if n is None else "requests")
            scraper = server_metrics.Scraper(murl, interval=0.5).start()
            if scraper.failures and not scraper.samples:
                metrics_note = f"{murl}: {scraper.last_error}"
                scraper.stop()
                scraper = None
            try:
                recs = _run_level(spec, prep, c, n, binary, out, scraper, bar, task, total)
            finally:
                if scraper is not None:
                    scraper.stop()
            kept = drop_warmup(recs, spec.warmup)
            run = LevelRun(c, kept, warmup=len(recs) - len(kept))
            lv = summarize(run)
            bar.update(task, completed=total, note=f"{lv.output_tokens_per_s:,.1f} tok/s, TTFT p50 "
                                                  f"{lv.ttft_ms.p50:,.0f} ms, ITL p50 {lv.itl_ms.p50:,.1f} ms")
            levels.append(lv)
            records[c] = kept
            if scraper is not None:
                server[c] = server_metrics.summarize([s for _, s in scraper.samples])
    if metrics_note:
        config["metrics"] = f"not scraped ({metrics_note})"
    check_lengths(records, spec.osl, console)
    result = BenchResult(config, levels, records, server)
    write(result, out, plots=plots)
    return result


def _run_level(spec: BenchSpec, prep: _Prepared, c: int, n: int | None, binary: Path | None, out: Path,
               scraper, bar: Progress, task, total: float) -> list[RequestRecord]:
    if spec.target == "openai":
        from k2trt.bench import openai_driver

        work = openai_driver.OpenAIWorkload(http_url(spec.url), prep.model, prep.prompts, spec.osl,
                                            spec.temperature, prep.extra_body)

        def done(_rec):
            if n is not None:
                bar.advance(task)

        level = openai_driver.run_level(work, concurrency=c, requests=n, duration_s=spec.duration_s,
                                        warmup=spec.warmup, on_done=done)
        try:
            recs = asyncio.run(asyncio.wait_for(level, spec.level_timeout_s))
        except asyncio.TimeoutError:
            raise K2Error(f"concurrency {c} did not finish within {spec.level_timeout_s:.0f} s") from None
        first_err = next((r.error for r in recs if r.error), None)
        if recs and all(r.error for r in recs):
            raise K2Error(f"every request failed; the first: {first_err}")
        return recs
    raw = out / "raw"
    export = raw / f"profile_export_c{c}.json"
    export.unlink(missing_ok=True)  # perf_analyzer refuses an existing path
    cmd = pa.LevelCommand(prep.model, grpc_url(spec.url), prep.input_data, c, export, requests=n,
                          duration_s=spec.duration_s, warmup=spec.warmup)
    _run_perf_analyzer(cmd, binary, raw / f"perf_analyzer_c{c}.log", scraper, bar, task, total, spec.level_timeout_s)
    doc = profile.load_export(export)
    # every prompt is exactly ISL tokens by construction (checked when it was built)
    per_level = profile.parse_export(doc, prep.counting, lambda _ins: spec.isl)
    if c not in per_level:
        raise K2Error(f"{export}: no experiment at concurrency {c}")
    return per_level[c]


def check_lengths(records: dict[int, list[RequestRecord]], osl: int, console: Console) -> None:
    """Warn about requests whose output length is not the OSL asked for (the server ignored the forcing)."""
    bad = [(c, r.output_tokens) for c, rs in records.items() for r in rs if r.ok and r.output_tokens != osl]
    if bad:
        c, got = bad[0]
        console.print(f"[yellow]warning:[/] {len(bad)} request(s) did not generate exactly {osl} tokens (e.g. "
                      f"{got} at concurrency {c}); the server did not honour the exact-length request")
