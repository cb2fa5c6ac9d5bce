"""``k2trt serve``: finding tritonserver, its command line and environment, its errors."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from k2trt.errors import K2Error
from k2trt.serving.server import (
    ServeOptions,
    TritonInstall,
    _prepare_pytriton,
    server_command,
    server_env,
    server_errors,
    start_server,
)

INSTALL = TritonInstall(binary=Path("/x/bin/tritonserver"), source="pytriton", backend_dir=Path("/cache/backends"),
                        lib_dirs=(Path("/py/lib"), Path("/wheel/libs")))


def test_torch_repository_runs_one_server_whatever_the_world_size(tmp_path):
    opts = ServeOptions(repo=tmp_path, http_port=1, grpc_port=2, metrics_port=3, address="127.0.0.1")
    cmd = server_command(INSTALL, opts, backend="torch", world_size=2, shm_prefix="p")
    assert cmd[0] == "/x/bin/tritonserver"
    for arg in (f"--model-repository={tmp_path.resolve()}", "--http-port=1", "--grpc-port=2", "--metrics-port=3",
                "--grpc-address=127.0.0.1", "--backend-directory=/cache/backends",
                "--backend-config=python,shm-region-prefix-name=p_0_"):
        assert arg in cmd
    assert "--load-model=tensorrt_llm" not in cmd


def test_trtllm_world_size_runs_one_server_per_rank_under_mpirun(tmp_path, monkeypatch):
    import k2trt.serving.server as server

    opts = ServeOptions(repo=tmp_path)
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    with pytest.raises(K2Error, match="under mpirun, which is not on PATH"):
        server_command(INSTALL, opts, backend="trtllm", world_size=2)
    monkeypatch.setattr(server.shutil, "which", lambda name: f"/usr/bin/{name}")
    cmd = server_command(INSTALL, opts, backend="trtllm", world_size=2, shm_prefix="p")
    assert cmd[:2] == ["/usr/bin/mpirun", "--allow-run-as-root"]
    ranks = " ".join(cmd[2:]).split(" : ")
    assert len(ranks) == 2 and all(r.startswith("-n 1 /x/bin/tritonserver") for r in ranks)
    assert "--load-model=tensorrt_llm" not in ranks[0]
    assert "--model-control-mode=explicit --load-model=tensorrt_llm" in ranks[1]
    assert "shm-region-prefix-name=p_1_" in ranks[1]


def test_environment_puts_this_interpreter_first():
    env = server_env(INSTALL, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/old"})
    # the Python stub finds `python3` (hence the venv's pyvenv.cfg and site-packages) on PATH
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["LD_LIBRARY_PATH"] == os.pathsep.join(["/py/lib", "/wheel/libs", "/old"])


def test_pytriton_backend_directory_is_prepared_once(tmp_path):
    pytest.importorskip("pytriton")
    a = _prepare_pytriton(tmp_path)
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for name in ("libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"):
        assert (a.backend_dir / "python" / name).is_file()
    assert a.backend_dir.parent.name.endswith(f"-py{py}")
    assert os.access(a.backend_dir / "python" / "triton_python_backend_stub", os.X_OK)
    stamp = (a.backend_dir / "python" / "libtriton_python.so").stat().st_mtime_ns
    b = _prepare_pytriton(tmp_path)
    assert b == a and (b.backend_dir / "python" / "libtriton_python.so").stat().st_mtime_ns == stamp
    assert any(d.name == "nvidia_pytriton.libs" for d in a.lib_dirs)


def test_server_errors_pick_the_load_failures():
    log = "\n".join([
        'I1130 06:32:27.229754 1 model_lifecycle.cc:472] "loading: k2_bls:1"',
        'E1130 06:32:27.324992 1 model_lifecycle.cc:642] "failed to load \'k2_bls\' version 1: Internal: '
        'TokenizerError: no tiktoken.model"',
        "| k2_bls | 1 | UNAVAILABLE: Internal: TokenizerError |",
        "error: creating server: Internal - failed to load all models",
    ])
    errors = server_errors(log)
    assert errors[0].endswith("TokenizerError: no tiktoken.model\"") and "failed to load all models" in errors[-1]
    assert not any(e.startswith("|") for e in errors)


def test_options_are_checked(tmp_path):
    with pytest.raises(K2Error, match="must differ"):
        ServeOptions(repo=tmp_path, http_port=5, grpc_port=5).validate()
    with pytest.raises(K2Error, match="world-size"):
        ServeOptions(repo=tmp_path, world_size=0).validate()


def test_busy_ports_and_wrong_world_size_are_refused(tmp_path):
    from k2trt.serving.settings import REPO_RECORD

    (tmp_path / REPO_RECORD).write_text(
        '{"engine_dir": "/e", "backend": "torch", "tokenizer_dir": "/t", "served_model_name": "m", '
        '"world_size": 2, "max_batch_size": 4, "max_seq_len": 64}')
    with pytest.raises(K2Error, match="--world-size 1: the repository's engine has world size 2"):
        start_server(ServeOptions(repo=tmp_path, world_size=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(K2Error, match=rf"port\(s\) \[{port}\] already in use"):
            start_server(ServeOptions(repo=tmp_path, http_port=port, grpc_port=port + 1 if port < 65535 else 1,
                                      metrics_port=port - 1, address="127.0.0.1"))


def test_cli_serve_reports_a_missing_repository(tmp_path):
    from typer.testing import CliRunner

    from k2trt.cli import app

    r = CliRunner().invoke(app, ["serve", "--repo", str(tmp_path / "none")])
    assert r.exit_code == 1 and "no k2trt_repo.json; write the repository with `k2trt repo`" in r.output


def test_serve_prints_the_endpoints_and_stops_on_sigterm(tmp_path, monkeypatch):
    import signal
    import threading

    import k2trt.serving.server as server

    class FakeServer:
        log_path = tmp_path / "log"
        command = ["/x/tritonserver"]
        http_url, grpc_url, metrics_url = "127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3/metrics"
        stops = 0

        def __init__(self, code=None):
            self.code = code

        def exit_code(self):
            return self.code

        def stop(self):
            FakeServer.stops += 1
            self.code = 0 if self.code is None else self.code
            return self.code

        def log(self):
            return ""

    monkeypatch.setattr(server, "start_server", lambda opts, **kw: FakeServer())
    lines: list[str] = []
    handler = signal.getsignal(signal.SIGTERM)
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    assert server.serve(ServeOptions(repo=tmp_path), print_fn=lines.append) == 0
    assert FakeServer.stops >= 1
    assert "  gRPC     127.0.0.1:2" in lines and lines[-1] == "stopping tritonserver..."
    assert signal.getsignal(signal.SIGTERM) == handler  # the previous handler is back

    # a server that dies on its own is an error with its log's errors
    dead = FakeServer(code=3)
    monkeypatch.setattr(server, "start_server", lambda opts, **kw: dead)
    with pytest.raises(K2Error, match="tritonserver exited with code 3"):
        server.serve(ServeOptions(repo=tmp_path), print_fn=lines.append)
