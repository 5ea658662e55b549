"""Prometheus metrics of one process: per-RPC latency and status counts, retries, missing shards.

Each :class:`Metrics` owns its own ``CollectorRegistry`` (not the global one), so several servers in
one process (``kyb serve all``, the tests) never collide; ``kyb serve all`` shares one instance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from kyb.errors import Unavailable

__all__ = ["Metrics"]

log = logging.getLogger(__name__)

#: Seconds; from a cache hit (~1 ms) to a slow multi-region photo (~10 s).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The metrics every service records; ``serve_http(port)`` exposes them at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "kyb_rpc_latency_seconds",
            "Server-side duration of an RPC, by service and method.",
            ["service", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.handled = Counter(
            "kyb_rpc_handled",
            "RPCs finished, by service, method and status code (OK included).",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "kyb_rpc_errors",
            "RPCs that ended with a status other than OK, by service, method and code.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "kyb_rpc_in_flight",
            "RPCs being served now, by service.",
            ["service"],
            registry=self.registry,
        )
        self.retries = Counter(
            "kyb_rpc_client_retries",
            "Downstream calls retried after UNAVAILABLE, by target and method.",
            ["target", "method"],
            registry=self.registry,
        )
        self.client_calls = Counter(
            "kyb_rpc_client_calls",
            "Downstream calls made (each attempt), by target (encoder, detector, shard-K) and method.",
            ["target", "method"],
            registry=self.registry,
        )
        self.client_bytes = Counter(
            "kyb_rpc_client_bytes",
            "Protobuf payload bytes of downstream calls, by target, method and direction (sent, received).",
            ["target", "method", "direction"],
            registry=self.registry,
        )
        self.degraded_answers = Counter(
            "kyb_degraded_answers",
            "Answers given without part of what they need, by reason (catalog_unavailable: metadata last seen).",
            ["reason"],
            registry=self.registry,
        )
        self.missing_shards = Counter(
            "kyb_gateway_missing_shard",
            "Identify answers marked partial because this matcher shard did not answer.",
            ["shard"],
            registry=self.registry,
        )
        self._http: WSGIServer | None = None
        self._lock = threading.Lock()

    @contextmanager
    def track(self, service: str, method: str) -> Iterator[dict[str, str]]:
        """Times one call; the caller stores the final status name in the yielded dict's ``code``."""
        outcome = {"code": "OK"}
        gauge = self.in_flight.labels(service)
        gauge.inc()
        timer = self.latency.labels(service, method).time()
        timer.__enter__()
        try:
            yield outcome
        finally:
            timer.__exit__(None, None, None)
            gauge.dec()
            self.handled.labels(service, method, outcome["code"]).inc()
            if outcome["code"] != "OK":
                self.errors.labels(service, method, outcome["code"]).inc()

    def count(self, name: str, **labels: str) -> float:
        """Current value of a counter sample (for tests and the CLI), 0 when never set."""
        value = self.registry.get_sample_value(name, labels)
        return float(value or 0.0)

    def text(self) -> bytes:
        """The exposition text (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def serve_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Starts the ``/metrics`` HTTP endpoint once per process; returns the port it listens on."""
        with self._lock:
            if self._http is None:
                try:
                    server, _thread = start_http_server(port, addr=host, registry=self.registry)
                except OSError as exc:
                    raise Unavailable(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
                self._http = server
                log.info("metrics on http://%s:%d/metrics", host, server.server_port)
            return int(self._http.server_port)

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
                self._http = None
