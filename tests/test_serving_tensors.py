"""The engine tensors (the tensorrtllm backend's contract) and the typed request they carry."""

from __future__ import annotations

import numpy as np
import pytest

from k2trt.errors import K2Error
from k2trt.serving.tensors import (
    ENGINE_INPUTS,
    EngineRequest,
    decode_words_list,
    encode_words_list,
    ids_from_output,
    output_tensors,
)


def test_words_list_layout_is_tensorrt_llms():
    # TensorRT-LLM's stop_words_list: ids concatenated, then the end offset of each word, -1 padded
    arr = encode_words_list([[5, 6], [7]])
    assert arr.tolist() == [[5, 6, 7], [2, 3, -1]]
    assert arr.dtype == np.int32
    assert decode_words_list(arr) == ((5, 6), (7,))
    assert encode_words_list([]).tolist() == [[-1], [-1]]
    assert decode_words_list(encode_words_list([])) == ()


def test_words_list_rejects_offsets_that_do_not_fit():
    with pytest.raises(K2Error, match="offsets"):
        decode_words_list(np.array([[5, 6], [3, -1]]))
    with pytest.raises(K2Error, match=r"\[2, L\]"):
        decode_words_list(np.array([5, 6]))


def test_request_round_trips_through_tensors():
    req = EngineRequest(input_ids=(3, 4, 5), max_tokens=9, end_id=7, pad_id=8, stop_words=((1, 2), (6,)),
                        temperature=0.5, top_k=4, top_p=0.75, min_tokens=2, seed=2**63 + 5,
                        exclude_input_in_output=False, streaming=True)
    t = req.to_tensors()
    # what a client sends: batch dimension 1 in front of the config's dims
    assert t["input_ids"].shape == (1, 3) and t["input_lengths"].shape == (1, 1)
    assert t["stop_words_list"].shape == (1, 2, 3)
    assert t["seed"].dtype == np.uint64
    assert EngineRequest.from_tensors(t) == req


def test_request_reads_what_the_python_backend_gives_after_reshape():
    # inputs with `reshape: { shape: [ ] }` reach the model as [batch]
    tensors = {"input_ids": np.array([[1, 2, 3, 0, 0]], dtype=np.int32), "input_lengths": np.array([3], np.int32),
               "request_output_len": np.array([4], np.int32), "streaming": np.array([True])}
    req = EngineRequest.from_tensors(tensors, exclude_input_default=False)
    assert req.input_ids == (1, 2, 3)  # padded ids are cut at input_lengths
    assert req.max_tokens == 4 and req.streaming and not req.exclude_input_in_output
    assert req.temperature == 0 and req.top_p == 1.0  # absent sampling: greedy, no nucleus cut


def test_top_p_zero_means_unset_as_in_tensorrt_llm():
    t = EngineRequest(input_ids=(1,), max_tokens=1).to_tensors()
    t["runtime_top_p"] = np.array([[0.0]], np.float32)
    assert EngineRequest.from_tensors(t).top_p == 1.0


@pytest.mark.parametrize("change, message", [
    ({"beam_width": np.array([[2]], np.int32)}, "beam_width: only 1"),
    ({"request_output_len": np.array([[0]], np.int32)}, "request_output_len: must be >= 1"),
    ({"temperature": np.array([[-1.0]], np.float32)}, "temperature: must be >= 0"),
    ({"input_lengths": np.array([[9]], np.int32)}, "does not fit"),
    ({"lora_weights": np.zeros((1, 1), np.float32)}, "unknown input tensor"),
    ({"input_ids": np.array([[1], [2]], np.int32)}, "one sequence per request"),
])
def test_bad_requests_name_the_tensor(change, message):
    t = EngineRequest(input_ids=(1,), max_tokens=1).to_tensors()
    t.update(change)
    with pytest.raises(K2Error, match=message):
        EngineRequest.from_tensors(t)


def test_stop_request_needs_no_ids():
    t = EngineRequest(input_ids=(), max_tokens=1, stop=True).to_tensors()
    assert "input_ids" not in t
    assert EngineRequest.from_tensors(t).stop


def test_output_tensors_have_the_backends_shapes():
    out = output_tensors([4, 5])
    assert out["output_ids"].shape == (1, 1, 2) and out["output_ids"].dtype == np.int32
    assert out["sequence_length"].tolist() == [[2]]
    assert ids_from_output(out["output_ids"], out["sequence_length"]) == [4, 5]
    assert ids_from_output(np.array([[[4, 5, 0]]]), np.array([[2]])) == [4, 5]
    assert ids_from_output(None, None) == []


def test_every_contract_input_is_read():
    # a tensor in the contract that EngineRequest ignored would be silently dropped
    full = EngineRequest(input_ids=(1, 2), max_tokens=3, end_id=1, pad_id=0, stop_words=((2,),), seed=1,
                         streaming=True).to_tensors()
    full["stop"] = np.array([[False]])
    assert set(full) == {s.name for s in ENGINE_INPUTS}
