"""Per-token cost of the text path of serving: stream decoding and streaming tool-call parsing.

For generated outputs of 1k, 8k and 32k tokens (a K2-style answer: prose in English and Chinese, then a
tool-call section whose arguments are a long JSON document), measures in one run:

- ``decode``: one ``tokenizer.decode(all_ids)`` (the baseline), and ``StreamDecoder.push`` one id at a time;
- ``parse``: one ``toolcall.parse(text)`` (the baseline), ``StreamingToolParser.feed`` one decoded token at a
  time, and for contrast the naive streaming parser that calls ``parse`` on the whole accumulated text per token;
- both streaming stages together, as the serving loop runs them.

Each figure is the best of ``--repeat`` runs, in microseconds of CPU time per token. The tokenizer is a 4,000-token BPE
trained here with k2trt's trainer (K2's own 163,584-token file is not available offline; decoding cost per token
does not depend on the vocabulary size, and tokens of a smaller vocabulary are shorter, which only makes a
per-token parse cheaper to the same degree for both the baseline and the streaming parser).

    .venv/bin/python benchmarks/bench_text.py --write docs/perf/text.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from k2trt.tokenizer import K2Tokenizer, train_bpe
from k2trt.toolcall import StreamingToolParser, parse

WORDS = (
    "the weather in Beijing is sunny and the temperature is about twenty five degrees while Paris expects rain "
    "later today so bring an umbrella I will check the forecast for tomorrow as well"
).split()
HAN = "北京今天天气晴朗气温二十五度明天可能下雨请带伞我来查一下天气预报"


def k2_output(n_tokens: int, tok: K2Tokenizer, seed: int = 0) -> list[int]:
    """Ids of a K2-style output of about ``n_tokens`` tokens: 30% prose, then two tool calls with JSON args."""
    rnd = random.Random(seed)
    prose: list[str] = []
    while len(tok.encode("".join(prose))) < 0.3 * n_tokens:
        if rnd.random() < 0.7:
            prose.append(" ".join(rnd.choice(WORDS) for _ in range(12)) + ". ")
        else:
            prose.append("".join(rnd.choice(HAN) for _ in range(12)) + "。")
    rows = []
    args = ""
    while len(tok.encode(args)) < 0.7 * n_tokens / 2:
        rows.append({"city": rnd.choice(WORDS), "note": "".join(rnd.choice(HAN) for _ in range(6)), "t": rnd.random()})
        args = json.dumps({"rows": rows}, ensure_ascii=False, indent=1)
    text = (
        "".join(prose)
        + "<|tool_calls_section_begin|>"
        + "".join(
            f"<|tool_call_begin|>functions.store.write:{k}<|tool_call_argument_begin|>{args}<|tool_call_end|>"
            for k in range(2)
        )
        + "<|tool_calls_section_end|>"
    )
    return tok.encode(text, allow_special=True)


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """The fastest of ``repeat`` runs of ``fn``, in seconds of this process's CPU time (the code is
    single-threaded; CPU time is what it costs a server, and is not inflated when the machine is shared)."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def measure(tok: K2Tokenizer, n_tokens: int, repeat: int, naive_limit: int) -> dict[str, float]:
    ids = k2_output(n_tokens, tok)
    n = len(ids)
    text = tok.decode(ids)
    dec = tok.stream_decoder()
    pieces = [dec.push([i]) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text

    def stream_decode() -> None:
        d = tok.stream_decoder()
        for i in ids:
            d.push([i])
        d.flush()

    def stream_parse() -> None:
        p = StreamingToolParser()
        for piece in pieces:
            p.feed(piece)
        p.finish()

    def naive_parse() -> None:
        acc = ""
        for piece in pieces:
            acc += piece
            parse(acc)

    def serving_loop() -> None:
        d, p = tok.stream_decoder(), StreamingToolParser()
        for i in ids:
            p.feed(d.push([i]))
        p.feed(d.flush())
        p.finish()

    us = 1e6 / n
    row = {
        "tokens": n,
        "chars": len(text),
        "decode_full": best_of(repeat, lambda: tok.decode(ids)) * us,
        "decode_stream": best_of(repeat, stream_decode) * us,
        "parse_full": best_of(repeat, lambda: parse(text)) * us,
        "parse_stream": best_of(repeat, stream_parse) * us,
        "parse_naive": best_of(1, naive_parse) * us if n <= naive_limit else float("nan"),
        "serving_loop": best_of(repeat, serving_loop) * us,
    }
    return row


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {cores} cores available (shared with other jobs), Python {platform.python_version()}, "
        f"tiktoken {metadata.version('tiktoken')}, {platform.system()} {platform.machine()}"
    )


def publish(table: str, path: Path | None) -> None:
    """Print the machine and ``table``; with ``path``, also replace the part of that markdown file between its results
    markers with them (temp file, rename)."""
    body = f"Machine: {machine()}\n\n{table}"
    print(body)
    if path is None:
        return
    doc = path.read_text() if path.exists() else ""
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path}: needs {begin} ... {end} around the results section")
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{head}{begin}\n{body}{end}{tail}")
    tmp.replace(path)


def report(rows: list[dict[str, float]], vocab: int) -> str:
    def f(x: float) -> str:
        return "-" if x != x else f"{x:.2f}"

    lines = [
        "| tokens | chars | decode, full (baseline) | decode, stream | parse, one-shot (baseline) | parse, stream "
        "| parse, naive re-parse | stream decode + stream parse |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['tokens']:,} | {r['chars']:,} | {f(r['decode_full'])} | {f(r['decode_stream'])} | "
            f"{f(r['parse_full'])} | {f(r['parse_stream'])} | {f(r['parse_naive'])} | {f(r['serving_loop'])} |"
        )
    return "\n".join(lines) + f"\n\nMicroseconds of CPU time per token (best of runs); BPE of {vocab:,} tokens.\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1_000, 8_000, 32_000], help="output lengths")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (the best counts)")
    ap.add_argument("--vocab", type=int, default=4_000, help="BPE size to train")
    ap.add_argument("--naive-limit", type=int, default=10_000, help="longest output for the quadratic naive parser")
    ap.add_argument("--write", type=Path, help="also write the table into this markdown file's results section")
    args = ap.parse_args(argv)

    rnd = random.Random(0)
    corpus = " ".join(" ".join(rnd.choices(WORDS, k=40)) + "".join(rnd.choices(HAN, k=40)) for _ in range(2000))
    rows = [{"city": w, "note": HAN[i % len(HAN) :][:6], "t": i / 7} for i, w in enumerate(WORDS * 40)]
    corpus += json.dumps(rows, ensure_ascii=False, indent=1)
    t = time.perf_counter()
    tok = K2Tokenizer(train_bpe([corpus], args.vocab))
    took = time.perf_counter() - t
    print(f"trained a {args.vocab}-token BPE on {len(corpus):,} chars in {took:.2f} s", file=sys.stderr)
    rows = [measure(tok, n, args.repeat, args.naive_limit) for n in args.tokens]
    table = report(rows, args.vocab)
    publish(table, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
