"""Dynamic batching: callers submit one item each; a worker runs them together, up to ``max_batch`` items
or ``max_wait_ms`` after the first one arrived, whichever comes first.

A GPU runs a batch of 8 photos in about the time of 2, so concurrent requests share one forward
pass; a lone request waits at most ``max_wait_ms``. Each caller gets its own result (or the batch's
exception) through a future.
"""

from __future__ import annotations

import queue
import threading
import time
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from kyb.errors import Unavailable

__all__ = ["DynamicBatcher"]

T = TypeVar("T")
R = TypeVar("R")

_CLOSE = object()


class DynamicBatcher(Generic[T, R]):
    """Runs ``fn(items) -> results`` (one result per item, same order) on batches of submitted items.

    ``max_batch`` >= 1 items per call; ``max_wait_ms`` >= 0 how long the first item of a batch waits for
    company. One worker thread, started here and stopped by :meth:`close`.
    """

    def __init__(self, fn: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int, max_wait_ms: float,
                 name: str = "kyb-batcher") -> None:  # fmt: skip
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, not {max_wait_ms}")
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        #: (item, its future) pairs, then _CLOSE.
        self._queue: queue.Queue[tuple[T, Future[R]] | object] = queue.Queue()
        self._closed = False
        #: Sizes of the batches run so far (for metrics and tests), most recent last, capped.
        self.batch_sizes: list[int] = []
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def submit(self, item: T) -> Future[R]:
        """Queue ``item``; the future resolves to its result. Raises Unavailable once closed."""
        if self._closed:
            raise Unavailable("the batcher is closed")
        fut: Future[R] = Future()
        self._queue.put((item, fut))
        return fut

    def __call__(self, item: T, timeout: float | None = None) -> R:
        """Submit and wait (``timeout`` seconds; ``concurrent.futures.TimeoutError`` after it)."""
        return self.submit(item).result(timeout)

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        if not self._closed:
            self._closed = True
            self._queue.put(_CLOSE)
            self._worker.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _CLOSE:
                return
            batch: list[tuple[T, Future[R]]] = [typing.cast(tuple[T, Future[R]], first)]
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _CLOSE:
                    stop = True
                    break
                batch.append(typing.cast(tuple[T, Future[R]], nxt))
            self._execute(batch)
            if stop:
                return

    def _execute(self, batch: list[tuple[T, Future[R]]]) -> None:
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        self.batch_sizes = [*self.batch_sizes[-999:], len(live)]
        try:
            results = self._fn([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except BaseException as exc:  # every caller of this batch learns why
            for _, fut in live:
                fut.set_exception(exc)
            return
        for (_, fut), res in zip(live, results, strict=True):
            fut.set_result(res)
