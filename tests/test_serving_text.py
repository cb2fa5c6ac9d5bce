"""preprocessing / postprocessing: the K2 tokenizer behind tensorrtllm_backend's tensors."""

from __future__ import annotations

import numpy as np
import pytest

from k2trt.errors import K2Error
from k2trt.serving.tensors import decode_words_list
from k2trt.serving.text import Postprocessor, Preprocessor
from k2trt.tokenizer import K2Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_ckpt) -> K2Tokenizer:
    return K2Tokenizer.from_dir(tiny_ckpt)


def _query(*texts: str) -> np.ndarray:
    return np.array([[t.encode()] for t in texts], dtype=np.object_)


def test_preprocessing_encodes_with_special_names_and_default_stops(tok):
    out = Preprocessor(tok)({"QUERY": _query("Hi<|im_end|>"), "REQUEST_OUTPUT_LEN": np.array([[7]], np.int32)})
    ids = tok.encode("Hi<|im_end|>", allow_special=True)
    assert ids[-1] == tok.im_end_id  # a prompt may already be in K2's chat format
    assert out["INPUT_ID"].tolist() == [ids]
    assert out["REQUEST_INPUT_LEN"].tolist() == [[len(ids)]]
    assert out["REQUEST_OUTPUT_LEN"].tolist() == [[7]]
    # end at <|im_end|> (K2's end of turn); [EOS] stops too, as a stop word
    assert out["OUT_END_ID"].tolist() == [[tok.im_end_id]]
    assert decode_words_list(out["STOP_WORDS_IDS"][0]) == ((tok.eos_id,),)
    assert out["OUT_PAD_ID"].tolist() == [[tok.pad_id]]


def test_preprocessing_stop_words_and_end_id(tok):
    out = Preprocessor(tok)({
        "QUERY": _query("a"), "REQUEST_OUTPUT_LEN": np.array([[1]], np.int32),
        "STOP_WORDS_DICT": np.array([[b"\n\n", b"<|im_end|>"]], dtype=np.object_),
        "END_ID": np.array([[tok.eos_id]], np.int32)})
    words = decode_words_list(out["STOP_WORDS_IDS"][0])
    assert words == (tuple(tok.encode("\n\n")), (tok.im_end_id,))  # the other stop id is already a word
    assert out["OUT_END_ID"].tolist() == [[tok.eos_id]]


def test_preprocessing_pads_a_batch(tok):
    out = Preprocessor(tok)({"QUERY": _query("a", "hello there"), "REQUEST_OUTPUT_LEN": np.array([[1], [2]], np.int32)})
    a, b = tok.encode("a"), tok.encode("hello there")
    assert out["INPUT_ID"].shape == (2, len(b))
    assert out["INPUT_ID"][0, : len(a)].tolist() == a
    assert out["REQUEST_INPUT_LEN"].tolist() == [[len(a)], [len(b)]]


def test_preprocessing_refuses_empty_and_non_utf8(tok):
    with pytest.raises(K2Error, match="empty"):
        Preprocessor(tok)({"QUERY": _query(""), "REQUEST_OUTPUT_LEN": np.array([[1]], np.int32)})
    with pytest.raises(K2Error, match="not UTF-8"):
        Preprocessor(tok)({"QUERY": np.array([[b"\xff"]], dtype=np.object_),
                           "REQUEST_OUTPUT_LEN": np.array([[1]], np.int32)})


def test_postprocessing_cuts_at_sequence_length(tok):
    ids = tok.encode("Hello world")
    tokens = np.array([[ids + [0, 0]]], dtype=np.int32)
    out = Postprocessor(tok)({"TOKENS_BATCH": tokens, "SEQUENCE_LENGTH": np.array([[len(ids)]], np.int32)})
    assert out["OUTPUT"].tolist() == [[b"Hello world"]]


def test_streamed_pieces_concatenate_to_exact_utf8(tok):
    # one token per streamed response, and the byte-level tokens split the characters: every piece is the raw
    # bytes of its token, so the pieces join into exact UTF-8 (decoding each alone would give U+FFFD)
    text = "Zürich 🙂 天气"
    ids = tok.encode(text)
    post = Postprocessor(tok)
    pieces = [post({"TOKENS_BATCH": np.array([[[i]]], np.int32),
                    "SEQUENCE_LENGTH": np.array([[1]], np.int32)})["OUTPUT"][0, 0] for i in ids]
    assert any(not _utf8(p) for p in pieces), "the test needs a character split across tokens"
    assert b"".join(pieces).decode("utf-8") == text


def test_postprocessing_can_skip_special_tokens(tok):
    ids = tok.encode("a<|tool_call_begin|>b", allow_special=True)
    post = Postprocessor(tok, skip_special_tokens=True)
    assert post({"TOKENS_BATCH": np.array([[ids]], np.int32),
                 "SEQUENCE_LENGTH": np.array([[len(ids)]], np.int32)})["OUTPUT"].tolist() == [[b"ab"]]


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
