"""The whole topology on one machine: in one process (``kyb serve all``) or as separate local
processes (``kyb serve stack``), wired exactly as a deployment is: gateway -> detector, encoder and
N matcher shards, each shard with its own index folder; with ``web`` the HTTP front and its page on
``web.port``, calling that gateway.

With N > 1 and no shard folders yet, the embedded index (``index_dir``) is split into them with
:func:`kyb.rpc.split_index`, so an index built with ``kyb ingest`` can be served sharded at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kyb.errors import NotReady, Unavailable
from kyb.index import has_index
from kyb.regions import RegionDetector
from kyb.rpc import (
    Metrics,
    Server,
    ServiceConfig,
    ServiceServer,
    environment,
    serve,
    split_index,
    wait_until_serving,
)
from kyb_services.detector.server import create_server as create_detector
from kyb_services.detector.servicer import DetectorServicer
from kyb_services.encoder.server import create_server as create_encoder
from kyb_services.gateway.server import create_server as create_gateway
from kyb_services.matcher.server import create_server as create_matcher

__all__ = ["LocalStack", "prepare_shards", "run_processes", "start_local"]

log = logging.getLogger(__name__)

#: Internal services of a local topology listen on loopback only; the gateway keeps rpc.host.
_LOOPBACK = "127.0.0.1"


def prepare_shards(config: ServiceConfig, shards: int) -> list[Path]:
    """The index folder of each shard; splits the embedded index into them when none exists yet.

    Shard folders are never overwritten (they may hold references ingested through the gateway);
    delete them all to split the embedded index again. Some but not all present is refused.
    """
    folders = [config.matcher.shard_folder(config.engine.index_dir, k, shards) for k in range(shards)]
    present = [has_index(f) for f in folders]
    if shards > 1 and any(present) and not all(present):
        missing = ", ".join(str(f) for f, ok in zip(folders, present, strict=True) if not ok)
        raise NotReady(f"some shard folders have no index ({missing}); restore them or delete all to re-split")
    if shards > 1 and not any(present) and has_index(config.engine.index_dir):
        log.info("splitting %s into %d shard folders", config.engine.index_dir, shards)
        split_index(config.engine.index_dir, config.engine.search, shards, lambda k: folders[k])
    return folders


def _encoder_folder(config: ServiceConfig, folders: list[Path]) -> Path:
    """The folder whose codebook the encoder loads: configured, else the embedded index, else shard 0."""
    if config.encoder.index_dir is not None or has_index(config.engine.index_dir):
        return config.encoder_index_dir()
    return folders[0]


def _internal(config: ServiceConfig) -> ServiceConfig:
    return config.replace(rpc=dataclasses.replace(config.rpc, host=_LOOPBACK))


@dataclass
class LocalStack:
    """Servers of an in-process topology; ``gateway_port`` is where clients connect."""

    gateway: ServiceServer
    gateway_port: int
    matchers: list[ServiceServer]
    encoder: ServiceServer
    detector: ServiceServer | None
    config: ServiceConfig
    #: Every server above (and the web front's), in start order.
    servers: list[Server] = field(default_factory=list)
    #: The web front (a :class:`kyb_services.web.server.WebServer`) when asked for.
    web: Any = None

    @property
    def gateway_servicer(self) -> Any:
        return self.gateway.servicers["kyb.v1.Gateway"]

    def start(self) -> None:
        for server in self.servers:
            server.start()

    def stop(self, grace: float = 0.0) -> None:
        events = [server.stop(grace) for server in reversed(self.servers)]
        for event in events:
            event.wait(5)
        for server in self.servers:
            server.wait_for_termination(5)


def start_local(
    config: ServiceConfig,
    *,
    shards: int = 1,
    detector: bool | RegionDetector = True,
    metrics: Metrics | None = None,
    start: bool = True,
    web: bool = False,
) -> LocalStack:
    """Builds (and by default starts) detector, encoder, ``shards`` matchers and the gateway in this
    process; internal servers take free loopback ports, the gateway ``gateway.port`` and, with
    ``web``, the web front ``web.port``. ``detector`` may be a ready detector for the detector
    service to serve (instead of the weights the configuration names), or False for none."""
    metrics = metrics if metrics is not None else Metrics()
    folders = prepare_shards(config, shards)
    internal = _internal(config)
    detector_server = None
    if detector is not False:
        detector_config = internal.replace(detector=dataclasses.replace(config.detector, port=0))
        servicer = DetectorServicer(detector_config, detector=None if detector is True else detector)
        detector_server, detector_port = create_detector(detector_config, servicer=servicer, metrics=metrics)
    encoder_section = dataclasses.replace(config.encoder, port=0, index_dir=_encoder_folder(config, folders))
    encoder_server, encoder_port = create_encoder(internal.replace(encoder=encoder_section), metrics=metrics)
    matchers: list[ServiceServer] = []
    addresses: list[str] = []
    for k, folder in enumerate(folders):
        section = dataclasses.replace(config.matcher, port=0, shard=f"{k}/{shards}", index_dir=str(folder))
        server, port = create_matcher(internal.replace(matcher=section), metrics=metrics)
        matchers.append(server)
        addresses.append(f"{_LOOPBACK}:{port}")
    gateway_section = dataclasses.replace(
        config.gateway,
        encoder_address=f"{_LOOPBACK}:{encoder_port}",
        detector_address=f"{_LOOPBACK}:{detector_port}" if detector_server is not None else "",
        matcher_addresses=tuple(addresses),
        shards=shards,
    )
    gateway_config = config.replace(gateway=gateway_section)
    gateway_server, gateway_port = create_gateway(gateway_config, metrics=metrics)
    web_server = None
    if web:
        from kyb_services.web.server import create_server as create_web  # only this path needs the HTTP stack

        web_section = dataclasses.replace(config.web, gateway_address=f"{_LOOPBACK}:{gateway_port}")
        web_server, _web_port = create_web(config.replace(web=web_section), metrics=metrics)
    stack = LocalStack(
        gateway=gateway_server,
        gateway_port=gateway_port,
        matchers=matchers,
        encoder=encoder_server,
        detector=detector_server,
        config=gateway_config,
        servers=[s for s in (detector_server, encoder_server, *matchers, gateway_server, web_server) if s is not None],
        web=web_server,
    )
    if start:
        stack.start()
    return stack


def serve_local(
    config: ServiceConfig, *, shards: int, web: bool = False, announce: Callable[[str], None] | None = None
) -> int:
    """``kyb serve all``: the whole topology in this process until SIGTERM/SIGINT.

    With ``web``, ``announce`` (default: the log) gets the page's address once the encoder and every
    shard are SERVING, so whoever opens it gets answers, not "service down".
    """
    stack = start_local(config, shards=shards, start=False, web=web)
    log.info("gateway listening on port %d (%d matcher shard(s) in this process)", stack.gateway_port, shards)
    if stack.web is not None:
        url = stack.web.url

        def ready() -> None:
            try:
                for server in [stack.encoder, *stack.matchers]:
                    wait_until_serving(f"{_LOOPBACK}:{server.port}", config.rpc, timeout_s=120)
            except Unavailable as exc:
                log.error("the page will answer 'service down': %s", exc)
                return
            (announce or (lambda text: log.info("web page: %s", text)))(url)

        threading.Thread(target=ready, name="kyb-announce", daemon=True).start()
    serve(stack.servers)
    return 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_for_http(url: str, *, timeout_s: float) -> None:
    """Polls ``url`` until it answers 200; Unavailable after ``timeout_s`` seconds."""
    limit = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > limit:
            raise Unavailable(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.1)


@dataclass
class _Child:
    """One supervised service process and its restart record."""

    name: str
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: list[float] = field(default_factory=list)  # when each restart happened
    next_start: float = 0.0  # when a dead child may start again (backoff)
    given_up: bool = False

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env)
        self.started_at = time.monotonic()
        log.info("%s started (pid %d)", self.name, self.process.pid)


class Supervisor:
    """Keeps a stack's processes running: a child that exits is started again after a backoff that
    doubles from ``backoff_s`` up to ``max_backoff_s`` (reset once it has stayed up ``stable_s``);
    one that exits ``max_restarts`` times within ``window_s`` is in a crash loop, which is logged as an
    error and left down (the rest keep serving: the gateway answers partially without a shard)."""

    def __init__(
        self,
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_restarts: int = 5,
        window_s: float = 60.0,
        stable_s: float = 60.0,
    ) -> None:
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_restarts, self.window_s, self.stable_s = max_restarts, window_s, stable_s
        self.children: list[_Child] = []

    def add(self, name: str, command: list[str], env: dict[str, str]) -> _Child:
        child = _Child(name, command, env)
        child.start()
        self.children.append(child)
        return child

    def check(self, now: float | None = None) -> None:
        """Restarts the children that exited and whose backoff is over (called every half second)."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.given_up or child.process is None:
                continue
            code = child.process.poll()
            if code is None:
                continue
            if child.next_start == 0.0:  # just noticed
                if now - child.started_at >= self.stable_s:
                    child.restarts.clear()  # it had recovered: a new failure starts a new count
                child.restarts = [t for t in child.restarts if now - t < self.window_s]
                if len(child.restarts) >= self.max_restarts:
                    child.given_up = True
                    log.error("%s exited with code %s, its %d. exit within %.0f s: a crash loop; it stays down "
                              "(the other services keep serving)", child.name, code, len(child.restarts) + 1,
                              self.window_s)  # fmt: skip
                    continue
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** len(child.restarts))
                child.next_start = now + delay
                log.error("%s exited with code %s: restarting it in %.1f s", child.name, code, delay)
            if now >= child.next_start:
                child.restarts.append(now)
                child.next_start = 0.0
                child.start()

    def stop(self, grace_s: float) -> None:
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        limit = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(timeout=max(0.1, limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_processes(
    config: ServiceConfig,
    *,
    shards: int,
    ready_timeout_s: float = 120.0,
    web: bool = False,
    restart_backoff_s: float = 0.5,
    max_restarts: int = 5,
) -> int:
    """``kyb serve stack``: one process per service (``python -m services.<name>``), configured only
    through the ``KYB_*`` variables a Kubernetes manifest would set, kept running by a
    :class:`Supervisor` (a child that dies is restarted after ``restart_backoff_s``, doubling; one that
    dies ``max_restarts`` times a minute stays down, reported) until SIGTERM/SIGINT stops them all.
    Returns 0 after that stop, 1 when the stack did not start."""
    folders = prepare_shards(config, shards)
    ports = {"detector": _free_port(), "encoder": _free_port()}
    matcher_ports = [_free_port() for _ in range(shards)]
    wired = config.replace(
        gateway=dataclasses.replace(
            config.gateway,
            detector_address=f"{_LOOPBACK}:{ports['detector']}",
            encoder_address=f"{_LOOPBACK}:{ports['encoder']}",
            matcher_addresses=tuple(f"{_LOOPBACK}:{p}" for p in matcher_ports),
            shards=shards,
        ),
        encoder=dataclasses.replace(config.encoder, port=ports["encoder"], index_dir=_encoder_folder(config, folders)),
        detector=dataclasses.replace(config.detector, port=ports["detector"]),
    )
    base = {**os.environ, **environment(wired)}
    base.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))

    def internal(**variables: str) -> dict[str, str]:
        # Loopback only; with metrics on, each process gets its own /metrics port (logged at start).
        metrics = str(_free_port()) if config.rpc.metrics_port >= 0 else "-1"
        return {"KYB_RPC__HOST": _LOOPBACK, "KYB_RPC__METRICS_PORT": metrics, **variables}

    plans: list[tuple[str, str, dict[str, str], str]] = [
        ("detector", "kyb_services.detector", internal(), "kyb.v1.Detector"),
        ("encoder", "kyb_services.encoder", internal(), "kyb.v1.Encoder"),
    ]
    for k, port in enumerate(matcher_ports):
        variables = internal(
            KYB_MATCHER__PORT=str(port),
            KYB_MATCHER__SHARD=f"{k}/{shards}",
            KYB_MATCHER__INDEX_DIR=str(folders[k]),
        )
        plans.append((f"matcher shard-{k}", "kyb_services.matcher", variables, "kyb.v1.Matcher"))
    plans.append(("gateway", "kyb_services.gateway", {}, "kyb.v1.Gateway"))
    if web:
        plans.append(("web", "kyb_services.web", {"KYB_WEB__GATEWAY_ADDRESS": f"localhost:{config.gateway.port}"}, ""))
    supervisor = Supervisor(backoff_s=restart_backoff_s, max_restarts=max_restarts)
    stopping = threading.Event()

    def stop_all(*_args: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for name, module, variables, _service in plans:
            supervisor.add(name, [sys.executable, "-m", module], {**base, **variables})
        addresses = {
            "detector": f"{_LOOPBACK}:{ports['detector']}",
            "encoder": f"{_LOOPBACK}:{ports['encoder']}",
            **{f"matcher shard-{k}": f"{_LOOPBACK}:{p}" for k, p in enumerate(matcher_ports)},
            "gateway": f"localhost:{config.gateway.port}",
            "web": f"http://localhost:{config.web.port}/",
        }
        for name, _module, _variables, service in plans:
            if name == "web":
                wait_for_http(f"{addresses[name]}healthz", timeout_s=ready_timeout_s)
            else:
                wait_until_serving(addresses[name], config.rpc, service=service, timeout_s=ready_timeout_s)
            log.info("%s SERVING on %s", name, addresses[name])
        log.info(
            "stack ready: gateway on port %d, %d matcher shard(s)%s; Ctrl-C stops it",
            config.gateway.port,
            shards,
            f", web page on {addresses['web']}" if web else "",
        )
        while not stopping.is_set():
            supervisor.check()
            stopping.wait(0.5)
        return 0
    except Unavailable as exc:
        log.error("stack did not start: %s", exc)
        return 1
    finally:
        supervisor.stop(config.rpc.grace_s + 5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
