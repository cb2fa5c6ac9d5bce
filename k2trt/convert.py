"""``k2trt convert``: a HF block-FP8 checkpoint to a TensorRT-LLM checkpoint, streaming, sharded, resumable.

What goes where is :mod:`k2trt.trtllm_layout`'s table; this module only moves bytes:

- **Checks first, writes second.** Every shard header is read and every tensor the layout needs is checked (present,
  shape, dtype, FP8 scale shape) before anything is written; unmapped or leftover tensors, a missing or truncated
  shard and a mapping that does not divide the model end in one error listing each problem, with no output.
- **Streams.** A rank file is written front to back: its header is known from the layout, then each tensor is
  assembled piece by piece, ``CHUNK`` bytes at a time, from short-lived mmaps of just the rows a piece needs
  (bytes that pass through unchanged go from the page cache to the writer without a copy; a column split copies
  just its columns) or ``os.preadv`` reads for chunks that are converted. FP8 weights and scales are copied byte for
  byte; ``--weights bf16`` dequantizes a chunk at a time. A writer thread writes each chunk while another hashes it
  (sha256) and the next is read, and resume points are made durable (fsync) on a third, so hashing, writing and
  the disk's write-back overlap the reading. Peak memory is a few chunks and one FP8 scale
  per worker, whatever the model size.
- **Parallel.** ``workers`` processes each stream whole ranks. A rank reads only its own pieces, so split tensors
  (heads, experts, expert width) are read once over all ranks; tensors replicated in a pipeline stage (embedding,
  norms, router, ``fused_a``) are read once per rank of the stage (for K2 at tp 8: 5% more than the checkpoint).
  Grouping the ranks of a stage in one worker would read them once but write tp files in lockstep from one process;
  per-rank workers keep each file a sequential stream and parallelise freely. The summary reports the bytes read;
  ``docs/perf/convert.md`` gives the figures.
- **Resumable, byte-identical.** Output is a pure function of the source and the options. Each rank is written
  to ``rankN.safetensors.partial``; every ``CHECKPOINT_EVERY`` bytes the file is fsynced and
  ``rankN.safetensors.partial.json`` records how many tensors and bytes are durable. ``--resume`` truncates to that
  point, re-hashes the prefix and carries on; a finished rank is renamed into place and recorded in
  ``manifest.json`` with its sha256, which ``--resume`` verifies. ``config.json`` is written last: the checkpoint is
  complete exactly when it exists. A ``.partial`` file is never taken as done.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import hashlib
import json
import mmap
import multiprocessing as mp
import os
import queue
import re
import resource
import shutil
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from k2trt.checkpoint import FLOAT_DTYPES, IGNORED, SCALE_SUFFIX, HFCheckpoint, _is_mtp, expected_tensors
from k2trt.config import K2Config
from k2trt.errors import CheckpointError, K2Error
from k2trt.fp8 import scale_shape
from k2trt.mapping import Mapping
from k2trt.safetensors_io import ITEMSIZE, atomic_write_text, tensor_bytes, torch_dtype
from k2trt.trtllm_layout import WEIGHTS, TensorSpec, all_rank_specs, check_mapping, trtllm_config

if TYPE_CHECKING:
    import torch

MANIFEST = "manifest.json"
CONFIG = "config.json"
FORMAT = "k2trt-convert/1"
CHUNK = 8 << 20  # bytes per read; a worker holds QUEUE_DEPTH + 2 of these, plus one FP8 scale. 8 MiB rather than
# 32: a chunk is hashed and written while its pages are still in the CPU's cache, and mapping and unmapping
# smaller ranges costs less system time (single in-process runs on the bench's 2.2 GB slice: 3.3-3.8 s against
# 4.0-5.7 s; the benchmark's best of three moved less) and the working set is smaller (290 MiB against 323)
QUEUE_DEPTH = 2  # chunks waiting for the writer thread
CHECKPOINT_EVERY = 256 << 20  # a durable resume point at least this often (bytes of output)
MAX_LISTED = 25  # problems listed before "... and N more"
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault the chunk in at once (Linux), not page by page
# Test-only fault injection: the worker exits abruptly (like SIGKILL) after writing this many bytes in total.
FAULT_ENV = "K2TRT_FAULT_AFTER_BYTES"
_OUR_FILES = re.compile(r"(config\.json|manifest\.json|rank\d+\.safetensors(\.partial(\.json)?)?|.*\.partial)$")


# ------------------------------------------------------------------------------------------- summary


@dataclass
class ConvertSummary:
    """What a conversion did; ``print`` is the CLI's closing report."""

    out: Path
    world_size: int
    files: list[str]
    bytes_in: int
    """Source bytes read by this run (replicated tensors once per rank that holds them)."""
    bytes_out: int
    """Bytes written by this run (a resumed run counts only what it wrote)."""
    seconds: float
    peak_rss_bytes: int
    """Largest resident set of this process or any worker."""
    ranks_written: int
    ranks_reused: int
    """Finished ranks a ``--resume`` verified and kept."""
    skipped_sources: list[str] = field(default_factory=list)
    """Source tensors deliberately not converted (RoPE ``inv_freq`` buffers, MTP layers)."""

    @property
    def gb_per_s(self) -> float:
        return self.bytes_out / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["out"] = str(self.out)
        d["gb_per_s"] = self.gb_per_s
        d["skipped_sources"] = len(self.skipped_sources)
        return d

    def print(self) -> None:
        from rich.console import Console

        con = Console()
        con.print(
            f"[bold]{self.out}[/]: {self.world_size} rank file(s) + config.json; "
            f"{self.ranks_written} written, {self.ranks_reused} verified and kept"
        )
        con.print(
            f"read {self.bytes_in / 1e9:.3f} GB, wrote {self.bytes_out / 1e9:.3f} GB in {self.seconds:.1f} s "
            f"({self.gb_per_s:.2f} GB/s written); peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB"
        )
        if self.skipped_sources:
            con.print(f"not converted (unused by inference): {len(self.skipped_sources)} tensor(s), e.g. "
                      f"{self.skipped_sources[0]}")


# ------------------------------------------------------------------------------------------- convert


@dataclass(frozen=True)
class _Source:
    """Where a source tensor's bytes are: absolute file offset, safetensors dtype, shape."""

    path: str
    offset: int
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _RankJob:
    rank: int
    out: str
    specs: tuple[TensorSpec, ...]
    sources: dict[str, _Source]
    block: tuple[int, int]
    resume: bool


def convert(
    *,
    checkpoint: str | Path,
    out: str | Path,
    tp: int,
    ep: int | None = None,
    pp: int = 1,
    weights: str = "fp8_block",
    workers: int = 1,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> ConvertSummary:
    """Convert ``checkpoint`` into ``out`` (``config.json`` + ``rank{N}.safetensors``, N < tp x pp).

    ``ep`` is the expert parallelism inside each TP group (default ``tp``; ``moe_tp = tp / ep``). Raises
    :class:`K2Error` for every user-facing problem (mapping, checkpoint, existing output, disk space).
    """
    t0 = time.monotonic()
    if weights not in WEIGHTS:
        raise K2Error(f"--weights must be one of {list(WEIGHTS)}, got {weights!r}")
    if not isinstance(workers, int) or workers < 1:
        raise K2Error(f"--workers must be a positive integer, got {workers!r}")
    ckpt = HFCheckpoint(checkpoint)
    cfg = ckpt.config
    mapping = Mapping(tp=tp, pp=pp, moe_ep=ep)
    problems = check_mapping(cfg, mapping, weights=weights)
    if problems:
        raise K2Error(problems)
    rank_specs = all_rank_specs(cfg, mapping, weights=weights)
    sources, skipped = _preflight(ckpt, rank_specs)

    out = Path(out)
    params = {
        "weights": weights,
        "mapping": mapping.to_trtllm(),
        "source_fingerprint": source_fingerprint(ckpt),
    }
    manifest = _prepare_out(out, params, resume=resume, force=force)

    # Ranks already finished (and verified) are kept; the rest are (re)written.
    todo: list[_RankJob] = []
    reused = 0
    files = [f"rank{r}.safetensors" for r in mapping.ranks()]
    for r, specs in enumerate(rank_specs):
        if resume and _verified(out / files[r], manifest["files"].get(files[r])):
            reused += 1
            continue
        manifest["files"].pop(files[r], None)
        (out / files[r]).unlink(missing_ok=True)
        needed = {s for spec in specs for s in spec.sources}
        todo.append(_RankJob(r, str(out), tuple(specs), {n: sources[n] for n in needed},
                             cfg.fp8_block or (128, 128), resume))
    _check_space(out, todo)
    manifest.update(source_path=str(ckpt.root.resolve()), source_config=cfg.to_hf_dict(),
                    skipped_sources=skipped)
    _write_manifest(out, manifest)

    with _one_thread(needed=_needs_torch(todo)):
        results = _run(todo, workers=workers, progress=progress,
                       on_done=lambda res: _record(out, manifest, res, rank_specs[res["rank"]]))
    (out / CONFIG).unlink(missing_ok=True)
    atomic_write_text(out / CONFIG, json.dumps(trtllm_config(cfg, mapping, weights=weights), indent=2) + "\n")
    manifest["config_sha256"] = hashlib.sha256((out / CONFIG).read_bytes()).hexdigest()
    manifest["complete"] = True
    _write_manifest(out, manifest)
    return ConvertSummary(
        out=out, world_size=mapping.world_size, files=files,
        bytes_in=sum(r["bytes_in"] for r in results), bytes_out=sum(r["bytes_out"] for r in results),
        seconds=time.monotonic() - t0, peak_rss_bytes=max([_peak_rss_self()] + [r["peak_rss"] for r in results]),
        ranks_written=len(results),
        ranks_reused=reused, skipped_sources=skipped,
    )


# ----------------------------------------------------------------------------------------- preflight


def _listing(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_LISTED:
        return problems
    return problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more"]


def _preflight(ckpt: HFCheckpoint, rank_specs: list[list[TensorSpec]]) -> tuple[dict[str, _Source], list[str]]:
    """Locate every source tensor the layout needs; raise CheckpointError listing every problem found."""
    cfg = ckpt.config
    block = cfg.fp8_block or (128, 128)
    expected = {n: e.shape for n, e in expected_tensors(cfg).items()}
    reads: dict[str, str] = {}  # source -> how it is read ("fp8", "dequant" or "cast")
    needed_by: dict[str, str] = {}
    for rank, specs in enumerate(rank_specs):
        for spec in specs:
            for slot in spec.slots:
                for p in slot:
                    if p.source is not None and p.source not in reads:
                        reads[p.source] = spec.read
                        needed_by[p.source] = f"{spec.name} of rank{rank}"
                        if spec.read == "dequant":
                            reads[p.source + SCALE_SUFFIX] = "cast"
                            needed_by[p.source + SCALE_SUFFIX] = f"{spec.name} of rank{rank}"

    problems: list[str] = []
    headers = {}
    for shard in ckpt.shard_files:
        try:
            headers[shard] = ckpt.header(shard)
        except CheckpointError as e:
            n = sum(1 for s in ckpt.weight_map.values() if s == shard)
            problems.append(f"{e} ({n} tensors unavailable)")

    sources: dict[str, _Source] = {}
    for name, how in reads.items():
        shard = ckpt.weight_map.get(name)
        if shard is None:
            problems.append(f"tensor '{name}' (needed for {needed_by[name]}) is not in the checkpoint")
            continue
        hdr = headers.get(shard)
        if hdr is None:
            continue  # the shard's own problem is already listed
        info = hdr.tensors.get(name)
        if info is None:
            problems.append(f"tensor '{name}': the index puts it in {shard}, which does not hold it")
            continue
        if name.endswith(SCALE_SUFFIX):
            w = expected.get(name[: -len(SCALE_SUFFIX)])
            want = scale_shape(w, block) if w is not None else None
            if info.dtype not in FLOAT_DTYPES:
                problems.append(f"tensor '{name}' is {info.dtype}, expected a float scale (F32)")
        else:
            want = expected.get(name)
            if how in ("fp8", "dequant") and info.dtype != "F8_E4M3":
                problems.append(f"tensor '{name}' is {info.dtype}, expected F8_E4M3 (quantization_config is fp8)")
            elif how == "cast" and info.dtype not in FLOAT_DTYPES:
                problems.append(f"tensor '{name}' is {info.dtype}, expected one of {list(FLOAT_DTYPES)}")
        if want is not None and tuple(info.shape) != tuple(want):
            what = f"scale of a {list(expected[name[: -len(SCALE_SUFFIX)]])} weight in {list(block)} blocks" \
                if name.endswith(SCALE_SUFFIX) else f"config {cfg.model_type}"
            problems.append(f"tensor '{name}' has shape {list(info.shape)}, expected {list(want)} ({what})")
            continue
        sources[name] = _Source(str(ckpt.root / shard), hdr.data_start + info.begin, info.dtype, tuple(info.shape))

    skipped = []
    leftovers = []
    for name, shard in ckpt.weight_map.items():
        if name in reads:
            continue
        if IGNORED.match(name) or _is_mtp(name, cfg):
            skipped.append(name)
        else:
            leftovers.append(name)
    for shard, hdr in headers.items():
        for name in hdr.tensors:
            if ckpt.weight_map.get(name) != shard:
                leftovers.append(f"{name} (in {shard}, not in the index)")
    if leftovers:
        problems.append(f"{len(leftovers)} tensor(s) in the checkpoint that no TensorRT-LLM tensor takes: "
                        + ", ".join(f"'{n}'" for n in leftovers[:MAX_LISTED])
                        + (f", ... and {len(leftovers) - MAX_LISTED} more" if len(leftovers) > MAX_LISTED else ""))
    if problems:
        raise CheckpointError(_listing(problems))
    return sources, skipped


def source_fingerprint(ckpt: HFCheckpoint) -> str:
    """Identity of a source checkpoint for ``--resume`` (and ``build``'s reuse of a conversion): config, tensor
    index and shard sizes, not their bytes."""
    h = hashlib.sha256()
    h.update((ckpt.root / "config.json").read_bytes())
    h.update(json.dumps(ckpt.weight_map, sort_keys=True).encode())
    for shard in ckpt.shard_files:
        h.update(f"{shard}:{(ckpt.root / shard).stat().st_size}".encode())
    return h.hexdigest()


_fingerprint = source_fingerprint  # the name k2trt.build imports


# ------------------------------------------------------------------------------------ output directory


def _prepare_out(out: Path, params: dict, *, resume: bool, force: bool) -> dict:
    """The manifest to continue from: a fresh one, or the existing one when resuming with the same options."""
    fresh = {"format": FORMAT, "params": params, "complete": False, "files": {}}
    if out.exists() and not out.is_dir():
        raise K2Error(f"--out {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if not entries:
        out.mkdir(parents=True, exist_ok=True)
        return fresh
    if resume:
        try:
            manifest = json.loads((out / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError):
            raise K2Error(f"--resume: {out} has no readable {MANIFEST}; pass --force to start over") from None
        if manifest.get("format") != FORMAT:
            raise K2Error(f"--resume: {out / MANIFEST} is not a k2trt convert manifest ({FORMAT})")
        old = manifest.get("params", {})
        diff = [k for k in params if old.get(k) != params[k]]
        if diff:
            raise K2Error(
                f"--resume: {out} was started with different " + ", ".join(
                    f"{k} ({'a different checkpoint' if k == 'source_fingerprint' else old.get(k)!r})" for k in diff)
                + "; rerun with the same options, or pass --force to start over"
            )
        manifest["complete"] = False
        manifest.setdefault("files", {})
        return manifest
    if not force:
        raise K2Error(f"--out {out} is not empty; pass --force to replace it or --resume to continue")
    foreign = [e for e in entries if not _OUR_FILES.match(e)]
    if foreign:
        raise K2Error(f"--force: refusing to empty {out}: it holds files convert did not write: {foreign[:10]}")
    for e in entries:
        (out / e).unlink()
    return fresh


def _write_manifest(out: Path, manifest: dict) -> None:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _verified(path: Path, record: dict | None) -> bool:
    """A finished rank file whose size and sha256 match its manifest record."""
    if record is None or not path.is_file() or path.stat().st_size != record.get("bytes"):
        return False
    return _sha256_file(path) == record.get("sha256")


def _sha256_file(path: Path, upto: int | None = None) -> str:
    return _hash_prefix(path, path.stat().st_size if upto is None else upto).hexdigest()


def _hash_prefix(path: Path, nbytes: int):
    h = hashlib.sha256()
    buf = bytearray(min(CHUNK, max(nbytes, 1)))
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        left = nbytes
        while left:
            n = f.readinto(mv[: min(len(buf), left)])
            if not n:
                raise K2Error(f"{path} is shorter than its resume record ({nbytes:,} bytes)")
            h.update(mv[:n])
            left -= n
    return h


def _record(out: Path, manifest: dict, res: dict, specs: list[TensorSpec]) -> None:
    manifest["files"][f"rank{res['rank']}.safetensors"] = {
        "sha256": res["sha256"], "bytes": res["bytes"],
        "tensors": {s.name: list(s.sources) for s in specs},
    }
    _write_manifest(out, manifest)


def _check_space(out: Path, jobs: list[_RankJob]) -> None:
    need = 0
    for job in jobs:
        total = len(_header_blob(job.specs)) + sum(s.nbytes for s in job.specs)
        done = _resume_point(Path(job.out) / f"rank{job.rank}.safetensors", job.specs)[1] if job.resume else 0
        need += total - done
    free = shutil.disk_usage(out).free
    if need > free:
        raise K2Error(f"not enough disk space in {out}: the rank files need {need:,} more bytes, {free:,} are free")


_WIDENING = {("BF16", "F32"), ("F16", "F32")}  # exact casts numpy does: K2's bf16 routers become fp32


def _piece_work(spec: TensorSpec, src_dtype: str) -> str:
    """How a piece of ``spec`` read from a ``src_dtype`` tensor is made: ``same`` (its source bytes unchanged),
    ``widen`` (an exact cast in numpy, :func:`_widen`) or ``torch`` (dequantized or rounded)."""
    if spec.read == "fp8" or (spec.read == "cast" and src_dtype == spec.dtype):
        return "same"
    return "widen" if spec.read == "cast" and (src_dtype, spec.dtype) in _WIDENING else "torch"


def _widen(raw, src_dtype: str) -> memoryview:
    """Little-endian ``src_dtype`` bytes (one of :data:`_WIDENING`) as float32 bytes."""
    if src_dtype == "BF16":  # a bfloat16 is the upper half of the float32 with the same value
        return memoryview((np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4"))
    return memoryview(np.frombuffer(raw, "<f2").astype("<f4"))


def _needs_torch(jobs: list[_RankJob]) -> bool:
    """Whether any piece needs torch (dequantizing, or a cast numpy cannot do exactly): only then is it imported.
    An fp8_block conversion of a K2 checkpoint moves bytes and widens its bf16 routers, and torch's import would
    be most of its start-up."""
    return any(_piece_work(spec, job.sources[p.source].dtype) == "torch"
               for job in jobs for spec in job.specs for slot in spec.slots for p in slot if p.source is not None)


@contextlib.contextmanager
def _one_thread(needed: bool = True):
    """Torch on one thread for the duration: the per-chunk ops are small, and idle OpenMP threads spinning on a busy
    machine cost tens of ms per op (measured: 45 ms per piece with 2 threads at load 5, 0.1 ms with 1)."""
    if not needed:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _peak_rss_self() -> int:
    """This process's peak resident set. VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so a child
    would report its parent's size at fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -------------------------------------------------------------------------------------------- running


def _run(jobs: list[_RankJob], *, workers: int, progress: bool, on_done) -> list[dict]:
    """Run the rank jobs (in this process for one worker), reporting bytes to a progress bar."""
    if not jobs:
        return []
    total = sum(len(_header_blob(j.specs)) + sum(s.nbytes for s in j.specs) for j in jobs)
    bar = _progress_bar(total) if progress else None
    advance = (lambda n: bar[0].update(bar[1], advance=n)) if bar else (lambda n: None)
    results = []
    try:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                res = _run_rank(job, advance)
                on_done(res)
                results.append(res)
            return results
        ctx = mp.get_context("spawn")  # torch and fork do not mix; workers import k2trt afresh
        queue = ctx.Queue()
        with cf.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                    initargs=(queue, _needs_torch(jobs))) as ex:
            pending = {ex.submit(_run_rank_in_worker, job) for job in jobs}
            try:
                while pending:
                    done, pending = cf.wait(pending, timeout=0.1, return_when=cf.FIRST_COMPLETED)
                    _drain(queue, advance)
                    for fut in done:
                        res = fut.result()
                        on_done(res)
                        results.append(res)
            except cf.process.BrokenProcessPool:
                raise K2Error("a convert worker process died; rerun with --resume to continue") from None
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
            _drain(queue, advance)
        return results
    finally:
        if bar:
            bar[0].stop()


def _progress_bar(total: int):
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    p = Progress(TextColumn("convert"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                 console=Console(stderr=True))
    p.start()
    return p, p.add_task("convert", total=total)


_QUEUE = None  # the worker's progress queue (set by _init_worker in worker processes)
_FAULT = {"after": None, "written": 0}  # test-only fault injection state of this process


def _init_worker(queue, torch_needed: bool) -> None:
    global _QUEUE
    _QUEUE = queue
    if torch_needed:
        import torch

        torch.set_num_threads(1)


def _drain(queue, advance) -> None:
    while True:
        try:
            advance(queue.get_nowait())
        except Exception:  # queue.Empty (and nothing else is ever put)
            return


def _run_rank_in_worker(job: _RankJob) -> dict:
    pending = [0]

    def report(n: int) -> None:  # batch the queue traffic: one message per 8 MiB
        pending[0] += n
        if pending[0] >= 8 << 20:
            _QUEUE.put(pending[0])
            pending[0] = 0

    try:
        return _run_rank(job, report)
    finally:
        if pending[0]:
            _QUEUE.put(pending[0])


# ------------------------------------------------------------------------------------------ one rank


def _header_blob(specs) -> bytes:
    """The safetensors header of a rank file (8-byte length + JSON padded to 8), from the specs alone."""
    header: dict = {}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def _resume_point(final: Path, specs) -> tuple[int, int]:
    """(tensors, bytes) durable in ``final``.partial per its record, or (0, 0) when it cannot be trusted."""
    partial = final.with_name(final.name + ".partial")
    state = final.with_name(final.name + ".partial.json")
    try:
        st = json.loads(state.read_text())
        tensors, nbytes = int(st["tensors"]), int(st["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0
    head = _header_blob(specs)
    want = len(head) + sum(s.nbytes for s in specs[:tensors])
    ok = (st.get("header_sha256") == hashlib.sha256(head).hexdigest() and 0 < tensors <= len(specs)
          and nbytes == want and partial.is_file() and partial.stat().st_size >= nbytes)
    return (tensors, nbytes) if ok else (0, 0)


def _run_rank(job: _RankJob, report) -> dict:
    """Write ``rank{N}.safetensors`` for one rank; returns its sha256, size, the bytes read and peak RSS."""
    t0 = time.monotonic()
    final = Path(job.out) / f"rank{job.rank}.safetensors"
    partial = final.with_name(final.name + ".partial")
    state = final.with_name(final.name + ".partial.json")
    # a resume record's own temp file, left by a kill in the middle of writing the record
    state_tmp = state.with_name(state.name + ".partial")
    state_tmp.unlink(missing_ok=True)
    head = _header_blob(job.specs)
    head_sha = hashlib.sha256(head).hexdigest()
    total = len(head) + sum(s.nbytes for s in job.specs)
    fault = os.environ.get(FAULT_ENV)
    _FAULT["after"] = int(fault) if fault else None

    start, pos = _resume_point(final, job.specs) if job.resume else (0, 0)
    if start:
        hasher = _hash_prefix(partial, pos)
        fd = os.open(partial, os.O_WRONLY)
        os.ftruncate(fd, pos)
        os.lseek(fd, pos, os.SEEK_SET)
        report(pos)
    else:
        state.unlink(missing_ok=True)
        hasher = hashlib.sha256()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        pos = 0
    reader = _Reader(job.sources, job.block)
    writer = _Writer(fd, hasher, report)
    written = 0
    try:
        if not start:
            writer.put(("data", memoryview(head)))
            pos = written = len(head)
        last_mark = pos
        for i in range(start, len(job.specs)):
            for chunk in _spec_bytes(job.specs[i], reader):
                mv = memoryview(chunk).cast("B")
                writer.put(("data", mv))
                pos += len(mv)
                written += len(mv)
            if pos - last_mark >= CHECKPOINT_EVERY and i + 1 < len(job.specs):
                mark = json.dumps({"header_sha256": head_sha, "tensors": i + 1, "bytes": pos})
                writer.put(("mark", (state, mark)))
                last_mark = pos
        writer.close()
        if pos != total:
            raise AssertionError(f"{partial.name}: wrote {pos} bytes, layout says {total}")
        os.fsync(fd)
        _drop_cached(fd)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise K2Error(f"disk full writing {partial} ({pos:,} of {total:,} bytes); free space and rerun with "
                          "--resume to continue from the last resume point") from None
        raise
    finally:
        writer.stop()
        os.close(fd)
        reader.close()
    os.replace(partial, final)
    state.unlink(missing_ok=True)
    state_tmp.unlink(missing_ok=True)
    return {"rank": job.rank, "sha256": hasher.hexdigest(), "bytes": total, "bytes_out": written,
            "bytes_in": reader.bytes_in, "seconds": time.monotonic() - t0, "peak_rss": _peak_rss_self()}


class _Writer:
    """Hashes and writes chunks in order on its own thread (and a hashing thread), so hashing and writing overlap
    the reading of the next chunks; a third thread makes the resume points durable (fsync, then the record), so
    waiting for the disk overlaps both. Errors are raised in the caller's next call."""

    def __init__(self, fd: int, hasher, report):
        self.fd, self.hasher, self.report = fd, hasher, report
        self.written = os.lseek(fd, 0, os.SEEK_CUR)
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self.marks: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="k2trt-writer", daemon=True)
        self.syncer = threading.Thread(target=self._sync_loop, name="k2trt-syncer", daemon=True)
        self.thread.start()
        self.syncer.start()

    def _loop(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # sha256 of a chunk runs beside its write (hashlib and os.write both release the GIL): on two free cores
        # a chunk costs the longer of the two, not their sum
        with ThreadPoolExecutor(1, thread_name_prefix="k2trt-hash") as hashing:
            self._write_loop(hashing)
        self.marks.put(None)

    def _write_loop(self, hashing) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so the caller never blocks on a dead writer
            try:
                kind, arg = item
                if kind == "data":
                    hashed = hashing.submit(self.hasher.update, arg)
                    try:
                        n = _write_all(self.fd, arg, self.report)
                        _drop_cached(self.fd, self.written, n)  # starts the chunk's writeback now
                        self.written += n
                    finally:
                        hashed.result()
                else:  # a resume point, for bytes already written: durable once an fsync after this returns
                    self.marks.put(arg)
            except BaseException as e:  # re-raised in the caller's thread (KeyboardInterrupt-free: not main)
                self.error = e

    def _sync_loop(self) -> None:
        while (mark := self.marks.get()) is not None:
            while True:  # only the newest waiting record matters: one fsync covers them all
                try:
                    newer = self.marks.get_nowait()
                except queue.Empty:
                    break
                if newer is None:
                    self.marks.put(None)
                    break
                mark = newer
            if self.error is not None:
                continue
            try:
                os.fsync(self.fd)  # the record must never claim bytes the disk may not have
                _drop_cached(self.fd)
                atomic_write_text(*mark)
            except BaseException as e:
                self.error = e

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self) -> None:
        """Wait until everything queued is written; raise the writer's error if it had one."""
        self.stop()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.syncer.is_alive():
            self.marks.put(None)  # a no-op if the writer already sent it
            self.syncer.join()


def _drop_cached(fd: int, offset: int = 0, nbytes: int = 0) -> None:
    """``POSIX_FADV_DONTNEED`` on bytes of an output file (``nbytes`` 0: to its end), as ``dd oflag=nocache`` does.

    On Linux it starts the writeback of the range's dirty pages without waiting for it, and drops its clean pages
    from the page cache: the converter never reads its output again. Measured on the benchmark's 2.2 GB slice with
    a full page cache (docs/perf/convert.md): without it, the kernel reclaims a page for every page written, in the
    writer's own time (4.5-4.9 s for the conversion, against 2.4-3.2 with it), and the fsyncs find everything still
    to write."""
    with contextlib.suppress(AttributeError, OSError):  # not every platform has fadvise; it is only advice
        os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)


def _write_all(fd: int, data, report) -> int:
    """Write and report every byte of ``data``; returns how many."""
    mv = memoryview(data).cast("B")
    nbytes = len(mv)
    after = _FAULT["after"]
    if after is not None and _FAULT["written"] + nbytes > after:  # die mid-write, as a SIGKILL would
        os.write(fd, mv[: after - _FAULT["written"]])
        os._exit(77)
    while mv:
        mv = mv[os.write(fd, mv):]
    _FAULT["written"] += nbytes
    report(nbytes)
    return nbytes


class _Reader:
    """Source byte ranges: mapped for pass-through, read into a scratch buffer for conversion; counts the bytes."""

    def __init__(self, sources: dict[str, _Source], block: tuple[int, int]):
        self.sources = sources
        self.block = block
        self.bytes_in = 0
        self._fds: dict[str, int] = {}
        self._scratch = bytearray(0)
        self._scale: tuple[str, torch.Tensor] | None = None

    def map(self, src: _Source, start: int, nbytes: int) -> memoryview:
        """Bytes ``[start, start + nbytes)`` of ``src``'s data as a read-only view of a mapping of just that range.

        For bytes that pass through unchanged: the writer hashes and writes straight from the page cache (no copy
        into a buffer), and the mapping is unmapped when the view is dropped, so it holds at most a chunk of the
        resident set while it waits in the writer's queue.
        """
        begin = src.offset + start
        base = begin - begin % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(self._fd(src), begin - base + nbytes, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ,
                       offset=base)
        self.bytes_in += nbytes
        return memoryview(mm)[begin - base:]

    def read(self, src: _Source, start: int, nbytes: int) -> memoryview:
        """Bytes ``[start, start + nbytes)`` of ``src``'s data in the scratch buffer, valid until the next read."""
        if len(self._scratch) < nbytes:
            self._scratch = bytearray(nbytes)
        mv = memoryview(self._scratch)[:nbytes]
        fd = self._fd(src)
        got = 0
        while got < nbytes:
            n = os.preadv(fd, [mv[got:]], src.offset + start + got)
            if n == 0:
                raise CheckpointError(f"{Path(src.path).name}: ends early (truncated while converting?)")
            got += n
        self.bytes_in += nbytes
        return mv

    def read_cols(self, src: _Source, row: int, nrows: int, c0: int, c1: int) -> np.ndarray:
        """Columns ``[c0, c1)`` of rows ``[row, row + nrows)`` as a new uint8 array ``[nrows, (c1 - c0) x itemsize]``.

        Through a short-lived mmap of just those rows: only the needed bytes are copied (a tp-8 ``o_proj`` piece is
        1/8 of each row), and the mapped pages leave the resident set when it is closed.
        """
        item = ITEMSIZE[src.dtype]
        row_bytes = src.shape[1] * item
        start = src.offset + row * row_bytes
        base = start - start % mmap.ALLOCATIONGRANULARITY
        fd = self._fd(src)
        with mmap.mmap(fd, start - base + nrows * row_bytes, offset=base, access=mmap.ACCESS_READ) as mm:
            rows = np.frombuffer(mm, dtype=np.uint8, count=nrows * row_bytes, offset=start - base)
            cut = rows.reshape(nrows, row_bytes)[:, c0 * item: c1 * item].copy()
            del rows  # the view must go before the map closes
        self.bytes_in += cut.nbytes
        return cut

    def _fd(self, src: _Source) -> int:
        fd = self._fds.get(src.path)
        if fd is None:
            fd = self._fds[src.path] = os.open(src.path, os.O_RDONLY)
        return fd

    def scale(self, weight: str) -> torch.Tensor:
        """The float32 ``weight_scale_inv`` of ``weight`` (the last one is kept: pieces come in source order)."""
        import torch

        name = weight + SCALE_SUFFIX
        if self._scale is None or self._scale[0] != name:
            src = self.sources[name]
            n = _numel(src.shape) * ITEMSIZE[src.dtype]
            t = torch.frombuffer(bytearray(self.read(src, 0, n)), dtype=torch_dtype(src.dtype)).view(src.shape)
            self._scale = (name, t.float())
        return self._scale[1]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _spec_bytes(spec: TensorSpec, reader: _Reader):
    """The bytes of ``spec`` in file order, as chunks (each valid until the next is requested)."""
    for slot in spec.slots:
        for piece in slot:
            yield from _piece_bytes(spec, piece, reader)


def _piece_bytes(spec: TensorSpec, piece, reader: _Reader):
    out_item = ITEMSIZE[spec.dtype]
    if piece.source is None:  # zero rows (lm_head padding)
        left = piece.nrows * spec.shape[-1] * out_item
        zeros = bytes(min(CHUNK, left))
        while left:
            n = min(len(zeros), left)
            yield zeros[:n]
            left -= n
        return
    src = reader.sources[piece.source]
    cols = src.shape[1] if len(src.shape) > 1 else 1
    row_bytes = cols * ITEMSIZE[src.dtype]
    c0, c1 = piece.cols or (0, cols)
    whole_rows = (c0, c1) == (0, cols)
    work = _piece_work(spec, src.dtype)
    same, widen = work == "same", work == "widen"
    if work == "torch":
        import torch

        sdtype = torch_dtype(src.dtype)
    step = max(1, CHUNK // row_bytes)
    bo, bi = reader.block
    if spec.read == "dequant":
        step = max(bo, step // bo * bo)
    scale = reader.scale(piece.source) if spec.read == "dequant" else None
    r0, r1 = piece.rows
    for r in range(r0, r1, step):
        n = min(step, r1 - r)
        if whole_rows:
            if same:
                yield reader.map(src, r * row_bytes, n * row_bytes)
                continue
            if widen:
                yield _widen(reader.read(src, r * row_bytes, n * row_bytes), src.dtype)
                continue
            t = torch.frombuffer(reader.read(src, r * row_bytes, n * row_bytes), dtype=sdtype).view(n, cols)
        else:
            cut = reader.read_cols(src, r, n, c0, c1)
            if same:
                yield memoryview(cut)
                continue
            if widen:
                yield _widen(cut, src.dtype)
                continue
            t = torch.from_numpy(cut).view(sdtype)
        if spec.read == "dequant":  # real = fp8 x scale of its block, in float32, then the output dtype
            s = scale.index_select(0, torch.arange(r, r + n) // bo).index_select(1, torch.arange(c0, c1) // bi)
            t = t.to(torch.float32) * s
        yield tensor_bytes(t.to(torch_dtype(spec.dtype)))


# ------------------------------------------------------------------------------------------- inverse


def reassemble(out: str | Path) -> dict[str, torch.Tensor]:
    """Undo every split, fusion and stack of a converted checkpoint: the source tensors it holds, by HF name.

    FP8 weights come back as ``float8_e4m3fn`` with their ``weight_scale_inv`` (``fp8_block``), or dequantized
    (``bf16``); the router as float32. Replicated copies must agree and every element of every source must be
    covered, padding must be zero; anything else raises K2Error. Loads everything: for small checkpoints (tests,
    ``verify``).
    """
    with _one_thread():
        return _reassemble(Path(out))


def _reassemble(out: Path) -> dict[str, torch.Tensor]:
    import torch
    from safetensors import safe_open

    manifest = json.loads((out / MANIFEST).read_text())
    cfg = K2Config.from_dict(manifest["source_config"], source=str(out / MANIFEST))
    m = manifest["params"]["mapping"]
    mapping = Mapping(tp=m["tp_size"], pp=m["pp_size"], moe_ep=m["moe_ep_size"], moe_tp=m["moe_tp_size"])
    weights = manifest["params"]["weights"]
    block = cfg.fp8_block or (128, 128)
    shapes = {n: e.shape for n, e in expected_tensors(cfg).items()}
    result: dict[str, torch.Tensor] = {}
    covered: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for r, specs in enumerate(all_rank_specs(cfg, mapping, weights=weights)):
        path = out / f"rank{r}.safetensors"
        with safe_open(str(path), framework="pt") as f:
            if set(f.keys()) != {s.name for s in specs}:
                problems.append(f"{path.name}: tensors differ from the layout")
                continue
            for spec in specs:
                t = f.get_tensor(spec.name)
                if t.dtype != torch_dtype(spec.dtype) or tuple(t.shape) != spec.shape:
                    problems.append(f"{path.name}: {spec.name} is {t.dtype} {list(t.shape)}, layout says "
                                    f"{spec.dtype} {list(spec.shape)}")
                    continue
                slots = t if spec.stacked else t.unsqueeze(0)
                for s, slot in enumerate(spec.slots):
                    row = 0
                    for p in slot:
                        got = slots[s][row: row + p.nrows]
                        row += p.nrows
                        if p.source is None:
                            if got.float().abs().sum() != 0:
                                problems.append(f"{path.name}: {spec.name} padding rows are not zero")
                            continue
                        if p.source.endswith(SCALE_SUFFIX):
                            w = shapes[p.source[: -len(SCALE_SUFFIX)]]
                            full = scale_shape(w, block)
                        else:
                            full = shapes[p.source]
                        dst = result.setdefault(p.source, torch.zeros(full, dtype=t.dtype))
                        cov = covered.setdefault(p.source, torch.zeros(full, dtype=torch.bool))
                        idx = (slice(*p.rows),) if p.cols is None else (slice(*p.rows), slice(*p.cols))
                        seen = cov[idx]
                        if seen.any() and not _same_bits(dst[idx][seen], got[seen]):
                            problems.append(f"{path.name}: {spec.name} disagrees with another copy of {p.source}")
                        dst[idx] = got
                        cov[idx] = True
    for name, cov in covered.items():
        if not cov.all():
            problems.append(f"{name}: {int((~cov).sum())} element(s) are in no rank file")
    if problems:
        raise K2Error(_listing(problems))
    return result


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    return a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
