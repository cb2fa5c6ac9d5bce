"""Training-step time of the k2-tiny model for each MLA attention of ``scripts/train_tiny.py --train-attn``.

One step is a stage-2 step of the shipped recipe: 16 induction rows (``induction_example``) and one conversation
batch of ``--batch-tokens`` (``conversation_batches``, plain and rich conversations), forward, weighted loss as
``--value-weight 5 --value-ends --decision-weight 5``, backward, gradient clipping, AdamW. The attentions:

- ``absorb``: the runtime's absorbed MLA (einsums through the latent space), the baseline;
- ``sdpa``: per-head keys and values through ``torch.nn.functional.scaled_dot_product_attention``.

The attentions take turns in blocks of ``--block-steps`` steps on the same batches and induction rows, in a rotating
order, so a slow spell of the shared machine hits both alike; each figure is the median block's wall time per step,
on ``--threads`` threads as training runs, and the speed-up is against ``absorb`` measured in the same run.

    .venv/bin/python benchmarks/bench_train_attn.py --write docs/perf/train_attn.md
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import train_tiny as T  # noqa: E402
from bench_text import publish  # noqa: E402

from k2trt.corpus import training_conversations  # noqa: E402

IMPLS = ("absorb", "sdpa")
BASELINE = "absorb"


def corpus(n: int, batch_tokens: int, seed: int = 0):
    """(tokenizer, examples, batches, induction pool) as the shipped recipe's stage 2 draws them."""
    plain = training_conversations(n, seed)
    rich = training_conversations(n, seed, rich=True, declare="balanced", announce=True, answers="value_first",
                                  made_up_topics=True, varied_chat=True)
    with tempfile.TemporaryDirectory() as d:
        tok = T.build_tokenizer(plain, Path(d), "lowercase")
    plain_ex = [T.encode(c, tok) for c in plain]
    rich_ex = [T.encode(c, tok, True) for c in rich]
    examples, batches = T.conversation_batches(plain_ex, rich_ex, batch_tokens, seed, 1)
    pool = sorted(set(T.copy_pools(plain_ex, 128)[0]) | set(T.word_pieces(tok)))
    return tok, examples, batches, pool


class Trainer:
    """One model and optimizer per attention, stepping through the same batches."""

    def __init__(self, impl: str, tok, examples, pool):
        cfg = T.preset_config("tiny", {**T.MODEL_OVERRIDES, "max_position_embeddings": 4096})
        self.model = T.Transformer(cfg, attn_impl=impl).init_weights(seed=0, scheme="fan_in").train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.95))
        self.tok, self.examples, self.pool = tok, examples, pool

    def step(self, idx: list[int], rng: random.Random) -> None:
        rows = [T.induction_example(rng, self.pool, 0.5) for _ in range(16)]
        ids, _, sel, targets = T.collate(rows, list(range(len(rows))), self.tok.pad_id)
        copy_loss = F.cross_entropy(T.train_forward(self.model, ids, sel), targets)
        ids, _, sel, targets = T.collate(self.examples, idx, self.tok.pad_id)
        per_token = F.cross_entropy(T.train_forward(self.model, ids, sel), targets, reduction="none")
        w = T.loss_weights(self.examples, idx, sel, 5.0, True, 5.0)
        self.opt.zero_grad(set_to_none=True)
        ((per_token * w).sum() / w.sum() + copy_loss).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()


def measure(trainers: dict[str, Trainer], batches: list[list[int]], blocks: int, block_steps: int) -> dict:
    per_step: dict[str, list[float]] = {impl: [] for impl in trainers}
    for b in range(blocks + 1):  # block 0 warms every attention up and is not counted
        chunk = batches[b * block_steps:(b + 1) * block_steps]
        for impl in list(trainers)[b % len(trainers):] + list(trainers)[:b % len(trainers)]:  # rotate the order
            rng = random.Random(b)  # the same rows for every attention
            t = time.perf_counter()
            for idx in chunk:
                trainers[impl].step(idx, rng)
            if b:
                per_step[impl].append((time.perf_counter() - t) / len(chunk))
    return {impl: statistics.median(v) for impl, v in per_step.items()}


def report(ms: dict[str, float], tokens: float, args) -> str:
    lines = [f"| attention | ms per step | steps/s | speed-up vs {BASELINE} |", "| --- | ---: | ---: | ---: |"]
    for impl, s in ms.items():
        lines.append(f"| {impl} | {s * 1000:.0f} | {1 / s:.2f} | {ms[BASELINE] / s:.2f}x |")
    return ("\n".join(lines) + f"\n\nMedian of {args.blocks} blocks of {args.block_steps} steps per attention, "
            f"{args.threads} threads, torch {torch.__version__}; conversation batches of {args.batch_tokens} "
            f"tokens (mean {tokens:.0f} with padding) and 16 induction rows a step.\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", type=int, default=3000, help="plain and as many rich conversations")
    ap.add_argument("--batch-tokens", type=int, default=3584)
    ap.add_argument("--blocks", type=int, default=24, help="blocks per attention (the median counts)")
    ap.add_argument("--block-steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", type=Path, help="also write the table into this markdown file's results section")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as train_tiny.py trains

    tok, examples, batches, pool = corpus(args.conversations, args.batch_tokens)
    need = (args.blocks + 1) * args.block_steps
    if len(batches) < need:
        raise SystemExit(f"{len(batches)} batches for {need} steps: raise --conversations")
    batches = random.Random(0).sample(batches, need)  # lengths as training meets them, not sorted runs of them
    tokens = statistics.mean(len(b) * max(len(examples[i].ids) for i in b) for b in batches)
    trainers = {impl: Trainer(impl, tok, examples, pool) for impl in IMPLS}
    table = report(measure(trainers, batches, args.blocks, args.block_steps), tokens, args)
    publish(table, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
