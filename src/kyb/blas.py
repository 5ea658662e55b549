"""One BLAS thread while a photo is encoded or searched.

The matrices of one photo are small (a verification is 2,500 x 64 x 450, the encoder's projection
2,500 x 128 x 64): a second BLAS thread saves nothing, and OpenBLAS's idle worker then spins for
~100 ms after every such call (measured: 104 ms of CPU while the caller slept 200 ms after one
2,500 x 128 x 64 product), taking the core that the photo's word assignment and look-ahead
verification were to use. When other work shared the cores, that spinning made search 5-7x slower
(203 ms -> 30 ms per covers photo). Requests run in parallel with each other instead; codebook
training (large products) keeps every BLAS thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from threadpoolctl import ThreadpoolController

__all__ = ["one_blas_thread"]

_lock = threading.Lock()
_controller: ThreadpoolController | None = None
_inside = 0  # threads inside one_blas_thread now
_limiter: Any = None  # restores the original limits when the last of them leaves


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Limits BLAS (process-wide: the library has no per-thread setting) to one thread until every
    thread that entered has left; nesting and concurrent searches are safe, and the original limit
    comes back exactly once, when the last one leaves."""
    global _controller, _inside, _limiter
    with _lock:
        if _inside == 0:
            if _controller is None:
                _controller = ThreadpoolController()  # finds the loaded BLAS libraries (~ms, once)
            _limiter = _controller.limit(limits=1, user_api="blas")
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                _limiter.restore_original_limits()
                _limiter = None
