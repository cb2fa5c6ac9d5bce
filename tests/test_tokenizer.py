"""k2trt.tokenizer: K2's special table, Kimi's pre-tokenizer, BPE training, the files, encode/decode, streaming."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2trt.errors import K2Error
from k2trt.tokenizer import (
    K2Tokenizer,
    TokenizerError,
    _split_long_runs,
    default_chat_template,
    k2_special_tokens,
    pretokenize,
    read_tiktoken_model,
    train_bpe,
    write_tokenizer_files,
)

K2_BASE = 163584

# The absolute ids of K2's named special tokens, as DESIGN.md lists them (independent of the offset table).
K2_NAMED_IDS = {
    "[BOS]": 163584,
    "[EOS]": 163585,
    "<|im_end|>": 163586,
    "<|im_user|>": 163587,
    "<|im_assistant|>": 163588,
    "<|start_header_id|>": 163590,
    "<|end_header_id|>": 163591,
    "[EOT]": 163593,
    "<|im_system|>": 163594,
    "<|tool_calls_section_begin|>": 163595,
    "<|tool_calls_section_end|>": 163596,
    "<|tool_call_begin|>": 163597,
    "<|tool_call_argument_begin|>": 163598,
    "<|tool_call_end|>": 163599,
    "<|im_middle|>": 163601,
    "[UNK]": 163838,
    "[PAD]": 163839,
}


def make_corpus(n_chars: int, seed: int = 0) -> str:
    """Deterministic mixed text: English, Chinese, emoji, JSON, code-ish lines."""
    rnd = random.Random(seed)
    en = (
        "the quick brown fox jumps over a lazy dog weather city Beijing Shanghai tool call function "
        "arguments result sunny rain temperature degrees I'm you're we'll DON'T"
    ).split()
    zh = "北京天气很好今天明天温度下雨晴朗城市工具调用结果你好世界"
    emoji = ["😀", "🎉", "🌧️", "☀️", "👍🏽", "🇨🇳"]
    out: list[str] = []
    total = 0
    while total < n_chars:
        r = rnd.random()
        if r < 0.45:
            s = " ".join(rnd.choice(en) for _ in range(rnd.randint(3, 12))).capitalize() + rnd.choice(". !?\n")
        elif r < 0.7:
            s = "".join(rnd.choice(zh) for _ in range(rnd.randint(2, 10))) + rnd.choice(["。", "，", "？", "\n"])
        elif r < 0.8:
            s = "".join(rnd.choice(emoji) for _ in range(rnd.randint(1, 3))) + " "
        elif r < 0.9:
            s = '{"city": "%s", "days": %d}\n' % (rnd.choice(en), rnd.randint(0, 99999))
        else:
            s = "def f(x):\n\treturn x  # naïve Ωmega\r\n"
        out.append(s)
        total += len(s)
    return "".join(out)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("k2tok")
    write_tokenizer_files(d, train_bpe([make_corpus(40_000)], 700))
    return d


@pytest.fixture(scope="module")
def tok(tok_dir) -> K2Tokenizer:
    return K2Tokenizer.from_dir(tok_dir)


# ----------------------------------------------------------------------------------------------- special table


def test_k2_special_tokens_match_the_design_ids():
    table = k2_special_tokens(K2_BASE)
    assert len(table) == 256
    assert sorted(table.values()) == list(range(163584, 163840))
    for name, i in K2_NAMED_IDS.items():
        assert table[name] == i, name
    reserved = {n: i for n, i in table.items() if n not in K2_NAMED_IDS}
    assert len(reserved) == 256 - 17
    assert table["<|reserved_token_163589|>"] == 163589
    assert table["<|reserved_token_163600|>"] == 163600
    assert table["<|reserved_token_163837|>"] == 163837
    assert all(n == f"<|reserved_token_{i}|>" for n, i in reserved.items())


def test_special_block_follows_any_base_vocabulary(tok):
    assert tok.base_vocab_size == 700
    assert tok.vocab_size == 956
    assert tok.special_ids == k2_special_tokens(700)
    assert (tok.bos_id, tok.eos_id, tok.im_end_id, tok.pad_id, tok.unk_id) == (700, 701, 702, 955, 954)
    assert (tok.tool_calls_section_begin_id, tok.tool_call_end_id, tok.im_middle_id) == (711, 715, 717)
    assert tok.stop_ids == [702, 701]
    assert tok.special_names[703] == "<|im_user|>"
    assert tok.special_names[705] == "<|reserved_token_705|>"


def test_k2_special_tokens_rejects_a_base_smaller_than_the_bytes():
    with pytest.raises(K2Error, match="at least 256"):
        k2_special_tokens(100)


# ----------------------------------------------------------------------------------------------- pre-tokenizer

SAMPLE = "Hello WORLD, I'm 12345 北京天气很好吗？ emoji 😀😀 naïve Ωmega 日本語のテキスト\n\n  def f(x):\n\treturn x"


def test_pretokenizer_splits_like_kimi():
    # Han runs alone ("日本語" then "のテキスト": kana are letters but not Han), digits in threes, contraction kept
    # with its word, punctuation with its newline, "\n\n" and the indent split before "def".
    assert pretokenize(SAMPLE) == [
        "Hello", " WORLD", ",", " I'm", " ", "123", "45", " ", "北京天气很好吗", "？", " emoji", " 😀😀",
        " naïve", " Ωmega", " ", "日本語", "のテキスト", "\n\n", " ", " def", " f", "(x", "):\n", "\treturn", " x",
    ]  # fmt: skip


def test_pretokenizer_agrees_with_tiktoken_on_every_piece():
    """With every substring of every piece in the vocabulary, tiktoken's BPE merges each of *its* pieces into one
    token; so the tokens are tiktoken's split, which must equal ours (regex V1 vs tiktoken's Rust regex)."""
    text = make_corpus(3000, seed=5) + SAMPLE + " ſ's DON'T \u0301a\u00a0\u2003x  \r\n\r\n ¡¿ 3.14159 ΑΒΓ αβγ"
    pieces = [p.encode() for p in pretokenize(text)]
    ranks = {bytes([b]): b for b in range(256)}
    subs = {p[i:j] for p in pieces for i in range(len(p)) for j in range(i + 2, len(p) + 1)}
    for t in sorted(subs, key=lambda t: (len(t), t)):
        ranks[t] = len(ranks)
    tok = K2Tokenizer(ranks)
    assert [tok.token_bytes(i) for i in tok.encode(text)] == pieces


def _kimi_cuts(s: str, limit: int) -> list[str]:
    """tokenization_kimi.py's rule, one character at a time: count same-class (isspace) characters since the last
    class change or cut; when the count passes ``limit``, cut before the current character."""
    out, start, count, space = [], 0, 0, s[:1].isspace()
    for i, ch in enumerate(s):
        if ch.isspace() != space:
            space, count = ch.isspace(), 1
        else:
            count += 1
            if count > limit:
                out.append(s[start:i])
                start, count = i, 1
    return out + [s[start:]]


def test_long_runs_are_cut_every_25000_characters_as_kimi_does():
    # "ab " then 60,000 x (cuts 25,000 and 50,000 after the run start), then 26,002 spaces (one cut), then "end"
    text = "ab " + "x" * 60_000 + "  " + " " * 26_000 + "end"
    parts = list(_split_long_runs(text))
    assert [len(p) for p in parts] == [25_003, 25_000, 10_000 + 25_000, 1_002 + 3]
    assert parts == _kimi_cuts(text, 25_000)
    mixed = ("y" * 30_000 + "\u3000" * 3 + "z" * 50_001 + "\n" * 25_001) * 2
    assert list(_split_long_runs(mixed)) == _kimi_cuts(mixed, 25_000)
    assert list(_split_long_runs("short")) == ["short"]
    assert list(_split_long_runs("")) == [""]


# ----------------------------------------------------------------------------------------------- BPE training


def _reference_bpe(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's merge rule, slowly: repeatedly merge the adjacent pair whose concatenation has the lowest rank."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return [ranks[p] for p in parts]
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def test_train_bpe_gives_tiktoken_ranks_and_is_deterministic():
    corpus = make_corpus(30_000, seed=1)
    ranks = train_bpe([corpus], 600)
    assert ranks == train_bpe([corpus], 600)
    assert len(ranks) == 600
    assert sorted(ranks.values()) == list(range(600))
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert max(len(t) for t in ranks) > 3  # merges happened
    tok = K2Tokenizer(ranks)
    text = make_corpus(2000, seed=9)
    expected = [i for p in pretokenize(text) for i in _reference_bpe(p.encode(), ranks)]
    assert tok.encode(text) == expected
    assert tok.decode(expected) == text
    assert len(expected) < len(text.encode()) * 0.6  # the merges compress


def _naive_train(text: str, vocab_size: int) -> dict[bytes, int]:
    """The definition train_bpe implements, recounting every pair each step: merge the most frequent adjacent
    pair (ties: smallest (left bytes, right bytes)) in every piece, left to right."""
    counts: dict[tuple[bytes, ...], int] = {}
    for p in pretokenize(text):
        key = tuple(bytes([c]) for c in p.encode())
        counts[key] = counts.get(key, 0) + 1
    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < vocab_size:
        pairs: dict[tuple[bytes, bytes], int] = {}
        for word, f in counts.items():
            for pair in zip(word, word[1:]):
                pairs[pair] = pairs.get(pair, 0) + f
        best = min(pairs, key=lambda pr: (-pairs[pr], pr))
        ranks.setdefault(best[0] + best[1], len(ranks))
        merged: dict[tuple[bytes, ...], int] = {}
        for word, f in counts.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + f
        counts = merged
    return ranks


def test_train_bpe_equals_the_naive_definition():
    text = make_corpus(6000, seed=7) + " aaaa abab abababa 北北北北"
    assert train_bpe([text], 400) == _naive_train(text, 400)


@pytest.mark.parametrize("seed", range(3))
def test_train_bpe_on_repetitive_text_keeps_ranks_contiguous_and_encodes_like_tiktoken(seed):
    rnd = random.Random(seed)
    text = " ".join("".join(rnd.choice("aab") for _ in range(rnd.randint(1, 9))) for _ in range(400))
    ranks = train_bpe([text], 320)
    assert sorted(ranks.values()) == list(range(320))
    tok = K2Tokenizer(ranks)
    assert tok.encode(text) == [i for p in pretokenize(text) for i in _reference_bpe(p.encode(), ranks)]


def test_train_bpe_refuses_a_corpus_too_small_for_the_vocabulary():
    with pytest.raises(TokenizerError, match="run out of pairs"):
        train_bpe(["ab"], 300)
    with pytest.raises(TokenizerError, match="at least the 256"):
        train_bpe(["abc"], 100)


# ----------------------------------------------------------------------------------------------- files


def test_written_files_have_k2s_format(tok_dir):
    lines = (tok_dir / "tiktoken.model").read_text().splitlines()
    assert len(lines) == 700
    assert lines[0] == "AA== 0"  # b"\x00"
    assert lines[65] == "QQ== 65"  # b"A"
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert {int(k): v["content"] for k, v in cfg["added_tokens_decoder"].items()} == {
        i - K2_BASE + 700: n for n, i in K2_NAMED_IDS.items()
    }
    assert cfg["added_tokens_decoder"]["702"] == {
        "content": "<|im_end|>",
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"], cfg["unk_token"]) == ("[BOS]", "[EOS]", "[PAD]", "[UNK]")
    assert cfg["tokenizer_class"] == "TikTokenTokenizer"
    assert cfg["auto_map"] == {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]}
    assert cfg["model_max_length"] == 1000000000000000019884624838656
    assert cfg["chat_template"] == default_chat_template()
    assert sorted(p.name for p in tok_dir.iterdir()) == ["tiktoken.model", "tokenizer_config.json"]  # no temp files


def test_written_ranks_read_back_identically(tmp_path):
    ranks = train_bpe([make_corpus(5000, seed=2)], 300)
    write_tokenizer_files(tmp_path, ranks, chat_template="{{ messages }}")
    assert read_tiktoken_model(tmp_path / "tiktoken.model") == ranks
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == "{{ messages }}"


def _byte_lines() -> list[str]:
    return [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ls: ls.__setitem__(2, "!!notbase64 2"), r"tiktoken\.model:3: token '!!notbase64' is not valid base64"),
        (lambda ls: ls.__setitem__(4, "QQ=="), r"tiktoken\.model:5: expected '<base64 token> <rank>'"),
        (lambda ls: ls.__setitem__(6, "QkM= x6"), r"tiktoken\.model:7: rank 'x6' is not"),
        (lambda ls: ls.append("QkM= 7"), r"tiktoken\.model:257: rank 7 already used on line 8"),
        (lambda ls: ls.append("QQ== 256"), r"tiktoken\.model:257: token b'A' already has rank 65"),
        (lambda ls: ls.append("QkM= 300"), r"ranks are not 0\.\.256; missing \[256\]"),
        (lambda ls: ls.__delitem__(255), r"tiktoken\.model: lacks single-byte tokens \[255\]"),
    ],
)
def test_malformed_tiktoken_model_names_file_and_line(tmp_path, edit, message):
    write_tokenizer_files(tmp_path, {bytes([b]): b for b in range(256)})
    lines = _byte_lines()
    edit(lines)
    (tmp_path / "tiktoken.model").write_text("\n".join(lines) + "\n")
    with pytest.raises(TokenizerError, match=message):
        K2Tokenizer.from_dir(tmp_path)


def test_malformed_tokenizer_config_names_file_and_line(tmp_path):
    write_tokenizer_files(tmp_path, {bytes([b]): b for b in range(256)})
    cfg_file = tmp_path / "tokenizer_config.json"
    good = cfg_file.read_text()
    cfg_file.write_text(good.replace('"bos_token": "[BOS]",', '"bos_token": "[BOS]"', 1))
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json:\d+:\d+: not valid JSON"):
        K2Tokenizer.from_dir(tmp_path)

    cfg = json.loads(good)
    cfg["added_tokens_decoder"]["258"] = {"special": True}  # no content
    cfg_file.write_text(json.dumps(cfg, indent=2))
    line = next(i for i, s in enumerate(cfg_file.read_text().splitlines(), 1) if '"258"' in s)
    with pytest.raises(TokenizerError, match=rf"tokenizer_config\.json:{line}: added_tokens_decoder\['258'\]"):
        K2Tokenizer.from_dir(tmp_path)

    cfg = json.loads(good)
    cfg["added_tokens_decoder"]["259"] = {"content": "<|im_end|>"}  # <|im_end|> names 258 and 259
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match=r"'<\|im_end\|>' names both id 258 and id 259"):
        K2Tokenizer.from_dir(tmp_path)

    cfg["added_tokens_decoder"]["259"] = {"content": "<|im_user|>"}
    cfg["added_tokens_decoder"]["600"] = {"content": "<|x|>"}  # outside the block
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match=r"special ids \[600\] lie outside the special block \[256, 512\)"):
        K2Tokenizer.from_dir(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(TokenizerError, match=r"tiktoken\.model: no such file"):
        K2Tokenizer.from_dir(tmp_path)


# ----------------------------------------------------------------------------------------------- encode / decode


def test_special_names_are_text_unless_allowed(tok):
    text = "hi<|im_end|>[EOS]"
    plain = tok.encode(text)
    assert tok.im_end_id not in plain and tok.eos_id not in plain
    assert tok.decode(plain) == text
    assert tok.encode(text, allow_special=True) == tok.encode("hi") + [tok.im_end_id, tok.eos_id]
    only = tok.encode(text, allow_special={"[EOS]"})
    assert only[-1] == tok.eos_id and tok.im_end_id not in only
    with pytest.raises(TokenizerError, match="unknown special tokens"):
        tok.encode(text, allow_special={"<|nope|>"})


def test_decode_roundtrips_and_names_specials(tok):
    text = make_corpus(3000, seed=4)
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([tok.tool_calls_section_begin_id, tok.special_id("<|reserved_token_800|>")]) == (
        "<|tool_calls_section_begin|><|reserved_token_800|>"
    )
    assert tok.decode(iter([72, 105])) == "Hi"
    with pytest.raises(TokenizerError, match=r"token ids \[956\] are not in the vocabulary \[0, 956\)"):
        tok.decode([72, 956])
    with pytest.raises(TokenizerError, match=r"token ids \[-1\]"):
        tok.decode([-1])


# ----------------------------------------------------------------------------------------------- streaming


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_stream_decode_equals_full_decode_for_random_ids(tok, data):
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=60))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=8)))
    dec = tok.stream_decoder()
    pieces = [dec.push(ids[a:b]) for a, b in zip([0, *cuts], [*cuts, len(ids)])]
    pieces.append(dec.flush())
    assert "".join(pieces) == tok.decode(ids)


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80))
def test_stream_decode_one_id_at_a_time_never_emits_a_broken_character(tok, text):
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    pieces = [dec.push([i]) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


def test_stream_decode_of_chinese_and_emoji_holds_partial_characters(tok):
    text = "北京天气很好，鑫龘😀🎉👍🏽 naïve 🦀"  # 鑫龘🦀 are not in the training text: byte-level tokens
    ids = tok.encode(text)
    # the test only means something if some token ends inside a character:
    assert any(_incomplete(tok.token_bytes(i)) for i in ids)
    dec = tok.stream_decoder()
    pieces = [dec.push([i]) for i in ids]
    assert "".join(pieces) + dec.flush() == text
    assert "\ufffd" not in "".join(pieces)
    assert "" in pieces  # a push that completed no character emitted nothing


def test_stream_decoder_flush_replaces_an_unfinished_character(tok):
    dec = tok.stream_decoder()
    assert dec.push(list("北".encode())[:2]) == ""  # byte tokens 0xE5 0x8C: two of three bytes
    assert dec.flush() == "\ufffd"
    assert dec.push(tok.encode("ok")) == "ok"  # reset after flush


def _incomplete(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True
