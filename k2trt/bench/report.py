"""A benchmark run on disk: ``results.json`` (everything, per-request records included), ``results.csv`` (one
row per concurrency level), ``report.md`` (tables + plots), and ``compare`` of two runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from k2trt.bench.metrics import PERCENTILES, LevelSummary, Stats
from k2trt.bench.records import RequestRecord
from k2trt.errors import K2Error

FORMAT = 1
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"

STAT_METRICS = (
    ("ttft_ms", "TTFT", "ms"),
    ("itl_ms", "ITL", "ms"),
    ("latency_ms", "request latency", "ms"),
    ("tokens_per_s_per_user", "output tokens/s per user", "tok/s"),
)


@dataclass
class BenchResult:
    """One ``k2trt bench`` run: its configuration, a summary per level, the records, and server metrics."""

    config: dict
    levels: list[LevelSummary]
    records: dict[int, list[RequestRecord]] = field(default_factory=dict)
    server: dict[int, dict] = field(default_factory=dict)

    def level(self, concurrency: int) -> LevelSummary:
        for lv in self.levels:
            if lv.concurrency == concurrency:
                return lv
        raise KeyError(concurrency)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "config": self.config,
            "levels": [{**lv.to_json(), "server": self.server.get(lv.concurrency, {})} for lv in self.levels],
            "records": {str(c): [r.to_json() for r in rs] for c, rs in sorted(self.records.items())},
        }

    @classmethod
    def from_json(cls, doc: dict) -> BenchResult:
        if doc.get("format") != FORMAT:
            raise K2Error(f"not a k2trt bench results.json (format {doc.get('format')!r}, expected {FORMAT})")
        levels, server = [], {}
        for d in doc["levels"]:
            d = dict(d)
            srv = d.pop("server", {})
            lv = LevelSummary.from_json(d)
            levels.append(lv)
            server[lv.concurrency] = srv
        records = {int(c): [RequestRecord.from_json(r) for r in rs] for c, rs in doc.get("records", {}).items()}
        return cls(doc["config"], levels, records, server)


def load(path: str | Path) -> BenchResult:
    """A run from its directory or its ``results.json``."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_JSON
    if not p.is_file():
        raise K2Error(f"{path}: no {RESULTS_JSON} (give a `k2trt bench --out` directory or its results.json)")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise K2Error(f"{p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    return BenchResult.from_json(doc)


def _num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def csv_rows(result: BenchResult) -> list[dict]:
    rows = []
    for lv in result.levels:
        row = {"concurrency": lv.concurrency, "requests": lv.requests, "errors": lv.errors, "warmup": lv.warmup,
               "duration_s": lv.duration_s, "output_tokens_per_s": _num(lv.output_tokens_per_s),
               "requests_per_s": _num(lv.requests_per_s), "input_tokens_mean": _num(lv.input_tokens.mean),
               "output_tokens_mean": _num(lv.output_tokens.mean), "output_tokens_min": _num(lv.output_tokens.min),
               "output_tokens_max": _num(lv.output_tokens.max)}
        for key, _, _ in STAT_METRICS:
            st: Stats = getattr(lv, key)
            row[f"{key}_mean"] = _num(st.mean)
            for q in PERCENTILES:
                row[f"{key}_p{q}"] = _num(getattr(st, f"p{q}"))
        rows.append(row)
    return rows


def to_csv(result: BenchResult) -> str:
    rows = csv_rows(result)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in r.items()})
    return buf.getvalue()


def _f(v: float | None, digits: int = 1) -> str:
    v = _num(v)
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def results_table(result: BenchResult) -> str:
    """The Markdown table of a run: one row per level."""
    head = ("| concurrency | requests | output tok/s | req/s | TTFT p50 / p90 / p99 (ms) | ITL p50 / p90 / p99 (ms) "
            "| latency p50 / p90 / p99 (ms) | tok/s per user p50 | output tokens |")
    lines = [head, "| " + " | ".join(["---:"] * 9) + " |"]
    for lv in result.levels:
        def trio(st: Stats, d: int = 1) -> str:
            return " / ".join(_f(getattr(st, f"p{q}"), d) for q in PERCENTILES)

        osl = lv.output_tokens
        osl_txt = f"{_f(osl.min, 0)}" if osl.min == osl.max else f"{_f(osl.min, 0)}-{_f(osl.max, 0)}"
        err = f" ({lv.errors} failed)" if lv.errors else ""
        lines.append(f"| {lv.concurrency} | {lv.requests}{err} | {_f(lv.output_tokens_per_s)} | "
                     f"{_f(lv.requests_per_s, 2)} | {trio(lv.ttft_ms)} | {trio(lv.itl_ms, 2)} | "
                     f"{trio(lv.latency_ms, 0)} | {_f(lv.tokens_per_s_per_user.p50)} | {osl_txt} |")
    return "\n".join(lines)


def server_table(result: BenchResult) -> str:
    """Triton's /metrics per level (empty string when none were scraped)."""
    rows = []
    for lv in result.levels:
        srv = result.server.get(lv.concurrency) or {}
        for model, d in sorted(srv.get("models", {}).items()):
            ok, fail = d.get("request_success", 0), d.get("request_failure", 0)
            execs = d.get("exec_count", 0)
            queue = d.get("queue_duration_us", 0) / ok / 1000 if ok else math.nan
            rows.append(f"| {lv.concurrency} | {model} | {ok:.0f} | {fail:.0f} | {execs:.0f} | {_f(queue, 2)} | "
                        f"{_f(d.get('pending_request_count_max'), 0)} |")
    if not rows:
        return ""
    cpu = []
    for lv in result.levels:
        srv = result.server.get(lv.concurrency) or {}
        if "cpu_utilization_mean" in srv:
            cpu.append(f"concurrency {lv.concurrency}: {100 * srv['cpu_utilization_mean']:.0f}%")
    out = ["| concurrency | model | requests ok | failed | executions | queue ms/request | pending max |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: |", *rows]
    if cpu:
        out.append("")
        out.append("Server CPU utilisation (nv_cpu_utilization, mean over the level): " + ", ".join(cpu) + ".")
    return "\n".join(out)


def render_markdown(result: BenchResult, plots: dict[str, str] | None = None) -> str:
    c = result.config
    lines = [f"# k2trt bench: {c.get('target')} at {c.get('url')}", ""]
    lines += ["| setting | value |", "| --- | --- |"]
    for key in ("target", "model", "url", "isl", "osl", "concurrency", "requests_per_level", "duration_s", "warmup",
                "driver", "token_count", "tokenizer", "metrics", "started", "host"):
        v = c.get(key)
        if v is None:
            continue
        if isinstance(v, list):
            v = ", ".join(map(str, v))
        elif isinstance(v, dict):
            v = ", ".join(f"c{k}: {x}" for k, x in v.items())
        lines.append(f"| {key} | {v} |")
    lines += ["", "## Results", "", results_table(result), ""]
    lines += ["TTFT = first token - send; ITL = (last token - first token) / (output tokens - 1); request latency = "
              "last response - send; tokens/s per user = output tokens / request latency; output tok/s = all output "
              "tokens / (last response - first send) of the level. Percentiles are across the level's requests; "
              "warm-up requests are excluded.", ""]
    for name, path in (plots or {}).items():
        lines += [f"![{name}]({path})", ""]
    srv = server_table(result)
    if srv:
        lines += ["## Server (Triton /metrics, diffed over each level)", "", srv, ""]
    return "\n".join(lines)


def write(result: BenchResult, out: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write results.json, results.csv, the plots and report.md into ``out``; returns what was written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    p = out / RESULTS_JSON
    p.write_text(json.dumps(result.to_json(), indent=1, allow_nan=False, default=_json_default))
    written["json"] = p
    p = out / RESULTS_CSV
    p.write_text(to_csv(result))
    written["csv"] = p
    pngs: dict[str, str] = {}
    if plots:
        from k2trt.bench.plots import plot_run

        for name, path in plot_run(result, out).items():
            pngs[name] = path.name
            written[name] = path
    p = out / REPORT_MD
    p.write_text(render_markdown(result, pngs))
    written["md"] = p
    return written


def _json_default(o):
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# ----------------------------------------------------------------------------------------------- compare

COMPARE_METRICS = (
    ("output tok/s", lambda lv: lv.output_tokens_per_s, True),
    ("req/s", lambda lv: lv.requests_per_s, True),
    ("TTFT p50 ms", lambda lv: lv.ttft_ms.p50, False),
    ("TTFT p99 ms", lambda lv: lv.ttft_ms.p99, False),
    ("ITL p50 ms", lambda lv: lv.itl_ms.p50, False),
    ("ITL p99 ms", lambda lv: lv.itl_ms.p99, False),
    ("latency p50 ms", lambda lv: lv.latency_ms.p50, False),
    ("latency p99 ms", lambda lv: lv.latency_ms.p99, False),
    ("tok/s per user p50", lambda lv: lv.tokens_per_s_per_user.p50, True),
)
"""(name, value of a level, higher is better)."""


@dataclass(frozen=True)
class CompareRow:
    concurrency: int
    metric: str
    a: float | None
    b: float | None
    higher_is_better: bool

    @property
    def change_pct(self) -> float | None:
        """(B - A) / A in percent."""
        if self.a is None or self.b is None or self.a == 0:
            return None
        return 100.0 * (self.b - self.a) / self.a


def compare(a: BenchResult, b: BenchResult) -> list[CompareRow]:
    """Rows for every concurrency level either run measured (a level only one run has shows None for the other)."""
    levels = sorted({lv.concurrency for lv in a.levels} | {lv.concurrency for lv in b.levels})
    rows = []
    for c in levels:
        la = next((lv for lv in a.levels if lv.concurrency == c), None)
        lb = next((lv for lv in b.levels if lv.concurrency == c), None)
        for name, get, hib in COMPARE_METRICS:
            rows.append(CompareRow(c, name, _num(get(la)) if la else None, _num(get(lb)) if lb else None, hib))
    return rows


def compare_warnings(a: BenchResult, b: BenchResult) -> list[str]:
    """Differences in setup that make the two runs not comparable."""
    out = []
    for key in ("isl", "osl", "target"):
        if a.config.get(key) != b.config.get(key):
            out.append(f"{key} differs: A {a.config.get(key)} vs B {b.config.get(key)}")
    return out


def compare_markdown(a: BenchResult, b: BenchResult, name_a: str = "A", name_b: str = "B") -> str:
    rows = compare(a, b)
    lines = [f"A = {name_a}, B = {name_b}", ""]
    for w in compare_warnings(a, b):
        lines.append(f"**warning**: {w}")
    if lines[-1] != "":
        lines.append("")
    lines += ["| concurrency | metric | A | B | B vs A |", "| ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        ch = r.change_pct
        mark = ""
        if ch is not None and abs(ch) >= 0.05:
            better = (ch > 0) == r.higher_is_better
            mark = " (better)" if better else " (worse)"
        lines.append(f"| {r.concurrency} | {r.metric} | {_f(r.a, 2)} | {_f(r.b, 2)} | "
                     f"{'-' if ch is None else f'{ch:+.1f}%'}{mark} |")
    return "\n".join(lines)
