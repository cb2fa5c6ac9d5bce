"""The tensors of the Triton models, as data, and the typed engine request the engine tensors carry.

The engine model (``tensorrt_llm``) has **the tensorrtllm backend's tensors** whichever backend runs it (DESIGN.md:
"Engine backends: one I/O contract"): the ``trtllm`` repository declares them for Triton's ``tensorrtllm`` backend,
the ``torch`` repository for the Python model that runs k2trt's runtime, and preprocessing, postprocessing and
``k2_bls`` cannot tell the two apart. Names, dtypes and shapes follow ``triton_backend/all_models/
inflight_batcher_llm/tensorrt_llm/config.pbtxt`` of TensorRT-LLM's 1.x line (the sampling seed is ``seed`` and the
minimum length ``min_tokens`` there; older tensorrtllm_backend releases called them ``random_seed`` and
``min_length``). Only the tensors k2trt supports are declared; ``tests/test_serving_repo.py`` checks the templates
in ``triton_repo/`` against :data:`ENGINE_INPUTS` / :data:`ENGINE_OUTPUTS`.

Shapes: every engine model has ``max_batch_size > 0``, so a request's tensors carry a leading batch dimension
(always 1 here: one sequence per request, batched across requests). A response's ``output_ids`` is
``[1, beam=1, tokens]`` and ``sequence_length`` ``[1, beam=1]``, as the tensorrtllm backend sends them.

``stop_words_list`` (``[2, L]`` per sequence, TensorRT-LLM's layout): row 0 is the token ids of every stop word
concatenated, row 1 the end offset of each word, padded with -1. ``[[5, 6], [7]]`` ->
``[[5, 6, 7], [2, 3, -1]]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from k2trt.errors import K2Error

NP_DTYPES = {
    "TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_UINT64": np.uint64, "TYPE_FP32": np.float32,
    "TYPE_BOOL": np.bool_, "TYPE_STRING": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a Triton model, as its ``config.pbtxt`` declares it."""

    name: str
    data_type: str
    """Triton's name: ``TYPE_INT32``, ``TYPE_FP32``, ``TYPE_BOOL``, ``TYPE_UINT64``, ``TYPE_STRING``..."""
    dims: tuple[int, ...]
    """Shape without the batch dimension; -1 is variable."""
    optional: bool = False
    reshape_scalar: bool = False
    """``reshape: { shape: [ ] }``: the backend sees ``[batch]`` instead of ``[batch, 1]``."""
    ragged: bool = False
    """``allow_ragged_batch``."""

    @property
    def np_dtype(self) -> type:
        return NP_DTYPES[self.data_type]


def _in(name: str, dt: str, dims: tuple[int, ...], *, optional: bool = True, scalar: bool = True,
        ragged: bool = False) -> TensorSpec:
    return TensorSpec(name, dt, dims, optional=optional, reshape_scalar=scalar, ragged=ragged)


ENGINE_INPUTS: tuple[TensorSpec, ...] = (
    _in("input_ids", "TYPE_INT32", (-1,), scalar=False, ragged=True),
    _in("input_lengths", "TYPE_INT32", (1,), optional=False),
    _in("request_output_len", "TYPE_INT32", (1,), optional=False),
    _in("end_id", "TYPE_INT32", (1,)),
    _in("pad_id", "TYPE_INT32", (1,)),
    _in("stop_words_list", "TYPE_INT32", (2, -1), scalar=False, ragged=True),
    _in("beam_width", "TYPE_INT32", (1,)),
    _in("temperature", "TYPE_FP32", (1,)),
    _in("runtime_top_k", "TYPE_INT32", (1,)),
    _in("runtime_top_p", "TYPE_FP32", (1,)),
    _in("min_tokens", "TYPE_INT32", (1,)),
    _in("seed", "TYPE_UINT64", (1,)),
    _in("exclude_input_in_output", "TYPE_BOOL", (1,)),
    _in("stop", "TYPE_BOOL", (1,)),
    _in("streaming", "TYPE_BOOL", (1,)),
)
"""The engine model's inputs (the supported subset of the tensorrtllm backend's), in its config's order."""

ENGINE_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output_ids", "TYPE_INT32", (-1, -1)),
    TensorSpec("sequence_length", "TYPE_INT32", (-1,)),
)

PREPROCESSING_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("QUERY", "TYPE_STRING", (1,)),
    TensorSpec("REQUEST_OUTPUT_LEN", "TYPE_INT32", (1,)),
    TensorSpec("STOP_WORDS_DICT", "TYPE_STRING", (-1,), optional=True),
    TensorSpec("END_ID", "TYPE_INT32", (1,), optional=True),
    TensorSpec("PAD_ID", "TYPE_INT32", (1,), optional=True),
)
PREPROCESSING_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("INPUT_ID", "TYPE_INT32", (-1,)),
    TensorSpec("REQUEST_INPUT_LEN", "TYPE_INT32", (1,)),
    TensorSpec("REQUEST_OUTPUT_LEN", "TYPE_INT32", (-1,)),
    TensorSpec("STOP_WORDS_IDS", "TYPE_INT32", (2, -1)),
    TensorSpec("OUT_END_ID", "TYPE_INT32", (1,)),
    TensorSpec("OUT_PAD_ID", "TYPE_INT32", (1,)),
)
POSTPROCESSING_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("TOKENS_BATCH", "TYPE_INT32", (-1, -1)),
    TensorSpec("SEQUENCE_LENGTH", "TYPE_INT32", (-1,)),
)
POSTPROCESSING_OUTPUTS: tuple[TensorSpec, ...] = (TensorSpec("OUTPUT", "TYPE_STRING", (-1,)),)

ENSEMBLE_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_input", "TYPE_STRING", (1,)),
    TensorSpec("max_tokens", "TYPE_INT32", (1,)),
    TensorSpec("stop_words", "TYPE_STRING", (-1,), optional=True),
    TensorSpec("exclude_input_in_output", "TYPE_BOOL", (1,), optional=True),
    TensorSpec("end_id", "TYPE_INT32", (1,), optional=True),
    TensorSpec("pad_id", "TYPE_INT32", (1,), optional=True),
    TensorSpec("top_k", "TYPE_INT32", (1,), optional=True),
    TensorSpec("top_p", "TYPE_FP32", (1,), optional=True),
    TensorSpec("temperature", "TYPE_FP32", (1,), optional=True),
    TensorSpec("min_tokens", "TYPE_INT32", (1,), optional=True),
    TensorSpec("seed", "TYPE_UINT64", (1,), optional=True),
    TensorSpec("beam_width", "TYPE_INT32", (1,), optional=True),
    TensorSpec("stream", "TYPE_BOOL", (1,), optional=True),
)
"""tensorrtllm_backend's ensemble inputs (the supported subset): what perf_analyzer and genai-perf send."""
ENSEMBLE_OUTPUTS: tuple[TensorSpec, ...] = (TensorSpec("text_output", "TYPE_STRING", (-1,)),)

BLS_INPUTS: tuple[TensorSpec, ...] = (TensorSpec("request", "TYPE_STRING", (1,)),)
"""``k2_bls`` (``max_batch_size: 0``): ``request`` [1] holds the request JSON (:mod:`k2trt.serving.bls`)."""
BLS_OUTPUTS: tuple[TensorSpec, ...] = (TensorSpec("response", "TYPE_STRING", (1,)),)

MODEL_TENSORS: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    "tensorrt_llm": (ENGINE_INPUTS, ENGINE_OUTPUTS),
    "preprocessing": (PREPROCESSING_INPUTS, PREPROCESSING_OUTPUTS),
    "postprocessing": (POSTPROCESSING_INPUTS, POSTPROCESSING_OUTPUTS),
    "ensemble": (ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS),
    "k2_bls": (BLS_INPUTS, BLS_OUTPUTS),
}
"""Every model of the repository -> (inputs, outputs)."""

_INPUT = {s.name: s for s in ENGINE_INPUTS}


# ----------------------------------------------------------------------------------------------- stop words


def encode_words_list(words: Sequence[Sequence[int]]) -> np.ndarray:
    """``[2, L]`` int32 in TensorRT-LLM's stop/bad words layout (see the module docstring); ``[2, 1]`` of -1 when
    there are no words (what tensorrtllm_backend's preprocessing sends for none)."""
    flat = [int(t) for w in words for t in w]
    offsets = list(np.cumsum([len(w) for w in words])) if words else []
    n = max(len(flat), 1)
    out = np.full((2, n), -1, dtype=np.int32)
    out[0, : len(flat)] = flat
    out[1, : len(offsets)] = offsets
    return out


def decode_words_list(arr: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """The words of one sequence's ``[2, L]`` list; K2Error when the offsets do not describe the ids."""
    a = np.asarray(arr)
    if a.ndim != 2 or a.shape[0] != 2:
        raise K2Error(f"stop_words_list: expected shape [2, L] per sequence, got {list(a.shape)}")
    ids, offsets = a[0].tolist(), [int(o) for o in a[1].tolist() if o >= 0]
    words, start = [], 0
    for end in offsets:
        if not start < end <= len(ids):
            raise K2Error(f"stop_words_list: offsets {offsets} do not cut the {len(ids)} ids into words")
        word = tuple(int(t) for t in ids[start:end])
        if any(t < 0 for t in word):
            raise K2Error(f"stop_words_list: negative token id in word {list(word)}")
        words.append(word)
        start = end
    return tuple(words)


# ----------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class EngineRequest:
    """One sequence's generation request as the engine tensors carry it.

    Sampling as the runtime's :class:`~k2trt.runtime.sampling.SamplingParams`: ``temperature`` 0 (the default when
    absent) or ``top_k`` 1 is greedy; ``top_k`` 0 keeps every token; ``top_p`` absent or 0 is no nucleus cut
    (TensorRT-LLM treats 0 as unset).
    """

    input_ids: tuple[int, ...]
    max_tokens: int
    end_id: int | None = None
    pad_id: int | None = None
    stop_words: tuple[tuple[int, ...], ...] = ()
    beam_width: int = 1
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_tokens: int = 0
    seed: int | None = None
    exclude_input_in_output: bool = True
    streaming: bool = False
    stop: bool = False
    """Not a generation: cancel the in-flight request with the same Triton request id."""

    def validate(self) -> None:
        """Problems a user can fix, all at once; K2Error."""
        problems = []
        if not self.stop and not self.input_ids:
            problems.append("input_ids: empty")
        if self.max_tokens < 1 and not self.stop:
            problems.append(f"request_output_len: must be >= 1, got {self.max_tokens}")
        if self.beam_width != 1:
            problems.append(f"beam_width: only 1 is supported (k2trt's runtime samples one beam), got "
                            f"{self.beam_width}")
        if not self.temperature >= 0:
            problems.append(f"temperature: must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"runtime_top_k: must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"runtime_top_p: must be in [0, 1], got {self.top_p}")
        if self.min_tokens < 0:
            problems.append(f"min_tokens: must be >= 0, got {self.min_tokens}")
        if problems:
            raise K2Error(problems)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray], *, exclude_input_default: bool = True) -> EngineRequest:
        """Read one request's tensors (as the Python backend gives them, with the batch dimension).

        K2Error for unknown tensors, a batch of more than one sequence, or values of the wrong kind.
        """
        unknown = sorted(set(tensors) - _INPUT.keys())
        if unknown:
            raise K2Error(f"unknown input tensor(s) {unknown}; the engine takes {[s.name for s in ENGINE_INPUTS]}")
        batch = {n: np.asarray(v).shape[0] if np.asarray(v).ndim else 1 for n, v in tensors.items()}
        if any(b != 1 for b in batch.values()):
            raise K2Error(f"batch size {max(batch.values())} in one request: send one sequence per request "
                          f"(concurrent requests are batched by the engine)")

        def scalar(name: str, default):
            if name not in tensors:
                return default
            v = np.asarray(tensors[name]).reshape(-1)
            if v.size != 1:
                raise K2Error(f"{name}: expected one value per sequence, got {v.size}")
            return v[0].item()

        stop = bool(scalar("stop", False))
        lengths = scalar("input_lengths", None)
        if "input_ids" in tensors:
            ids = np.asarray(tensors["input_ids"]).reshape(-1)
        elif stop:
            ids = np.zeros(0, dtype=np.int32)
        else:
            raise K2Error("input_ids: missing")
        if lengths is None:
            raise K2Error("input_lengths: missing")
        if not stop and not 0 < lengths <= ids.size:
            raise K2Error(f"input_lengths {lengths} does not fit the {ids.size} input_ids")
        max_tokens = scalar("request_output_len", None)
        if max_tokens is None:
            raise K2Error("request_output_len: missing")
        seed = scalar("seed", None)
        top_p = float(scalar("runtime_top_p", 1.0))
        words: tuple[tuple[int, ...], ...] = ()
        if "stop_words_list" in tensors:
            arr = np.asarray(tensors["stop_words_list"])
            words = decode_words_list(arr.reshape(arr.shape[-2:]) if arr.ndim == 3 else arr)
        end_id = scalar("end_id", None)
        pad_id = scalar("pad_id", None)
        req = cls(
            input_ids=tuple(int(t) for t in ids[: lengths if not stop else ids.size]),
            max_tokens=int(max_tokens),
            end_id=None if end_id is None or end_id < 0 else int(end_id),
            pad_id=None if pad_id is None else int(pad_id),
            stop_words=words,
            beam_width=int(scalar("beam_width", 1)),
            temperature=float(scalar("temperature", 0.0)),
            top_k=int(scalar("runtime_top_k", 0)),
            top_p=1.0 if top_p == 0 else top_p,
            min_tokens=int(scalar("min_tokens", 0)),
            seed=None if seed is None else int(seed),
            exclude_input_in_output=bool(scalar("exclude_input_in_output", exclude_input_default)),
            streaming=bool(scalar("streaming", False)),
            stop=stop,
        )
        req.validate()
        return req

    def to_tensors(self) -> dict[str, np.ndarray]:
        """The engine tensors of this request (batch dimension 1): what ``k2_bls`` sends to the engine model."""
        def one(v, dtype) -> np.ndarray:  # [batch 1, 1]: the config's dims [1] behind the batch dimension
            return np.asarray([[v]], dtype=dtype)

        t: dict[str, np.ndarray] = {
            "input_ids": np.asarray([self.input_ids], dtype=np.int32),
            "input_lengths": one(len(self.input_ids), np.int32),
            "request_output_len": one(self.max_tokens, np.int32),
            "beam_width": one(self.beam_width, np.int32),
            "temperature": one(self.temperature, np.float32),
            "runtime_top_k": one(self.top_k, np.int32),
            "runtime_top_p": one(self.top_p, np.float32),
            "min_tokens": one(self.min_tokens, np.int32),
            "exclude_input_in_output": one(self.exclude_input_in_output, np.bool_),
            "streaming": one(self.streaming, np.bool_),
        }
        if self.stop:
            t["stop"] = one(True, np.bool_)
            if not self.input_ids:
                del t["input_ids"]
        if self.end_id is not None:
            t["end_id"] = one(self.end_id, np.int32)
        if self.pad_id is not None:
            t["pad_id"] = one(self.pad_id, np.int32)
        if self.seed is not None:
            t["seed"] = one(self.seed, np.uint64)
        if self.stop_words:
            t["stop_words_list"] = encode_words_list(self.stop_words)[None]
        return t

def output_tensors(ids: Sequence[int]) -> dict[str, np.ndarray]:
    """One engine response: ``output_ids [1, 1, n]`` and ``sequence_length [1, 1]`` (int32)."""
    return {
        "output_ids": np.asarray(ids, dtype=np.int32).reshape(1, 1, -1),
        "sequence_length": np.asarray([[len(ids)]], dtype=np.int32),
    }


def ids_from_output(output_ids: np.ndarray | None, sequence_length: np.ndarray | None) -> list[int]:
    """The token ids of one engine response for one sequence (beam 0), ``[]`` for an empty final response."""
    if output_ids is None:
        return []
    ids = np.asarray(output_ids).reshape(-1, np.asarray(output_ids).shape[-1])[0]
    if sequence_length is not None and np.asarray(sequence_length).size:
        ids = ids[: int(np.asarray(sequence_length).reshape(-1)[0])]
    return [int(t) for t in ids]
