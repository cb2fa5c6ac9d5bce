"""Run the gateway: uvicorn serving :func:`k2trt.api.app.create_app`, in the foreground (:func:`run_api`, ``k2trt
api``) or in a background thread (:func:`start_api`, for ``k2trt serve --api-port`` and tests)."""

from __future__ import annotations

import ipaddress
import logging

from k2trt.api.app import ApiConfig, create_app
from k2trt.errors import K2Error


def run_api(
    *,
    triton_url: str,
    port: int = 8000,
    host: str = "127.0.0.1",
    api_key: str | None = None,
    model_name: str | None = None,
    max_body_bytes: int = 8 * 2**20,
    max_concurrency: int = 64,
    log_level: str = "info",
) -> None:
    """Serve the OpenAI/Anthropic API on ``host:port`` until interrupted, over Triton's gRPC at ``triton_url``.

    ``model_name`` None: the name k2_bls serves (its ``served_model_name``). Binds 127.0.0.1 unless ``host``
    says otherwise; binding a non-loopback address without an ``api_key`` is
    refused (anyone on the network could use the model).
    """
    import uvicorn

    config = _config(triton_url=triton_url, port=port, host=host, api_key=api_key, model_name=model_name,
                     max_body_bytes=max_body_bytes, max_concurrency=max_concurrency)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


class ApiServer:
    """The gateway running in a background thread of this process (``k2trt serve --api-port``, tests):
    :attr:`url` is its base URL; :meth:`stop` shuts it down (in-flight streams are cancelled)."""

    def __init__(self, config: ApiConfig, *, host: str, port: int, log_level: str = "warning"):
        import threading

        import uvicorn

        self.url = f"http://{host}:{port}"
        self.app = create_app(config)
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level=log_level,
                                                     timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self._server.run, name="k2trt-api", daemon=True)

    def start(self, timeout_s: float = 30) -> ApiServer:
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise K2Error(f"the API server did not start on {self.url} (port in use?)")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_api(
    *,
    triton_url: str,
    port: int = 8000,
    host: str = "127.0.0.1",
    api_key: str | None = None,
    model_name: str | None = None,
    max_body_bytes: int = 8 * 2**20,
    max_concurrency: int = 64,
    log_level: str = "warning",
) -> ApiServer:
    """Start the gateway in a background thread (returns once it listens); the options are :func:`run_api`'s."""
    config = _config(triton_url=triton_url, port=port, host=host, api_key=api_key, model_name=model_name,
                     max_body_bytes=max_body_bytes, max_concurrency=max_concurrency)
    return ApiServer(config, host=host, port=port, log_level=log_level).start()


def _config(*, triton_url: str, port: int, host: str, api_key: str | None, model_name: str | None,
            max_body_bytes: int, max_concurrency: int) -> ApiConfig:
    if not 0 < port < 65536:
        raise K2Error(f"--port: {port} is not a TCP port")
    if max_concurrency < 1 or max_body_bytes < 1:
        raise K2Error("--max-concurrency and --max-body-bytes must be >= 1")
    if api_key is None and not _is_loopback(host):
        raise K2Error(f"--host {host}: serving beyond this machine needs --api-key")
    return ApiConfig(model_name=model_name, api_key=api_key, max_body_bytes=max_body_bytes,
                     max_concurrency=max_concurrency, triton_url=triton_url)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["ApiServer", "run_api", "start_api"]
