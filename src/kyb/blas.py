"""One BLAS thread while a photo is encoded or searched.

The matrices of one photo are small (a verification is 2,500 x 64 x 450, the encoder's projection
2,500 x 128 x 64): a second BLAS thread saves nothing, and OpenBLAS's idle worker then spins for
~100 ms after every such call (measured: 104 ms of CPU while the caller slept 200 ms after one
2,500 x 128 x 64 product), taking the core that the photo's word assignment and look-ahead
verification were to use. When other work shared the cores, that spinning made search 5-7x slower
(203 ms -> 30 ms per covers photo). Requests run in parallel with each other instead; codebook
training (large products) keeps every BLAS thread.

Every change of the limit runs on one dedicated thread. OpenBLAS (0.3.31, numpy's build) ignores a
raise of its thread count made while the thread that lowered it is alive, unless that same thread
makes it: a search that lowered the limit on one worker and left last on another restored "1" for
good, about one run in three. Lowering and raising from the same thread always takes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from threadpoolctl import ThreadpoolController

__all__ = ["one_blas_thread"]

_lock = threading.Lock()
_controller: ThreadpoolController | None = None
_inside = 0  # threads inside one_blas_thread now
_limiter: Any = None  # restores the original limits when the last of them leaves
_setter: ThreadPoolExecutor | None = None  # the one thread that changes the limit

_T = TypeVar("_T")


def _on_setter_thread(call: Callable[[], _T]) -> _T:
    """Runs `call` on the dedicated thread and waits for it (called with _lock held)."""
    global _setter
    if _setter is None:
        _setter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kyb-blas")
    return _setter.submit(call).result()


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
            controller = _controller
            _limiter = _on_setter_thread(lambda: controller.limit(limits=1, user_api="blas"))
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                _on_setter_thread(_limiter.restore_original_limits)
                _limiter = None
