"""Builds the web front: ``create_server(config) -> (server, port)`` for main, ``serve all`` and the tests.

:class:`WebServer` runs uvicorn on a socket bound here (so port 0 gives a free port the caller learns
at once) and has the same ``start`` / ``stop`` / ``wait_for_termination`` surface as the gRPC
:class:`~kyb.rpc.ServiceServer`, so :func:`kyb.rpc.serve` runs it beside them with one signal handler.
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

from kyb.errors import Unavailable
from kyb.rpc import Metrics, ServiceConfig
from kyb_services.web.servicer import WebServicer, create_app

__all__ = ["WebServer", "create_server"]

log = logging.getLogger(__name__)


def _listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; ``[::]`` (the rpc.host default) also accepts IPv4."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((bare, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise Unavailable(f"web: cannot listen on {host}:{port}: {exc}") from None
    return sock


class WebServer:
    """uvicorn serving the front's app on one socket, in a background thread once started."""

    def __init__(self, config: ServiceConfig, servicer: WebServicer, sock: socket.socket) -> None:
        self.config = config
        self.servicer = servicer
        self.port = int(sock.getsockname()[1])
        self._socket = sock
        self._server = uvicorn.Server(
            uvicorn.Config(create_app(servicer), log_level="warning", access_log=False, lifespan="off")
        )
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    @property
    def url(self) -> str:
        host = self.config.rpc.host.strip("[]")
        shown = "localhost" if host in ("", "::", "0.0.0.0", "127.0.0.1", "::1") else host
        return f"http://{shown}:{self.port}/"

    def _run(self) -> None:
        try:
            # A fresh event loop in this thread; uvicorn installs no signal handlers off the main thread.
            self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()
            self.servicer.close()
            self._done.set()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("web server already started")
        self._thread = threading.Thread(target=self._run, name="kyb-web", daemon=True)
        self._thread.start()
        if self.config.rpc.metrics_port >= 0:
            self.servicer.metrics.serve_http(self.config.rpc.metrics_port)
        log.info("web front on %s (gateway %s)", self.url, self.config.web.gateway_address)
        if self.servicer.open:
            log.warning("web front accepts calls WITHOUT authentication: set KYB_RPC__TOKENS to require a token")

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stops accepting, lets in-flight requests finish (``rpc.grace_s``), then closes the client."""
        if self._thread is None:
            self._socket.close()
            self.servicer.close()
            self._done.set()
            return self._done
        # uvicorn treats 0 as "cancel at once" and logs it as an error; a second is enough for a quiet stop.
        grace = self.config.rpc.grace_s if grace is None else grace
        self._server.config.timeout_graceful_shutdown = max(round(grace), 1)
        self._server.should_exit = True
        return self._done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


def create_server(
    config: ServiceConfig, *, servicer: WebServicer | None = None, metrics: Metrics | None = None
) -> tuple[WebServer, int]:
    """The front bound to ``rpc.host:web.port`` (0 = any free port), not started; ``metrics`` may be
    shared with other servers of the process (one ``/metrics`` endpoint)."""
    sock = _listen(config.rpc.host, config.web.port)
    server = WebServer(config, servicer or WebServicer(config, metrics=metrics), sock)
    return server, server.port
