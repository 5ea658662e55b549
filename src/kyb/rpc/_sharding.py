"""Which matcher shard holds a reference, and splitting an embedded index into shard folders.

Placement uses jump consistent hashing (Lamping & Veach, 2014) of a SHA-256 of the reference id:
stable across processes and Python versions (unlike ``hash()``), uniform, and when the shard count
grows from N to N+1 only 1/(N+1) of the references move, all of them to the new shard.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from kyb.config import SearchConfig
from kyb.errors import InvalidRequest
from kyb.index import ReferenceIndex, base_reference_id

__all__ = ["base_reference_id", "shard_for", "shard_name", "split_index"]

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1


def shard_for(reference_id: str, count: int) -> int:
    """The shard (0..count-1) that stores ``reference_id``; all regions of a reference go together."""
    if count < 1:
        raise InvalidRequest(f"shard count must be >= 1, got {count}")
    digest = hashlib.sha256(base_reference_id(reference_id).encode("utf-8")).digest()
    key = int.from_bytes(digest[:8], "big")
    bucket, jump = -1, 0
    while jump < count:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & _MASK64
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_name(index: int) -> str:
    """The name a shard answers with and partial answers list (``shard-K``)."""
    return f"shard-{index}"


def split_index(source: Path, search: SearchConfig, count: int, folder_for: Callable[[int], Path]) -> list[int]:
    """Writes ``count`` shard index folders from the embedded index at ``source``; returns sizes.

    Every shard starts as :meth:`ReferenceIndex.empty_like` the source (its codebook, which encoder
    and matchers must agree on, and its residual bins) and takes the references :func:`shard_for`
    places there with their stored arrays copied, not re-encoded: a shard restores every descriptor
    exactly as the embedded index does, so the sharded answer is the embedded one.
    """
    if count < 1:
        raise InvalidRequest(f"shard count must be >= 1, got {count}")
    index = ReferenceIndex.load(source, search)
    placed = {key: shard_for(key, count) for key in index.reference_ids()}  # hashed once, not per shard
    sizes = []
    for k in range(count):
        shard = ReferenceIndex.empty_like(index, search, folder_for(k))
        shard.merge(index, keep={key for key, at in placed.items() if at == k}.__contains__)
        shard.save(folder_for(k))
        sizes.append(len(shard))
        log.info("shard %d/%d: %d references -> %s", k, count, len(shard), folder_for(k))
    return sizes
