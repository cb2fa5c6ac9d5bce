"""What the ``k2trt bench`` commands do (the CLI in :mod:`k2trt.cli` only parses options and calls these)."""

from __future__ import annotations

from pathlib import Path

from k2trt.errors import K2Error


def bench_command(*, url: str | None, target: str, isl: int | None, osl: int | None, concurrency: str,
                  requests: int | None, duration: float | None, warmup: int, out: Path | None, model: str | None,
                  tokenizer: Path | None, metrics_url: str | None, perf_analyzer: Path | None, prompts: int,
                  temperature: float, seed: int, plots: bool, timeout: float | None = None,
                  progress: bool = True) -> str:
    """Run ``k2trt bench``; returns the text to print (the results table and where the report is)."""
    from k2trt.bench.report import results_table
    from k2trt.bench.runner import BenchSpec, parse_concurrency, run_bench

    missing = [name for name, v in (("--url", url), ("--isl", isl), ("--osl", osl)) if v is None]
    if missing:
        raise K2Error(f"k2trt bench needs {', '.join(missing)} (e.g. k2trt bench --url localhost:8001 --target "
                      f"ensemble --isl 128 --osl 64 --concurrency 1,2,4)")
    spec = BenchSpec(url=url, target=target, isl=isl, osl=osl, concurrency=parse_concurrency(concurrency),
                     requests=requests, duration_s=duration, warmup=warmup, model=model, tokenizer=tokenizer,
                     metrics_url=metrics_url, perf_analyzer=perf_analyzer, num_prompts=prompts, seed=seed,
                     temperature=temperature, level_timeout_s=timeout)
    spec.validate()
    out = out or Path("bench_results") / f"{target}_isl{isl}_osl{osl}"
    result = run_bench(spec, out=out, progress=progress, plots=plots)
    return f"{results_table(result)}\n\nwrote {out}/results.json, results.csv, report.md" + \
        (" and plots" if plots else "")


def compare_command(*, a: Path, b: Path, out: Path | None) -> str:
    """``k2trt bench compare A B``: the side-by-side table (Markdown); with ``out`` also compare.md and
    compare.png there."""
    from k2trt.bench.report import compare_markdown, load

    ra, rb = load(a), load(b)
    text = compare_markdown(ra, rb, str(a), str(b))
    if out is not None:
        from k2trt.bench.plots import plot_compare

        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(f"# k2trt bench compare\n\n{text}\n\n![compare](compare.png)\n")
        plot_compare(ra, rb, out / "compare.png", str(a), str(b))
        text += f"\n\nwrote {out}/compare.md and compare.png"
    return text
