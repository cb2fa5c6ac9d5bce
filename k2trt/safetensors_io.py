"""The safetensors file format, read and written one tensor at a time.

Layout (huggingface/safetensors ``docs``): 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`` padded with spaces,
then the tensor bytes, offsets relative to the end of the header, contiguous and in offset order.

``safetensors.save_file`` needs every tensor of a file in memory at once; :class:`StreamingWriter` lays out
the header from the specs first and then takes tensors one by one, so peak memory is one tensor.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from k2trt.errors import CheckpointError

if TYPE_CHECKING:
    import torch

# Bytes per element of each safetensors dtype. Pure data, so that what only moves bytes (the fp8_block converter,
# header checks) never imports torch: its import is most of a conversion's start-up (1.8 s of 2 here).
ITEMSIZE: dict[str, int] = {
    "F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1,
}
_TORCH_NAMES = {
    "F8_E4M3": "float8_e4m3fn", "BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
    "I64": "int64", "I32": "int32", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of safetensors dtype ``name`` (``"BF16"`` -> ``torch.bfloat16``)."""
    import torch

    return getattr(torch, _TORCH_NAMES[name])


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.bfloat16`` -> ``"BF16"``)."""
    for name, attr in _TORCH_NAMES.items():
        if str(dtype) == f"torch.{attr}":
            return name
    raise KeyError(f"no safetensors dtype for {dtype}")


MAX_HEADER = 100 * 1024 * 1024  # the format's own limit on header size


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype name, shape, byte range (relative to the data section)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Header:
    """A parsed safetensors header and the facts needed to validate the file against it."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int  # byte offset of the data section in the file
    data_len: int  # bytes the header says the data section holds


def read_header(path: Path) -> Header:
    """Parse the header of ``path``; a short file, bad JSON or overlapping offsets raise CheckpointError."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path.name}: truncated ({size} bytes, not even a header length)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path.name}: truncated or not safetensors (header claims {n} bytes, file {size})")
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path.name}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path.name}: header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path.name}: malformed header entry for tensor '{name}'") from None
        info = TensorInfo(dtype, shape, begin, end)
        if dtype in ITEMSIZE and info.nbytes != info.numel * ITEMSIZE[dtype]:
            raise CheckpointError(f"{path.name}: tensor '{name}' byte range does not match its shape and dtype")
        tensors[name] = info
    data_len = max((t.end for t in tensors.values()), default=0)
    hdr = Header(tensors=tensors, metadata=meta, data_start=8 + n, data_len=data_len)
    if hdr.data_start + data_len > size:
        raise CheckpointError(
            f"{path.name}: truncated: header needs {hdr.data_start + data_len} bytes, file has {size}"
        )
    return hdr


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without a copy."""
    import torch

    t = t.detach().contiguous().cpu()
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


class StreamingWriter:
    """Write a safetensors file tensor by tensor, in the order of ``specs``, to ``path`` via a temp file.

    ``specs`` is ``[(name, dtype, shape)]``; :meth:`add` must be called with exactly those tensors in that order;
    :meth:`close` checks that all were written and renames the temp file into place (nothing half-written is
    ever left under the final name).
    """

    def __init__(self, path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict | None = None):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        header: dict = {}
        offset = 0
        for name, dtype, shape in specs:
            n = 1
            for d in shape:
                n *= d
            nbytes = n * dtype.itemsize
            header[name] = {"dtype": dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
        self._expected = [(n, d, tuple(s)) for n, d, s in specs]
        self._next = 0
        self.nbytes = 8 + len(blob) + offset
        self._f = self.tmp.open("wb")
        self._f.write(struct.pack("<Q", len(blob)))
        self._f.write(blob)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        want = self._expected[self._next] if self._next < len(self._expected) else None
        got = (name, tensor.dtype, tuple(tensor.shape))
        if want != got:
            self.abort()
            raise ValueError(f"{self.path.name}: expected tensor {want}, got {got}")
        self._f.write(tensor_bytes(tensor))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._expected):
            missing = [n for n, _, _ in self._expected[self._next :]]
            self.abort()
            raise ValueError(f"{self.path.name}: tensors never written: {missing[:5]}")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)
