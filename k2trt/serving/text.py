"""The ``preprocessing`` and ``postprocessing`` Triton models: text <-> ids with the K2 tokenizer.

Preprocessing (tensorrtllm_backend's tensors, the supported subset): ``QUERY`` is encoded with special-token names
allowed (a client can send a prompt already in K2's chat format, as ``k2trt generate --prompt`` does);
``STOP_WORDS_DICT`` strings become ``STOP_WORDS_IDS`` in TensorRT-LLM's ``[2, L]`` layout; ``END_ID`` defaults to
``<|im_end|>`` (K2's end of turn, its ``generation_config`` eos) and the tokenizer's other stop ids (``[EOS]``) are
always added as stop words, so a raw completion stops where ``k2_bls`` does.

Postprocessing: ``OUTPUT`` holds the **bytes** of each sequence's tokens. A character split across two tokens
arrives in two streamed responses; concatenating the responses' bytes gives exact UTF-8 (decode them with an
incremental decoder, as :mod:`k2trt.serving.client` does). Decoding each response to text on its own, as
tensorrtllm_backend's postprocessing does, turns every split character into U+FFFD; an ensemble step has no state
to hold the bytes back, so the bytes go out as they are. (``k2_bls`` holds them back:
:class:`~k2trt.tokenizer.StreamDecoder`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from k2trt.errors import K2Error
from k2trt.serving.tensors import encode_words_list
from k2trt.tokenizer import K2Tokenizer


def _strings(arr: np.ndarray) -> list[str]:
    out = []
    for v in np.asarray(arr).reshape(-1):
        if isinstance(v, bytes):
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise K2Error(f"text input is not UTF-8 ({e.reason} at byte {e.start})") from None
        else:
            out.append(str(v))
    return out


@dataclass
class Preprocessor:
    tokenizer: K2Tokenizer

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request's input tensors (batch dimension first) -> its output tensors."""
        tok = self.tokenizer
        if "QUERY" not in tensors or "REQUEST_OUTPUT_LEN" not in tensors:
            raise K2Error("preprocessing needs QUERY and REQUEST_OUTPUT_LEN")
        queries = _strings(tensors["QUERY"])
        b = len(queries)
        out_len = np.asarray(tensors["REQUEST_OUTPUT_LEN"], dtype=np.int32).reshape(b, -1)[:, :1]
        end = self._per_row(tensors.get("END_ID"), b, tok.im_end_id)
        pad = self._per_row(tensors.get("PAD_ID"), b, tok.pad_id if tok.pad_id is not None else tok.eos_id)
        ids = [tok.encode(q, allow_special=True) for q in queries]
        empty = [i for i, x in enumerate(ids) if not x]
        if empty:
            raise K2Error(f"text_input is empty (batch row {empty[0]})")
        width = max(len(x) for x in ids)
        input_id = np.stack([np.asarray(x + [int(pad[i])] * (width - len(x)), dtype=np.int32)
                             for i, x in enumerate(ids)])
        words_rows = []
        stop_strings = self._stop_strings(tensors.get("STOP_WORDS_DICT"), b)
        for i in range(b):
            words = [tok.encode(s, allow_special=True) for s in stop_strings[i] if s]
            words += [[t] for t in tok.stop_ids if t != int(end[i]) and [t] not in words]
            words_rows.append(encode_words_list(words))
        width_w = max(w.shape[1] for w in words_rows)
        stop_ids = np.stack([np.pad(w, ((0, 0), (0, width_w - w.shape[1])), constant_values=-1) for w in words_rows])
        return {
            "INPUT_ID": input_id,
            "REQUEST_INPUT_LEN": np.asarray([[len(x)] for x in ids], dtype=np.int32),
            "REQUEST_OUTPUT_LEN": out_len,
            "STOP_WORDS_IDS": stop_ids.astype(np.int32),
            "OUT_END_ID": end.reshape(b, 1).astype(np.int32),
            "OUT_PAD_ID": pad.reshape(b, 1).astype(np.int32),
        }

    @staticmethod
    def _per_row(arr: np.ndarray | None, b: int, default: int) -> np.ndarray:
        if arr is None:
            return np.full(b, default, dtype=np.int32)
        return np.asarray(arr, dtype=np.int32).reshape(b, -1)[:, 0]

    @staticmethod
    def _stop_strings(arr: np.ndarray | None, b: int) -> list[list[str]]:
        if arr is None:
            return [[] for _ in range(b)]
        a = np.asarray(arr, dtype=np.object_).reshape(b, -1)
        return [_strings(row) for row in a]


@dataclass
class Postprocessor:
    tokenizer: K2Tokenizer
    skip_special_tokens: bool = False
    """Leave special tokens (``<|tool_call_begin|>``...) out of the text; by default they are kept, as K2's tool
    calls need them."""

    def decode(self, ids: Sequence[int]) -> bytes:
        if self.skip_special_tokens:
            ids = [t for t in ids if not self.tokenizer.is_special(t)]
        return self.tokenizer.decode_bytes(list(ids))

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``TOKENS_BATCH [B, beams, L]`` + ``SEQUENCE_LENGTH [B, beams]`` -> ``OUTPUT [B, beams]`` (bytes)."""
        tokens = np.asarray(tensors["TOKENS_BATCH"])
        lengths = np.asarray(tensors["SEQUENCE_LENGTH"])
        if tokens.ndim != 3 or lengths.shape != tokens.shape[:2]:
            raise K2Error(f"postprocessing: TOKENS_BATCH {list(tokens.shape)} and SEQUENCE_LENGTH "
                          f"{list(lengths.shape)} are not [batch, beams, tokens] and [batch, beams]")
        out = np.empty(tokens.shape[:2], dtype=np.object_)
        for b in range(tokens.shape[0]):
            for k in range(tokens.shape[1]):
                out[b, k] = self.decode(tokens[b, k, : int(lengths[b, k])].tolist())
        return {"OUTPUT": out}
