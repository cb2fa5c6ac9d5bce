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
5. evaluation (:mod:`k2trt.tiny_eval`) on held-out conversations, greedy, with the trained float32 weights, with
   the FP8 checkpoint as :meth:`Transformer.from_checkpoint` loads it, and (``--stack-eval``) after ``convert``
   (tp 2, ep 2) through tritonserver; loss plot and ``docs/k2-tiny.md``.

Options for teaching the model to copy (off by default; the shipped model's command line is in docs/k2-tiny.md):
``--copy-warmup-steps`` (a first stage of synthetic copying rows), ``--copy-rows`` (such rows beside every
conversation batch), ``--copy-kind`` (:func:`copy_example`, :func:`cued_copy_example`, :func:`induction_example`),
``--induction-pool`` and ``--induction-repeats`` (the stage-2 induction rows also draw the vocabulary's word pieces,
:func:`word_pieces`; some of their spans repeat a token),
``--value-weight`` and ``--value-ends`` (the tokens that copy a value, and the one after it, weigh more in the
loss, :func:`copied_positions`), ``--rich-after``, ``--rich-declare``, ``--announce``, ``--answers``,
``--value-topics``, ``--made-up-topics`` and ``--varied-chat`` (switch to the rich corpus, how many tools it
declares, whether replies name the needed tool first, where answers quote the value, whether the chat topics a reply
repeats weigh as values, whether some are made-up words, whether some tool-free turns are reworded,
:func:`conversation_batches`),
``--decision-weight`` / ``--decision-after`` (each turn's first token, an announcement and the called tools' names
weigh more, :func:`decision_positions`), ``--freeze-attn`` (the attention
weights stay as the copying stage left them for the first conversation steps, :func:`set_attention_trainable`),
and ``--average-last`` (ship the mean of the last steps' weights, :class:`WeightAverage`).

Reproducible: everything is seeded, torch runs deterministic algorithms on a fixed thread count, so the same
``--seed`` and ``--threads`` give the same weights and the same evaluation figures.

Training-only speed-ups: :func:`train_forward` runs the reference model's own blocks with ``lm_head`` applied only at
the positions that carry loss (a third of them), and ``--train-attn sdpa`` computes MLA through torch's
``scaled_dot_product_attention`` (docs/perf/train_attn.md); both are checked against ``Transformer.forward`` with the
runtime's absorbed attention before training.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import hashlib
import itertools
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
    ANNOUNCEMENT,
    ANSWER_ORDERS,
    DECLARE_MODES,
    HELDOUT_CITIES,
    Conversation,
    assistant_token_mask,
    city_names,
    conversations,
    eval_conversations,
    training_conversations,
    value_text,
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
BPE_SPACES = ("cut", "lowercase")  # which words merges may join their leading space to (bpe_training_pieces)
ROUTER_BIAS_RATE = 0.001  # DeepSeek-V3's bias update speed (gamma)
_SPECIAL_RE = re.compile("|".join(re.escape(n) for n in K2_NAMED_SPECIAL_OFFSETS.values()))


# ----------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    ids: list[int]
    loss_mask: list[bool]  # loss_mask[i]: ids[i] is written by the assistant (predicted from ids[:i])
    copied: tuple[int, ...] = ()  # positions of assistant tokens that copy a value (weighted by --value-weight)
    ends: tuple[int, ...] = ()  # the assistant token right after each copied value (weighted with --value-ends)
    decisions: tuple[int, ...] = ()  # each assistant turn's first token and called tools' names (--decision-weight)


def bpe_training_pieces(texts: list[str], spaces: str = "cut") -> list[str]:
    """Kimi's pre-tokenizer pieces of ``texts`` with a leading space or punctuation mark cut off a word.

    Kimi's pattern glues one leading non-letter to a word (`` Beijing``) but not after ``: "`` in JSON
    (``Beijing``), so with ordinary merges a name is different tokens in the user's words, in the call's
    arguments and in the answer, and a model must learn to re-spell every name it copies. Training the merges
    on cut pieces means no token joins a space to a letter: tiktoken then encodes `` Beijing`` as
    ``' ' + 'Beijing'``, the same word tokens as in JSON, and copying is copying. The file format, the
    pre-tokenizer and the encoder are unchanged; only the choice of merges differs.

    ``spaces="lowercase"`` cuts the space off capitalised words only, so `` today`` or `` fog`` is one piece and
    a bare ``' '`` token always comes before a capital, a digit or a symbol. Where a copied name ends is then
    decided by the one token after it (`` today``: stop; ``' '``: ``Lake`` follows), not by the token after
    next, which an induction head does not see (names ran on into the next word: runs V and W)."""
    if spaces not in BPE_SPACES:
        raise K2Error(f"spaces must be one of {BPE_SPACES}, got {spaces!r}")
    out = []
    for text in texts:
        for p in _SPECIAL_RE.split(text):
            for piece in pretokenize(p):
                cut = len(piece) > 1 and not piece[0].isalnum() and piece[1].isalpha()
                if cut and not (spaces == "lowercase" and piece[0] == " " and piece[1].islower()):
                    out += [piece[0], piece[1:]]
                else:
                    out.append(piece)
    return out


def build_tokenizer(train: list[Conversation], out_dir: Path, spaces: str = "cut") -> K2Tokenizer:
    """Train the BPE on the training conversations' text (special markers cut out) and write K2's files."""
    texts = [render_chat(c.messages, tools=c.tools, add_generation_prompt=False).text
             for c in train[:BPE_CONVERSATIONS]]
    ranks = train_bpe(bpe_training_pieces(texts, spaces), BASE_VOCAB)
    template = default_chat_template()
    write_tokenizer_files(out_dir, ranks, chat_template=template)
    (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    return K2Tokenizer.from_dir(out_dir)


def encode(conv: Conversation, tok: K2Tokenizer, topics: bool = False) -> Example:
    ids = render_chat(conv.messages, tools=conv.tools, add_generation_prompt=False, tokenizer=tok).ids
    mask = assistant_token_mask(ids, tok)
    return Example(ids, mask, *copied_positions(conv, ids, mask, tok, topics), decision_positions(ids, mask, tok))


def decision_positions(ids: list[int], mask: list[bool], tok: K2Tokenizer) -> tuple[int, ...]:
    """The assistant positions where it decides what to do: the first token of each turn (a call section or text:
    the no-call rate), the tokens of a turn-opening :data:`~k2trt.corpus.ANNOUNCEMENT` (the needed tool's name,
    then ``available`` or ``not``: the same decision, spelled out), and the tokens of each called tool's name, up
    to ``<|tool_call_argument_begin|>`` (the right tool among those declared). A few tokens a turn, against the
    dozens of template and answer text around them, so ``--decision-weight`` weighs them more."""
    arg_begin = tok.special_id("<|tool_call_argument_begin|>")
    out = []
    for i in range(1, len(ids)):
        if mask[i] and not mask[i - 1]:
            out.append(i)
            head = bytearray()  # an announcement: its tokens up to the one that ends the verdict
            for j in range(i, min(len(ids), i + 24)):
                if not mask[j]:
                    break
                head += tok.token_bytes(ids[j])
                if not (head[:1].islower() or head[:1] == b"_"):  # a call section or a capitalised reply: none
                    break
                if ANNOUNCEMENT.match(head.decode("utf-8", "replace")):
                    out.extend(range(i + 1, j + 1))
                    break
        elif mask[i] and ids[i - 1] == tok.tool_call_begin_id:
            j = i
            while j < len(ids) and mask[j] and ids[j] != arg_begin:
                out.append(j)
                j += 1
    return tuple(out)


def copied_positions(conv: Conversation, ids: list[int], mask: list[bool], tok: K2Tokenizer,
                     topics: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(assistant positions inside a copied value, the assistant positions right after one).

    Copied values are a call's argument values, the cities and the result values the answer quotes: a few tokens
    of each conversation, and the skill the evaluation measures, so the loss weighs them more (``--value-weight``)
    than the template text around them. The token after a value (``"`` closing an argument, ``.`` ending an
    answer) is where copying must stop; a model that learned to copy but not to stop writes ``"313 * 49.`` for
    ``Calculate 313 * 49.`` (``--value-ends`` weighs it as a copied token).

    ``topics``: the chat topics a tool-free reply repeats (``Happy to talk about chess!``) are values too. Only
    arguments ended by ``"`` weighed as ends, a model wrote a call's closing ``"}`` after a word it had copied into
    a chat reply (``Waves foldtumn"}<|tool_call_end|>``, run Z7)."""
    values = {value_text(v) for _, args in conv.calls for v in args.values()}
    values |= set(conv.answer_values) | set(conv.cities) | (set(conv.topics) if topics else set())
    needles = [v.encode() for v in values if v]
    out: set[int] = set()
    ends: set[int] = set()
    i = 0
    while i < len(ids):  # each assistant turn: search its bytes, not its tokens (BPE splits a value by context)
        if not mask[i]:
            i += 1
            continue
        j = i
        while j < len(ids) and mask[j]:
            j += 1
        starts, buf = [], bytearray()
        for t in ids[i:j]:
            starts.append(len(buf))
            buf += tok.token_bytes(t)
        for needle in needles:
            at = buf.find(needle)
            while at >= 0:
                a = bisect.bisect_right(starts, at) - 1
                # a value starts a token, or follows only spaces in it (`` -12°C``): ``3`` in ``38`` is no copy of 3
                if not buf[starts[a]:at].strip():
                    b = bisect.bisect_left(starts, at + len(needle))
                    out.update(range(i + a, i + b))
                    if i + b < j:
                        ends.add(i + b)
                at = buf.find(needle, at + 1)
        i = j
    return tuple(sorted(out)), tuple(sorted(ends - out))


COPY_MARK_OFFSET = 100
COPY_CUE_OFFSET = 101
"""Reserved special tokens (base vocabulary + 100 and + 101, ``<|reserved_token_{id}|>``) that mark the repeat
and the span to repeat in the copying rows; the conversations never use them."""


def copy_example(rng: random.Random, vocab: int) -> Example:
    """A synthetic copying row: 8-24 random tokens, a marker, the same tokens again; loss on the repeat.

    Why: every tool call and answer copies a name or a number, and copying an unseen multi-token name needs an
    induction head (attend to where the current token occurred before, write what followed it). Trained on the
    conversations alone this model never found one: it wrote the first piece of a held-out name and then
    invented the rest (``"city": "Ul"`` for Ulaanbaatar, after 4,000 steps). On rows that are nothing but a
    repeat it does within a few hundred steps (99% of the repeated tokens right after 600, lr 1e-3; random
    prefixes with a short repeated span, a weaker signal per row, had not after 1,500). Every token id is drawn,
    so every embedding and output row learns to be copied.
    """
    span = [rng.randrange(vocab) for _ in range(rng.randint(8, 24))]
    ids = span + [vocab + COPY_MARK_OFFSET] + span
    return Example(ids, [False] * (len(span) + 1) + [True] * len(span))


def cued_copy_example(rng: random.Random, vocab: int) -> Example:
    """A copying row where the span must be found by content: random tokens, a cue token, a span of 4-16, more
    random tokens, the marker, the span again (loss on all of it).

    Why: in a tool call the first token of an argument is found by what precedes it in the request (the city
    after "in"), not by position, and the rest follows by induction. :func:`copy_example` rows teach the
    induction; these teach the look-up too.
    """
    span = [rng.randrange(vocab) for _ in range(rng.randint(4, 16))]
    ids = ([rng.randrange(vocab) for _ in range(rng.randint(0, 16))] + [vocab + COPY_CUE_OFFSET] + span
           + [rng.randrange(vocab) for _ in range(rng.randint(0, 16))] + [vocab + COPY_MARK_OFFSET])
    return Example(ids + span, [False] * len(ids) + [True] * len(span))


def induction_example(rng: random.Random, pool: list[int], repeats: float = 0.0) -> Example:
    """An induction row: tokens drawn uniformly from ``pool``, in which a span of 4-12 occurs twice (0-16 tokens
    before it, 2-24 between); loss on the second occurrence after its first token, which nothing predicts.
    With probability ``repeats`` one token of the span is a copy of an earlier one of it.

    Why: past the first token, copying a name is induction (find where the current token occurred before, write
    what followed it), and unlike :func:`copy_example` rows (a marker, then the whole row again) nothing here can
    be solved by position. The pool is the distinct tokens that copied values are made of (letters, name pieces,
    digits), drawn uniformly: drawn in their corpus proportions, spans repeat the space and the digits so often
    that "what followed the current token" is ambiguous, and no head formed in 2,000 steps (runs P and Q in
    docs/k2-tiny.md).

    Why ``repeats``: a span of distinct tokens is copied by "what followed the current token", but after a token
    that occurs twice in a value that is two answers: ``Ljubljubljana`` (``j`` twice), ``Ade`` for ``Adelaide``
    (``de``), ``Knseipolis`` for ``Knseiipolis``, ``69 - 38 - 38 - 89`` for ``69 - 38 - 89``. Of the 37 held-out
    weather, time and calculator calls whose value repeats a token, runs Z16 and Z19 got 15 and 13 wrong; of the
    119 others, 6 and 4. In these rows the token before the current one decides.
    """
    def draw(lo: int, hi: int) -> list[int]:
        return [rng.choice(pool) for _ in range(rng.randint(lo, hi))]

    span = draw(4, 12)
    if repeats and rng.random() < repeats:  # no draw without the option: earlier runs' rows are unchanged
        j = rng.randrange(1, len(span))
        span[j] = span[rng.randrange(j)]
    head, middle = draw(0, 16), draw(2, 24)
    ids = head + span + middle + span
    return Example(ids, [False] * (len(ids) - len(span) + 1) + [True] * (len(span) - 1))


def copy_pools(examples: list[Example], warm_vocab: int) -> tuple[list[int], list[int]]:
    """(every distinct token at a copied position, the ``warm_vocab`` most frequent of them): the induction rows'
    pools after and during the copying stage. Why a small pool first: the tiny model forms an induction head on
    64 token kinds within about 900 steps; on the full pool it had not after 2,000 (docs/k2-tiny.md)."""
    counts = collections.Counter(e.ids[p] for e in examples for p in e.copied)
    return sorted(counts), sorted(t for t, _ in counts.most_common(warm_vocab))


WORD_PIECE = re.compile(r" ?[A-Za-z0-9]+")


def word_pieces(tok: K2Tokenizer) -> list[int]:
    """Every base-vocabulary token that is letters or digits (with or without a leading space): the pieces any
    name or number can be made of.

    Why: the induction rows' pool is the tokens at copied positions of the training corpus, and held-out names
    are made of pieces that are not among them (``Vien`` of Vientiane, ``alt`` of Salt Lake City, ``Dal`` of
    Dalian). Those output rows never learn to be copied: runs Z10, Z16, Z17 and Z19 got 13 of their 16 such
    held-out weather, time and calculator calls wrong (pieces counted against 20,000 training conversations), and
    6-21 of the 156 others. Run Z21, with them in its pool, got every weather and time call right."""
    return [i for i in range(tok.base_vocab_size) if WORD_PIECE.fullmatch(tok.decode([i]))]


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


def conversation_batches(plain: list[Example], rich: list[Example], token_budget: int, seed: int,
                         rich_after: int) -> tuple[list[Example], list[list[int]]]:
    """(examples, the batches of stage 2 as indices into them): ``rich_after`` batches of the plain
    conversations (the same ones a run without rich conversations starts with), then batches of the rich ones
    (``rich_after`` 0: plain only)."""
    batches = make_batches(plain, token_budget, random.Random(seed))
    if not rich_after:
        return plain, batches
    rich_batches = make_batches(rich, token_budget, random.Random(seed + 2))
    return plain + rich, batches[:rich_after] + [[len(plain) + i for i in b] for b in rich_batches]


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


def loss_weights(examples: list[Example], idx: list[int], sel: torch.Tensor, weight: float,
                 ends: bool = False, decision_weight: float = 1.0) -> torch.Tensor:
    """Per-target weights in ``collate``'s order: ``weight`` for copied positions (and the ends of copied values
    with ``ends``), ``decision_weight`` for decision positions, 1 elsewhere."""
    w = torch.ones(sel.shape)
    for b, i in enumerate(idx):  # sel[b, pos - 1] predicts ids[b, pos]
        for pos in examples[i].decisions if decision_weight != 1 else ():
            w[b, pos - 1] = decision_weight
        for pos in examples[i].copied + (examples[i].ends if ends else ()):
            w[b, pos - 1] = weight
    return w[sel]


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
    """Max |difference| between :func:`train_forward` (the model's attention) and the reference forward with
    absorbed attention (the runtime's) at ``sel``; K2Error if > 1e-4."""
    impl = model.layers[0].self_attn.attn_impl
    with torch.no_grad():
        fast = train_forward(model, ids, sel)
        model.set_attn_impl("absorb")
        try:
            diff = (fast - model(ids)[sel]).abs().max().item()
        finally:
            model.set_attn_impl(impl)
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


def lr_at(step: int, args, warm: int) -> float:
    """Stage 1 (copying, ``warm`` steps): linear warm-up to ``copy_lr``, held. Stage 2 (conversations): ``lr``
    with a linear warm-up, cosine down to 10% at its last step."""
    if step < warm:
        return args.copy_lr * min(1.0, (step + 1) / args.warmup)
    step -= warm
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


COPY_UNTIL_WINDOW = 50
"""Stage-1 steps whose mean copying loss ``--copy-until`` compares."""


def stage_one_done(log: list[dict], args) -> bool:
    """Whether the copying stage may end after the last step of ``log`` (its entries so far): always without
    ``--copy-until``; with it, once the copying loss of the last :data:`COPY_UNTIL_WINDOW` steps averages below
    that value, or at ``--copy-max-steps``.

    Why: the induction head forms suddenly, at a step that depends on the seed, and a conversation stage that starts
    without one never formed one in any run. The shipped run (seed 0) crossed a copying loss of 1.0 at step 1,130 of
    its 1,200 (the last 50 averaged 0.4); the same command line with seed 1 was at 3.8 after 1,200, and 400
    conversation steps later its copying rows were at 7.0, no better than chance (run Z13, docs/k2-tiny.md).
    Needed, not enough: with it seed 1's head formed, but it did not carry over to the conversation stage, whose rows
    draw from every copied token (runs Z14 and Z15)."""
    if not args.copy_until or len(log) >= args.copy_max_steps:
        return True
    recent = [e["copy_loss"] for e in log[-COPY_UNTIL_WINDOW:]]
    return sum(recent) / len(recent) < args.copy_until


class WeightAverage:
    """The uniform mean of a model's state (its weights and router biases) over snapshots, added in step order.

    Why: the end of a run samples one point of the noise that the last steps still add, and runs of one recipe
    scored several points apart (Z10, Z16, Z17 in docs/k2-tiny.md). Averaging the weights of the last steps
    (Polyak averaging; checkpoint averaging in translation models; SWA, Izmailov et al. 2018) lands nearer the
    middle of that noise, for no training time. Sums in float32, in the order added: the same snapshots give the same
    bits, whether added during the run or loaded afterwards."""

    def __init__(self) -> None:
        self.total: dict[str, torch.Tensor] = {}
        self.count = 0

    @torch.no_grad()
    def add(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            if k in self.total:
                self.total[k] += v
            else:
                self.total[k] = v.detach().clone()
        self.count += 1

    def mean(self) -> dict[str, torch.Tensor]:
        if not self.count:
            raise K2Error("no weights to average")
        return {k: v / self.count for k, v in self.total.items()}


def averaged_step(step: int, total: int, args) -> bool:
    """Whether the weights after ``step`` (1-based) join the average: every ``--average-every`` steps of the last
    ``--average-last``, counted back from the last step (which always does)."""
    left = total - step
    return bool(args.average_last) and left < args.average_last and left % args.average_every == 0


def set_attention_trainable(model: Transformer, trainable: bool) -> None:
    """Whether the optimizer updates the attention weights (AdamW leaves a parameter without a gradient alone)."""
    for blk in model.layers:
        blk.self_attn.requires_grad_(trainable)


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
          log_path: Path, rich_ex: list[Example] | None = None) -> list[dict]:
    pool_ex = train_ex  # the induction rows' tokens: those of the plain corpus, also after the switch
    train_ex, batches = conversation_batches(train_ex, rich_ex or [], args.batch_tokens, args.seed, args.rich_after)
    warm = args.copy_warmup_steps  # grows while --copy-until is not met (stage_one_done)
    if len(batches) < args.steps:
        raise K2Error(f"{len(batches)} batches for {args.steps} steps: raise --conversations")
    warm_rng = random.Random(args.seed + 1)
    if args.copy_kind == "induction":
        pool, warm_pool = copy_pools(pool_ex, args.induction_warmup_vocab)
        if args.induction_pool == "pieces":
            pool = sorted(set(pool) | set(word_pieces(tok)))
        # stage 1 keeps its plain rows: the head forms on those (repeats make "what followed" ambiguous)
        make_row = lambda rng, warm: (induction_example(rng, warm_pool) if warm  # noqa: E731
                                      else induction_example(rng, pool, args.induction_repeats))
    else:
        make = cued_copy_example if args.copy_kind == "cued" else copy_example
        make_row = lambda rng, warm: make(rng, tok.base_vocab_size)  # noqa: E731
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    loads = RouterLoads(model)
    average = WeightAverage()
    log: list[dict] = []
    model.train()
    t0 = time.perf_counter()
    tokens = 0
    with open(log_path, "w") as logf:
        for step in itertools.count():
            if step == warm + args.steps:  # not a range: --copy-until may lengthen stage 1 as it goes
                break
            lr = lr_at(step, args, warm)
            for g in opt.param_groups:
                g["lr"] = lr
            set_attention_trainable(model, not warm <= step < warm + args.freeze_attn)
            if step < warm:
                n_rows = args.copy_rows_warmup
            elif args.copy_rows_steps and step >= warm + args.copy_rows_steps:
                n_rows = 0
            else:
                n_rows = args.copy_rows
            copy_rows = [make_row(warm_rng, step < warm) for _ in range(n_rows)]
            loss = copy_loss = objective_conv = None
            if copy_rows:
                ids, valid, sel, targets = collate(copy_rows, list(range(len(copy_rows))), tok.pad_id)
                loads.valid = valid
                copy_loss = F.cross_entropy(train_forward(model, ids, sel), targets)
                tokens += int(valid.sum())
            if step >= warm:  # stage 2: the conversations (beside --copy-rows copying rows, if any)
                idx = batches[step - warm]
                ids, valid, sel, targets = collate(train_ex, idx, tok.pad_id)
                loads.valid = valid
                logits = train_forward(model, ids, sel)
                # the steps before --decision-after are a run's without the weight: the copying head is rebuilt there
                decision_weight = args.decision_weight if step >= warm + args.decision_after else 1.0
                if args.value_weight == 1 and decision_weight == 1:
                    loss = objective_conv = F.cross_entropy(logits, targets)
                else:
                    per_token = F.cross_entropy(logits, targets, reduction="none")
                    loss = per_token.detach().mean()  # logged: the plain mean, comparable across runs
                    w = loss_weights(train_ex, idx, sel, args.value_weight, args.value_ends, decision_weight)
                    objective_conv = (per_token * w).sum() / w.sum()
                tokens += int(valid.sum())
            objective = (objective_conv if copy_loss is None else copy_loss if loss is None
                         else objective_conv + copy_loss)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip).item()
            opt.step()
            expert_loads = loads.update_biases(ROUTER_BIAS_RATE)
            entry = {"step": step + 1, "stage": 1 if step < warm else 2, "lr": lr,
                     **({"rich": True} if args.rich_after and step >= warm + args.rich_after else {}),
                     "grad_norm": round(gnorm, 4),
                     "tokens": tokens, "elapsed_s": round(time.perf_counter() - t0, 2)}
            if loss is not None:
                entry["loss"] = round(loss.item(), 5)
            if copy_loss is not None:
                entry["copy_loss"] = round(copy_loss.item(), 5)
            log.append(entry)  # the held-out figures below are added to this same dict
            if step + 1 == warm and not stage_one_done(log, args):
                warm += 1
            total = warm + args.steps
            if averaged_step(step + 1, total, args):
                average.add(model.state_dict())
            if (step + 1) % args.eval_every == 0 or step + 1 == total:
                entry["heldout_loss"] = round(mean_loss(model, heldout_ex, tok.pad_id, args.batch_tokens), 5)
                entry["expert_load_max"] = round(max(max(x) for x in expert_loads), 4)
                rate = (step + 1) / entry["elapsed_s"]
                losses = "".join(f"{k} {entry[k]:.4f} " for k in ("loss", "copy_loss") if k in entry)
                print(f"step {step + 1}/{total} (stage {entry['stage']}) {losses}"
                      f"heldout {entry['heldout_loss']:.4f} lr {lr:.2e} {rate:.2f} steps/s "
                      f"{tokens / entry['elapsed_s']:.0f} tok/s eta {(total - step - 1) / rate / 60:.1f} min",
                      flush=True)
            logf.write(json.dumps(entry) + "\n")
            logf.flush()
            if (step + 1) % (5 * args.eval_every) == 0:  # for looking inside a run that is still going
                torch.save(model.state_dict(), args.workdir / "float_weights_partial.pt")
    if average.count:
        torch.save(model.state_dict(), args.workdir / "float_weights_last.pt")  # the last step's, for comparison
        model.load_state_dict(average.mean())
        print(f"weights: the mean of {average.count} snapshots, every {args.average_every} of the last "
              f"{args.average_last} steps", flush=True)
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


def stack_eval(ckpt: Path, work: Path, convs: list[Conversation], out: Path) -> EvalReport:
    """The same evaluation through the deployed stack: the FP8 checkpoint converted for tp 2 / ep 2 (``bf16``:
    this model's widths are not multiples of 128, so a tp split would cut FP8 blocks), a torch engine of world
    size 2 (two processes, torch.distributed), served by tritonserver; greedy requests to its ``tensorrt_llm``
    model over gRPC."""
    from k2trt.convert import convert
    from k2trt.runtime.engine_dir import RuntimeConfig, build_torch_engine
    from k2trt.serving.client import ChatClient
    from k2trt.serving.server import start_local_server
    from k2trt.serving.settings import settings_for_engine, write_repo
    from k2trt.tiny_eval import triton_generate

    if work.exists():
        shutil.rmtree(work)
    conv = convert(checkpoint=ckpt, out=work / "trtllm-tp2-ep2", tp=2, ep=2, weights="bf16", progress=False).out
    engine = build_torch_engine(converted=conv, out=work / "engine", tokenizer_dir=ckpt,
                                runtime=RuntimeConfig(max_batch_size=4, max_seq_len=1024, kv_cache_tokens=8192))
    repo = write_repo(settings=settings_for_engine(engine, served_model_name="k2-tiny"), out=work / "repo")
    server = start_local_server(repo, log_path=work / "tritonserver.log")
    try:
        with ChatClient(server.grpc_url) as client:
            tok = K2Tokenizer.from_dir(ckpt)
            return run_eval("tritonserver, tp 2 ep 2", triton_generate(client, tok), tok, convs, out)
    finally:
        server.stop()


def _training_args(argv: list[str]) -> str:
    """The command line's arguments that shape the model (not where files go, not --skip-train)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--out", "--workdir", "--docs"):
            skip = True
        elif not a.startswith(("--out=", "--workdir=", "--docs=", "--skip-train", "--no-docs")):
            out.append(a)
    return " ".join(out)


def _tail_mean(log: list[dict], key: str, n: int = 100) -> float | None:
    values = [e[key] for e in log if key in e][-n:]
    return round(sum(values) / len(values), 5) if values else None


def plot(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = 25
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for key, light, dark, what in (("copy_loss", "#d9d9d9", "#636363", "copying rows"),
                                   ("loss", "#9ecae1", "#2171b5", "conversations")):
        part = [e for e in log if key in e]
        if not part:
            continue
        steps = [e["step"] for e in part]
        loss = [e[key] for e in part]
        smooth = [sum(loss[max(0, i - k + 1): i + 1]) / len(loss[max(0, i - k + 1): i + 1]) for i in range(len(loss))]
        ax.plot(steps, loss, color=light, lw=0.5)
        ax.plot(steps, smooth, color=dark, lw=1.4, label=f"train: {what} ({k}-step mean)")
    held = [(e["step"], e["heldout_loss"]) for e in log if "heldout_loss" in e]
    ax.plot([s for s, _ in held], [v for _, v in held], "o-", color="#e6550d", ms=3, lw=1.2,
            label="held-out conversations")
    stage2 = next((e["step"] for e in log if e["stage"] == 2), None)
    rich = next((e["step"] for e in log if e.get("rich")), None)
    for step, what in ((stage2, "conversations start"), (rich, "rich corpus from here")):
        if step is not None:
            ax.axvline(step, color="#969696", ls="--", lw=0.8)
            ax.annotate(what, (step, 0.02), xycoords=("data", "axes fraction"), rotation=90, va="bottom", ha="right",
                        fontsize=7, color="#636363")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy on assistant tokens (nats)")
    ax.set_title("k2-tiny training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_eval(name: str, generate, tok: K2Tokenizer, convs: list[Conversation], out: Path) -> EvalReport:
    t0 = time.perf_counter()

    def progress(i: int, n: int) -> None:
        if i % 50 == 0 or i == n:
            print(f"  [{name}] {i}/{n} conversations, {time.perf_counter() - t0:.0f} s", flush=True)

    report = evaluate(generate, tok, convs, progress=progress)
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
    p.add_argument("--steps", type=int, default=4000, help="conversation steps (stage 2)")
    p.add_argument("--conversations", type=int, default=0, help="training conversations (0: enough for --steps)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate on the conversations")
    p.add_argument("--copy-lr", type=float, default=1e-3,
                   help="stage 1 learning rate (at 3e-3 this model never formed an induction head)")
    p.add_argument("--copy-warmup-steps", type=int, default=0,
                   help="stage 1: steps of copying rows only, before the conversations (0: none)")
    p.add_argument("--copy-until", type=float, default=0.0, metavar="LOSS",
                   help="stage 1 goes on past --copy-warmup-steps until the copying loss of its last "
                        f"{COPY_UNTIL_WINDOW} steps averages below LOSS (the induction head has formed); 0: exactly "
                        "--copy-warmup-steps")
    p.add_argument("--copy-max-steps", type=int, default=4000, help="stage 1's length at most, with --copy-until")
    p.add_argument("--copy-rows-warmup", type=int, default=64, help="copying rows per stage-1 step")
    p.add_argument("--copy-rows", type=int, default=0, help="copying rows per stage-2 step, beside the conversations")
    p.add_argument("--copy-rows-steps", type=int, default=0,
                   help="the --copy-rows go with the first this many conversation steps only (0: all): the steps "
                        "after run 1.26x faster, but run Z17 then lost rare held-out pieces (docs/k2-tiny.md)")
    p.add_argument("--induction-warmup-vocab", type=int, default=64,
                   help="induction rows of the copying stage draw from the most frequent copied tokens, this many")
    p.add_argument("--induction-pool", choices=("copied", "pieces"), default="copied",
                   help="stage-2 induction rows draw from the tokens at copied positions of the corpus, or also "
                        "from every letter and digit token of the vocabulary (word_pieces)")
    p.add_argument("--induction-repeats", type=float, default=0.0, metavar="P",
                   help="stage-2 induction rows whose span repeats one of its tokens, this share (induction_example)")
    p.add_argument("--rich-after", type=int, default=0,
                   help="conversation steps after this many draw from the rich corpus (training_conversations("
                        "rich=True): values of more shapes); 0: never")
    p.add_argument("--rich-declare", choices=DECLARE_MODES, default="few",
                   help="how many tools the rich corpus declares beside the needed ones (training_conversations("
                        "declare=...)); other than few needs --rich-after")
    p.add_argument("--value-weight", type=float, default=1.0,
                   help="loss weight of assistant tokens that copy a value (copied_positions); 1: plain mean")
    p.add_argument("--value-ends", action="store_true",
                   help="weigh the token right after each copied value (where copying stops) as a copied one")
    p.add_argument("--announce", action="store_true",
                   help="rich corpus replies to tool requests open by naming the needed tool and whether it is "
                        "declared (k2trt.corpus.announcement)")
    p.add_argument("--answers", choices=ANSWER_ORDERS, default="mixed",
                   help="where the rich corpus's weather and time answers quote the value (training_conversations("
                        "answers=...)); other than mixed needs --rich-after")
    p.add_argument("--value-topics", action="store_true",
                   help="in the rich corpus, the chat topics a reply repeats weigh as copied values "
                        "(copied_positions(topics=True)); needs --rich-after and --value-weight")
    p.add_argument("--made-up-topics", action="store_true",
                   help="a third of the rich corpus's chat topics are made-up words of several tokens "
                        "(training_conversations(made_up_topics=True)); needs --rich-after")
    p.add_argument("--varied-chat", action="store_true",
                   help="a third of the rich corpus's tool-free user turns are reworded as requests, behind "
                        "greetings, or small talk (training_conversations(varied_chat=True)); needs --rich-after")
    p.add_argument("--decision-weight", type=float, default=1.0,
                   help="loss weight of each assistant turn's first token, of an announcement and of called "
                        "tools' names (decision_positions); 1: unweighted")
    p.add_argument("--decision-after", type=int, default=0,
                   help="conversation steps after this many weigh decisions with --decision-weight")
    p.add_argument("--freeze-attn", type=int, default=0,
                   help="the first this many conversation steps leave the attention weights as the copying stage "
                        "left them (set_attention_trainable): the rest of the model learns around its copying head")
    p.add_argument("--copy-kind", choices=("repeat", "cued", "induction"), default="repeat",
                   help="copying rows: a marked repeat (copy_example), a cued span (cued_copy_example), or a span "
                        "repeated at a random distance (induction_example)")
    p.add_argument("--bpe-spaces", choices=BPE_SPACES, default="cut",
                   help="cut: no token joins a leading space to a word; lowercase: lowercase words keep theirs "
                        "(bpe_training_pieces)")
    p.add_argument("--train-attn", choices=("absorb", "sdpa"), default="absorb",
                   help="attention while training (MLA attn_impl): sdpa is about 1.2x faster on a CPU "
                        "(docs/perf/train_attn.md); absorb reproduces runs before it (different rounding, so "
                        "different weights)")
    p.add_argument("--init", choices=("normal", "fan-in"), default="normal",
                   help="fresh weights: normal(0, 0.02), or scaled by fan-in (Transformer.init_weights)")
    p.add_argument("--average-last", type=int, default=0, metavar="N",
                   help="ship the mean of the weights over the last N conversation steps (WeightAverage; 0: the last "
                        "step's)")
    p.add_argument("--average-every", type=int, default=50, metavar="K", help="with --average-last: a snapshot every K")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-per-kind", type=int, default=40, help="held-out conversations per kind")
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--stack-eval", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate after convert (tp 2, ep 2) through tritonserver")
    p.add_argument("--skip-train", action="store_true", help="reuse WORKDIR/float_weights.pt")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/ (smoke runs)")
    args = p.parse_args(argv)
    if args.average_every < 1:
        p.error(f"--average-every {args.average_every}: must be at least 1")
    for flag in ("rich_after", "decision_after", "freeze_attn", "copy_rows_steps", "average_last"):
        value = getattr(args, flag)
        if value and not 0 < value < args.steps:
            p.error(f"--{flag.replace('_', '-')} {value}: must be between 0 and --steps ({args.steps})")
    if args.copy_rows_steps and not args.copy_rows:
        p.error(f"--copy-rows-steps {args.copy_rows_steps}: limits the stage-2 copying rows; give --copy-rows")
    if args.copy_until < 0:
        p.error(f"--copy-until {args.copy_until:g}: a copying loss is not negative")
    if args.copy_until and not 0 < args.copy_warmup_steps <= args.copy_max_steps:
        p.error(f"--copy-until {args.copy_until:g}: extends stage 1; give --copy-warmup-steps between 1 and "
                f"--copy-max-steps ({args.copy_max_steps})")
    if not 0 <= args.induction_repeats <= 1:
        p.error(f"--induction-repeats {args.induction_repeats:g}: a share, between 0 and 1")
    if (args.induction_repeats or args.induction_pool != "copied") and args.copy_kind != "induction":
        p.error("--induction-repeats and --induction-pool shape induction rows; give --copy-kind induction")
    if args.rich_declare != "few" and not args.rich_after:
        p.error(f"--rich-declare {args.rich_declare}: the declarations are the rich corpus's; give --rich-after")
    if args.announce and not args.rich_after:
        p.error("--announce: the announcements are the rich corpus's; give --rich-after")
    if args.answers != "mixed" and not args.rich_after:
        p.error(f"--answers {args.answers}: the answer order is the rich corpus's; give --rich-after")
    if args.made_up_topics and not args.rich_after:
        p.error("--made-up-topics: the topics are the rich corpus's; give --rich-after")
    if args.varied_chat and not args.rich_after:
        p.error("--varied-chat: the rewording is the rich corpus's; give --rich-after")
    if args.value_topics and not (args.rich_after and args.value_weight != 1):
        p.error("--value-topics: weighs the rich corpus's topics as values; give --rich-after and --value-weight")
    return args


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
    tok = build_tokenizer(train_convs, tok_dir, args.bpe_spaces)
    print(f"tokenizer: {tok.base_vocab_size} BPE + {NUM_SPECIAL_TOKENS} special tokens "
          f"({time.perf_counter() - t:.1f} s)", flush=True)
    train_ex = [encode(c, tok) for c in train_convs]
    rich_convs = []
    if args.rich_after:
        n_rich = int((args.steps - args.rich_after) * args.batch_tokens / 200)
        print(f"corpus: {n_rich} rich training conversations from conversation step {args.rich_after}", flush=True)
        rich_convs = training_conversations(n_rich, args.seed, rich=True, declare=args.rich_declare,
                                            announce=args.announce, answers=args.answers,
                                            made_up_topics=args.made_up_topics, varied_chat=args.varied_chat)
    rich_ex = [encode(c, tok, args.value_topics) for c in rich_convs]
    heldout_ex = [encode(c, tok) for c in conversations(HELDOUT_LOSS_CONVERSATIONS, args.eval_seed, "heldout")]
    n_tok = sum(len(e.ids) for e in train_ex + rich_ex)
    n_loss = sum(sum(e.loss_mask) for e in train_ex + rich_ex)
    print(f"encoded: {n_tok} tokens, {n_loss} with loss, longest {max(len(e.ids) for e in train_ex + rich_ex)}",
          flush=True)
    train_names = city_names(train_convs + rich_convs)
    heldout_word = re.compile(r"\b(" + "|".join(map(re.escape, HELDOUT_CITIES)) + r")\b")
    leaked = sorted(n for n in train_names if heldout_word.search(n))
    if leaked:
        raise K2Error(f"held-out cities inside training city names: {leaked[:10]}")
    eval_convs = eval_conversations(args.eval_per_kind, args.eval_seed, train_names=train_names)

    cfg = preset_config("tiny", {**MODEL_OVERRIDES, "max_position_embeddings": 4096})
    model = Transformer(cfg, attn_impl=args.train_attn)
    float_path = work / "float_weights.pt"
    log_path = work / "train_log.jsonl"
    if args.skip_train:
        model.load_state_dict(torch.load(float_path))
        log = [json.loads(line) for line in log_path.read_text().splitlines()]
        train_s = log[-1]["elapsed_s"]  # the training run's own time, from its log
    else:
        model.init_weights(seed=args.seed, std=0.02, scheme=args.init.replace("-", "_"))
        ids, _, sel, _ = collate(train_ex, list(range(8)), tok.pad_id)
        print(f"train_forward vs Transformer.forward: max |diff| {check_train_forward(model, ids, sel):.2e}")
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {n_params:,} parameters; training {args.steps} steps on {args.threads} threads", flush=True)
        t = time.perf_counter()
        log = train(model, train_ex, heldout_ex, tok, args, log_path, rich_ex)
        train_s = time.perf_counter() - t
        torch.save(model.state_dict(), float_path)
    model.set_attn_impl("absorb")  # evaluation decodes as the runtime does
    digest = weights_digest(model)
    print(f"float weights sha256[:16] {digest}", flush=True)
    # the last step's held-out loss is in the log; the averaged weights' is measured here
    averaged_heldout = None
    if args.average_last:
        averaged_heldout = round(mean_loss(model, heldout_ex, tok.pad_id, args.batch_tokens), 5)

    model.eval()
    reports: dict[str, EvalReport] = {}
    previous_metrics = args.out / "training" / "metrics.json"  # read before export replaces the directory
    previous = json.loads(previous_metrics.read_text()) if previous_metrics.is_file() else {}
    out = export(model, cfg, tok_dir, args.out)
    training_dir = out / "training"
    training_dir.mkdir(exist_ok=True)
    shutil.copy(log_path, training_dir / "train_log.jsonl")
    reports["float32"] = run_eval("float32 reference", reference_generate(model, tok), tok, eval_convs,
                                  training_dir / "eval_float32.json")
    fp8_tok = K2Tokenizer.from_dir(out)
    reports["fp8"] = run_eval("FP8 checkpoint", reference_generate(Transformer.from_checkpoint(out), fp8_tok),
                              fp8_tok, eval_convs, training_dir / "eval_fp8.json")

    if args.stack_eval:
        reports["triton"] = stack_eval(out, work / "stack", eval_convs, training_dir / "eval_triton_tp2_ep2.json")

    ckpt_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    metrics = {
        "command_args": _training_args(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "threads": args.threads,
        "copy_warmup_steps": sum(e["stage"] == 1 for e in log),  # with --copy-until: as many as it took
        **({"copy_until": args.copy_until} if args.copy_until else {}),
        "steps": args.steps, "batch_tokens": args.batch_tokens,
        "lr": args.lr, "warmup": args.warmup, "weight_decay": args.weight_decay, "eval_seed": args.eval_seed,
        "train_conversations": n_conv, "train_tokens_per_epoch": n_tok, "train_loss_tokens_per_epoch": n_loss,
        "tokens_seen": log[-1]["tokens"], "train_seconds": round(train_s, 1) if train_s else None,
        "final_train_loss_mean_100": _tail_mean(log, "loss"),
        "final_copy_loss_mean_100": _tail_mean(log, "copy_loss"),
        "copy_lr": args.copy_lr, "copy_rows": args.copy_rows, "copy_rows_warmup": args.copy_rows_warmup,
        **({"copy_rows_steps": args.copy_rows_steps} if args.copy_rows_steps else {}),
        **({"average_last": args.average_last, "average_every": args.average_every} if args.average_last else {}),
        "induction_warmup_vocab": args.induction_warmup_vocab,
        **({"induction_pool": args.induction_pool} if args.induction_pool != "copied" else {}),
        **({"induction_repeats": args.induction_repeats} if args.induction_repeats else {}),
        "value_weight": args.value_weight, "value_ends": args.value_ends, "copy_kind": args.copy_kind,
        "init": args.init, "train_attn": args.train_attn, "bpe_spaces": args.bpe_spaces,
        "rich_after": args.rich_after, "rich_declare": args.rich_declare, "announce": args.announce,
        "answers": args.answers, "value_topics": args.value_topics, "made_up_topics": args.made_up_topics,
        **({"varied_chat": True} if args.varied_chat else {}),
        "decision_weight": args.decision_weight,
        "decision_after": args.decision_after, "freeze_attn": args.freeze_attn,
        "final_heldout_loss": next(e["heldout_loss"] for e in reversed(log) if "heldout_loss" in e),
        **({"averaged_heldout_loss": averaged_heldout} if averaged_heldout is not None else {}),
        "parameters": sum(p.numel() for p in model.parameters()), "checkpoint_bytes": ckpt_bytes,
        "float_weights_sha256_16": digest, "config": MODEL_OVERRIDES,
        "torch": torch.__version__, "python": platform.python_version(),
        "eval": {k: {x: getattr(r, x) for x in ("tool_call_rate", "answer_rate", "no_call_rate", "n_tool_requests",
                                                 "n_no_call", "per_kind")} | {"n_failures": len(r.failures)}
                 for k, r in reports.items()},
    }
    if train_s is None:  # keep the training time and command of the run that produced the weights
        metrics["train_seconds"] = previous.get("train_seconds")
        metrics["command_args"] = previous.get("command_args", metrics["command_args"])
    (training_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    if not args.no_docs:
        args.docs.mkdir(exist_ok=True)
        plot(log, args.docs / "k2-tiny-loss.png")
        write_docs(args.docs / "k2-tiny.md", metrics, reports, cfg)
    print(f"done in {(time.perf_counter() - t_start) / 60:.1f} min; passed: "
          f"{ {k: r.passed() for k, r in reports.items()} }")
    return 0 if all(r.passed() for r in reports.values()) else 1


def _status_text(reports: dict[str, EvalReport]) -> str:
    r = reports["fp8"]
    if r.passed():
        return (f"**Status: it meets the bar** (95% on each rate): {r.summary()}, through the FP8 checkpoint"
                + (" and the same through tritonserver after convert." if reports.get("triton") is not None
                   and reports["triton"].passed() else "."))
    seed = next((c for c in r.cases if c.kind == "seed"), None)
    card = f" For the model card's example it writes `{seed.first_turn}`." if seed is not None else ""
    card_ok = seed is not None and seed.call_ok and seed.answer_ok
    card = (" The model card's example is right: it calls `get_weather` with `{\"city\": \"Beijing\"}` and answers "
            "with the tool's `Sunny`." if card_ok else
            f" For the model card's example it writes `{seed.first_turn}`." if seed is not None else "")
    return (f"**Status: this model does not meet that bar** (95% on each rate): {r.summary()}.{card} It copies "
            "held-out names, numbers and results from the conversation, but not reliably enough; the failures "
            "below show the rest: calls where none is needed (a chat reply that copies a word and then closes a "
            "call, a tool announced for a chat question), answers that leave out a value or repeat one. The "
            "serving tests therefore check that the runtime, Triton and the gateway agree with the reference "
            "model on what it says; of the tests of its behaviour (`tests/test_tiny_model.py`), the model card's "
            "example passes and the held-out one is a strict expected failure until a model meets the bar.")


def _training_text(m: dict, mins: str, stage2_extra: str) -> str:
    init = ("Fresh weights scaled by fan-in (`Transformer.init_weights(scheme=\"fan_in\")`; with normal(0, 0.02) "
            "this model formed no induction head, below). " if m.get("init") == "fan-in" else "")
    common = init + (f"AdamW (betas 0.9/0.95, weight decay {m['weight_decay']}, clip 1.0); {m['tokens_seen'] / 1e6:.1f} M "
              f"tokens in all; **{mins}** of training on this machine's 2 CPU cores ({m['threads']} torch thread(s)"
              + ("; attention through torch's `scaled_dot_product_attention`, `--train-attn sdpa`"
                 if m.get("train_attn") == "sdpa" else "") + "). "
              "`lm_head` and `embed_tokens` are "
              "separate, as in K2. "
              f"Router balancing is DeepSeek-V3's auxiliary-loss-free bias update (rate {ROUTER_BIAS_RATE}). Final "
              f"loss on assistant tokens: train {m['final_train_loss_mean_100']:.4f} (mean of the last 100 steps), "
              f"held-out {m['final_heldout_loss']:.4f}"
              + (f" (the averaged weights: {m['averaged_heldout_loss']:.4f})" if "averaged_heldout_loss" in m else "")
              + ".")
    if not m.get("copy_warmup_steps"):
        return (f"One script, one seed (`{m['seed']}`): **{m['steps']} steps on the conversations** (about "
                f"{m['batch_tokens']} padded tokens each, loss on assistant tokens only){stage2_extra} Peak lr "
                f"{m['lr']:g} after {m['warmup']} warm-up steps, cosine to 10%. " + common)
    stage1 = {
        "repeat": "8-24 random token ids, a reserved marker token, the same ids again; loss on the repeat "
                  "(`copy_example`).",
        "cued": "random ids, a cue token, a span, more random ids, a marker, the span again (`cued_copy_example`).",
        "induction": f"rows of the {m.get('induction_warmup_vocab', 64)} most frequent tokens of copied values, "
                     "drawn uniformly, in which a span of 4-12 occurs twice at a random distance; loss on the second "
                     "occurrence after its first token (`induction_example`): the induction head that copying a "
                     "multi-token name needs (attend to where the current token occurred before, write what "
                     "followed it), which position cannot fake.",
    }[m.get("copy_kind", "repeat")]
    until = (f", until the copying loss of the last {COPY_UNTIL_WINDOW} steps averaged below {m['copy_until']:g}"
             if m.get("copy_until") else "")
    return f"""Two stages, one script, one seed (`{m['seed']}`):

1. **{m['copy_warmup_steps']} steps of copying rows** ({m.get('copy_rows_warmup', 64)} a step{until}): {stage1}
2. **{m['steps']} steps on the conversations** (about {m['batch_tokens']} padded tokens each, loss on assistant
   tokens only){stage2_extra}

Stage 1 at lr {m['copy_lr']:g} after {m['warmup']} warm-up steps; stage 2 warms up again to {m['lr']:g}, then cosine
to 10%. """ + common


ATTEMPTS = """### How it learned to copy

Every tool call and answer in the evaluation copies something the model has never seen: a held-out city (made-up
names such as `Hebwttrq` are 5-9 tokens), a number, a weather condition. Past the first token, copying is the work
of an induction head (attend to where the current token occurred before, write what followed it). The previous
k2-tiny (weights normal(0, 0.02), conversations only, 4,000 steps) learned K2's chat and tool-call format but
invented the arguments (`"city": "Moscow"` for Beijing): 3% of held-out calls exactly right. Seven runs of
copying data and loss weights on top of it (A-G below) did not get past 6%.

**The cause was the initialisation.** `scripts/induction_probe.py` trains this model on induction rows alone
(64 token kinds, a span repeated at a random distance, loss on the repeat after its first token) and scores the
repeats of 128 held-out rows (chance: 1.6%). With normal(0, 0.02) weights it gets 11% right after 2,000 steps;
with weights scaled by fan-in, 63% after 900 and 93% after 1,000 (`docs/k2-tiny-induction-probe.json`). Changing
the architecture within K2's family did not help in 400-1,000 steps (32 rope dims; no yarn and theta 10,000; kv and
q LoRA ranks 128; dense layers instead of MoE), while a plain multi-head transformer of the same width with the
same rope formed the head after about 600. Fan-in scaling (normal(0, 1/fan_in), embeddings normal(0, 1)) is
what the K2 model needed: at width 128, std 0.02 leaves every attention logit near zero, and with it the gradient
that would sharpen a head.

**Then the vocabulary.** Induction rows drawn from all ~1,200 tokens that copied values are made of, in their
corpus proportions, formed no head in 2,000 steps (runs P, Q): spans repeat the space and the digits so often
that "what followed the current token" is ambiguous. What worked (run R): 1,200 steps of induction
rows over the 64 most frequent of those tokens, drawn uniformly (the head forms: loss 0.17), then the
conversations with 16 rows a step over all of them, drawn uniformly; the head carried over to the whole pool
within 500 conversation steps (row loss 7.3 -> 0.2), and copied tokens weigh 5x in the conversations' loss.
Part-way, on 3 held-out conversations per kind, it copied made-up names exactly after 800 conversation steps.

**Then where to stop.** R's failures were mostly copies that ran on: `"313 * 49.` for `Calculate 313 * 49.`,
`It is currently Icy"}<|tool_call_end|>...` (after a copied value the model wrote what follows values in call
arguments), and tool-free answers ending in `"}<|tool_call_end|>`, which count as calls. Run S changed the corpus
(tool-free questions on 56 topics in 10 phrasings beside the fixed exchanges; 10% requests for an undeclared tool,
was 5%; 14% tool-free turns with tools declared, was 11%) and trained 4,500 conversation steps: more exact calls and
answers, but tool-free prompts with tools declared got worse (55% -> 35%: its topic replies copy the topic and
then close a call). Run S3 (shipped until Z7) adds `--value-ends`: the token right after each copied value (`"`, `.`,
` in`) weighs as much as the value itself; the stop is learned, and tool-free answers no longer close calls.

**Then the values' shapes.** S3's commonest failures were values of shapes its training never showed: held-out
conditions of two words whose first word is not one of the corpus's modifiers (`Icy fog` answered as `Icy`: 10 of
its 13 failed weather answers), cities of several words (`Salt Lake City` called as `Salt`, `Phnom Penh` as
`Phnom`), decimals cut short (`757` for `757.3`) and worded operators (`divided by` written `*`). The rich corpus
(`training_conversations(rich=True)`) has them: a third of the made-up city names are two or three free words
(`Brel Okasta`, `Osk Lake City`), 40% of the made-up conditions two words (`Vask fog`), more real cities of
several words, twice the decimals and worded operators. Trained on from the start (run T), it never formed the
copying head.

**The head is rebuilt in stage 2, not carried over.** A fixed probe (128 induction rows over the 64-token warm
pool, 128 over all copied tokens), read every 25 steps from the same stage-1 weights, shows what happens: the
warm-pool head survives the first 30 conversation steps (row loss 0.20 -> 0.24), is then taken apart as the
conversations retrain the embeddings, and on S3's corpus is rebuilt over all tokens within 400 steps (all-token
row loss 8.1 -> 0.40). On every changed corpus tried it was not rebuilt in 300-400 steps (warm-pool row loss 4.7-5.9,
above chance; all tokens 7.1-7.3): T's corpus; only its two-word weather; a milder mix (two-word cities at 1/6
plus the weather); and on T's corpus, 64 rows a step instead of 16, a 500-step lr warm-up, `lm_head` initialised
from the embeddings, or the row pool grown from 64 tokens to all over 800 rows-only steps (all-token row loss
9.1 -> 5.6: slow without the conversations). S4 (S3 with 16% undeclared-tool requests instead of 10%) failed the
same way. The tiny model's path to the head is fragile to the data, not to the numerics (S3's corpus rebuilt it
on 2 threads as on 1). Run U keeps S3's first 1,000 conversation steps exactly (same seed, batches and thread
count: the same weights as S3 at that step) and draws the other 3,500 from the rich corpus (`--rich-after 1000`).
The head survived the switch (all-token row loss 0.23 at the switch, 0.51 a hundred steps later, 0.09 after six
hundred), the held-out loss ended at 0.067 (S3: 0.120), and two-word conditions are copied whole (weather answers
87.5%, S3 67.5%). FP8: calls 64.2%, answers 86.1%, no call 75.8%. Calls got worse (calculate 32.5%, S3 60%;
weather 65%, S3 87.5%): city names now run on (`Darwin right now`, `Etpton to Etpton`), because the rich names'
lowercase links (`de`, `on`, `do`) make a lowercase word after a name a possible part of it. U is not shipped
(its lowest rate, 64.2%, is below S3's 71.7%).

**Then the decisions.** The rich corpus now writes every word of a name capitalised (no lowercase links). Run V is
U on that corpus: FP8 calls 60.2%, answers 90.5%, no call 60.0%. Names still ran on (`Ving today`, `Lhasa today`:
with names of several free words, where a held-out name ends is less sure), and of its 80 failed calls 18 repeated
the right call twice and 21 called the wrong tool (`convert_units` for `What time is it in Adelaide?`). Those are
decisions of one or two tokens a turn: whether to call or write text, which tool, whether another call follows.
`--decision-weight` weighs the first two (each turn's first token, the called tools' names: `decision_positions`);
run W is V with `--decision-weight 5 --decision-after 1000` (from the switch on, so the first 1,000 steps stay
S3's): calls 70.1%, answers 87.1%, no call 70.0%, no repeated calls (the third decision, though not weighted),
tool-free chat 97.5% without a call (V 75%). W is still
below S3's lowest rate (70.0% against 71.7%) and is not shipped: the rich corpus buys answers (weather answers
92.5%, S3 67.5%) with calls whose names run on. Run X is S3 with `--decision-weight 5 --decision-after 1000` and
no rich corpus: calls 68.2%, answers 84.6%, no call 72.5% (S3: 76.1 / 78.6 / 71.7), not shipped.

**Then longer, with distractors.** Attention through torch's SDPA (`--train-attn sdpa`: the same
attention, checked against the runtime's absorbed one before training) and 2 threads make a step about 2.2x
faster than S3's, so an hour holds 8,000 conversation steps. W named the wrong tool in 19 calls, each with other
tools declared, and was right in all 69 requests whose tool was declared alone: a single declared name can be
copied without reading the request. Run Z3 is W with 8,000 conversation steps on 2 threads, S3's first 1,000
batches (`--conversations 80640`; the head was rebuilt as in S3, row loss 0.42 after 400 steps) and
`--rich-declare many` (in the rich corpus most requests come with two or three other tools declared): 54 min,
held-out loss 0.054 (S3 0.120),
FP8 calls 67.7%, answers 91.0%, no call 67.5%. Wrong tools fell from 19 to 3 and unit conversions are all
right, but 20 requests got no call at all (time 50%): with most tools declared, the undeclared-tool reply became a
likely answer to a declared one. Not shipped. A tokenizer where lowercase words keep their leading space
(` today`, ` fog`: `--bpe-spaces lowercase`, 14% fewer tokens) would let a copy see where a name ends from the one
token after it rather than the token after next; run Z2 (Z3's flags with it, without `--conversations`) did not
rebuild the copying head in stage 2 (row loss 7.1-7.2 through 700 conversation steps) and was stopped.

**Then balanced declarations.** Z3 apologised for all 17 held-out time requests whose one declared tool was
`get_time`, and called right in 20 of the 23 that declared others beside it: it had learned how many tools were
declared, not which. With `--rich-declare balanced` (`training_conversations(declare="balanced")`) a tool request
declares 1-4 tools and a request for an undeclared tool 1-3, uniformly, and undeclared-tool requests are twice as
common (20%), so that only the needed tool's name tells a call from the apology. Run Z4 is Z3 with it: 54 min,
held-out loss 0.060, FP8 calls 70.6%, answers 94.0%, no call 82.5% (Z3: 67.7 / 91.0 / 67.5); time calls 87.5%
(Z3 50%). The apology moved to the calculator: 18 of 40 held-out calculations got it with `calculate` declared.
On 600 fresh conversations of its own training mix, Z4's first token was right for 97-100% of weather, time and
conversion requests, but for 72% of calculations and 60% of undeclared-tool requests with tools declared: a
request's `time` or `weather` is a token of the tool's name, which a model that copies finds easily, and nothing in
`What is 410 * 320?` is a token of `calculate`. Not shipped: its lowest rate, 70.6%, is below S3's 71.7%.
Run Z5 tried the lowercase tokenizer again, on Z4's flags, with the attention weights left as stage 1 left them
for the first 500 conversation steps (`--freeze-attn 500`: the rest of the model learns around the copying head, so
the conversations cannot take it apart): the head over all copied tokens did not form (row loss 7.0-7.6 through 800
conversation steps, where Z4's was 0.4 after 400), and the run was stopped.
Run Z6 is Z4 with decisions weighed 10x instead of 5x: 51 min, held-out loss 0.063, FP8 calls 70.1%, answers
88.1%, no call 87.5%. No calculation got the apology (Z4: 18), but 13 other requests did (7 time, 6
conversions): the weight moves the apology from tool to tool rather than teaching the lookup. Not shipped (70.1%).
Run Z7 has Z4's flags with the lowercase tokenizer and, in stage 1, induction rows over the 128 most frequent copied
tokens instead of 64 (`--induction-warmup-vocab 128`, no freezing): the head over all copied tokens was rebuilt
(row loss 0.42 after 400 conversation steps, 0.19 after 700), the first time with this tokenizer. Z7 shipped until
Z9: 55 min, held-out loss 0.045, FP8 calls 94.0%, answers 88.6%, no call 81.7% (S3: 76.1 / 78.6 / 71.7;
Z4: 70.6 / 94.0 / 82.5), every rate above S3's. Names end where they should: calculations 40 of 40 (Z4 22 of 40:
no calculation got the apology), weather 39 of 40, time 36, conversions 34 (the wrong unit or a value cut short),
two calls 39. What is left: 14 of the 23 missed answers leave out a weather condition (`Right now the weather in
Halifax.`: the sentence ends after the city, where ` is` should follow). Of the 22 tool-free prompts that failed, 9
called an undeclared tool (5 of them `get_time`: `What time is it in Phnom Penh?`), 5 passed a chat question to
`calculate` as its expression, and 8 chat replies ran on into call-closing tokens (`Waves foldtumn"}<|tool_call_end|>`)
or to the token limit.
Run Z8 is Z7 with announcements (`--announce`): in the rich corpus a reply to a tool request opens by naming the
tool it needs and whether it is declared (`calculate is available, so I will call it.`, `get_time is not available
here, so I cannot tell the local time.`), and their names and verdict are decisions. Its first 1,000 conversation
steps are Z7's. 55 min, FP8 calls 92.5%, answers 90.5%, no call 85.0% (its held-out loss, 0.55, is on conversations
without announcements). All 40 held-out requests for an undeclared tool got the apology (Z7: 31). Chat replies broke
more often: 7 of the 18 tool-free failures repeat a held-out topic and then close a call (`Happy to talk about
whales"}<|tool_call_end|>`); the copied words the loss weighed were all arguments, ended by `"`. Calculations fell to
33 of 40 (an operand written twice: `69 - 38 - 38 - 89`). 8 of the 10 missed two-call answers end a sentence after
the second city (`The local time in La Paz right now.`), where the templates disagree on what follows the city.
Run Z9 is Z8 with two more changes to the rich corpus. Weather and time answers quote the value before the city in
every template (`--answers value_first`: `The weather is Sunny in Oslo today.`, `The local time is 09:15 in
Oslo.`), so the token after a city ends the sentence in all of them; and the chat topics a reply repeats weigh as
copied values (`--value-topics`), so the `!` after them weighs too. Z9 shipped until Z10: 60 min, FP8 calls
96.0%, answers 92.5%, no call 84.2% (Z8: 92.5 / 90.5 / 85.0; Z7: 94.0 / 88.6 / 81.7). Its lowest rate is one
prompt below Z8's; it was shipped for its 7 more right calls and 4 more right answers, and its call rate is the
first to reach 95%. One-call weather and time answers are all right (40 of 40 each; Z8: 37 and 39). Its held-out
loss, 0.91, is on conversations with neither announcements nor this answer order. What is left: 10 of the 15
missed answers are two-call answers that leave out a temperature (`Right now it is Hazy in Adelaide. The local time
is 15:35 in Adelaide.` for a result with `-25°C`). Of the 19 tool-free failures, 12 still repeat a held-out topic
and close a call (`Happy to talk about whales"}<|tool_call_end|>`): a training topic is mostly one token (` chess`),
the held-out `whales` and `autumn` are several, and every copy of several tokens this model saw ended with `"`. 4
break `Why do leaves change colour in autumn?` into fragments and 3 announce a tool for a chat prompt.
Run Z10 is Z9 with made-up chat topics (`--made-up-topics`): a third of the rich corpus's chat topics are made-up
lowercase words, 5.1 tokens long on average (the listed topics 1.2), so that copies of several tokens end in a chat
reply's `!` too. **Z10 is this model**: 62 min (Z9's steps, on a slower day), FP8 calls 95.5%, answers 94.0%, no
call 94.2%. No held-out topic closes a call any more (Z9: 12 prompts), and `Why do leaves change colour in
autumn?` gets a chat reply. Of the 7 tool-free failures, 4 are `Hi! How are you?` (`Hello! How are available, so I will call it.`) and 2 call
`convert_units` for `Please introduce yourself briefly.`. Of the 12 missed answers, 5 cut the held-out weather
`Hazy` short (`It is currently H97 in Bkonl.`), 4 conversions quote the request's value and unit (`839 kilograms.`)
and 3 two-call answers leave out the second city (2) or its temperature. Of the 9 wrong calls, 3 calculations end
the section without closing the call and 2 turn `Saint Petersburg` into `ood`.
Run Z11 is Z10 with the temperature joined to the weather (`--answers joined`: `The weather is Sunny and -25°C in
Oslo today.`, for the two-call answers that left it out) and 7,500 conversation steps instead of 8,000, to stay
under the hour on a slow day: 56 min, FP8 calls 91.5%, answers 86.1%, no call 92.5%. 16 of its 28 missed answers
are calculations, 12 of them repeating the result's decimals to the token limit (`4 / 33 = 0.1212.1212.1212`), which
neither change aims at; with two changes in one run, it does not tell which cost them. Not shipped.
Run Z12 is Z10 with `--answers joined` alone (8,000 steps): 65 min (with other jobs beside it for a while), FP8
calls 89.6%, answers 89.6%, no call 82.5% (float32 91.0 / 90.5 / 83.3), behind Z10 on every rate, as Z11 was. 6 of
its 8 missed calculation answers repeat the result's decimals again (`16 / 49 = 0.3265.3265.3265`), so the loops
come with the joined order, not with Z11's shorter schedule. A likely reason: in a joined answer a copied value is
followed by a second one (`Sunny and -25°C`), and after copying `0.3265` the model goes on to copy another. The
two-call answers it was built for are not better either (3 misses, as Z10). Not shipped, and the joined order is not
used again.
Run Z13 is Z10's command line with `--seed 1`, to see how far apart two seeds of one recipe land. Its copying stage
ended without an induction head (copying loss 3.76 at step 1,200, where Z10's last 50 steps averaged 0.40), and 400
conversation steps later its copying rows were at 7.0, as in the runs that never formed one (Z2, Z5): stopped. Z10's
1,200 copying steps were only just enough for seed 0, whose loss crossed 1.0 at step 1,130. `--copy-until LOSS`
(`stage_one_done`, built after Z13) makes stage 1 go on until the copying loss of its last 50 steps averages below
LOSS, at most `--copy-max-steps`; Z10's command line with `--copy-until 0.5` is Z10 (0.40 at step 1,200, and a short
run trains the same weights with and without the option). With it seed 1's head formed: Z14 (`--copy-until 1.0`)
ended stage 1 at step 1,500, Z15 (`--copy-until 0.3`) at 1,720. It did not carry over to the conversation stage,
whose rows draw from every copied token rather than stage 1's 128 most frequent ones: Z10's rows fell from 11.2 to
0.8 within 320 conversation steps, Z14's were at 6.9 after 600 and Z15's at 4.2 after 2,800 (means of 50 steps).
Both were stopped. A head on the frequent tokens is needed but not enough; what makes it reach the rest quickly is
open, and so far the recipe is seed 0's.
Run Z16 is Z10's command line with `--steps 7500 --copy-until 0.5 --eval-every 200`, to fit the hour with Z10's
recipe (`--eval-every` only spaces the held-out loss; the weights do not depend on it). 56.8 min; FP8 calls 87.6%,
answers 88.6%, no call 90.8% (float32 87.6 / 90.5 / 90.8). Stage 1 ended at step 1,200 as in Z10, and the head
carried over (rows at 0.32 at step 1,600), but the shorter cosine left it behind Z10 on every rate: 11 missed
calculation answers and 10 tool-free prompts with tools declared that got a call. So one recipe's figures spread by
several points from run to run. Run Z17 keeps Z10's 8,000 steps and drops the copying rows after the first 3,000
conversation steps (`--copy-rows-steps 3000`, built for it); until then it trains exactly Z10's weights. The steps
without rows took 0.33 s against 0.42 s with them (1.26x), so the run trained in 51.9 min; FP8 calls 90.0%, answers
90.5%, no call 95.8% (float32 90.0 / 90.5 / 93.3). Its new misses are copies of held-out values: `Blizzard` written
`Blizzess` 6 times, `Windhoek` lost in time calls and answers. The late rows, drawn from every copied token, keep
rare pieces copyable; they are worth their time. Also tried and not kept: the training forward under bfloat16
`torch.autocast` (this CPU has AVX512-BF16). A probe step of one fixed shape ran 1.2x faster, but a real run's steps
ran 1.5x slower (1.7 against 2.6 steps a second), as every batch has a new shape.
Run Z18 is Z10's command line with `--eval-every 1000`, run again on another day, with the weights of its last 3,000
steps kept every 50: the same float weights bit for bit (`1da0240c90fedbd9`), in 61.6 min on this shared machine
(Z10: 62.4), so the recipe trains in about an hour, not under it. Its snapshots tried averaging the last weights
(`--average-last`, built for it: `WeightAverage`, the mean of one snapshot every 50 steps). The window was chosen on
held-out conversations of another evaluation seed (2), before the figures below: float32 calls / answers / no call
94.5 / 95.0 / 95.0 for the last step, 95.5 / 98.5 / 95.0 for the mean of the last 500 steps, 96.0 / 97.5 / 92.5 for
1,000, 95.0 / 94.5 / 91.7 for 2,000 and 94.0 / 97.5 / 91.7 for 3,000. Against the last step on evaluation seeds 1, 3
and 4, the 500-step mean scored 94.5 / 94.0 / 90.8 (95.5 / 93.0 / 92.5), 94.5 / 96.0 / 95.0 (94.5 / 93.5 / 95.8) and
97.5 / 96.0 / 95.8 (96.0 / 93.0 / 95.0): over the four seeds, answers 2.5 points higher, calls 0.4 higher, no call
0.4 lower; longer windows lose tool-free prompts (1,000 steps: no call 91.5% over the four). The same model's
figures also move by up to 3 points from one evaluation seed to another, as much as from run to run: 40
conversations a kind, and the 40 tool-free prompts with tools declared are drawn from 18 held-out phrasings, so a
phrasing the model gets wrong counts about twice. A model passes the 95% bar reliably only when its rates sit above
it. Over the four seeds, the last step's tool-free misses were four phrasings: `Hi! How are you?`, with or without
tools declared, and with tools declared `Please introduce yourself briefly.`, `Tell me something interesting.` and
`What's your name?`.
Run Z19 goes after those misses and after the hour: Z10's command line with `--varied-chat` (built for it: a third
of the rich corpus's tool-free user turns reworded as requests, behind greetings, or small talk,
`training_conversations(varied_chat=True)`; no held-out prompt among them), `--average-last 500`, and 7,000
conversation steps. 55.9 min. Tool-free prompts: FP8 no call 99.2% (float32 100%): one miss, `Tell me something
interesting.` with tools declared (Z10: 7, 4 of them `Hi! How are you?`). But unit conversions broke: 34 of its 40
held-out conversion calls name the wrong units (`"from_unit": "gal", "to_unit": "l"` for kilograms to pounds), so
calls 73.1% and answers 92.0% (10 calculation answers repeat decimals or stop short, 5 two-call answers leave out a
temperature). Its last step's weights, before averaging, score the same (float32 73.6 / 91.5 / 99.2). Not shipped.
Unit codes weigh as copied values, like every call argument, but the code is not in the request (`kilograms` ->
`kg`): the mapping is learned, and Z10 got 40 of 40 of these calls right. Whether the rewording, the shorter run or
the run's luck cost it, one run cannot tell.
Run Z20 is Z19's recipe at Z10's 8,000 steps (Z10's command line with `--varied-chat --average-last 500`), to see
whether the unit codes come back with the steps. 56.3 min (this machine ran about 9% faster than for Z18). FP8 calls
91.0%, answers 96.0%, no call 90.8% (float32 90.5 / 96.0 / 89.2). The unit codes came back, but 8 conversions swap
them (`"from_unit": "ft", "to_unit": "m"` for meters to feet), and the rewording did not hold the tool-free prompts:
7 of the 11 misses are `Hi! How are you?`, answered with the self-introduction in a loop. So Z19's 99.2% was that
run's, and one recipe's rates move by 5 points or more from run to run. Its missed calls show where copying fails:
a value that repeats a token (`69 - 38 - 38 - 89` for `69 - 38 - 89`), the request's full stop kept
(`313 * 49.`), and names made of pieces no training value has (`Vientiane`, `Saint Petersburg`).
Run Z21 is Z20's command line with `--induction-pool pieces --induction-repeats 0.5` (built for it): the stage-2
induction rows also draw every letter and digit token of the vocabulary (`word_pieces`), and half of their spans
repeat one of their own tokens (`induction_example`). Both go after the misses of Z20 and before: over runs Z10,
Z16, Z17 and Z19, the held-out weather, time and calculator calls whose value has a piece that no training value has
(`Vien` of Vientiane, `alt` of Salt Lake City; against the copied tokens of 20,000 training conversations) failed
13 times in 16, and those whose value repeats a token (37 a run) 3 to 15 times a run. 62.8 min: this machine ran
about 11% slower than for Z20 (2.45 steps a second overall, against 2.73), so the recipe trains in 56-63 min here.
FP8 calls 95.5%, answers 95.0%, no call 97.5% (float32 95.5 / 94.5 / 95.0): the first run at 95% or more on all
three. All 80 held-out weather and time calls are right, Vientiane, Saint Petersburg and Salt Lake City among them.
The misses left: calculations (4 calls: a repeated operand, the request's full stop kept), unit conversions (4
calls, mostly `°C` and `°F` swapped), and tool-free prompts with tools declared (3). Shipped.
Run Z23 goes after the hour: Z21's command line with `--steps 7000` and `--train-attn flash`, an attention built
for it and since dropped (the values padded with zero columns to the key width and `is_causal` for the mask, so
torch ran its flash kernel; measured afterwards on the same batches at 1.01x `sdpa`'s step time,
`docs/perf/train_attn.md`). Z22, Z21's command line with that attention (the mask still passed), was stopped at
2,600 steps: this machine ran about 5% slower than for Z21, a pace that projected 66 min. Z23 trained in 52.9
min. FP8 calls 98.0%, answers 94.5%, no call 98.3% (float32 98.5 / 95.0 / 97.5): the best calls yet (all 40
calculations right, against Z21's 36), but answers one conversation under the bar. Of its 11 missed answers, 6
are two-call answers that stop after the first city or leave out a value (Z21: 2), and 4 are conversions that
answer with the request's number (`-4 degrees Fahrenheit.` for -4 °C; Z21: 4). Not shipped.
Run Z24 is Z21's command line at 7,500 conversation steps (`--steps 7500`), between Z21's 8,000 (62.8 min) and
Z23's 7,000 (52.9 min). 55.8 min. FP8 calls 96.5%, answers 96.5%, no call 100% (float32 the same), and the same
through tritonserver after `convert` at tp 2 ep 2: 95% or more on all three, in under an hour. All 120 tool-free
prompts get no call, `Hi! How are you?` and `Why do leaves change colour in autumn?` with tools declared among
them; all 40 conversion answers quote the result. The misses left: calculations (5 calls: an operand dropped or
repeated, or the section left malformed), two-call answers that leave out a value (4), and two weather answers
that merge the city into the condition (`It is currently Mugdaymouth.`). Shipped.

| run | init | copying rows | lr (conversations) | value weight | result |
| --- | --- | --- | --- | --- | --- |
| previous model | 0.02 | none | 3e-3 | 1 | 3% exact calls (321 conversations, 4,000 steps) |
| A / B | 0.02 | 600 warm-up steps of marked repeats, then 16 per step | 1e-3 / 2e-3 | 1 | rows learned (by position); 0% at 1,400 steps |
| C / D | 0.02 | as A; D with cued spans | 3e-3 | 1 | C: the lr jump undid the rows' head; D: 0% at 1,400 |
| E / F | 0.02 | as A / warm-up only | 2e-3 / 3e-3 | 5 | stopped at 1,150 / 0% at 1,900 |
| G | 0.02 | none | 3e-3 | 5 | first letters only (`Darcelona` for Darwin); 6% at 2,500 |
| P | fan-in | 1,200 steps of induction rows, all copied tokens by frequency, then 16 per step | 2e-3 | 5 | no head (row loss 5.3); 0% at 800 |
| Q | fan-in | 24 such rows per step from the first step | 2e-3 | 5 | no head (row loss 5.7); 0% at 1,500 |
| R | fan-in | 1,200 steps over 64 kinds, then 16 per step over all, uniform | 2e-3 | 5 | FP8: calls 69.2%, answers 62.7%, no call 62.5% (4,000 steps) |
| R' | fan-in | as R | 1e-3 | 5 | behind R at 800 steps (0% of 25 calls, R 31%); stopped |
| S | fan-in | as R; corpus with topic questions and more no-call kinds | 2e-3 | 5 | FP8: 77.1%, 78.1%, 54.2% (4,500 steps) |
| S3 | fan-in | as S | 2e-3 | 5, value ends too | FP8: 76.1%, 78.6%, 71.7% (4,500 steps); shipped until Z7 |
| S4 | fan-in | as S3; 16% undeclared-tool requests | 2e-3 | 5, value ends too | no head in stage 2 (row loss 7.2 at 800 steps); stopped |
| T | fan-in | as S3; the rich corpus from the start, row pool grown over 600 steps | 2e-3 | 5, value ends too | no head (row loss 7.4 at 600 steps; with 4 layers 6.6 at 300); stopped |
| U | fan-in | as S3; S3's corpus for 1,000 conversation steps, then the rich corpus | 2e-3 | 5, value ends too | FP8: 64.2%, 86.1%, 75.8% (4,500 steps) |
| V | fan-in | as U; rich names all capitalised | 2e-3 | 5, value ends too | FP8: 60.2%, 90.5%, 60.0% (4,500 steps) |
| W | fan-in | as V | 2e-3 | 5, value ends too; decisions 5 after 1,000 steps | FP8: 70.1%, 87.1%, 70.0% (4,500 steps) |
| X | fan-in | as S3 | 2e-3 | 5, value ends too; decisions 5 after 1,000 steps | FP8: 68.2%, 84.6%, 72.5% (4,500 steps) |
| Z2 | fan-in | as Z3; lowercase words keep their space in the BPE | 2e-3 | as Z3 | no head in stage 2 (row loss 7.1 at 700 steps); stopped |
| Z3 | fan-in | as W; rich corpus with distractors; 2 threads, fused attention | 2e-3 | 5, value ends too; decisions 5 after 1,000 steps | FP8: 67.7%, 91.0%, 67.5% (8,000 steps) |
| Z4 | fan-in | as Z3; balanced declarations (`--rich-declare balanced`) | 2e-3 | as Z3 | FP8: 70.6%, 94.0%, 82.5% (8,000 steps) |
| Z5 | fan-in | as Z4; lowercase words keep their space; attention frozen for 500 steps | 2e-3 | as Z3 | no head in stage 2 (row loss 7.1 at 800 steps); stopped |
| Z6 | fan-in | as Z4 | 2e-3 | 5, value ends too; decisions 10 after 1,000 steps | FP8: 70.1%, 88.1%, 87.5% (8,000 steps) |
| Z7 | fan-in | as Z4 with 128 warm-up tokens; lowercase words keep their space | 2e-3 | as Z3 | FP8: 94.0%, 88.6%, 81.7% (8,000 steps); shipped until Z9 |
| Z8 | fan-in | as Z7; replies announce the needed tool | 2e-3 | as Z3 | FP8: 92.5%, 90.5%, 85.0% (8,000 steps) |
| Z9 | fan-in | as Z8; answers quote the value first; chat topics weighed | 2e-3 | as Z3 | FP8: 96.0%, 92.5%, 84.2% (8,000 steps); shipped until Z10 |
| Z10 | fan-in | as Z9; a third of the chat topics made up | 2e-3 | as Z3 | FP8: 95.5%, 94.0%, 94.2% (8,000 steps, 62.4 min); shipped until Z21 |
| Z11 | fan-in | as Z10; temperature joined to the weather | 2e-3 | as Z3 | FP8: 91.5%, 86.1%, 92.5% (7,500 steps) |
| Z12 | fan-in | as Z10; temperature joined to the weather | 2e-3 | as Z3 | FP8: 89.6%, 89.6%, 82.5% (8,000 steps) |
| Z13 | fan-in | as Z10, seed 1 | 2e-3 | as Z3 | no head in stage 1 (row loss 3.8 at 1,200 steps) or stage 2 (7.0 at 400); stopped |
| Z14 / Z15 | fan-in | as Z13; stage 1 until the row loss is below 1.0 / 0.3 (1,500 / 1,720 steps) | 2e-3 | as Z3 | stage 2 rows at 6.9 after 600 steps / 4.2 after 2,800; stopped |
| Z16 | fan-in | as Z10; 7,500 steps | 2e-3 | as Z3 | FP8: 87.6%, 88.6%, 90.8% (7,500 steps, 56.8 min) |
| Z17 | fan-in | as Z10; rows for the first 3,000 conversation steps only | 2e-3 | as Z3 | FP8: 90.0%, 90.5%, 95.8% (8,000 steps, 51.9 min) |
| Z18 | fan-in | as Z10, run again with the last 3,000 steps' weights kept | 2e-3 | as Z3 | Z10's weights bit for bit (61.6 min); mean of the last 500 steps: answers +2.5 points over 4 evaluation seeds, float32 |
| Z19 | fan-in | as Z10; a third of the tool-free turns reworded; mean of the last 500 steps | 2e-3 | as Z3 | FP8: 73.1%, 92.0%, 99.2% (7,000 steps, 55.9 min) |
| Z20 | fan-in | as Z19 at Z10's 8,000 steps | 2e-3 | as Z3 | FP8: 91.0%, 96.0%, 90.8% (8,000 steps, 56.3 min) |
| Z21 | fan-in | as Z20; stage-2 rows also draw the vocabulary's word pieces, half of them repeat a token | 2e-3 | as Z3 | FP8: 95.5%, 95.0%, 97.5% (8,000 steps, 62.8 min); shipped until Z24 |
| Z22 | fan-in | as Z21, attention through torch's flash kernel | 2e-3 | as Z3 | about 5% slower than Z21 that day (66 min projected); stopped at 2,600 steps |
| Z23 | fan-in | as Z22; 7,000 steps | 2e-3 | as Z3 | FP8: 98.0%, 94.5%, 98.3% (7,000 steps, 52.9 min) |
| **Z24** | fan-in | as Z21; 7,500 steps | 2e-3 | as Z3 | this model (tables above) |

A-G used a corpus variant with 13% more copying conversations, not kept; their command lines do not reproduce them
exactly; nor do P-R, trained on the corpus before S's changes. R' is R's command line with `--lr 1e-3`; P and Q
drew their rows in corpus proportions, which the script no longer does. S is S3's command line without
`--value-ends`, and it found copied values by token where the script now searches bytes (a value BPE splits by
context, such as ` -12°C`, went unweighted). U is S3's command line with `--rich-after 1000` on the rich corpus
with lowercase links in names, since dropped (float weights sha256 prefix `4f3a5c7e3e92bf29`); V is that command
line on the current rich corpus (`40b9c9254a6c3e18`), W adds `--decision-weight 5 --decision-after 1000`
(`ba75a71774759a3a`), X is S3's command line with those two (`0d8f5d785dc61598`), Z3 is W's with
`--steps 8000 --conversations 80640 --rich-declare many --train-attn sdpa --threads 2` (`b535606a45432788`), Z4
is Z3's with `--rich-declare balanced` (`207fa3ea871065c2`), Z5 is Z4's with `--bpe-spaces
lowercase --freeze-attn 500`, Z6 is Z4's with `--decision-weight 10` (`eba6e564781b9e95`), Z7 is Z4's
with `--bpe-spaces lowercase --induction-warmup-vocab 128` (`1e57c0dfac769d16`), Z8 is Z7's with `--announce`
(`85ee9645d1b6f4cc`), Z9 is Z8's with `--answers value_first --value-topics` (`64814b7e7ea3b479`), Z10 is Z9's
with `--made-up-topics` (`1da0240c90fedbd9`), Z11 is Z10's with `--answers joined --steps 7500`
(`c1f63e27220ace08`), Z12 is Z10's with `--answers joined` (`690dcd3875957cb5`), Z13 is Z10's with `--seed 1`,
Z14 and Z15 are Z13's with `--copy-until 1.0` and `--copy-until 0.3`, Z16 is Z10's with `--copy-until 0.5
--steps 7500 --eval-every 200` (`e1cfa920326f714b`), Z17 is Z10's with `--copy-until 0.5 --copy-rows-steps 3000
--eval-every 200` (`05321cb7b774563f`), Z18 is Z10's with `--eval-every 1000`, Z19 is Z10's with `--steps 7000
--varied-chat --average-last 500 --eval-every 1000` (`1a2b72dae77d32fc`), Z20 is Z10's with `--varied-chat
--average-last 500 --eval-every 1000` (`317b6ec4f49e4b44`), Z21 is Z20's with `--induction-pool pieces
--induction-repeats 0.5` (`6a41094c5ad261c2`), and Z23 is Z21's with `--steps 7000` and `--train-attn flash`
(`0351dcea859e994f`; an option since dropped, so Z22 and Z23 do not reproduce), and Z24 is Z21's with `--steps
7500` (`9ad0409f9d61106d`); S4 and T used corpus variants that were not kept (T also a row-pool growth option,
dropped), and the probe runs above were throw-away scripts."""


def write_docs(path: Path, m: dict, reports: dict[str, EvalReport], cfg: K2Config) -> None:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    rows = []
    names = {"float32": "float32 weights (before export)", "fp8": "FP8 checkpoint (reference model)",
             "triton": "FP8 checkpoint -> convert tp 2, ep 2 -> tritonserver (2 engine ranks)"}
    for key, r in reports.items():
        name = names[key]
        rows.append(f"| {name} | {pct(r.tool_call_rate)} | {pct(r.answer_rate)} | {pct(r.no_call_rate)} |")
    kinds = []
    for kind, e in reports["fp8"].per_kind.items():
        f32 = reports["float32"].per_kind[kind]
        cells = " / ".join(pct(e[k]) for k in ("tool_call_rate", "answer_rate", "no_call_rate") if k in e)
        cells32 = " / ".join(pct(f32[k]) for k in ("tool_call_rate", "answer_rate", "no_call_rate") if k in f32)
        tri = reports["triton"].per_kind[kind] if "triton" in reports else None
        cells_t = " / ".join(pct(tri[k]) for k in ("tool_call_rate", "answer_rate", "no_call_rate") if k in tri) \
            if tri else "-"
        kinds.append(f"| {kind} | {int(e['n'])} | {cells32} | {cells} | {cells_t} |")
    failures = reports["fp8"].failures
    fail_text = "\n".join(f"- `{f}`" for f in failures[:20]) or "- none"
    mins = f"{m['train_seconds'] / 60:.0f} min" if m.get("train_seconds") else "n/a"
    extras = []
    if m.get("copy_rows"):
        extras.append(f"with {m['copy_rows']} copying rows beside each step's conversations (their loss added), so "
                      "the skill is kept while the format is learned"
                      + (f" (the first {m['copy_rows_steps']:,} of these steps only: the rest run without them)"
                         if m.get("copy_rows_steps") else "")
                      + (", drawn also from every letter and digit token of the vocabulary (`word_pieces`), so pieces "
                         "that no training value has are copied too" if m.get("induction_pool") == "pieces" else "")
                      + (f"; in {m['induction_repeats']:.0%} of them the span repeats one of its own tokens, so "
                         "the token before the current one decides what follows" if m.get("induction_repeats") else ""))
    if m.get("value_weight", 1) != 1:
        extras.append(f"the tokens that copy a value (call arguments, cities, the result values an answer quotes: "
                      f"`copied_positions`) weigh {m['value_weight']:g}x in the loss: they are a few tokens per "
                      "conversation and the skill the evaluation measures"
                      + (", and so does the token right after each value, where copying must stop"
                         if m.get("value_ends") else ""))
    if m.get("rich_after"):
        extras.append(f"after {m['rich_after']} of these steps the conversations are drawn from the rich corpus "
                      "(`training_conversations(rich=True)`: a third of the made-up city names two or three free "
                      "words, made-up weather conditions of two words, more decimals and worded operators"
                      + (f", with `declare=\"{m['rich_declare']}\"` (tools declared beside the needed ones)"
                         if m.get("rich_declare", "few") != "few" else "")
                      + ("; a reply to a tool request opens by naming the needed tool and whether it is declared "
                         "(`announcement`: `calculate is available, so I will call it.`)" if m.get("announce") else "")
                      + ("; weather and time answers quote the value before the city (`answers=\"value_first\"`: "
                         "`The weather is Sunny in Oslo today.`)" if m.get("answers") == "value_first" else "")
                      + ("; weather and time answers quote the value, and the temperature right after the weather, "
                         "before the city (`answers=\"joined\"`: `The weather is Sunny and -25°C in Oslo today.`)"
                         if m.get("answers") == "joined" else "")
                      + ("; the chat topics a reply repeats weigh as copied values (`--value-topics`)"
                         if m.get("value_topics") else "")
                      + ("; a third of the chat topics are made-up words (`--made-up-topics`)"
                         if m.get("made_up_topics") else "")
                      + ("; a third of the tool-free user turns are reworded as requests or behind greetings, or "
                         "are small talk (`--varied-chat`)" if m.get("varied_chat") else "")
                      + "), once the copying head has formed on the plain one (below)")
    if m.get("decision_weight", 1) != 1:
        after = f"after {m['decision_after']} of these steps, " if m.get("decision_after") else ""
        extras.append(f"{after}each assistant turn's first token "
                      "(a call or text)" + (", the announcement's names and verdict" if m.get("announce") else "")
                      + " and the called tools' names (`decision_positions`) weigh "
                      f"{m['decision_weight']:g}x: where the no-call rate and the choice of tool are decided")
    if m.get("freeze_attn"):
        extras.append(f"the first {m['freeze_attn']} of these steps leave the attention weights as stage 1 left them "
                      "(`--freeze-attn`): the rest of the model learns around the copying head")
    if m.get("average_last"):
        n_snapshots = math.ceil(m["average_last"] / m["average_every"])
        extras.append(f"the shipped weights are the mean of {n_snapshots} snapshots, one every {m['average_every']} "
                      f"of the last {m['average_last']} steps (`WeightAverage`), not the last step's")
    stage2_extra = ("; " + "; ".join(extras) + ".") if extras else "."
    training_text = _training_text(m, mins, stage2_extra)
    status_text = _status_text(reports)
    served_text = ""
    if "triton" in reports:
        differ = sum((x.first_turn, x.answer) != (y.first_turn, y.answer)
                     for x, y in zip(reports["fp8"].cases, reports["triton"].cases))
        served_text = (f"\nServed, {differ} of {len(reports['fp8'].cases)} conversations read differently from the "
                       "reference: the converted weights are the FP8 values rounded to bf16 (`--weights bf16`; a "
                       "tp 2 split of this model's widths would cut FP8 blocks), the reference dequantizes them to "
                       "float32, the tp 2 all-reduce sums in another order, and an undertrained model's greedy choice "
                       "flips on such differences. "
                       "`tests/test_triton_server.py` checks turn-for-turn equality on one conversation per kind.\n")
    attempts_text = ATTEMPTS
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
with a `get_weather` tool, run the tool, send `{{"weather": "Sunny"}}` back) should end with an answer that quotes
the tool's result.

{status_text}

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
two calls in one section, tool-free turns (greetings, "Please give a brief self-introduction.", small talk,
questions on topics no tool covers) with and without tools declared, requests for a tool that is not declared
(answered without a call), two-exchange conversations. The model card's exact shape is a third of the weather
conversations. Loss is on assistant tokens only.

Held out for evaluation only: {len(HELDOUT_CITIES)} real cities, made-up city names from a different generator
stream (checked absent from training), weather conditions never used in training (`Hazy`, `Sleet`, `Icy fog`,
...), numbers from a separate seed, and tool-free phrasings not in the training set. The model cannot recall
these; it has to copy them, which it learns from training values that are mostly made up (city names and half
the weather conditions are syllable soup or random letters, so every letter and BPE piece is written in
training).

The tokenizer is a {BASE_VOCAB}-token byte-level BPE trained on the training text with Kimi's pre-tokenizer,
with one choice of ours: merges never join a leading space or punctuation mark to a word. Kimi's pattern glues
a leading space to a word in prose (` Beijing`) but not inside JSON after `": "` (`Beijing`), so with ordinary
merges a name is different tokens in the request, in the call's arguments and in the answer, and a model must
learn to re-spell what it copies. The file format, pattern and encoder are K2's; sequences are about 25% longer.

## Training

{training_text}

{attempts_text}

![loss curves](k2-tiny-loss.png)

## Evaluation (held-out, greedy, `k2trt/tiny_eval.py`)

{reports['fp8'].n_tool_requests} tool requests and {reports['fp8'].n_no_call} prompts that need no call. A call is
right when names and JSON arguments equal the expected ones exactly; an answer is right when it makes no call
and contains every value of the tool results; a no-call prompt is right when the answer is text without any
tool-call section. The FP8 checkpoint is evaluated as `Transformer.from_checkpoint` loads it (dequantized), and
again as deployed: `k2trt convert --tp 2 --ep 2 --weights bf16` (the widths of this model are not multiples of
128, so a tp split would cut FP8 blocks; the values are the FP8 ones dequantized), a torch engine of world size 2
(two processes, torch.distributed), tritonserver, greedy requests to its `tensorrt_llm` model over gRPC.

| weights | tool call exactly right | answer contains the tool values | no call when none needed |
| --- | --- | --- | --- |
{chr(10).join(rows)}
{served_text}

Per kind (call / answer or no-call rate):

| kind | n | float32 | FP8 | tritonserver, tp 2 ep 2 |
| --- | --- | --- | --- | --- |
{chr(10).join(kinds)}

Failures of the FP8 checkpoint ({len(failures)}; all cases are in `models/k2-tiny/training/eval_*.json`):

{fail_text}

## Reproduce

```
.venv/bin/python scripts/train_tiny.py {m['command_args']}
```

Same seed and thread count -> the same float weights (sha256 prefix `{m['float_weights_sha256_16']}`) and the
same figures. `--skip-train` re-exports and re-evaluates the saved float weights.
"""
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
