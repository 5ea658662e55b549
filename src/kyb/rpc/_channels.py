"""Outgoing calls: channels with the shared options, deadlines, and retries with backoff + jitter.

Every downstream call gets the caller's *remaining* deadline (never a fresh one), so a gateway never
keeps working for a client that has given up. Only idempotent calls are retried, only on
UNAVAILABLE (the one status that says "not processed, try again"), with exponential backoff and full
jitter so a restarting shard is not hit by every gateway at the same instant. gRPC's own retries
are turned off on those channels so attempts are never multiplied.

Clients outside the services (:class:`kyb.client.GatewayClient`) use gRPC's own retries instead,
declared in the channel's service config (:class:`ClientRetry`): the policy then lives in one JSON
document the gRPC core enforces, with retry throttling across all calls of the channel.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kyb.config import RpcConfig
from kyb.errors import DeadlineExceeded, Unavailable
from kyb.rpc._errors import error_from_rpc
from kyb.rpc._metrics import Metrics

__all__ = [
    "ClientRetry",
    "Deadline",
    "RetryPolicy",
    "call_unary",
    "channel_options",
    "open_channel",
    "wait_until_serving",
]

#: time_remaining() of a call without a deadline is huge (or None); treat it as "none given".
_NO_DEADLINE_S = 1e7


class Deadline:
    """A point in time (monotonic clock) by which an operation must be finished."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + max(0.0, seconds)

    @classmethod
    def from_context(cls, context: grpc.ServicerContext | None, default_s: float) -> Deadline:
        """The caller's deadline, or ``default_s`` from now when the call carries none."""
        remaining = context.time_remaining() if context is not None else None
        if remaining is None or remaining > _NO_DEADLINE_S:
            remaining = default_s
        return cls(remaining)

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def check(self, what: str) -> float:
        """The seconds left; raises :class:`DeadlineExceeded` naming ``what`` when none are."""
        left = self.remaining()
        if left <= 0.0:
            raise DeadlineExceeded(f"deadline exceeded before {what}")
        return left


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the pause before try i+1 is uniform in [0, min(cap, base * 2^i)]."""

    attempts: int = 3
    base_s: float = 0.05
    cap_s: float = 1.0

    @classmethod
    def from_config(cls, rpc: RpcConfig) -> RetryPolicy:
        return cls(attempts=rpc.retries + 1, base_s=rpc.retry_backoff_s, cap_s=rpc.retry_max_backoff_s)

    def pause(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.cap_s, self.base_s * (2**attempt)))


@dataclass(frozen=True)
class ClientRetry:
    """gRPC's retries for a client's idempotent methods, as a service config (gRFC A6).

    An attempt that fails with UNAVAILABLE (not processed: no connection, or the server going away) or
    CANCELLED (a server that stops cancels the calls still running when its grace period ends; the
    caller's own cancelling is never retried) is tried again after a pause drawn uniformly from
    [0, min(``max_backoff_s``, ``initial_backoff_s`` * ``multiplier`` ^ (n-1))], at most ``attempts``
    tries in all (gRPC caps it at 5), and never past the call's deadline. ``wait_for_ready`` makes an
    attempt made while the channel has no connection wait for one (up to the deadline) instead of
    failing at once: a gateway that restarts in less than the deadline costs its callers a wait, not
    an error. Retry throttling (``throttle_tokens``, ``throttle_ratio``) stops retrying when most
    calls of the channel fail, so a gateway that is really down is not hammered by its clients.
    """

    attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    wait_for_ready: bool = True
    throttle_tokens: int = 10
    throttle_ratio: float = 0.1
    #: Only for methods that change nothing: a cancelled attempt may have been partly carried out.
    retryable: tuple[str, ...] = ("UNAVAILABLE", "CANCELLED")

    def __post_init__(self) -> None:
        if not 2 <= self.attempts <= 5:
            raise ValueError(f"attempts must be in 2..5 (gRPC's limit), got {self.attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("initial_backoff_s must be in (0, max_backoff_s]")
        if self.multiplier <= 0 or self.throttle_tokens <= 0 or self.throttle_ratio <= 0:
            raise ValueError("multiplier, throttle_tokens and throttle_ratio must be > 0")

    def service_config(self, service: str, methods: Sequence[str]) -> str:
        """The service config JSON that retries ``methods`` of ``service`` (full name, e.g. kyb.v1.Gateway)."""
        config = {
            "methodConfig": [
                {
                    "name": [{"service": service, "method": method} for method in methods],
                    "waitForReady": self.wait_for_ready,
                    "retryPolicy": {
                        "maxAttempts": self.attempts,
                        "initialBackoff": f"{self.initial_backoff_s:.3f}s",
                        "maxBackoff": f"{self.max_backoff_s:.3f}s",
                        "backoffMultiplier": self.multiplier,
                        "retryableStatusCodes": list(self.retryable),
                    },
                }
            ],
            "retryThrottling": {"maxTokens": self.throttle_tokens, "tokenRatio": self.throttle_ratio},
        }
        return json.dumps(config)


def channel_options(rpc: RpcConfig) -> list[tuple[str, Any]]:
    """Options shared by every channel and server: message limits and keepalive."""
    return [
        ("grpc.max_send_message_length", rpc.max_message_bytes),
        ("grpc.max_receive_message_length", rpc.max_message_bytes),
        ("grpc.keepalive_time_ms", int(rpc.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(rpc.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def open_channel(address: str, rpc: RpcConfig, *, service_config: str | None = None) -> grpc.Channel:
    """A channel to ``address``: TLS when ``rpc.tls_ca`` is set, round-robin over the name's addresses
    (the replicas of a shard behind one DNS name), quick reconnects after a peer restarts.

    gRPC's retries are on only with a ``service_config`` (:meth:`ClientRetry.service_config`) that
    declares them; callers that retry with :func:`call_unary` pass none."""
    options = [
        *channel_options(rpc),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 0 if service_config is None else 1),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    if service_config is not None:
        # The service config given here wins over any a name resolver would supply.
        options += [("grpc.service_config", service_config), ("grpc.service_config_disable_resolution", 1)]
    if rpc.tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=rpc.tls_ca.read_bytes())
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


def call_unary(
    method: Callable[..., Any],
    request: Any,
    *,
    deadline: Deadline,
    metadata: Sequence[tuple[str, str]] = (),
    policy: RetryPolicy | None = None,
    target: str = "",
    name: str = "",
    metrics: Metrics | None = None,
) -> Any:
    """Calls a unary stub method within ``deadline``; retries UNAVAILABLE per ``policy`` (None = no
    retries: pass one only for idempotent methods). Failures come back as :class:`KybError` s."""
    attempt = 0
    attempts = policy.attempts if policy is not None else 1
    while True:
        remaining = deadline.check(f"{target} {name}".strip())
        try:
            response = method(request, timeout=remaining, metadata=tuple(metadata))
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNAVAILABLE and policy is not None and attempt + 1 < attempts:
                pause = policy.pause(attempt)
                if pause < deadline.remaining():
                    if metrics is not None:
                        metrics.retries.labels(target, name).inc()
                    time.sleep(pause)
                    attempt += 1
                    continue
            raise error_from_rpc(exc, target=target) from None
        finally:
            if metrics is not None:
                metrics.client_calls.labels(target, name).inc()
                metrics.client_bytes.labels(target, name, "sent").inc(request.ByteSize())
        if metrics is not None:
            metrics.client_bytes.labels(target, name, "received").inc(response.ByteSize())
        return response


def wait_until_serving(
    address: str, rpc: RpcConfig, *, service: str = "", timeout_s: float = 30.0, interval_s: float = 0.1
) -> None:
    """Polls grpc.health.v1 on ``address`` until ``service`` is SERVING; Unavailable on timeout."""
    deadline = Deadline(timeout_s)
    status = "no answer"
    with open_channel(address, rpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not deadline.expired():
            try:
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(service=service),
                    timeout=max(0.05, min(1.0, deadline.remaining())),
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                status = exc.code().name if hasattr(exc, "code") else "error"
            time.sleep(min(interval_s, deadline.remaining()))
    raise Unavailable(f"{address} {service or 'server'} not SERVING after {timeout_s:g} s (last: {status})")
