"""The Kimi-K2 tokenizer: tiktoken byte-level BPE, Kimi's pre-tokenizer, 256 special ids after the base vocabulary.

A K2 checkpoint ships two tokenizer files (and no ``tokenizer.json``):

- ``tiktoken.model``: one ``<base64 of the token bytes> <rank>`` line per token, ranks ``0..n-1`` (K2: n = 163,584).
  The rank is the token id and the BPE merge priority.
- ``tokenizer_config.json``: HF metadata. ``added_tokens_decoder`` names some of the 256 ids ``n..n+255``;
  every unnamed one is ``<|reserved_token_{id}|>`` (Kimi's ``tokenization_kimi.py`` does the same).

This module reads them with tiktoken (no ``transformers``, no remote code), writes them (the synthetic and tiny
checkpoints), trains a small BPE for those, and decodes a token stream incrementally. The special-token table is
data in one place: :data:`K2_NAMED_SPECIAL_OFFSETS`.

Worked ids for the real K2 (base 163,584): ``[BOS]`` 163584, ``[EOS]`` 163585, ``<|im_end|>`` 163586,
``<|tool_calls_section_begin|>`` 163595, ``<|im_middle|>`` 163601, ``[PAD]`` 163839, vocab_size 163,840.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import heapq
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Collection, Iterable
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import regex
import tiktoken

from k2trt.errors import K2Error

NUM_SPECIAL_TOKENS = 256
"""Size of the special block after the base vocabulary (Kimi's ``num_reserved_special_tokens``)."""

K2_NAMED_SPECIAL_OFFSETS: dict[int, str] = {
    0: "[BOS]",
    1: "[EOS]",
    2: "<|im_end|>",
    3: "<|im_user|>",
    4: "<|im_assistant|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    9: "[EOT]",
    10: "<|im_system|>",
    11: "<|tool_calls_section_begin|>",
    12: "<|tool_calls_section_end|>",
    13: "<|tool_call_begin|>",
    14: "<|tool_call_argument_begin|>",
    15: "<|tool_call_end|>",
    17: "<|im_middle|>",
    254: "[UNK]",
    255: "[PAD]",
}
"""K2's named special tokens by offset from the base vocabulary size (absolute ids: 163584 + offset).

Source: the ids of Kimi-K2-Instruct's ``tokenizer_config.json`` ``added_tokens_decoder`` (DESIGN.md lists them).
"""

K2_ADDITIONAL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|im_end|>",
    "<|im_user|>",
    "<|im_assistant|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "[EOT]",
    "<|im_system|>",
    "<|im_middle|>",
)
"""``additional_special_tokens`` as K2's tokenizer_config.json lists them (the default of ``tokenization_kimi.py``)."""

# Kimi's pre-tokenizer, the ``pat_str`` of Kimi-K2-Instruct's tokenization_kimi.py (one alternative a line):
# Han runs; letter runs in two case orders with Han taken out of the letter classes (``&&[^\p{Han}]``, a class
# intersection that tiktoken's Rust regex and the ``regex`` module's V1 mode understand) and English contractions;
# up to three digits; punctuation runs with trailing newlines; newlines; whitespace.
PAT_STR = "|".join(
    [
        r"""[\p{Han}]+""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# Without V1 the ``regex`` module reads ``&&`` literally; V1 gives tiktoken's class-intersection semantics.
_PRETOKENIZER = regex.compile(PAT_STR, flags=regex.V1)

# tokenization_kimi.py feeds tiktoken at most 400,000 characters at a time and cuts any run of more than 25,000
# whitespace or non-whitespace characters (tiktoken issue #195: its regex/BPE is quadratic on such runs). The cut
# changes ids only for such runs; we cut at the same places so that ids match Kimi's tokenizer there too.
_TIKTOKEN_MAX_ENCODE_CHARS = 400_000
_MAX_RUN_CHARS = 25_000
# ``re``'s \s on str is exactly str.isspace(), which is what tokenization_kimi.py tests.
_RUN_RE = re.compile(r"\s+|\S+")

TOKENIZER_MODEL_FILE = "tiktoken.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# HF's "no limit" (int(1e30) as a float, printed as an int): the model_max_length K2's tokenizer_config.json carries.
_HF_VERY_LARGE_INTEGER = 1000000000000000019884624838656


class TokenizerError(K2Error):
    """Tokenizer files k2trt cannot use, or ids/names that are not in the vocabulary; names the file and line."""


def reserved_token_name(token_id: int) -> str:
    """The name of an unnamed special id: ``<|reserved_token_{id}|>`` with the absolute id (as Kimi)."""
    return f"<|reserved_token_{token_id}|>"


def k2_special_tokens(base_vocab_size: int) -> dict[str, int]:
    """All 256 K2 special tokens, name -> absolute id, for a base vocabulary of ``base_vocab_size`` tokens.

    The named ones sit at their K2 offsets (:data:`K2_NAMED_SPECIAL_OFFSETS`), the rest are reserved. For the
    real K2, ``k2_special_tokens(163584)["<|im_end|>"] == 163586``.
    """
    if base_vocab_size < 256:
        raise TokenizerError(f"base vocabulary of {base_vocab_size} tokens: a byte-level BPE has at least 256")
    return {
        K2_NAMED_SPECIAL_OFFSETS.get(off, reserved_token_name(base_vocab_size + off)): base_vocab_size + off
        for off in range(NUM_SPECIAL_TOKENS)
    }


def pretokenize(text: str) -> list[str]:
    """Split ``text`` into the pieces BPE works within, with Kimi's pattern (what tiktoken does internally)."""
    return _PRETOKENIZER.findall(text)


def _split_long_runs(text: str) -> Iterable[str]:
    """Cut ``text`` as tokenization_kimi.py does before calling tiktoken (see ``_MAX_RUN_CHARS``).

    A run of same-class characters (whitespace / not) longer than 25,000 is cut every 25,000 characters from the
    run's start; the pieces keep everything between cuts, so they concatenate back to ``text``.
    """
    for i in range(0, max(len(text), 1), _TIKTOKEN_MAX_ENCODE_CHARS):
        block = text[i : i + _TIKTOKEN_MAX_ENCODE_CHARS]
        if len(block) <= _MAX_RUN_CHARS:  # no run can be too long: skip the scan (the common case)
            yield block
            continue
        start = 0
        for m in _RUN_RE.finditer(block):
            for cut in range(m.start() + _MAX_RUN_CHARS, m.end(), _MAX_RUN_CHARS):
                yield block[start:cut]
                start = cut
        yield block[start:]


# ----------------------------------------------------------------------------------------------- the tokenizer


class K2Tokenizer:
    """Encode/decode K2 token ids with tiktoken.

    ``encode`` turns text into ids ``[0, vocab_size)``; ``decode`` turns ids back into text (invalid UTF-8 becomes
    U+FFFD, as tiktoken and HF do). Special tokens decode to their names (``<|im_end|>``), so tool-call markers
    survive decoding for :mod:`k2trt.toolcall`.
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_names: dict[int, str] | None = None,
        *,
        bos_token: str = "[BOS]",
        eos_token: str = "[EOS]",
        pad_token: str | None = "[PAD]",
        unk_token: str | None = "[UNK]",
        source: str = "<memory>",
    ):
        """``mergeable_ranks``: token bytes -> rank, ranks ``0..n-1``. ``special_names``: absolute id -> name for
        the named ids of the special block (None: K2's table); the others become reserved names."""
        _check_ranks(mergeable_ranks, source)
        self.base_vocab_size = len(mergeable_ranks)
        n = self.base_vocab_size
        if special_names is None:
            special_names = {n + off: name for off, name in K2_NAMED_SPECIAL_OFFSETS.items()}
        outside = sorted(i for i in special_names if not n <= i < n + NUM_SPECIAL_TOKENS)
        if outside:
            raise TokenizerError(
                f"{source}: special ids {outside} lie outside the special block [{n}, {n + NUM_SPECIAL_TOKENS}) "
                f"after the {n} base tokens"
            )
        specials: dict[str, int] = {}
        for i in range(n, n + NUM_SPECIAL_TOKENS):
            name = special_names.get(i, reserved_token_name(i))
            if name in specials:
                raise TokenizerError(f"{source}: special token {name!r} names both id {specials[name]} and id {i}")
            specials[name] = i
        self.special_ids: dict[str, int] = specials
        """Every special token name -> id (all 256)."""
        self.special_names: dict[int, str] = {i: s for s, i in specials.items()}
        """Every special id -> name (all 256)."""
        self.source = source
        self._enc = tiktoken.Encoding(
            name=f"k2:{source}", pat_str=PAT_STR, mergeable_ranks=mergeable_ranks, special_tokens=specials
        )
        self.bos_id = self.special_id(bos_token)
        self.eos_id = self.special_id(eos_token)
        self.pad_id = self.special_id(pad_token) if pad_token is not None else None
        self.unk_id = self.special_id(unk_token) if unk_token is not None else None
        # The chat and tool-call markers; a tokenizer without them cannot serve K2's chat format.
        self.im_end_id = self.special_id("<|im_end|>")
        self.im_user_id = self.special_id("<|im_user|>")
        self.im_assistant_id = self.special_id("<|im_assistant|>")
        self.im_system_id = self.special_id("<|im_system|>")
        self.im_middle_id = self.special_id("<|im_middle|>")
        self.tool_calls_section_begin_id = self.special_id("<|tool_calls_section_begin|>")
        self.tool_calls_section_end_id = self.special_id("<|tool_calls_section_end|>")
        self.tool_call_begin_id = self.special_id("<|tool_call_begin|>")
        self.tool_call_argument_begin_id = self.special_id("<|tool_call_argument_begin|>")
        self.tool_call_end_id = self.special_id("<|tool_call_end|>")

    # -------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_dir(cls, path: str | Path) -> K2Tokenizer:
        """Load ``tiktoken.model`` + ``tokenizer_config.json`` from a checkpoint (or tokenizer) directory."""
        d = Path(path)
        ranks = read_tiktoken_model(d / TOKENIZER_MODEL_FILE)
        cfg_path = d / TOKENIZER_CONFIG_FILE
        cfg, cfg_text = _read_json(cfg_path)
        decoder = cfg.get("added_tokens_decoder", {})
        if not isinstance(decoder, dict):
            raise TokenizerError(
                f"{cfg_path}:{_key_line(cfg_text, 'added_tokens_decoder')}: 'added_tokens_decoder' must be an "
                f"object (id -> token), got {type(decoder).__name__}"
            )
        names: dict[int, str] = {}
        problems = []
        for key, entry in decoder.items():
            where = f"{cfg_path}:{_key_line(cfg_text, key)}"
            content = entry.get("content") if isinstance(entry, dict) else None
            if not key.isdigit() or not isinstance(content, str) or not content:
                problems.append(f"{where}: added_tokens_decoder[{key!r}] needs an integer id and a 'content' string")
                continue
            names[int(key)] = content
        if problems:
            raise TokenizerError(problems)
        tokens: dict[str, Any] = {}
        for attr, default in (("bos_token", "[BOS]"), ("eos_token", "[EOS]"), ("pad_token", None), ("unk_token", None)):
            value = cfg.get(attr, default)
            if isinstance(value, dict):  # HF also writes AddedToken objects here
                value = value.get("content")
            if value is not None and not isinstance(value, str):
                raise TokenizerError(f"{cfg_path}:{_key_line(cfg_text, attr)}: '{attr}' must be a string")
            tokens[attr] = value
        # Errors about the special names come from the config, so it is the source they name.
        return cls(ranks, names, source=str(cfg_path), **tokens)

    # -------------------------------------------------------------------------------------------- lookups

    @property
    def vocab_size(self) -> int:
        """Base tokens + 256 specials (K2: 163,840): the rows of the embedding the ids index."""
        return self.base_vocab_size + NUM_SPECIAL_TOKENS

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a generation: ``[<|im_end|>, [EOS]]`` (K2 ends a turn with <|im_end|>)."""
        return [self.im_end_id, self.eos_id]

    def special_id(self, name: str) -> int:
        """The id of a special token by name; TokenizerError naming the token if it has none."""
        try:
            return self.special_ids[name]
        except KeyError:
            raise TokenizerError(f"{self.source}: no special token {name!r} in the special block") from None

    def is_special(self, token_id: int) -> bool:
        """Whether ``token_id`` is in the special block."""
        return self.base_vocab_size <= token_id < self.vocab_size

    @cached_property
    def special_pattern(self) -> re.Pattern[str]:
        """A regex matching any special token's name in text (used to tokenise chat renders safely)."""
        names = sorted(self.special_ids, key=len, reverse=True)
        return re.compile("|".join(re.escape(n) for n in names))

    # -------------------------------------------------------------------------------------------- text

    def encode(self, text: str, *, allow_special: bool | Collection[str] = False) -> list[int]:
        """Token ids of ``text``.

        ``allow_special``: False (default) encodes special-token names as plain text (safe for user content);
        True turns every special name in ``text`` into its id; a collection turns only those names into ids.
        """
        if allow_special is True:
            allowed: set[str] | str = "all"
        elif allow_special is False:
            allowed = set()  # tiktoken insists on a set
        else:
            allowed = set(allow_special)
            unknown = sorted(allowed - self.special_ids.keys())
            if unknown:
                raise TokenizerError(f"allow_special names unknown special tokens {unknown}")
        ids: list[int] = []
        for part in _split_long_runs(text):
            # disallowed_special=(): names not allowed are plain text instead of tiktoken's ValueError
            ids.extend(self._enc.encode(part, allowed_special=allowed, disallowed_special=()))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; invalid UTF-8 (a sequence cut mid-character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids`` (special tokens as the UTF-8 of their names)."""
        ids = ids if isinstance(ids, list) else [int(i) for i in ids]
        try:
            return self._enc.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError):
            bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < self.vocab_size)]
            raise TokenizerError(f"token ids {bad[:8]} are not in the vocabulary [0, {self.vocab_size})") from None

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token."""
        return self.decode_bytes([token_id])

    def stream_decoder(self) -> StreamDecoder:
        """A fresh incremental decoder for one generated sequence."""
        return StreamDecoder(self)


class StreamDecoder:
    """Turns ids into text as they arrive, never splitting a UTF-8 character.

    ``push(ids)`` returns the text that is complete so far; bytes of a character that is still incomplete are held
    until its last byte arrives. ``flush()`` ends the sequence: held bytes that never completed become U+FFFD. The
    pieces concatenate to exactly ``tokenizer.decode(all_ids)`` (Python's incremental UTF-8 decoder makes the same
    replacement choices as the one-shot decoder). Cost per push is O(bytes of the new ids), independent of how much
    was decoded before (no re-decoding of a window, unlike offset-based detokenizers).
    """

    def __init__(self, tokenizer: K2Tokenizer):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Iterable[int]) -> str:
        """Text completed by ``ids`` (may be empty while a multi-byte character is incomplete)."""
        return self._utf8.decode(self._tok.decode_bytes(ids), final=False)

    def flush(self) -> str:
        """The end of the sequence: the text of any held bytes (U+FFFD for an incomplete character); resets."""
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out


# ----------------------------------------------------------------------------------------------- file formats


def read_tiktoken_model(path: str | Path) -> dict[bytes, int]:
    """Parse a ``tiktoken.model`` file: ``<base64 token> <rank>`` per line -> {token bytes: rank}.

    Errors name the file and line: a line that is not two fields, bad base64, a rank that is not an integer,
    a token or rank seen twice. Ranks must then be exactly ``0..n-1`` and include all 256 single bytes.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"{p}: no such file (K2 checkpoints ship their BPE ranks in it)") from None
    ranks: dict[bytes, int] = {}
    line_of_rank: dict[int, int] = {}
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise TokenizerError(f"{p}:{lineno}: expected '<base64 token> <rank>', got {_show(line, 80)!r}")
        try:
            token = base64.b64decode(fields[0], validate=True)
        except (binascii.Error, ValueError):
            raise TokenizerError(f"{p}:{lineno}: token {_show(fields[0], 40)!r} is not valid base64") from None
        if not fields[1].isdigit():
            raise TokenizerError(f"{p}:{lineno}: rank {_show(fields[1], 40)!r} is not a non-negative integer")
        rank = int(fields[1])
        if token in ranks:
            raise TokenizerError(f"{p}:{lineno}: token {token!r} already has rank {ranks[token]}")
        if rank in line_of_rank:
            raise TokenizerError(f"{p}:{lineno}: rank {rank} already used on line {line_of_rank[rank]}")
        ranks[token] = rank
        line_of_rank[rank] = lineno
    _check_ranks(ranks, str(p))
    return ranks


def _show(raw: bytes, limit: int) -> str:
    return raw[:limit].decode("utf-8", errors="replace")


def _check_ranks(ranks: dict[bytes, int], source: str) -> None:
    """Ranks must be 0..n-1 (special ids start at n, as Kimi numbers them) and cover every single byte."""
    if not ranks:
        raise TokenizerError(f"{source}: no tokens")
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)):
        missing = sorted(set(range(n)) - set(ranks.values()))[:8]
        raise TokenizerError(f"{source}: ranks are not 0..{n - 1}; missing {missing}")
    lacking = [b for b in range(256) if bytes([b]) not in ranks]
    if lacking:
        raise TokenizerError(
            f"{source}: lacks single-byte tokens {lacking[:8]}{'...' if len(lacking) > 8 else ''}; "
            "byte-level BPE needs all 256 to encode any text"
        )


def _read_json(path: Path) -> tuple[dict[str, Any], str]:
    """A JSON object from ``path`` and its text; TokenizerError with line and column on bad JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such file") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    if not isinstance(obj, dict):
        raise TokenizerError(f"{path}:1: expected a JSON object, got {type(obj).__name__}")
    return obj, text


def _key_line(text: str, key: str) -> int:
    """The 1-based line where ``"key"`` first appears in JSON ``text`` (1 if absent): for error messages."""
    at = text.find(json.dumps(key))
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


@lru_cache(maxsize=1)
def default_chat_template() -> str:
    """The chat template k2trt ships (``k2trt/templates/chat_template.jinja``, current K2 format)."""
    return resources.files("k2trt").joinpath("templates/chat_template.jinja").read_text(encoding="utf-8")


def write_tokenizer_files(
    out_dir: str | Path, mergeable_ranks: dict[bytes, int], *, chat_template: str | None = None
) -> None:
    """Write ``tiktoken.model`` and ``tokenizer_config.json`` for ``mergeable_ranks`` in K2's format.

    ``tokenizer_config.json`` names the 17 K2 special tokens at their K2 offsets in ``added_tokens_decoder``
    (the other 239 ids are reserved by rule, as in K2's own file), the bos/eos/pad/unk tokens, K2's
    ``model_max_length``, ``tokenizer_class``/``auto_map`` as K2's, and ``chat_template`` (default: k2trt's
    template). ``auto_map`` names Kimi's ``tokenization_kimi.py``, which is not written here: k2trt reads these
    files itself; ``transformers`` needs that file copied from the real checkpoint. Each file is written to a
    temporary name and renamed, so a reader never sees half a file.
    """
    _check_ranks(mergeable_ranks, "mergeable_ranks")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(mergeable_ranks)
    model_text = "".join(
        f"{base64.b64encode(tok).decode('ascii')} {rank}\n"
        for tok, rank in sorted(mergeable_ranks.items(), key=lambda kv: kv[1])
    )
    added = {
        str(n + off): {
            "content": name,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for off, name in sorted(K2_NAMED_SPECIAL_OFFSETS.items())
    }
    config = {
        "added_tokens_decoder": added,
        "additional_special_tokens": list(K2_ADDITIONAL_SPECIAL_TOKENS),
        "auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]},
        "bos_token": "[BOS]",
        "chat_template": default_chat_template() if chat_template is None else chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "[EOS]",
        "extra_special_tokens": {},
        "model_max_length": _HF_VERY_LARGE_INTEGER,
        "pad_token": "[PAD]",
        "tokenizer_class": "TikTokenTokenizer",
        "unk_token": "[UNK]",
    }
    _atomic_write(out / TOKENIZER_MODEL_FILE, model_text)
    _atomic_write(out / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------- BPE training


def train_bpe(texts: Iterable[str], vocab_size: int) -> dict[bytes, int]:
    """Train a byte-level BPE with Kimi's pre-tokenizer; returns tiktoken mergeable ranks (token bytes -> rank).

    Ranks 0..255 are the single bytes (rank b is ``bytes([b])``); each later rank is the next merge: the most
    frequent adjacent pair of tokens within a pre-token piece, ties broken by the smaller (left bytes, right
    bytes), so the result depends only on the texts and ``vocab_size``. Should a merge spell a token that already
    exists (``ab+c`` after ``a+bc``; defensive, not seen in practice), it reuses that token, so ranks stay unique
    and contiguous. Returns exactly ``vocab_size`` tokens; TokenizerError if the texts run out of pairs first.

    Cost: one pass of the pre-tokenizer over the texts, then per merge only the distinct pieces that contain the
    pair (a lazy max-heap of pair counts), about a second for 4,000 tokens on a few hundred KB.
    """
    if vocab_size < 256:
        raise TokenizerError(f"vocab_size {vocab_size}: a byte-level BPE needs at least the 256 single bytes")
    piece_counts: Counter[bytes] = Counter()
    for text in texts:
        piece_counts.update(p.encode("utf-8") for p in _PRETOKENIZER.findall(text))
    vocab: list[bytes] = [bytes([b]) for b in range(256)]  # id -> bytes; the id is the rank
    rank_of: dict[bytes, int] = {t: i for i, t in enumerate(vocab)}
    # Distinct pieces as id sequences, sorted so that the work order does not depend on hashing.
    words: list[list[int]] = [list(p) for p in sorted(piece_counts)]
    freqs: list[int] = [piece_counts[p] for p in sorted(piece_counts)]
    pair_count: dict[tuple[int, int], int] = {}
    pair_words: dict[tuple[int, int], set[int]] = {}
    for w, (ids, f) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            pair_count[pair] = pair_count.get(pair, 0) + f
            pair_words.setdefault(pair, set()).add(w)

    def entry(pair: tuple[int, int]) -> tuple[int, bytes, bytes, tuple[int, int]]:
        return (-pair_count[pair], vocab[pair[0]], vocab[pair[1]], pair)

    heap = [entry(p) for p in pair_count]
    heapq.heapify(heap)
    while len(vocab) < vocab_size:
        if not heap:
            raise TokenizerError(
                f"the training texts run out of pairs at {len(vocab)} tokens, short of vocab_size {vocab_size}"
            )
        neg, _, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or neg == 0:
            continue  # stale entry: the count changed since it was pushed (a fresh entry is in the heap)
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = rank_of.get(merged)
        if new_id is None:
            new_id = len(vocab)
            vocab.append(merged)
            rank_of[merged] = new_id
        changed: set[tuple[int, int]] = set()
        for w in sorted(pair_words.pop(pair, ())):
            merged_word = _merge_pair(words[w], pair, new_id)
            if merged_word is None:
                continue  # the pair is gone from this word (an index entry left from before)
            words[w], removed, added = merged_word
            f = freqs[w]
            for p in removed:
                pair_count[p] -= f
                changed.add(p)
            for p in added:
                pair_count[p] = pair_count.get(p, 0) + f
                pair_words.setdefault(p, set()).add(w)
                changed.add(p)
        for p in sorted(changed):
            if pair_count[p] > 0:
                heapq.heappush(heap, entry(p))
            else:
                del pair_count[p]
    return rank_of


def _merge_pair(
    ids: list[int], pair: tuple[int, int], new_id: int
) -> tuple[list[int], list[tuple[int, int]], list[tuple[int, int]]] | None:
    """Replace each non-overlapping occurrence of ``pair`` in ``ids`` (left to right) by ``new_id``.

    Returns (the new ids, the adjacent pairs that went away, the adjacent pairs that appeared), or None when
    ``pair`` does not occur. Only pairs next to a merge change, so the work is O(occurrences), not O(len(ids)),
    apart from the copy.
    """
    a, b = pair
    n = len(ids)
    out: list[int] = []
    hits: list[int] = []  # positions in ids of merged pairs
    new_at: list[int] = []  # positions in out of new tokens
    i = 0
    while True:
        try:
            j = ids.index(a, i)
        except ValueError:
            break
        if j + 1 < n and ids[j + 1] == b:
            out.extend(ids[i:j])
            new_at.append(len(out))
            out.append(new_id)
            hits.append(j)
            i = j + 2
        else:
            out.extend(ids[i : j + 1])
            i = j + 1
    if not hits:
        return None
    out.extend(ids[i:])
    gone = sorted({k for j in hits for k in (j - 1, j, j + 1) if 0 <= k < n - 1})
    come = sorted({k for q in new_at for k in (q - 1, q) if 0 <= k < len(out) - 1})
    return out, [(ids[k], ids[k + 1]) for k in gone], [(out[k], out[k + 1]) for k in come]


__all__ = [
    "K2_NAMED_SPECIAL_OFFSETS",
    "K2Tokenizer",
    "NUM_SPECIAL_TOKENS",
    "PAT_STR",
    "StreamDecoder",
    "TokenizerError",
    "default_chat_template",
    "k2_special_tokens",
    "pretokenize",
    "read_tiktoken_model",
    "reserved_token_name",
    "train_bpe",
    "write_tokenizer_files",
]
