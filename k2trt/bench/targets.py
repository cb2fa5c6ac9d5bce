"""What each target is: which model to load, how a request looks, how its responses' tokens are counted.

The Triton targets are read from the served model's own config (``get_model_config``), so the input data
matches the inputs the deployment really has:

- ``ensemble`` (tensorrtllm_backend's ensemble I/O): ``text_input``, ``max_tokens`` = OSL, ``stream`` true,
  the exact-length input (``min_tokens`` or ``min_length`` = OSL), greedy sampling where ``temperature``
  exists. Tokens are counted from the ``output_ids`` output (each streamed response carries the ids of that
  step); a deployment without it is counted one token per streamed response, and the run says so.
- ``bls`` (``k2_bls``): one JSON chat request (``messages``, ``max_tokens``, ``stream``, ``sampling`` with
  ``min_tokens``); each streamed response is a JSON document whose generated ids are counted.
- ``openai``: see :mod:`k2trt.bench.openai_driver`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from k2trt.bench.inputs import Prompt
from k2trt.errors import K2Error

TARGETS = ("ensemble", "bls", "openai")
DEFAULT_MODEL = {"ensemble": "ensemble", "bls": "k2_bls"}

MIN_LENGTH_INPUTS = ("min_tokens", "min_length")
"""Inputs that force at least N generated tokens (k2trt / TensorRT-LLM names)."""
STREAM_INPUTS = ("stream", "streaming")
IDS_OUTPUTS = ("output_ids",)

_DTYPE_KIND = {"TYPE_STRING": "bytes", "TYPE_BOOL": "bool", "TYPE_FP32": "float", "TYPE_FP16": "float",
               "TYPE_FP64": "float", "TYPE_BF16": "float"}


def _kind(dtype: str) -> str:
    return _DTYPE_KIND.get(dtype, "int")


def _value(kind: str, v: Any) -> Any:
    if kind == "bool":
        return bool(v)
    if kind == "float":
        return float(v)
    if kind == "int":
        return int(v)
    return str(v)


@dataclass(frozen=True)
class TritonModel:
    """The parts of a Triton model config the benchmark needs."""

    name: str
    inputs: dict[str, str]
    """name -> data_type (``TYPE_STRING``, ``TYPE_INT32``, ...)."""
    required: frozenset[str]
    outputs: dict[str, str]
    decoupled: bool
    parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict) -> TritonModel:
        cfg = cfg.get("config", cfg)
        ins = {i["name"]: i.get("data_type", "") for i in cfg.get("input", [])}
        req = frozenset(i["name"] for i in cfg.get("input", []) if not i.get("optional", False))
        outs = {o["name"]: o.get("data_type", "") for o in cfg.get("output", [])}
        dec = bool(cfg.get("model_transaction_policy", {}).get("decoupled", False))
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        return cls(cfg.get("name", ""), ins, req, outs, dec, params)

    def entry(self, name: str, value: Any) -> dict:
        """One input of a perf_analyzer data step: ``{"content": [value], "shape": [1]}`` typed by the config."""
        return {"content": [_value(_kind(self.inputs[name]), value)], "shape": [1]}


@dataclass(frozen=True)
class EnsemblePlan:
    """How the ensemble is driven: which inputs get which values, how tokens are counted."""

    values: dict[str, Any]
    length_input: str | None
    """The input forcing the output length (``min_tokens`` / ``min_length``); None: the model has none."""
    ids_output: str | None
    """The output counted for tokens; None: one token per streamed response."""

    @property
    def token_count(self) -> str:
        if self.ids_output:
            return f"ids in the '{self.ids_output}' output of each streamed response"
        return "one token per streamed response (the ensemble returns no ids)"


def plan_ensemble(model: TritonModel, *, osl: int, temperature: float = 0.0) -> EnsemblePlan:
    """The inputs of an ensemble request for exactly ``osl`` tokens. K2Error if the model cannot be driven."""
    missing = [n for n in ("text_input", "max_tokens") if n not in model.inputs]
    if missing:
        raise K2Error(f"model '{model.name}' has no {', '.join(missing)} input(s): not a tensorrtllm_backend-style "
                      f"ensemble (inputs: {sorted(model.inputs)}); use --target bls or --model")
    if not model.decoupled:
        raise K2Error(f"model '{model.name}' is not decoupled: it cannot stream tokens (TTFT and ITL need streaming)")
    values: dict[str, Any] = {"max_tokens": osl}
    stream = next((n for n in STREAM_INPUTS if n in model.inputs), None)
    if stream is None:
        raise K2Error(f"model '{model.name}' has no stream/streaming input")
    values[stream] = True
    length = next((n for n in MIN_LENGTH_INPUTS if n in model.inputs), None)
    if length is None:
        names = " or ".join(MIN_LENGTH_INPUTS)
        raise K2Error(f"model '{model.name}' has no input that forces the output length ({names}); without it "
                      f"requests may stop early at an end token and runs do not compare")
    values[length] = osl
    if "temperature" in model.inputs:
        values["temperature"] = temperature
    other = sorted(model.required - set(values) - {"text_input"})
    if other:
        raise K2Error(f"model '{model.name}' requires inputs the benchmark does not know how to fill: {other}")
    ids = next((n for n in IDS_OUTPUTS if n in model.outputs), None)
    return EnsemblePlan(values, length, ids)


def ensemble_input_data(model: TritonModel, plan: EnsemblePlan, prompts: Sequence[Prompt]) -> dict:
    """perf_analyzer ``--input-data`` JSON: one data step per prompt (perf_analyzer cycles through them)."""
    steps = []
    for p in prompts:
        step = {"text_input": model.entry("text_input", p.text)}
        for name, v in plan.values.items():
            step[name] = model.entry(name, v)
        steps.append(step)
    return {"data": steps}


# ----------------------------------------------------------------------------------------------- bls


def bls_request(prompt: Prompt, *, osl: int, temperature: float = 0.0) -> dict:
    """The k2_bls request JSON for exactly ``osl`` generated tokens."""
    return {"messages": prompt.messages, "max_tokens": osl, "stream": True,
            "sampling": {"temperature": temperature, "min_tokens": osl}}


def bls_io(model: TritonModel) -> tuple[str, str]:
    """(request input, response output): the BYTES input and output of the BLS model."""
    ins = [n for n, t in model.inputs.items() if t == "TYPE_STRING"]
    outs = [n for n, t in model.outputs.items() if t == "TYPE_STRING"]
    if len(ins) != 1 or len(outs) != 1:
        raise K2Error(f"model '{model.name}' is not a JSON-in/JSON-out BLS model (BYTES inputs {ins}, outputs {outs})")
    if not model.decoupled:
        raise K2Error(f"model '{model.name}' is not decoupled: it cannot stream tokens (TTFT and ITL need streaming)")
    other = sorted(model.required - {ins[0]})
    if other:
        raise K2Error(f"model '{model.name}' requires inputs besides its JSON request: {other}")
    return ins[0], outs[0]


def bls_input_data(model: TritonModel, prompts: Sequence[Prompt], *, osl: int, temperature: float = 0.0) -> dict:
    name, _ = bls_io(model)
    return {"data": [{name: model.entry(name, json.dumps(bls_request(p, osl=osl, temperature=temperature)))}
                     for p in prompts]}
