"""``k2trt serve``: find tritonserver, start it on a repository, wait until it is ready, stop it cleanly.

Which tritonserver (:func:`find_tritonserver`):

1. ``--tritonserver PATH``, else ``tritonserver`` on ``PATH`` or ``/opt/tritonserver/bin/tritonserver`` (NGC's
   containers): the system one, with its own backends.
2. Else the one in the ``nvidia-pytriton`` wheel (Triton 2.51 with the Python backend). Its backend directory is
   read-only and lacks the Python stub, so a writable copy is prepared once per version
   (``~/.cache/k2trt/tritonserver-<version>-py3.X/backends``): ``backends/python/`` of the wheel plus
   ``python_backend_stubs/3.X/triton_python_backend_stub`` for this interpreter, passed as
   ``--backend-directory``.

The environment (:func:`server_env`) is what makes ``model.py`` run with k2trt and its dependencies: the stub embeds
``libpython`` and starts Python with the environment ignored (``PYTHONPATH`` has no effect), but it finds its
``python3`` on ``PATH`` and, like any Python, takes the ``pyvenv.cfg`` beside it. So ``PATH`` starts with this
interpreter's directory (the virtual environment's ``bin/``: the stub then has the venv's ``site-packages``, the
editable k2trt included), and ``LD_LIBRARY_PATH`` starts with this interpreter's ``libpython`` directory (so the
stub embeds the same Python build as the venv, not another 3.X) followed by the wheel's bundled libraries.

World size > 1: a ``torch`` repository runs one tritonserver (the runtime starts its other ranks as local
processes); a ``trtllm`` one runs one tritonserver per rank under ``mpirun``, as tensorrtllm_backend's
``launch_triton_server.py`` does (ranks > 0 load only ``tensorrt_llm``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from k2trt.errors import K2Error

SYSTEM_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver and what it needs to run Python models with this interpreter's packages."""

    binary: Path
    source: str
    """``system`` or ``pytriton`` (the wheel)."""
    backend_dir: Path | None = None
    """``--backend-directory`` (None: the server's default)."""
    lib_dirs: tuple[Path, ...] = ()
    """Prepended to ``LD_LIBRARY_PATH``."""


def _python_lib_dir() -> Path | None:
    """The directory of this interpreter's ``libpython3.X.so`` (None for a static build)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and ldlib and (Path(libdir) / ldlib).exists():
        return Path(libdir)
    return None


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "k2trt"


def _prepare_pytriton(cache: Path | None) -> TritonInstall:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise K2Error("no tritonserver: not on PATH, not in /opt/tritonserver, and the nvidia-pytriton wheel is not "
                      "installed (pip install -c constraints.txt -e '.[serve]', or run in an NGC tritonserver "
                      "container)")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    dist = pkg / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not binary.is_file():
        raise K2Error(f"{binary}: missing from the nvidia-pytriton wheel")
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").iterdir() if p.is_dir())
        raise K2Error(f"the nvidia-pytriton wheel has no Python backend stub for Python {py} (it has {have})")
    from importlib.metadata import version

    target = (cache or _cache_root()) / f"tritonserver-pytriton{version('nvidia-pytriton')}-py{py}" / "backends"
    src = dist / "backends" / "python"
    wanted = {p.name: p for p in src.iterdir() if p.is_file()} | {stub.name: stub}
    have_all = all((target / "python" / n).is_file() and (target / "python" / n).stat().st_size == p.stat().st_size
                   for n, p in wanted.items())
    if not have_all:  # build beside, then swap in: several servers may start at once
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".backends.", dir=target.parent))
        (tmp / "python").mkdir()
        for n, p in wanted.items():
            shutil.copy2(p, tmp / "python" / n)
        if target.exists():  # stale (another wheel build under the same version)
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    libs = [d for d in (_python_lib_dir(), pkg.parent / "nvidia_pytriton.libs") if d is not None and d.is_dir()]
    return TritonInstall(binary=binary, source="pytriton", backend_dir=target, lib_dirs=tuple(libs))


def find_tritonserver(explicit: str | Path | None = None, *, cache: Path | None = None) -> TritonInstall:
    """The tritonserver to run (see the module docstring); K2Error saying how to get one."""
    if explicit is not None:
        p = Path(explicit)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise K2Error(f"--tritonserver {p}: not an executable file")
        return TritonInstall(binary=p, source="system")
    found = shutil.which("tritonserver")
    if found:
        return TritonInstall(binary=Path(found), source="system")
    if SYSTEM_TRITONSERVER.is_file():
        return TritonInstall(binary=SYSTEM_TRITONSERVER, source="system")
    return _prepare_pytriton(cache)


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver runs in (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    py_bin = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join([str(py_bin), env.get("PATH", "")])
    libs = [str(d) for d in install.lib_dirs]
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH")
                                                         else []))
    return env


# ----------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ServeOptions:
    """How to run the server."""

    repo: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    address: str = "0.0.0.0"
    """The address the three endpoints listen on."""
    world_size: int | None = None
    """Checked against the repository's engine (None: the repository's)."""
    exit_timeout_s: int = 10
    """How long tritonserver waits for in-flight requests when stopping."""
    log_verbose: int = 0
    tritonserver: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "repo", Path(self.repo))

    def validate(self) -> None:
        p = []
        ports = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}
        for name, port in ports.items():
            if not 0 < port < 65536:
                p.append(f"--{name}-port: expected a port number, got {port}")
        if len(set(ports.values())) != 3:
            p.append(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
        if self.world_size is not None and self.world_size < 1:
            p.append(f"--world-size: must be >= 1, got {self.world_size}")
        if self.exit_timeout_s < 0:
            p.append(f"exit timeout must be >= 0, got {self.exit_timeout_s}")
        if p:
            raise K2Error(p)


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_ports(n: int = 3, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago (for tests and the demo).

    Drawn below the kernel's ephemeral range: a port the kernel handed out for ``bind(0)`` is also what it hands
    the next outgoing connection (a gRPC client, a Python-backend stub), so it can be taken before tritonserver
    binds it; ports outside that range are only taken by someone who asks for them by number.
    """
    import random

    start, stop = free_port_range()
    rng = random.Random()
    ports: list[int] = []
    for _ in range(200 * n):
        if len(ports) == n:
            return ports
        port = rng.randrange(start, stop)
        if port not in ports and not _port_in_use(port, host):
            ports.append(port)
    raise K2Error(f"found only {len(ports)} free port(s) of {n} in {start}-{stop - 1} on {host}")


def free_port_range() -> tuple[int, int]:
    """``[start, stop)`` that :func:`free_ports` draws from: below the ephemeral range when at least 2,000 ports fit
    above 10,000 there, else above it."""
    lo, hi = _ephemeral_range()
    if lo >= 12_000:
        return 10_000, lo
    return hi + 1, 65_536


def _port_in_use(port: int, address: str) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("" if address == "0.0.0.0" else address, port))
        except OSError:
            return True
    return False


def server_command(install: TritonInstall, opts: ServeOptions, *, backend: str, world_size: int,
                   shm_prefix: str = "k2trt") -> list[str]:
    """The command line: tritonserver, or ``mpirun`` with one tritonserver per rank for trtllm world size > 1."""

    def rank_cmd(rank: int) -> list[str]:
        cmd = [str(install.binary), f"--model-repository={opts.repo.resolve()}",
               f"--http-port={opts.http_port}", f"--grpc-port={opts.grpc_port}", f"--metrics-port={opts.metrics_port}",
               f"--http-address={opts.address}", f"--grpc-address={opts.address}",
               f"--metrics-address={opts.address}", f"--exit-timeout-secs={opts.exit_timeout_s}",
               "--disable-auto-complete-config",
               # a prefix of its own: Python-backend shared memory must not collide with another server's
               f"--backend-config=python,shm-region-prefix-name={shm_prefix}_{rank}_"]
        if install.backend_dir is not None:
            cmd.append(f"--backend-directory={install.backend_dir}")
        if opts.log_verbose:
            cmd.append(f"--log-verbose={opts.log_verbose}")
        if rank > 0:  # the other ranks only run the engine (tensorrtllm_backend's launcher)
            cmd += ["--model-control-mode=explicit", "--load-model=tensorrt_llm"]
        return cmd

    if backend == "torch" or world_size == 1:
        return rank_cmd(0)
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise K2Error(f"a trtllm engine of world size {world_size} runs one tritonserver per rank under mpirun, "
                      f"which is not on PATH (it is in the NGC tensorrtllm containers)")
    cmd = [mpirun, "--allow-run-as-root"]
    for rank in range(world_size):
        cmd += ["-n", "1", *rank_cmd(rank)]
        if rank < world_size - 1:
            cmd.append(":")
    return cmd


# ----------------------------------------------------------------------------------------------- the server


_LOAD_ERROR = re.compile(r"failed to load|already in use|error: creating server|UNAVAILABLE: |Internal: "
                         r"|error while loading shared")


def server_errors(log: str, limit: int = 20) -> list[str]:
    """The server's own error lines from its log (model load failures first)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    hits = [ln for ln in lines if _LOAD_ERROR.search(ln) and not ln.startswith("|")]
    if not hits:
        hits = [ln for ln in lines if ln[:1] == "E" and ln[1:5].isdigit()] or lines[-limit:]
    seen, out = set(), []
    for ln in hits:
        if ln not in seen:
            seen.add(ln)
            out.append(ln)
    return out[:limit]


@dataclass
class TritonServer:
    """A started tritonserver (its process group: the Python stubs and engine ranks are in it too)."""

    proc: subprocess.Popen
    opts: ServeOptions
    log_path: Path
    command: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.opts.address in ("0.0.0.0", "") else self.opts.address

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.opts.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.opts.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.opts.metrics_port}/metrics"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def is_ready(self) -> bool:
        """Every model loaded and the metrics endpoint up: tritonserver reports ready over HTTP before it binds
        the metrics port, and exits when that bind fails."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                if r.status != 200:
                    return False
            with urllib.request.urlopen(self.metrics_url, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def exit_code(self) -> int | None:
        """tritonserver's exit status, None while it runs. It is not reaped here: until :meth:`stop` reaps it, its
        pid (the id of its process group) cannot be reused, so :meth:`stop` only ever signals this server's group."""
        if self.proc.returncode is not None:
            return self.proc.returncode
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.proc.wait()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def wait_ready(self, timeout_s: float = 300) -> None:
        """Return once every model is loaded; K2Error with the server's own errors if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                errors = server_errors(self.log())
                raise K2Error([f"tritonserver exited with code {code} while starting "
                               f"(log: {self.log_path}):"] + errors)
            # an endpoint that failed to bind (its port was taken after the check) fails the start, whether or not
            # the server has exited yet: it may have answered "ready" on the others a moment before
            endpoint_failed = [ln.strip() for ln in self.log().splitlines() if "failed to start" in ln]
            if endpoint_failed:
                self.stop(timeout_s=5)
                raise K2Error([f"tritonserver could not start an endpoint (log: {self.log_path}):"]
                              + endpoint_failed)
            if self.is_ready():
                return
            time.sleep(0.25)
        errors = server_errors(self.log())
        self.stop()
        raise K2Error([f"tritonserver was not ready after {timeout_s:.0f} s (log: {self.log_path}):"] + errors)

    def stop(self, timeout_s: float | None = None) -> int:
        """SIGINT (Triton drains in-flight requests for its exit timeout), then SIGKILL to what is left."""
        timeout_s = self.opts.exit_timeout_s + 15 if timeout_s is None else timeout_s
        if self.proc.returncode is not None:  # reaped already: nothing of it is left to signal safely
            return self.proc.returncode
        if self.exit_code() is None:
            self.proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + timeout_s
            while self.exit_code() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        try:  # what is left of this server (Python stubs, engine ranks): its own process group, pid still held
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.wait()

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(opts: ServeOptions, *, log_path: str | Path | None = None, install: TritonInstall | None = None,
                 ready_timeout_s: float = 300, echo: bool = False) -> TritonServer:
    """Start tritonserver on ``opts.repo`` and wait until it is ready (K2Error with the server's errors if not).

    ``echo``: also copy the server's output to this process's stderr.
    """
    from k2trt.serving.settings import read_repo_settings

    opts.validate()
    settings = read_repo_settings(opts.repo)
    if opts.world_size is not None and opts.world_size != settings.world_size:
        raise K2Error(f"--world-size {opts.world_size}: the repository's engine has world size {settings.world_size}")
    busy = [p for p in (opts.http_port, opts.grpc_port, opts.metrics_port) if _port_in_use(p, opts.address)]
    if busy:
        raise K2Error(f"port(s) {busy} already in use on {opts.address}: another server is running, or choose "
                      f"--http-port/--grpc-port/--metrics-port")
    install = install or find_tritonserver(opts.tritonserver)
    cmd = server_command(install, opts, backend=settings.backend, world_size=settings.world_size,
                         shm_prefix=f"k2trt{os.getpid()}_{opts.grpc_port}")
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="k2trt-tritonserver-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "wb")
    try:
        if echo:
            proc = subprocess.Popen(cmd, env=server_env(install), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, stdin=subprocess.DEVNULL)
            _tee(proc, out)
        else:
            proc = subprocess.Popen(cmd, env=server_env(install), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, stdin=subprocess.DEVNULL)
    finally:
        if not echo:
            out.close()
    server = TritonServer(proc, opts, log_path, cmd)
    try:
        server.wait_ready(ready_timeout_s)
    except BaseException:
        server.stop(timeout_s=5)
        raise
    return server


def start_local_server(repo: str | Path, *, log_path: str | Path | None = None, exit_timeout_s: int = 5,
                       attempts: int = 3, **kwargs) -> TritonServer:
    """:func:`start_server` on 127.0.0.1 with three free ports of its choosing (the demo, tests, benchmarks).

    A port can still be taken between choosing and binding it; tritonserver then exits while starting, and this
    tries again on other ports (``attempts`` in all).
    """
    for attempt in range(attempts):
        http, grpc, metrics = free_ports(3)
        opts = ServeOptions(repo=Path(repo), http_port=http, grpc_port=grpc, metrics_port=metrics,
                            address="127.0.0.1", exit_timeout_s=exit_timeout_s)
        try:
            return start_server(opts, log_path=log_path, **kwargs)
        except K2Error as e:
            if attempt + 1 == attempts or not any("already in use" in p for p in e.problems):
                raise
    raise AssertionError("unreachable")


def _tee(proc: subprocess.Popen, out) -> None:
    import threading

    def pump():
        with out:
            for line in iter(proc.stdout.readline, b""):
                out.write(line)
                out.flush()
                sys.stderr.buffer.write(line)
                sys.stderr.flush()

    threading.Thread(target=pump, daemon=True).start()


def serve(opts: ServeOptions, *, log_path: str | Path | None = None, verbose: bool = False,
          print_fn=print) -> int:
    """``k2trt serve``: start, print the endpoints, run until Ctrl-C/SIGTERM (or the server exits); returns the
    server's exit code (0 after a requested stop)."""
    server = start_server(opts, log_path=log_path, echo=verbose)
    stop = {"requested": False}

    def on_signal(signum, _frame):
        stop["requested"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print_fn(f"tritonserver ready ({server.command[0]})")
        print_fn(f"  HTTP     http://{server.http_url}   (health: /v2/health/ready)")
        print_fn(f"  gRPC     {server.grpc_url}")
        print_fn(f"  metrics  {server.metrics_url}")
        print_fn("  models   k2_bls (chat JSON), ensemble (text_input), tensorrt_llm, preprocessing, postprocessing")
        print_fn(f"  log      {server.log_path}")
        print_fn("Ctrl-C to stop.")
        while not stop["requested"] and server.exit_code() is None:
            time.sleep(0.2)
        if not stop["requested"]:
            raise K2Error([f"tritonserver exited with code {server.exit_code()}:"] + server_errors(server.log()))
        print_fn("stopping tritonserver...")
        server.stop()
        return 0
    finally:
        server.stop()  # idempotent; also reaps a server that died and kills what it left
        for s, h in old.items():
            signal.signal(s, h)
