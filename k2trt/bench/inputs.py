"""Prompts of an exact token length, made with the deployment's own tokenizer.

A benchmark compares runs only when every request has the same shape, so each prompt encodes to exactly
``isl`` tokens as the server will see them:

- ``raw`` prompts (the ``ensemble`` target, whose preprocessing model encodes ``text_input`` as is):
  ``len(tokenizer.encode(text)) == isl``;
- ``chat`` prompts (the ``bls`` and ``openai`` targets, which render K2's chat template first): the rendered
  prompt, system prompt and headers included, is ``isl`` tokens (``render_chat(...).ids``).

Text is random English words (a seeded RNG, a different seed per prompt, so no two prompts share a prefix
longer than chance). K2's pre-tokenizer cuts text into words before BPE, and BPE never merges across those
cuts, so the token count of space-separated words is nearly the sum of theirs; the last few tokens are fitted
by cutting a longer text at a token boundary and re-encoding until the length is exact.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from k2trt.errors import K2Error

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there one all we their been has when who will more no if out so said what up its about into "
    "than them can only other new some time could these two may then do first any my now such like our over man me "
    "even most made after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old year off come since "
    "against go came right used take three weather forecast city river mountain morning evening garden library "
    "system model token server request answer question number letter window market travel music water bridge a I"
).split()


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: ``text`` (the raw prompt, or the user message of a chat prompt) and the number of
    tokens the server will see."""

    text: str
    tokens: int
    chat: bool = False

    @property
    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.text}]


def exact_length_text(encode: Callable[[str], list[int]], n_tokens: int, *, seed: int = 0,
                      prefix: str = "") -> str:
    """Text of random words that ``encode`` turns into exactly ``n_tokens`` ids (``n_tokens`` >= 1).

    ``prefix`` starts the text (it counts towards the length). Raises K2Error if no such text was found (a
    tokenizer whose every word is longer than the tokens left, which K2's byte-level BPE never is).
    """
    if n_tokens < 1:
        raise K2Error(f"a prompt needs at least 1 token, got {n_tokens}")
    rng = random.Random(seed)
    words: list[str] = []
    cost: dict[str, int] = {}

    def word_cost(w: str) -> int:
        if w not in cost:
            cost[w] = len(encode(" " + w))
        return cost[w]

    def render(ws: list[str]) -> str:
        return prefix + " ".join(ws) if not prefix else prefix + "".join(" " + w for w in ws)

    total = len(encode(prefix)) if prefix else 0
    # Greedy fill by per-word costs (additive across pre-tokenizer word boundaries), then exact repair below.
    while True:
        w = rng.choice(WORDS)
        c = len(encode(w)) if not words and not prefix else word_cost(w)
        if total + c > n_tokens:
            break
        words.append(w)
        total += c
    pool = sorted(set(WORDS))
    for _ in range(4 * n_tokens + 16):
        text = render(words)
        got = len(encode(text))
        if got == n_tokens:
            return text
        if got > n_tokens:
            if not words:
                break
            words.pop()
            continue
        missing = n_tokens - got
        # A punctuation mark right after the last word is its own pre-token: one more token whatever the BPE
        # (a small vocabulary may have no one-token word at all).
        for mark in ".!?,;:" if missing == 1 else ():
            if len(encode(text + mark)) == n_tokens:
                return text + mark
        # Candidates by their cost in isolation, longest first (closes the gap fastest), shuffled among equals so
        # prompts stay distinct; the cost in context decides (a first word has no space before it).
        cands = [w for w in rng.sample(pool, len(pool)) if word_cost(w) <= missing + 1]
        cands.sort(key=word_cost, reverse=True)
        for w in cands[:64]:
            if 0 < len(encode(render(words + [w]))) - got <= missing:
                words.append(w)
                break
        else:
            if not words:
                break
            words.pop()
    raise K2Error(f"could not build a prompt of exactly {n_tokens} tokens with this tokenizer")


def raw_prompts(encode: Callable[[str], list[int]], isl: int, count: int, *, seed: int = 0) -> list[Prompt]:
    """``count`` distinct prompts of exactly ``isl`` tokens under ``encode``."""
    out = []
    for i in range(count):
        text = exact_length_text(encode, isl, seed=seed * 100_003 + i)
        out.append(Prompt(text, isl))
    return out


def chat_prompts(render_ids: Callable[[str], list[int]], isl: int, count: int, *, seed: int = 0) -> list[Prompt]:
    """``count`` distinct user messages whose rendered chat prompt (``render_ids(content)``: the template's ids
    for one user turn plus the generation prompt) is exactly ``isl`` tokens.

    The template's markers are special tokens, so the content's ids are independent of what surrounds it:
    content tokens = ``isl`` - the template's overhead, checked after rendering.
    """
    overhead = len(render_ids(""))
    content_tokens = isl - overhead
    if content_tokens < 1:
        raise K2Error(f"--isl {isl} is shorter than the chat template itself ({overhead} tokens with an empty user "
                      f"message); use --isl {overhead + 1} or more")
    out = []
    for i in range(count):
        s = seed * 100_003 + i
        n = content_tokens
        for _ in range(8):  # adjust for a template whose overhead depends on the content (rare)
            text = exact_length_text(_content_encoder(render_ids, overhead), n, seed=s)
            got = len(render_ids(text))
            if got == isl:
                break
            n += isl - got
            if n < 1:
                raise K2Error(f"could not fit a chat prompt of exactly {isl} tokens")
        else:
            raise K2Error(f"could not fit a chat prompt of exactly {isl} tokens (the template's length varies)")
        out.append(Prompt(text, isl, chat=True))
    return out


def _content_encoder(render_ids: Callable[[str], list[int]], overhead: int) -> Callable[[str], list[int]]:
    """The content's share of the rendered prompt, as an ``encode`` for :func:`exact_length_text`."""

    def encode(text: str) -> list[int]:
        return [0] * (len(render_ids(text)) - overhead)

    return encode


def tokenizer_encoders(tokenizer, template: str | None = None) -> tuple[Callable[[str], list[int]],
                                                                          Callable[[str], list[int]]]:
    """``(encode, render_ids)`` of a :class:`~k2trt.tokenizer.K2Tokenizer`: plain text, and one user turn through
    the chat template (``template`` None: k2trt's default K2 template)."""
    from k2trt.chat import render_chat

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text)

    def render_ids(content: str) -> list[int]:
        return render_chat([{"role": "user", "content": content}], template=template, tokenizer=tokenizer).ids

    return encode, render_ids


def check_lengths(prompts: Sequence[Prompt], isl: int) -> None:
    bad = [i for i, p in enumerate(prompts) if p.tokens != isl]
    if bad:
        raise K2Error(f"prompts {bad[:5]} are not {isl} tokens long")
