"""The one place servers are assembled: interceptors, health, reflection, TLS, metrics, shutdown.

Every service's ``create_server(config)`` builds a :class:`ServiceServer`, registers its servicer
and binds a port; ``__main__`` calls :func:`serve`. What each call goes through, outermost first:

1. metrics: latency histogram, status counts and in-flight gauge per service and method;
2. auth: a bearer token from ``rpc.tokens`` (health and reflection stay open for probes);
3. errors: a :class:`~kyb.errors.KybError` (or catalog error) raised by a servicer ends the call with
   the status from :data:`kyb.errors.GRPC_STATUS` and a one-line message; anything unexpected is
   logged with its traceback and ends as INTERNAL without leaking internals to the caller.

Health (grpc.health.v1) says NOT_SERVING for a service until its servicer reports ready (a matcher
once its index is loaded), and for everything once SIGTERM starts the graceful stop.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kyb.config import RpcConfig, ServiceConfig
from kyb.errors import Unavailable, error_id
from kyb.heap import retain_freed_heap
from kyb.rpc._auth import TokenCheck
from kyb.rpc._channels import channel_options
from kyb.rpc._errors import caller_message, status_for
from kyb.rpc._metrics import Metrics

__all__ = ["Server", "ServiceServer", "serve"]

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _CallInterceptor(grpc.ServerInterceptor):
    """Metrics, auth and error mapping around every handler (see the module docstring)."""

    def __init__(self, metrics: Metrics, tokens: TokenCheck, *, public: bool = False, role: str = "") -> None:
        self._metrics = metrics
        self._tokens = tokens
        self._public = public
        self._role = role

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        service, _, name = method.lstrip("/").partition("/")
        refusal = ""
        if not self._tokens.is_open(method):
            refusal = self._tokens.problem(details.invocation_metadata)
        return self._wrap(handler, service.rsplit(".", 1)[-1], name, refusal)

    def _finish(self, error: Exception, context: grpc.ServicerContext, outcome: dict[str, str]) -> None:
        """Ends the call for ``error``: keeps an abort already made, maps the rest, re-raises."""
        code = context.code()  # type: ignore[attr-defined]  # types-grpcio lacks ServicerContext.code()
        if type(error) is Exception and code not in (None, grpc.StatusCode.OK):
            outcome["code"] = code.name  # context.abort() was called: its status stands
            raise error
        status, message = status_for(error)
        if status == grpc.StatusCode.INTERNAL:
            log.exception("unexpected error in %s", outcome["method"], exc_info=error)
        if self._public and caller_message(message) != message:
            # Callers outside the cluster get the failing stage and the remedy; the addresses, DSNs and
            # paths go to this log under an id the answer carries, for the operator.
            logged = error_id()
            log.warning("%s failed (error id %s): %s", outcome["method"], logged, message)
            message = f"{caller_message(message)} (error id {logged}: details in the {self._role} log)"
        outcome["code"] = status.name
        context.abort(status, message)

    def _wrap(self, handler: grpc.RpcMethodHandler, service: str, name: str, refusal: str) -> Any:
        metrics = self._metrics

        def settle(context: grpc.ServicerContext, outcome: dict[str, str]) -> None:
            code = context.code()  # type: ignore[attr-defined]  # types-grpcio lacks ServicerContext.code()
            if outcome["code"] == "OK" and code not in (None, grpc.StatusCode.OK):
                outcome["code"] = code.name

        def unary_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                with metrics.track(service, name) as outcome:
                    outcome["method"] = f"{service}.{name}"
                    try:
                        if refusal:
                            context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
                        return behavior(request, context)
                    except Exception as error:
                        self._finish(error, context, outcome)
                    finally:
                        settle(context, outcome)

            return run

        def stream_response(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with metrics.track(service, name) as outcome:
                    outcome["method"] = f"{service}.{name}"
                    try:
                        if refusal:
                            context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
                        yield from behavior(request, context)
                    except Exception as error:
                        self._finish(error, context, outcome)
                    finally:
                        settle(context, outcome)

            return run

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(stream_response(handler.unary_stream), **kwargs)
        assert handler.stream_stream is not None  # the one kind left
        return grpc.stream_stream_rpc_method_handler(stream_response(handler.stream_stream), **kwargs)


def _age_options(rpc: RpcConfig) -> list[tuple[str, int]]:
    if rpc.max_connection_age_s <= 0:
        return []
    age_ms = int(rpc.max_connection_age_s * 1000)
    # Calls in flight when the age is reached get the grace period to finish.
    return [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", int(rpc.grace_s * 1000))]


class ServiceServer:
    """A grpc.Server plus what every Know Your Bands server needs around it.

    Build it, ``add_service`` each servicer, ``bind`` a port, then ``start`` (or :func:`serve`).
    ``on_start``/``on_stop`` hooks let a servicer begin loading after the port is open (so health
    can answer NOT_SERVING meanwhile) and release its resources on shutdown.
    """

    def __init__(
        self, config: ServiceConfig, role: str, *, metrics: Metrics | None = None, public: bool = False
    ) -> None:
        """``public``: callers outside the cluster call it (the gateway), so the messages of its errors
        name no address, DSN or path (those are logged with an error id the message carries)."""
        self.config = config
        self.role = role
        retain_freed_heap(config.engine.heap_retain_mb)  # process-wide (kyb.heap)
        self.metrics = metrics if metrics is not None else Metrics()
        self._owns_metrics = metrics is None
        self._tokens = TokenCheck(config.rpc.tokens)
        self._pool = ThreadPoolExecutor(max_workers=config.rpc.workers, thread_name_prefix=f"kyb-{role}")
        self.server = grpc.server(
            self._pool,
            interceptors=[_CallInterceptor(self.metrics, self._tokens, public=public, role=role)],
            options=[
                *channel_options(config.rpc),
                ("grpc.so_reuseport", 0),
                # Our channels ping every keepalive_time_s, idle or not; gRPC servers refuse pings
                # without data more often than every 5 minutes by default and answer GOAWAY
                # "too_many_pings", which drops every idle channel (a quiet shard) once in a while.
                ("grpc.http2.min_ping_interval_without_data_ms", int(config.rpc.keepalive_time_s * 500)),
                *_age_options(config.rpc),
            ],
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._ready: dict[str, bool] = {}
        #: Registered servicers by full service name (``kyb.v1.Matcher``), for hooks and tests.
        self.servicers: dict[str, Any] = {}
        self._on_start: list[Callable[[], None]] = []
        self._on_stop: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._state = "new"
        self._release: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ assembly
    def add_service(
        self, full_name: str, register: Callable[[Any, grpc.Server], None], servicer: Any, *, ready: bool
    ) -> None:
        """Registers ``servicer`` under ``full_name`` (e.g. ``kyb.v1.Matcher``); health follows ``ready``."""
        register(servicer, self.server)
        self.servicers[full_name] = servicer
        self._ready[full_name] = ready

    def on_start(self, hook: Callable[[], None]) -> None:
        self._on_start.append(hook)

    def on_stop(self, hook: Callable[[], None]) -> None:
        self._on_stop.append(hook)

    def bind(self, port: int) -> int:
        """Listens on ``rpc.host:port`` (TLS when a certificate is configured); returns the real port."""
        rpc = self.config.rpc
        address = f"{rpc.host}:{port}"
        try:
            if rpc.tls_cert is not None and rpc.tls_key is not None:
                credentials = grpc.ssl_server_credentials([(rpc.tls_key.read_bytes(), rpc.tls_cert.read_bytes())])
                bound = self.server.add_secure_port(address, credentials)
            else:
                bound = self.server.add_insecure_port(address)
        except (RuntimeError, OSError) as exc:
            raise Unavailable(f"{self.role}: cannot listen on {address}: {exc}") from None
        if not bound:
            raise Unavailable(f"{self.role}: cannot listen on {address} (in use?)")
        self.port = int(bound)
        return self.port

    # ------------------------------------------------------------------ health
    def set_serving(self, full_name: str, serving: bool) -> None:
        """Marks one service (and, through it, the whole server) SERVING or NOT_SERVING."""
        with self._lock:
            self._ready[full_name] = serving
            if self._state != "started":
                return
            self._publish()

    def _publish(self) -> None:
        for name, ready in self._ready.items():
            self.health.set(name, _SERVING if ready else _NOT_SERVING)
        self.health.set("", _SERVING if all(self._ready.values()) else _NOT_SERVING)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Starts serving, then runs the on_start hooks (which may flip health to SERVING later)."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"{self.role} server already {self._state}")
            names = [*self._ready, health.SERVICE_NAME, reflection.SERVICE_NAME]
            reflection.enable_server_reflection(names, self.server)
            self.server.start()
            self._state = "started"
            self._publish()
        rpc = self.config.rpc
        if rpc.metrics_port >= 0:
            self.metrics.serve_http(rpc.metrics_port)
        if not self._tokens.enabled:
            log.warning(
                "%s on port %d accepts calls WITHOUT authentication: set KYB_RPC__TOKENS to require a bearer token",
                self.role,
                self.port,
            )
        log.info("%s serving on %s:%d (%s)", self.role, rpc.host, self.port, ", ".join(self._ready))
        for hook in self._on_start:
            hook()

    def stop(self, grace: float | None = None) -> threading.Event:
        """Graceful stop: health NOT_SERVING, refuse new calls, give in-flight ones ``grace`` seconds
        (``rpc.grace_s`` by default), then release the servicers. Returns an event set when done."""
        with self._lock:
            if self._state == "new":
                self._state = "stopped"
                done = threading.Event()
                done.set()
                return done
            first = self._state == "started"
            self._state = "stopped"
        if first:
            self.health.enter_graceful_shutdown()
        grace = self.config.rpc.grace_s if grace is None else grace
        done = self.server.stop(grace)
        if first:

            def release() -> None:
                done.wait()
                for hook in self._on_stop:
                    try:
                        hook()
                    except Exception:
                        log.exception("%s: error while stopping", self.role)
                self._pool.shutdown(wait=False, cancel_futures=True)
                if self._owns_metrics:
                    self.metrics.close()

            self._release = threading.Thread(target=release, name=f"kyb-{self.role}-stop", daemon=True)
            self._release.start()
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Blocks until the server has stopped and its on_stop hooks ran; False on timeout."""
        stopped = not self.server.wait_for_termination(timeout)
        if stopped and self._release is not None:
            self._release.join(timeout)
        return stopped


class Server(Protocol):
    """What :func:`serve` runs: a gRPC :class:`ServiceServer` or the web front's HTTP server."""

    def start(self) -> None: ...

    def stop(self, grace: float | None = None) -> threading.Event: ...

    def wait_for_termination(self, timeout: float | None = None) -> bool: ...


def serve(servers: Sequence[Server]) -> None:
    """Starts ``servers`` and blocks until they stop; SIGTERM/SIGINT stop them all gracefully.

    Signal handlers are installed only from the main thread (Python's rule); elsewhere the caller
    stops the servers itself.
    """
    for server in servers:
        server.start()
    stopping = threading.Event()

    def stop_all(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("%s: stopping gracefully", signal.Signals(signum).name)
        for server in servers:
            server.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop_all)
        signal.signal(signal.SIGINT, stop_all)
    for server in servers:
        server.wait_for_termination()
