"""A chat client for k2trt's Triton deployment (tritonclient, gRPC streaming), and ``k2trt chat``.

::

    from k2trt.serving.client import ChatClient, collect

    with ChatClient("localhost:8001") as c:
        for chunk in c.chat([{"role": "user", "content": "Hi"}], max_tokens=32):   # streamed chunks
            print(chunk["choices"][0]["delta"].get("content") or "", end="")
        answer = c.complete([{"role": "user", "content": "Hi"}])                 # one chat.completion
        text = "".join(c.generate("Hello", max_tokens=16))                         # the ensemble (text_input)

Both models are decoupled, so every request goes through the gRPC stream API (``ModelStreamInfer``). Leaving a
``chat``/``generate`` iterator early cancels the request on the server (``stop_stream(cancel_requests=True)``;
Triton tells the model, which stops generating). A client holds one stream at a time: use one client per
concurrent request.
"""

from __future__ import annotations

import codecs
import json
import queue
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from k2trt.errors import K2Error


class ServerError(K2Error):
    """The server answered a request with an error (its message, e.g. ``k2_bls: messages[0].role: ...``)."""


@dataclass
class ChatResult:
    """A chat answer put together from streamed chunks (or read from a whole ``chat.completion``)."""

    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """OpenAI ``tool_calls`` objects: ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        m: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            m["tool_calls"] = self.tool_calls
        elif m["content"] is None:
            m["content"] = ""
        return m


def collect(objects: list[dict[str, Any]] | Iterator[dict[str, Any]]) -> ChatResult:
    """Merge k2_bls responses (``chat.completion.chunk``s, or one ``chat.completion``) as an OpenAI client does."""
    r = ChatResult()
    for obj in objects:
        for choice in obj.get("choices", []):
            if "message" in choice:
                msg = choice["message"]
                r.content += msg.get("content") or ""
                r.tool_calls += [dict(c) for c in msg.get("tool_calls") or []]
            delta = choice.get("delta") or {}
            r.content += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                if "id" in tc:
                    r.tool_calls.append({"id": tc["id"], "type": "function",
                                         "function": {"name": tc["function"]["name"],
                                                      "arguments": tc["function"].get("arguments", "")}})
                else:
                    r.tool_calls[tc["index"]]["function"]["arguments"] += tc["function"].get("arguments", "")
            if choice.get("finish_reason"):
                r.finish_reason = choice["finish_reason"]
        if obj.get("usage"):
            r.usage = dict(obj["usage"])
    return r


_TRITON_DTYPES = {np.int32: "INT32", np.float32: "FP32", np.bool_: "BOOL", np.uint64: "UINT64"}


class ChatClient:
    """k2_bls and the ensemble over gRPC streaming; ``url`` is ``host:port`` of Triton's gRPC endpoint."""

    def __init__(self, url: str = "localhost:8001", *, model: str = "k2_bls", timeout_s: float = 600):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self._client = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_ready(self) -> bool:
        """The server is up and this client's model is loaded."""
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except InferenceServerException:
            return False

    # -------------------------------------------------------------------------------------------- streams

    def _stream(self, model: str, inputs: list, output: str) -> Iterator[np.ndarray]:
        """The ``output`` array of each response to one request; ends after the final response."""
        from tritonclient.utils import InferenceServerException

        q: queue.Queue = queue.Queue()
        self._client.start_stream(callback=lambda result, error: q.put((result, error)))
        finished = False
        try:
            self._client.async_stream_infer(model, inputs, request_id=uuid.uuid4().hex,
                                            enable_empty_final_response=True)
            while True:
                try:
                    result, error = q.get(timeout=self.timeout_s)
                except queue.Empty:
                    raise K2Error(f"{model}: no response within {self.timeout_s:.0f} s") from None
                if error is not None:
                    finished = True
                    msg = error.message() if isinstance(error, InferenceServerException) else str(error)
                    raise ServerError(msg)
                arr = result.as_numpy(output)
                if arr is not None and arr.size:
                    yield arr
                params = result.get_response().parameters
                if "triton_final_response" in params and params["triton_final_response"].bool_param:
                    finished = True
                    return
        finally:
            # a stream left before its final response is cancelled on the server
            self._client.stop_stream(cancel_requests=not finished)

    def engine_stream(self, ids: Sequence[int], *, max_tokens: int, end_id: int | None = None,
                      stop_words: Sequence[Sequence[int]] = (), min_tokens: int = 0,
                      model: str = "tensorrt_llm") -> Iterator[np.ndarray]:
        """The engine model's contract (the tensorrtllm backend's): ``input_ids`` in, streamed; yields each
        response's ``output_ids`` (``[1, 1, n]``). Greedy. The ``end_id`` token that ends the sequence is not
        returned (TensorRT-LLM's behaviour); a stop word is."""
        from k2trt.serving.tensors import EngineRequest

        req = EngineRequest(input_ids=tuple(ids), max_tokens=max_tokens, streaming=True, end_id=end_id,
                            stop_words=tuple(tuple(w) for w in stop_words), min_tokens=min_tokens)
        inputs = []
        for name, arr in req.to_tensors().items():
            t = self._grpc.InferInput(name, list(arr.shape), _TRITON_DTYPES[arr.dtype.type])
            t.set_data_from_numpy(arr)
            inputs.append(t)
        return self._stream(model, inputs, "output_ids")

    def request(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The k2_bls response objects of one request ``body`` (the JSON :mod:`k2trt.serving.bls` takes)."""
        data = self._grpc.InferInput("request", [1], "BYTES")
        data.set_data_from_numpy(np.array([json.dumps(body, ensure_ascii=False).encode()], dtype=np.object_))
        for arr in self._stream(self.model, [data], "response"):
            item = arr.reshape(-1)[0]
            yield json.loads(item.decode() if isinstance(item, bytes) else item)

    def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
             tool_choice: str | dict = "auto", max_tokens: int | None = None, temperature: float | None = None,
             top_p: float | None = None, top_k: int | None = None, seed: int | None = None,
             stop: list[str] | None = None, stream: bool = True) -> Iterator[dict[str, Any]]:
        """Send a chat request; yields ``chat.completion.chunk``s (``stream``) or one ``chat.completion``."""
        sampling = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k),
                                      ("seed", seed), ("stop", stop)) if v is not None}
        body: dict[str, Any] = {"messages": messages, "tool_choice": tool_choice, "sampling": sampling,
                                "stream": stream}
        if tools:
            body["tools"] = tools
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return self.request(body)

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """One whole ``chat.completion`` (not streamed)."""
        out = list(self.chat(messages, stream=False, **kwargs))
        if len(out) != 1:
            raise K2Error(f"{self.model}: expected one response to a non-streamed request, got {len(out)}")
        return out[0]

    def generate(self, text: str, *, max_tokens: int, stream: bool = True, model: str = "ensemble",
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, min_tokens: int | None = None,
                 stop_words: list[str] | None = None) -> Iterator[str]:
        """The ensemble (``text_input`` -> ``text_output``): yields text as it streams. The pieces are bytes on
        the wire (a character may be split across two responses); they are decoded incrementally here."""
        g = self._grpc

        def tensor(name: str, value: Any, dtype: str, np_dtype) -> Any:
            arr = np.array([[value]], dtype=np_dtype)
            t = g.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            return t

        inputs = [tensor("text_input", text.encode(), "BYTES", np.object_),
                  tensor("max_tokens", max_tokens, "INT32", np.int32),
                  tensor("stream", stream, "BOOL", np.bool_)]
        for name, v, dt, npt in (("temperature", temperature, "FP32", np.float32), ("top_k", top_k, "INT32", np.int32),
                                 ("top_p", top_p, "FP32", np.float32), ("seed", seed, "UINT64", np.uint64),
                                 ("min_tokens", min_tokens, "INT32", np.int32)):
            if v is not None:
                inputs.append(tensor(name, v, dt, npt))
        if stop_words:
            arr = np.array([[w.encode() for w in stop_words]], dtype=np.object_)
            t = g.InferInput("stop_words", list(arr.shape), "BYTES")
            t.set_data_from_numpy(arr)
            inputs.append(t)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for arr in self._stream(model, inputs, "text_output"):
            piece = utf8.decode(b"".join(x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1)))
            if piece:
                yield piece
        tail = utf8.decode(b"", final=True)
        if tail:
            yield tail


# ----------------------------------------------------------------------------------------------- k2trt chat


def load_tools(path: str | Path) -> list[dict[str, Any]]:
    """A JSON file of OpenAI tools: a list, or ``{"tools": [...]}``."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise K2Error(f"--tools {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise K2Error(f"--tools {path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    tools = data.get("tools") if isinstance(data, dict) else data
    if not isinstance(tools, list):
        raise K2Error(f"--tools {path}: expected a list of tools (or an object with 'tools')")
    return tools


def _show_turn(client: ChatClient, messages: list[dict[str, Any]], *, out, err, stream: bool,
               **kwargs: Any) -> ChatResult:
    t0 = time.perf_counter()
    first = None
    objects = []
    for obj in client.chat(messages, stream=stream, **kwargs):
        objects.append(obj)
        if first is None:
            first = time.perf_counter() - t0
        for choice in obj.get("choices", []):
            text = (choice.get("delta") or choice.get("message") or {}).get("content")
            if text:
                out.write(text)
                out.flush()
    result = collect(objects)
    if result.content:
        out.write("\n")
    for call in result.tool_calls:
        out.write(f"[tool call {call['id']}] {call['function']['name']}({call['function']['arguments']})\n")
    total = time.perf_counter() - t0
    u = result.usage
    err.write(f"[{result.finish_reason}; {u.get('prompt_tokens', '?')} prompt + {u.get('completion_tokens', '?')} "
              f"completion tokens; first response {1000 * (first or total):.0f} ms, total {total:.2f} s]\n")
    out.flush()
    return result


def chat_cli(*, url: str, message: str | None, tools_file: Path | None, system: str | None,
             max_tokens: int | None, temperature: float | None, seed: int | None, stream: bool, model: str,
             stdin=None, out=None, err=None) -> int:
    """``k2trt chat``: one-shot with ``message``, else interactive (a line per turn; tool calls ask for results)."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    tools = load_tools(tools_file) if tools_file else None
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    kwargs = {"tools": tools, "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    with ChatClient(url, model=model) as client:
        if not client.is_ready():
            raise K2Error(f"no ready {model} model at {url} (start one with `k2trt serve --repo REPO`)")
        if message is not None:
            messages.append({"role": "user", "content": message})
            _show_turn(client, messages, out=out, err=err, stream=stream, **kwargs)
            return 0
        err.write("k2trt chat: a line per message; empty line or Ctrl-D to quit.\n")
        while True:
            err.write("you> ")
            err.flush()
            line = stdin.readline()
            if not line or not line.strip():
                return 0
            messages.append({"role": "user", "content": line.rstrip("\n")})
            while True:
                try:
                    result = _show_turn(client, messages, out=out, err=err, stream=stream, **kwargs)
                except ServerError as e:
                    err.write(f"error: {e}\n")
                    messages.pop()
                    break
                messages.append(result.message())
                if not result.tool_calls:
                    break
                for call in result.tool_calls:  # the user plays the tool
                    err.write(f"result of {call['function']['name']} (JSON or text)> ")
                    err.flush()
                    messages.append({"role": "tool", "tool_call_id": call["id"],
                                     "content": stdin.readline().strip() or "{}"})
