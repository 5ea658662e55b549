"""The photos a matcher shard is searching: each search's prepared query, kept between its calls.

A search across shards asks every shard for a shortlist, then for verifications, then (once an object
is found) for a shortlist of what is left of the photo: several calls about one photo. The gateway
sends the photo's encoding with the first call under a random query id; the shard keeps the decoded
encoding and what it prepared from it (:class:`kyb.search.IndexSource`: dequantized descriptors,
verification's query features, the word vote) under that id, so the later calls carry the id alone.

Memory is bounded: at most ``max_bytes`` of queries (estimated from their arrays), the least recently
used dropped first, and a query not used for ``keep_s`` seconds is dropped (a search whose gateway
went away, or ran out of deadline, leaves nothing behind for longer than that). A call naming a query
that is not held any more is answered FAILED_PRECONDITION and the gateway sends the encoding again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kyb.encoder import Encoding
from kyb.index import ReferenceIndex
from kyb.search import IndexSource

__all__ = ["HeldQuery", "QueryCache", "query_bytes"]


@dataclass
class HeldQuery:
    """One search's query on this shard; ``lock`` serialises the calls that use it."""

    source: IndexSource
    nbytes: int
    used_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def index(self) -> ReferenceIndex:
        return self.source.index


def query_bytes(encoding: Encoding) -> int:
    """Memory a held query takes, estimated: its arrays, plus the two float32 copies of its
    descriptors that searching prepares (dequantized, and verification's query features)."""
    arrays = [encoding.xy, encoding.descriptors, encoding.words, encoding.global_vector]
    arrays += [a for a in (encoding.near_words, encoding.inverted) if a is not None]
    own = sum(int(np.asarray(a).nbytes) for a in arrays)
    return own + 2 * 4 * int(np.asarray(encoding.descriptors).size)


class QueryCache:
    """Held queries by id: least recently used first out past ``max_bytes``, expired after ``keep_s`` idle."""

    def __init__(self, max_bytes: int, keep_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.keep_s = keep_s
        self._clock = clock
        self._items: OrderedDict[str, HeldQuery] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._items)

    @property
    def nbytes(self) -> int:
        """Estimated bytes of the queries held now."""
        with self._lock:
            self._expire(self._clock())
            return self._bytes

    def _expire(self, now: float) -> None:
        while self._items:
            oldest = next(iter(self._items.values()))
            if now - oldest.used_at < self.keep_s:
                break
            self._drop(next(iter(self._items)))

    def _drop(self, query_id: str) -> None:
        self._bytes -= self._items.pop(query_id).nbytes

    def put(self, query_id: str, held: HeldQuery) -> None:
        """Keeps ``held`` under ``query_id`` (replacing what was there); a query larger than the whole
        budget is not kept (its search then sends the encoding with every call)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if query_id in self._items:
                self._drop(query_id)
            if held.nbytes > self.max_bytes:
                return
            while self._items and self._bytes + held.nbytes > self.max_bytes:
                self._drop(next(iter(self._items)))
            held.used_at = now
            self._items[query_id] = held
            self._bytes += held.nbytes

    def get(self, query_id: str) -> HeldQuery | None:
        """The query held under ``query_id`` (now the most recently used), or None."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            held = self._items.get(query_id)
            if held is not None:
                held.used_at = now
                self._items.move_to_end(query_id)
            return held
