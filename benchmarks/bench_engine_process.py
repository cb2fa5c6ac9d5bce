"""What stepping the engine in a process of its own costs, without Triton: ITL through ``EngineProcess`` against the
same engine stepping in a thread of this process (``EngineService``), on the same engine dir, interleaved rounds.

    .venv/bin/python benchmarks/bench_engine_process.py [--engine DIR]

The default engine dir is the one ``benchmarks/bench_serving.py`` builds (k2-tiny, ``cpu-tiny``). Separates the
cost of the process boundary itself (the pipe, one message per step) from what the Triton path adds around it
(docs/perf/serving.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, default=ROOT / "work_dirs" / "bench_serving" / "engine")
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "models" / "k2-tiny")
    ap.add_argument("--isl", type=int, default=128)
    ap.add_argument("--osl", type=int, default=64)
    ap.add_argument("--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=[1, 4])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if not (args.engine / "manifest.json").is_file():
        raise SystemExit(f"{args.engine}: not an engine dir (run benchmarks/bench_serving.py first, or pass --engine)")

    import torch

    from k2trt.bench import direct
    from k2trt.bench.inputs import raw_prompts
    from k2trt.bench.metrics import drop_warmup, summarize
    from k2trt.bench.records import LevelRun
    from k2trt.runtime.engine_process import EngineProcess
    from k2trt.runtime.service import open_service
    from k2trt.tokenizer import K2Tokenizer

    torch.set_num_threads(1)  # as the served engine (engine_threads 1) and its process
    tok = K2Tokenizer.from_dir(args.tokenizer)
    ids = [tok.encode(p.text) for p in raw_prompts(tok.encode, args.isl, 64)]
    services = {"thread (EngineService)": open_service(args.engine),
                "process (EngineProcess)": EngineProcess(args.engine)}
    try:
        for svc in services.values():  # warm: torch's first steps allocate
            direct.run_level(svc, ids, osl=args.osl, concurrency=max(args.concurrency), requests=8,
                             stop_ids=tok.stop_ids)
        itl: dict[tuple[str, int], list[float]] = {}
        for rnd in range(args.rounds):
            names = list(services)[rnd % 2:] + list(services)[: rnd % 2]  # alternate the order
            for name in names:
                for c in args.concurrency:
                    recs = direct.run_level(services[name], ids, osl=args.osl, concurrency=c, requests=8 * c,
                                            warmup=1, stop_ids=tok.stop_ids)
                    lv = summarize(LevelRun(c, drop_warmup(recs, 1), warmup=1))
                    itl.setdefault((name, c), []).append(lv.itl_ms.p50)
    finally:
        for svc in services.values():
            svc.close()
    print(f"ITL p50 (ms), median of {args.rounds} rounds; ISL {args.isl}, OSL {args.osl}, {args.engine}")
    print("| concurrency | " + " | ".join(services) + " | process vs thread |")
    print("| ---: |" + " ---: |" * (len(services) + 1))
    for c in args.concurrency:
        t, p = (statistics.median(itl[(n, c)]) for n in services)
        print(f"| {c} | {t:.2f} | {p:.2f} | {100 * (p / t - 1):+.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
