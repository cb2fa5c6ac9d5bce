#!/usr/bin/env python
"""Train k2-tiny: a small Kimi-K2-architecture model that really calls tools, shipped in K2's exact layout.

    .venv/bin/python scripts/train_tiny.py                 # corpus -> tokenizer -> train -> export -> eval -> docs
    .venv/bin/python scripts/train_tiny.py --skip-train    # re-export + re-evaluate the saved float weights

Stages:

1. corpus (:mod:`k2trt.corpus`, seeded) rendered with :func:`k2trt.chat.render_chat`: training text == prompts;
2. a byte-level BPE on the training text only (:func:`k2trt.tokenizer.train_bpe`, Kimi's pre-tokenizer), written
   as ``tiktoken.model`` + ``tokenizer_config.json`` (K2's 256-id special block) + ``chat_template.jinja``;
3. training of the reference model (:class:`k2trt.model.Transformer`: MLA, dense first layer, sigmoid-routed MoE
   with a shared expert, yarn RoPE) with AdamW, loss on assistant tokens only, aux-loss-free router balancing
   (DeepSeek-V3: ``e_score_correction_bias`` nudged against each expert's load after every step);
4. export: block-FP8 (128x128 ``weight_scale_inv``) in K2's exact HF layout (:func:`k2trt.synth.write_hf_checkpoint`);
5. evaluation (:mod:`k2trt.tiny_eval`) on held-out conversations, greedy, with the trained float32 weights and with
   the FP8 checkpoint as :meth:`Transformer.from_checkpoint` loads it; loss plot and ``docs/k2-tiny.md``.

Reproducible: everything is seeded, torch runs deterministic algorithms on a fixed thread count, so the same
``--seed`` and ``--threads`` give the same weights and the same evaluation figures.

The one training-only speed-up (:func:`train_forward`): the reference model's own blocks, with ``lm_head`` applied
only at the positions that carry loss (a third of them); checked against ``Transformer.forward`` before training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from k2trt.chat import render_chat  # noqa: E402
from k2trt.checkpoint import inspect_checkpoint  # noqa: E402
from k2trt.config import K2Config  # noqa: E402
from k2trt.corpus import (  # noqa: E402
    HELDOUT_CITIES,
    Conversation,
    assistant_token_mask,
    city_names,
    conversations,
    eval_conversations,
    training_conversations,
)
from k2trt.errors import K2Error  # noqa: E402
from k2trt.model import MoE, Transformer, rope_cos_sin  # noqa: E402
from k2trt.synth import preset_config, write_hf_checkpoint  # noqa: E402
from k2trt.tiny_eval import EvalReport, evaluate, reference_generate  # noqa: E402
from k2trt.tokenizer import (  # noqa: E402
    K2_NAMED_SPECIAL_OFFSETS,
    NUM_SPECIAL_TOKENS,
    K2Tokenizer,
    default_chat_template,
    pretokenize,
    train_bpe,
    write_tokenizer_files,
)

BASE_VOCAB = 2048
"""BPE tokens before the 256 specials (vocab_size 2304): the corpus needs about 1,500, the rest are rarer merges."""

MODEL_OVERRIDES = {
    # K2's architecture at about 1/50 of its width: MLA with q/kv LoRA, 1 dense layer then MoE layers, 8 routed
    # experts top-2 + 1 shared, sigmoid routing with noaux_tc, yarn RoPE. Widths are not multiples of 128 where
    # K2's aren't either, so FP8 scales have partial edge blocks like kv_a_proj_with_mqa's.
    "vocab_size": BASE_VOCAB + NUM_SPECIAL_TOKENS,
    "hidden_size": 128,
    "intermediate_size": 384,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 3,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
}

BPE_CONVERSATIONS = 3000  # the tokenizer is trained on the first ones (ample: more text changes no merge that matters)
HELDOUT_LOSS_CONVERSATIONS = 96
ROUTER_BIAS_RATE = 0.001  # DeepSeek-V3's bias update speed (gamma)
_SPECIAL_RE = re.compile("|".join(re.escape(n) for n in K2_NAMED_SPECIAL_OFFSETS.values()))


# ----------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    ids: list[int]
    loss_mask: list[bool]  # loss_mask[i]: ids[i] is written by the assistant (predicted from ids[:i])


def bpe_training_pieces(texts: list[str]) -> list[str]:
    """Kimi's pre-tokenizer pieces of ``texts`` with a leading space or punctuation mark cut off a word.

    Kimi's pattern glues one leading non-letter to a word (`` Beijing``) but not after ``: "`` in JSON
    (``Beijing``), so with ordinary merges a name is different tokens in the user's words, in the call's
    arguments and in the answer, and a model must learn to re-spell every name it copies. Training the merges
    on cut pieces means no token joins a space to a letter: tiktoken then encodes `` Beijing`` as
    ``' ' + 'Beijing'``, the same word tokens as in JSON, and copying is copying. The file format, the
    pre-tokenizer and the encoder are unchanged; only the choice of merges differs (sequences are about 25%
    longer)."""
    out = []
    for text in texts:
        for p in _SPECIAL_RE.split(text):
            for piece in pretokenize(p):
                if len(piece) > 1 and not piece[0].isalnum() and piece[1].isalpha():
                    out += [piece[0], piece[1:]]
                else:
                    out.append(piece)
    return out


def build_tokenizer(train: list[Conversation], out_dir: Path) -> K2Tokenizer:
    """Train the BPE on the training conversations' text (special markers cut out) and write K2's files."""
    texts = [render_chat(c.messages, tools=c.tools, add_generation_prompt=False).text
             for c in train[:BPE_CONVERSATIONS]]
    ranks = train_bpe(bpe_training_pieces(texts), BASE_VOCAB)
    template = default_chat_template()
    write_tokenizer_files(out_dir, ranks, chat_template=template)
    (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    return K2Tokenizer.from_dir(out_dir)


def encode(conv: Conversation, tok: K2Tokenizer) -> Example:
    ids = render_chat(conv.messages, tools=conv.tools, add_generation_prompt=False, tokenizer=tok).ids
    return Example(ids, assistant_token_mask(ids, tok))


def make_batches(examples: list[Example], token_budget: int, rng: random.Random) -> list[list[int]]:
    """Batches of example indices with ``rows x longest <= token_budget``: lengths sorted within windows of
    about 64 batches (little padding), then the batches shuffled."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = max(1, 64 * token_budget // 250)
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: len(examples[i].ids))
        cur: list[int] = []
        longest = 0
        for i in chunk:
            n = len(examples[i].ids)
            if cur and max(longest, n) * (len(cur) + 1) > token_budget:
                batches.append(cur)
                cur, longest = [], 0
            cur.append(i)
            longest = max(longest, n)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], idx: list[int], pad_id: int):
    """ids [B, T] (right-padded), valid [B, T], sel [B, T] (positions whose next token carries loss), targets [N]."""
    rows = [examples[i] for i in idx]
    t = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    valid = torch.zeros(len(rows), t, dtype=torch.bool)
    sel = torch.zeros(len(rows), t, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, : len(r.ids)] = torch.tensor(r.ids)
        valid[b, : len(r.ids)] = True
        sel[b, : len(r.ids) - 1] = torch.tensor(r.loss_mask[1:])
    targets = ids[:, 1:][sel[:, :-1]]
    return ids, valid, sel, targets


# ----------------------------------------------------------------------------------------------- model


def train_forward(model: Transformer, ids: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, V]`` at the ``sel [B, T]`` positions: :meth:`Transformer.forward` with lm_head applied there only.

    Right padding needs no mask beyond the causal one: no real token attends to a later pad.
    """
    t = ids.shape[1]
    positions = torch.arange(t)
    cos, sin = rope_cos_sin(model.cfg, positions)
    mask = torch.full((t, t), float("-inf")).triu(1)
    x = model.embed_tokens(ids)
    for blk in model.layers:
        x = blk(x, cos, sin, mask)
    return model.lm_head(model.norm(x)[sel]).float()


def check_train_forward(model: Transformer, ids: torch.Tensor, sel: torch.Tensor) -> float:
    """Max |difference| between :func:`train_forward` and the reference forward at ``sel``; K2Error if > 1e-4."""
    with torch.no_grad():
        diff = (train_forward(model, ids, sel) - model(ids)[sel]).abs().max().item()
    if diff > 1e-4:
        raise K2Error(f"train_forward differs from Transformer.forward by {diff}")
    return diff


class RouterLoads:
    """Counts the experts each MoE layer picks for real (non-pad) tokens, via forward hooks on the routers."""

    def __init__(self, model: Transformer):
        self.moes = [blk.mlp for blk in model.layers if isinstance(blk.mlp, MoE)]
        self.valid: torch.Tensor | None = None
        self.counts = [torch.zeros(m.cfg.n_routed_experts) for m in self.moes]
        for k, moe in enumerate(self.moes):
            moe.gate.register_forward_hook(self._hook(k))

    def _hook(self, k: int):
        def hook(module, inputs, output):
            if self.valid is None or not module.training:
                return
            ids = output[1][self.valid.reshape(-1)]  # [N_real, top_k]
            self.counts[k] += torch.bincount(ids.reshape(-1), minlength=self.counts[k].numel()).float()
        return hook

    @torch.no_grad()
    def update_biases(self, rate: float) -> list[list[float]]:
        """DeepSeek-V3's auxiliary-loss-free balancing: bias += rate * sign(mean load - load); returns the loads."""
        loads = []
        for moe, c in zip(self.moes, self.counts):
            moe.gate.e_score_correction_bias += rate * torch.sign(c.mean() - c)
            loads.append((c / c.sum().clamp(min=1)).tolist())
            c.zero_()
        return loads


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def mean_loss(model: Transformer, examples: list[Example], pad_id: int, token_budget: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for idx in make_batches(examples, token_budget, random.Random(0)):
        ids, _, sel, targets = collate(examples, idx, pad_id)
        total += F.cross_entropy(train_forward(model, ids, sel), targets, reduction="sum").item()
        n += targets.numel()
    model.train()
    return total / n


def train(model: Transformer, train_ex: list[Example], heldout_ex: list[Example], tok: K2Tokenizer, args,
          log_path: Path) -> list[dict]:
    rng = random.Random(args.seed)
    batches = make_batches(train_ex, args.batch_tokens, rng)
    if len(batches) < args.steps:
        raise K2Error(f"{len(batches)} batches for {args.steps} steps: raise --conversations")
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    loads = RouterLoads(model)
    log: list[dict] = []
    model.train()
    t0 = time.perf_counter()
    tokens = 0
    with open(log_path, "w") as logf:
        for step in range(args.steps):
            ids, valid, sel, targets = collate(train_ex, batches[step], tok.pad_id)
            lr = lr_at(step, args.steps, args.lr, args.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            loads.valid = valid
            loss = F.cross_entropy(train_forward(model, ids, sel), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip).item()
            opt.step()
            expert_loads = loads.update_biases(ROUTER_BIAS_RATE)
            tokens += int(valid.sum())
            entry = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr, "grad_norm": round(gnorm, 4),
                     "tokens": tokens, "elapsed_s": round(time.perf_counter() - t0, 2)}
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                entry["heldout_loss"] = round(mean_loss(model, heldout_ex, tok.pad_id, args.batch_tokens), 5)
                entry["expert_load_max"] = round(max(max(x) for x in expert_loads), 4)
                rate = (step + 1) / entry["elapsed_s"]
                print(f"step {step + 1}/{args.steps} loss {entry['loss']:.4f} heldout {entry['heldout_loss']:.4f} "
                      f"lr {lr:.2e} {rate:.2f} steps/s {tokens / entry['elapsed_s']:.0f} tok/s "
                      f"eta {(args.steps - step - 1) / rate / 60:.1f} min", flush=True)
            log.append(entry)
            logf.write(json.dumps(entry) + "\n")
            logf.flush()
            if (step + 1) % (5 * args.eval_every) == 0:  # for looking inside a run that is still going
                torch.save(model.state_dict(), args.workdir / "float_weights_partial.pt")
    model.eval()
    return log


# ----------------------------------------------------------------------------------------------- export, report


def export(model: Transformer, cfg: K2Config, tok_dir: Path, out: Path) -> Path:
    """Write the trained weights block-FP8 in K2's exact layout (2 shards + index + tokenizer files)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}

    def tensor_fn(name: str, shape, kind) -> torch.Tensor:
        return sd[name.removeprefix("model.")]

    write_hf_checkpoint(out=out, cfg=cfg, tensor_fn=tensor_fn, shards=2, force=True, tokenizer_dir=tok_dir)
    report = inspect_checkpoint(out)
    if report.problems:
        raise K2Error(report.problems)
    return out


def weights_digest(model: Transformer) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def plot(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in log]
    loss = [e["loss"] for e in log]
    k = 25
    smooth = [sum(loss[max(0, i - k + 1): i + 1]) / len(loss[max(0, i - k + 1): i + 1]) for i in range(len(loss))]
    held = [(e["step"], e["heldout_loss"]) for e in log if "heldout_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, loss, color="#9ecae1", lw=0.6, label="train (per step)")
    ax.plot(steps, smooth, color="#2171b5", lw=1.4, label=f"train ({k}-step mean)")
    ax.plot([s for s, _ in held], [v for _, v in held], "o-", color="#e6550d", ms=3, lw=1.2,
            label="held-out conversations")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy on assistant tokens (nats)")
    ax.set_title("k2-tiny training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_eval(name: str, model: Transformer, tok: K2Tokenizer, convs: list[Conversation], out: Path) -> EvalReport:
    t0 = time.perf_counter()

    def progress(i: int, n: int) -> None:
        if i % 50 == 0 or i == n:
            print(f"  [{name}] {i}/{n} conversations, {time.perf_counter() - t0:.0f} s", flush=True)

    report = evaluate(reference_generate(model, tok), tok, convs, progress=progress)
    print(f"[{name}] {report.summary()}")
    for f in report.failures:
        print(f"  FAIL {f}")
    out.write_text(json.dumps(report.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "models" / "k2-tiny", help="the FP8 checkpoint to write")
    p.add_argument("--workdir", type=Path, default=REPO / "work_dirs" / "k2-tiny", help="tokenizer, float weights")
    p.add_argument("--docs", type=Path, default=REPO / "docs", help="where k2-tiny.md and its plot go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (reproducible per count); 1 is fastest on a CPU shared with other jobs")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--conversations", type=int, default=0, help="training conversations (0: enough for --steps)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-per-kind", type=int, default=40, help="held-out conversations per kind")
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--skip-train", action="store_true", help="reuse WORKDIR/float_weights.pt")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/ (smoke runs)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.perf_counter()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)

    n_conv = args.conversations or int(args.steps * args.batch_tokens / 200)
    print(f"corpus: {n_conv} training conversations (seed {args.seed})", flush=True)
    train_convs = training_conversations(n_conv, args.seed)
    tok_dir = work / "tokenizer"
    t = time.perf_counter()
    tok = build_tokenizer(train_convs, tok_dir)
    print(f"tokenizer: {tok.base_vocab_size} BPE + {NUM_SPECIAL_TOKENS} special tokens "
          f"({time.perf_counter() - t:.1f} s)", flush=True)
    train_ex = [encode(c, tok) for c in train_convs]
    heldout_ex = [encode(c, tok) for c in conversations(HELDOUT_LOSS_CONVERSATIONS, args.eval_seed, "heldout")]
    n_tok = sum(len(e.ids) for e in train_ex)
    n_loss = sum(sum(e.loss_mask) for e in train_ex)
    print(f"encoded: {n_tok} tokens, {n_loss} with loss, longest {max(len(e.ids) for e in train_ex)}", flush=True)
    train_names = city_names(train_convs)
    heldout_word = re.compile(r"\b(" + "|".join(map(re.escape, HELDOUT_CITIES)) + r")\b")
    leaked = sorted(n for n in train_names if heldout_word.search(n))
    if leaked:
        raise K2Error(f"held-out cities inside training city names: {leaked[:10]}")
    eval_convs = eval_conversations(args.eval_per_kind, args.eval_seed, train_names=train_names)

    cfg = preset_config("tiny", {**MODEL_OVERRIDES, "max_position_embeddings": 4096})
    model = Transformer(cfg, attn_impl="absorb")
    float_path = work / "float_weights.pt"
    log_path = work / "train_log.jsonl"
    if args.skip_train:
        model.load_state_dict(torch.load(float_path))
        log = [json.loads(line) for line in log_path.read_text().splitlines()]
        train_s = None
    else:
        model.init_weights(seed=args.seed, std=0.02)
        ids, _, sel, _ = collate(train_ex, list(range(8)), tok.pad_id)
        print(f"train_forward vs Transformer.forward: max |diff| {check_train_forward(model, ids, sel):.2e}")
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {n_params:,} parameters; training {args.steps} steps on {args.threads} threads", flush=True)
        t = time.perf_counter()
        log = train(model, train_ex, heldout_ex, tok, args, log_path)
        train_s = time.perf_counter() - t
        torch.save(model.state_dict(), float_path)
    digest = weights_digest(model)
    print(f"float weights sha256[:16] {digest}", flush=True)

    model.eval()
    reports: dict[str, EvalReport] = {}
    out = export(model, cfg, tok_dir, args.out)
    training_dir = out / "training"
    training_dir.mkdir(exist_ok=True)
    shutil.copy(log_path, training_dir / "train_log.jsonl")
    reports["float32"] = run_eval("float32 reference", model, tok, eval_convs, training_dir / "eval_float32.json")
    fp8 = Transformer.from_checkpoint(out)
    reports["fp8"] = run_eval("FP8 checkpoint", fp8, K2Tokenizer.from_dir(out), eval_convs,
                              training_dir / "eval_fp8.json")

    ckpt_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    metrics = {
        "seed": args.seed, "threads": args.threads, "steps": args.steps, "batch_tokens": args.batch_tokens,
        "lr": args.lr, "warmup": args.warmup, "weight_decay": args.weight_decay, "eval_seed": args.eval_seed,
        "train_conversations": n_conv, "train_tokens_per_epoch": n_tok, "train_loss_tokens_per_epoch": n_loss,
        "tokens_seen": log[-1]["tokens"], "train_seconds": round(train_s, 1) if train_s else None,
        "final_train_loss_mean_100": round(sum(e["loss"] for e in log[-100:]) / len(log[-100:]), 5),
        "final_heldout_loss": next(e["heldout_loss"] for e in reversed(log) if "heldout_loss" in e),
        "parameters": sum(p.numel() for p in model.parameters()), "checkpoint_bytes": ckpt_bytes,
        "float_weights_sha256_16": digest, "config": MODEL_OVERRIDES,
        "torch": torch.__version__, "python": platform.python_version(),
        "eval": {k: {x: getattr(r, x) for x in ("tool_call_rate", "answer_rate", "no_call_rate", "n_tool_requests",
                                                 "n_no_call", "per_kind")} | {"n_failures": len(r.failures)}
                 for k, r in reports.items()},
    }
    if train_s is None:  # keep the training time of the run that produced the weights
        old = training_dir / "metrics.json"
        if old.is_file():
            metrics["train_seconds"] = json.loads(old.read_text()).get("train_seconds")
    (training_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    if not args.no_docs:
        args.docs.mkdir(exist_ok=True)
        plot(log, args.docs / "k2-tiny-loss.png")
        write_docs(args.docs / "k2-tiny.md", metrics, reports, cfg)
    print(f"done in {(time.perf_counter() - t_start) / 60:.1f} min; passed: "
          f"{ {k: r.passed() for k, r in reports.items()} }")
    return 0 if all(r.passed() for r in reports.values()) else 1


def write_docs(path: Path, m: dict, reports: dict[str, EvalReport], cfg: K2Config) -> None:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    rows = []
    for name, r in (("float32 weights (before export)", reports["float32"]), ("FP8 checkpoint", reports["fp8"])):
        rows.append(f"| {name} | {pct(r.tool_call_rate)} | {pct(r.answer_rate)} | {pct(r.no_call_rate)} |")
    kinds = []
    for kind, e in reports["fp8"].per_kind.items():
        f32 = reports["float32"].per_kind[kind]
        cells = " / ".join(pct(e[k]) for k in ("tool_call_rate", "answer_rate", "no_call_rate") if k in e)
        cells32 = " / ".join(pct(f32[k]) for k in ("tool_call_rate", "answer_rate", "no_call_rate") if k in f32)
        kinds.append(f"| {kind} | {int(e['n'])} | {cells32} | {cells} |")
    failures = reports["fp8"].failures
    fail_text = "\n".join(f"- `{f}`" for f in failures[:20]) or "- none"
    mins = f"{m['train_seconds'] / 60:.0f} min" if m.get("train_seconds") else "n/a"
    text = f"""# k2-tiny: a K2-architecture model trained here that calls tools

`models/k2-tiny/` is a {m['parameters'] / 1e6:.2f} M-parameter model of Kimi-K2's architecture (DeepseekV3: MLA, a
dense first layer, sigmoid-routed MoE with a shared expert and `noaux_tc` selection, yarn RoPE) trained on
this machine's CPU on tool-use conversations in K2's chat format, and stored in **K2's exact Hugging Face
layout**: `config.json` (`model_type kimi_k2`, `quantization_config` fp8 e4m3 [128, 128] dynamic), block-FP8
weights with float32 `weight_scale_inv` (bf16 embeddings, lm_head, norms and routers; fp32
`e_score_correction_bias`), two `model-N-of-2.safetensors` shards with their index, and the tokenizer files
(`tiktoken.model`, `tokenizer_config.json` with K2's 256-id special block after the {BASE_VOCAB}-token BPE,
`chat_template.jinja` in the current K2 format). {m['checkpoint_bytes'] / 1e6:.1f} MB of weights.

It exists so that every stage of k2trt (FP8 checkpoint -> convert -> engine -> Triton -> tool parsing ->
client) can be checked on real behaviour: the Kimi-K2 model card's own example (ask the weather in Beijing
with a `get_weather` tool, run the tool, send `{{"weather": "Sunny"}}` back) ends with an answer that quotes
the tool's result.

## Model

| field | value |
| --- | --- |
| hidden / layers (dense first) | {cfg.hidden_size} / {cfg.num_hidden_layers} ({cfg.first_k_dense_replace}) |
| heads, q_lora / kv_lora, nope / rope / v dims | {cfg.num_attention_heads}, {cfg.q_lora_rank} / {cfg.kv_lora_rank}, {cfg.qk_nope_head_dim} / {cfg.qk_rope_head_dim} / {cfg.v_head_dim} |
| routed experts, top-k, shared | {cfg.n_routed_experts}, {cfg.num_experts_per_tok}, {cfg.n_shared_experts} (moe_intermediate {cfg.moe_intermediate_size}, dense {cfg.intermediate_size}) |
| vocab | {cfg.vocab_size} ({BASE_VOCAB} BPE + 256 special) |
| rope | yarn, factor {cfg.rope_scaling.factor:g}, original {cfg.rope_scaling.original_max_position_embeddings}, theta {cfg.rope_theta:g} |

## Data

`k2trt/corpus.py` generates conversations as OpenAI message lists (seeded) and renders them with
`k2trt.chat.render_chat`, so training text is byte-identical to the prompts a server renders. Tools (as data):
`get_weather` (the model card's declaration, verbatim), `get_time`, `calculate`, `convert_units`. Kinds: one
call (arguments copied or computed from the request: `"17 times 23"` -> `"17 * 23"`, `kilometers` -> `"km"`),
two calls in one section, tool-free turns (greetings, "Please give a brief self-introduction.", small talk) with
and without tools declared, requests for a tool that is not declared (answered without a call), two-exchange
conversations. The model card's exact shape is a third of the weather conversations. Loss is on assistant tokens
only.

Held out for evaluation only: {len(HELDOUT_CITIES)} real cities, synthetic
city names from a different generator stream (checked absent from training), weather conditions never used in
training, numbers from a separate seed, and tool-free phrasings not in the training set.

## Training

`{m['steps']}` steps of about {m['batch_tokens']} padded tokens (AdamW, peak lr {m['lr']:g}, {m['warmup']} warm-up
steps, cosine to 10%, weight decay {m['weight_decay']}, clip 1.0), {m['tokens_seen'] / 1e6:.1f} M tokens, seed
{m['seed']}, {m['threads']} torch threads: **{mins}** on this machine's 2 shared CPU cores. Router balancing is
DeepSeek-V3's auxiliary-loss-free bias update (rate {ROUTER_BIAS_RATE}). Final loss on assistant tokens: train
{m['final_train_loss_mean_100']:.4f} (mean of the last 100 steps), held-out {m['final_heldout_loss']:.4f}.

![loss curves](k2-tiny-loss.png)

## Evaluation (held-out, greedy, `k2trt/tiny_eval.py`)

{reports['fp8'].n_tool_requests} tool requests and {reports['fp8'].n_no_call} prompts that need no call. A call is
right when names and JSON arguments equal the expected ones exactly; an answer is right when it makes no call
and contains every value of the tool results; a no-call prompt is right when the answer is text without any
tool-call section. The FP8 checkpoint is evaluated as `Transformer.from_checkpoint` loads it (dequantized).

| weights | tool call exactly right | answer contains the tool values | no call when none needed |
| --- | --- | --- | --- |
{chr(10).join(rows)}

Per kind (float32 / FP8; call / answer or no-call rate):

| kind | n | float32 | FP8 |
| --- | --- | --- | --- |
{chr(10).join(kinds)}

Failures of the FP8 checkpoint ({len(failures)}; all cases are in `models/k2-tiny/training/eval_*.json`):

{fail_text}

## Reproduce

```
.venv/bin/python scripts/train_tiny.py --seed {m['seed']} --threads {m['threads']} --steps {m['steps']}
```

Same seed and thread count -> the same float weights (sha256 prefix `{m['float_weights_sha256_16']}`) and the
same figures. `--skip-train` re-exports and re-evaluates the saved float weights.
"""
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
