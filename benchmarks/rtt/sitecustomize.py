"""Injected network delay for ``bench_services.py --rtt-ms``: every gRPC channel a process opens waits
one round trip before each unary call, as a call on a real network would (loopback has almost none).

``bench_services.py`` puts this folder first on the PYTHONPATH of the stacks it starts, so Python
imports this module at start-up in each of their processes (``sitecustomize``), whatever code the
stack runs (this checkout's or the baseline's). The delay is read from the file ``KYB_BENCH_RTT_FILE``
names (milliseconds, as text) at most every 0.2 s, so one set of started services is measured at
several delays. Without that variable nothing is changed.
"""

from __future__ import annotations

import os
import time
from typing import Any

_PATH = os.environ.get("KYB_BENCH_RTT_FILE", "")
_REREAD_S = 0.2
_state = {"read_at": -1e9, "delay_s": 0.0}


def _delay_s() -> float:
    now = time.monotonic()
    if now - _state["read_at"] >= _REREAD_S:
        try:
            with open(_PATH) as handle:
                _state["delay_s"] = max(0.0, float(handle.read().strip() or 0.0)) / 1000.0
        except (OSError, ValueError):
            _state["delay_s"] = 0.0
        _state["read_at"] = now
    return _state["delay_s"]


def _install() -> None:
    import grpc

    class _RoundTrip(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            delay = _delay_s()
            if delay > 0:
                time.sleep(delay)
            return continuation(details, request)

    insecure, secure = grpc.insecure_channel, grpc.secure_channel

    def insecure_channel(*args: Any, **kwargs: Any) -> grpc.Channel:
        return grpc.intercept_channel(insecure(*args, **kwargs), _RoundTrip())

    def secure_channel(*args: Any, **kwargs: Any) -> grpc.Channel:
        return grpc.intercept_channel(secure(*args, **kwargs), _RoundTrip())

    grpc.insecure_channel = insecure_channel
    grpc.secure_channel = secure_channel


if _PATH:
    _install()
