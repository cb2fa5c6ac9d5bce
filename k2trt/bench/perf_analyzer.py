"""perf_analyzer: finding the binary, its environment, and the command line of one concurrency level.

The binary is the one in the ``tritonclient[all]`` wheel (``<venv>/bin/perf_analyzer``; 2.51 here) or the
``perf_analyzer`` on ``PATH`` (NGC's SDK container). The wheel's binary links ``libb64.so.0d`` (Debian's
``libb64-0d``) and ``libcudart.so.12``, which PyPI's ``nvidia-cuda-runtime-cu12`` ships; its directory is put
on ``LD_LIBRARY_PATH`` here.

One invocation measures one level (``--concurrency-range C``), so that progress shows per level and every
level has its own profile export. Two ways to size a level (perf_analyzer 2.51 has no warm-up option, so the
warm-up requests are sent first in the same run and dropped by send order when parsing):

- ``requests``: ``--request-count warmup + requests``; perf_analyzer sends exactly that many and waits for all.
- ``duration_s``: three time windows of ``duration / 3`` (``--measurement-mode time_windows``) with the
  stability check switched off (``--stability-percentage`` huge, ``--max-trials 3``), so it measures once for
  about ``duration`` seconds (perf_analyzer stretches a window by up to 20% to wait for responses).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from k2trt.errors import K2Error

STABILITY_OFF = 100_000
"""--stability-percentage: any three windows count as stable (a benchmark run is sized, not searched)."""


@dataclass(frozen=True)
class LevelCommand:
    """One perf_analyzer run: one model, one concurrency level, one input file, one export file."""

    model: str
    url: str
    input_data: Path
    concurrency: int
    export_file: Path
    requests: int | None = None
    duration_s: float | None = None
    warmup: int = 0
    streaming: bool = True
    protocol: str = "grpc"
    max_threads: int | None = None

    def validate(self) -> None:
        if self.concurrency < 1:
            raise K2Error(f"concurrency must be >= 1, got {self.concurrency}")
        if (self.requests is None) == (self.duration_s is None):
            raise K2Error("give exactly one of requests and duration")
        if self.requests is not None and self.requests < 1:
            raise K2Error(f"requests must be >= 1, got {self.requests}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise K2Error(f"duration must be > 0 seconds, got {self.duration_s}")
        if self.warmup < 0:
            raise K2Error(f"warmup must be >= 0, got {self.warmup}")
        if self.streaming and self.protocol != "grpc":
            raise K2Error("perf_analyzer streams over gRPC only (-i grpc)")

    def argv(self, binary: str = "perf_analyzer") -> list[str]:
        """The command line (``binary`` first)."""
        self.validate()
        args = [binary, "-m", self.model, "-u", self.url, "-i", self.protocol,
                "--input-data", str(self.input_data),
                "--concurrency-range", str(self.concurrency),
                "--profile-export-file", str(self.export_file)]
        if self.streaming:
            args.append("--streaming")
        if self.requests is not None:
            args += ["--request-count", str(self.warmup + self.requests)]
        else:
            window_ms = max(1, round(self.duration_s * 1000 / 3))
            args += ["--measurement-mode", "time_windows", "--measurement-interval", str(window_ms),
                     "--max-trials", "3", "--stability-percentage", str(STABILITY_OFF)]
        # perf_analyzer keeps ``concurrency`` requests in flight from at most max_threads threads (16 by default)
        threads = self.max_threads or max(16, self.concurrency)
        args += ["--max-threads", str(threads)]
        return args


def find_perf_analyzer(explicit: str | Path | None = None) -> Path:
    """The perf_analyzer binary: ``explicit``, else the one beside this Python (the tritonclient wheel's), else
    ``PATH``'s. K2Error naming how to get one."""
    if explicit is not None:
        p = Path(explicit)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise K2Error(f"--perf-analyzer {p}: not an executable file")
        return p
    beside = Path(sys.executable).parent / "perf_analyzer"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("perf_analyzer")
    if found:
        return Path(found)
    raise K2Error("perf_analyzer not found: install it with `pip install tritonclient[all]==2.51.0` (it ships "
                  "bin/perf_analyzer; it needs Debian's libb64-0d and PyPI's nvidia-cuda-runtime-cu12), or run "
                  "in NGC's tritonserver SDK container (nvcr.io/nvidia/tritonserver:<yy.mm>-py3-sdk)")


def cuda_runtime_lib_dir() -> Path | None:
    """Where PyPI's nvidia-cuda-runtime-cu12 put ``libcudart.so.12`` (None if not installed)."""
    try:
        import nvidia.cuda_runtime  # type: ignore[import-not-found]
    except ImportError:
        return None
    for base in getattr(nvidia.cuda_runtime, "__path__", []):
        lib = Path(base) / "lib"
        if (lib / "libcudart.so.12").exists():
            return lib
    return None


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment perf_analyzer runs in: ``base`` (default ``os.environ``) with libcudart's directory
    first on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ if base is None else base)
    lib = cuda_runtime_lib_dir()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def explain_failure(returncode: int, output: str, *, model: str, url: str) -> str:
    """One line saying why a perf_analyzer run failed, from its exit status and output."""
    text = output.lower()
    if "error while loading shared libraries" in text:
        lib = output.split("error while loading shared libraries:", 1)[1].split(":", 1)[0].strip()
        hint = {"libb64.so.0d": "install Debian's libb64-0d (apt-get install libb64-0d)",
                "libcudart.so.12": "pip install nvidia-cuda-runtime-cu12"}.get(lib, "install it")
        return f"perf_analyzer cannot start: {lib} is missing; {hint}"
    if "failed to connect" in text or "connection refused" in text or "deadline exceeded" in text:
        return f"cannot reach the server at {url} (perf_analyzer: {_last_error_line(output)})"
    if "unknown model" in text or ("model" in text and "not found" in text) or "is not ready" in text:
        return f"model '{model}' is not served at {url} (perf_analyzer: {_last_error_line(output)})"
    if "failed to obtain stable measurement" in text:
        return ("perf_analyzer found no stable measurement: each of the three windows of --duration must see "
                "requests complete; use a longer --duration (or --requests)")
    return f"perf_analyzer exited with status {returncode}: {_last_error_line(output)}"


def _last_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "failed" in ln.lower():
            return ln[:300]
    return lines[-1][:300] if lines else "(no output)"
