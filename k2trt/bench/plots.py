"""PNG plots of a run (matplotlib, Agg backend: no display needed).

- ``throughput_latency.png``: total output tokens/s against p50 request latency and against p50 tokens/s per
  user, one point per concurrency level (labelled): the throughput-latency curve.
- ``ttft.png`` and ``itl.png``: p50/p90/p99 against concurrency.
- ``compare.png`` (from ``k2trt bench compare --out``): two runs' curves overlaid.
"""

from __future__ import annotations

from pathlib import Path

from k2trt.bench.metrics import PERCENTILES


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _curve(ax_lat, ax_user, result, label: str | None = None, marker: str = "o"):
    lv = sorted(result.levels, key=lambda x: x.concurrency)
    thr = [x.output_tokens_per_s for x in lv]
    lat = [x.latency_ms.p50 / 1000 for x in lv]
    user = [x.tokens_per_s_per_user.p50 for x in lv]
    ax_lat.plot(lat, thr, marker=marker, label=label)
    ax_user.plot(user, thr, marker=marker, label=label)
    for x, y1, y2, t in zip(lv, lat, user, thr):
        ax_lat.annotate(f"c{x.concurrency}", (y1, t), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax_user.annotate(f"c{x.concurrency}", (y2, t), textcoords="offset points", xytext=(4, 4), fontsize=8)


def _title(result) -> str:
    c = result.config
    what = c.get("target") if c.get("model") in (None, c.get("target")) else f"{c.get('target')} ({c.get('model')})"
    return f"{what}: ISL {c.get('isl')}, OSL {c.get('osl')}"


def plot_run(result, out: str | Path) -> dict[str, Path]:
    """Write the run's plots into ``out``; returns name -> path."""
    plt = _plt()
    out = Path(out)
    written = {}

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    _curve(a1, a2, result)
    a1.set_xlabel("request latency p50 (s)")
    a2.set_xlabel("output tokens/s per user p50")
    for ax in (a1, a2):
        ax.set_ylabel("output tokens/s (total)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"throughput vs latency - {_title(result)}")
    fig.tight_layout()
    p = out / "throughput_latency.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written["throughput vs latency"] = p

    for key, name, unit, fname in (("ttft_ms", "TTFT", "ms", "ttft.png"), ("itl_ms", "ITL", "ms", "itl.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        lv = sorted(result.levels, key=lambda x: x.concurrency)
        xs = [x.concurrency for x in lv]
        for q in PERCENTILES:
            ax.plot(xs, [getattr(getattr(x, key), f"p{q}") for x in lv], marker="o", label=f"p{q}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrency")
        ax.set_ylabel(f"{name} ({unit})")
        ax.set_title(f"{name} percentiles - {_title(result)}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        p = out / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written[f"{name} percentiles"] = p
    return written


def plot_compare(a, b, out_png: str | Path, name_a: str = "A", name_b: str = "B") -> Path:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    _curve(a1, a2, a, name_a, "o")
    _curve(a1, a2, b, name_b, "s")
    a1.set_xlabel("request latency p50 (s)")
    a2.set_xlabel("output tokens/s per user p50")
    for ax in (a1, a2):
        ax.set_ylabel("output tokens/s (total)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("throughput vs latency")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
