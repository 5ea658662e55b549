"""``kyb reshard``: moves references between running matcher shards after the shard count changed,
or loads an index built offline (``kyb ingest`` in a Job) into them.

Placement is a jump consistent hash of the reference id (:func:`~kyb.rpc.shard_for`), so going from
N to M shards moves only the references whose shard changed (from N to N+1: about 1/(N+1) of them,
all to the new shard). Each source shard streams exactly those (``Matcher.Export`` with
``target_count=M``); they are added to their new shard first (durable, idempotent by sha256) and
deleted from the old one only after that, in one save per batch. A run killed half-way leaves some
references on both shards, never on none; running it again finishes the move (``Add`` answers
"unchanged", then the delete happens). Searches keep finding every reference during the move, because
the gateway asks every shard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from kyb.config import RpcConfig
from kyb.errors import InvalidRequest, NotReady
from kyb.index import ReferenceIndex
from kyb.rpc._auth import bearer_metadata
from kyb.rpc._channels import Deadline, RetryPolicy, call_unary, open_channel
from kyb.rpc._convert import encoding_to_proto
from kyb.rpc._errors import error_from_rpc
from kyb.rpc._sharding import shard_for
from kyb.v1 import matcher_pb2, matcher_pb2_grpc

__all__ = ["ReshardReport", "expand_addresses", "reshard"]

log = logging.getLogger(__name__)

#: Source number of a local index folder (``--from-index``) in a report.
_FROM_INDEX = -1


@dataclass
class ReshardReport:
    """What a reshard did: keys moved per (source, target) shard pair and references per shard after."""

    old_count: int
    new_count: int
    moved: dict[tuple[int, int], int] = field(default_factory=dict)
    sizes_after: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    dry_run: bool = False

    @property
    def total_moved(self) -> int:
        return sum(self.moved.values())

    def table(self) -> str:
        lines = [" from  to  keys moved"]
        lines += [f"{a if a >= 0 else 'index':>5} {b:>3}  {n:>10}" for (a, b), n in sorted(self.moved.items())]
        verb = "would move" if self.dry_run else "moved"
        lines.append(f"{verb} {self.total_moved} keys from {self.old_count} to {self.new_count} shards "
                     f"in {self.elapsed_s:.1f} s; keys per shard now: {self.sizes_after}")  # fmt: skip
        return "\n".join(lines)


def expand_addresses(text: str, count: int) -> list[str]:
    """``matcher-{k}.matcher:50053`` (a template) or a comma-separated list -> ``count`` addresses."""
    if "{k}" in text:
        return [text.replace("{k}", str(k)) for k in range(count)]
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if len(addresses) != count:
        raise InvalidRequest(f"--matchers lists {len(addresses)} addresses, {count} needed (or use a {{k}} template)")
    return addresses


def reshard(
    addresses: Sequence[str],
    old_count: int,
    new_count: int,
    rpc: RpcConfig,
    *,
    source_index: ReferenceIndex | None = None,
    batch: int = 64,
    dry_run: bool = False,
    timeout_s: float = 600.0,
    progress: Callable[[int], None] = lambda keys: None,
) -> ReshardReport:
    """Moves every reference of shards ``0..old_count-1`` whose placement among ``new_count`` shards
    differs. ``addresses`` lists ``max(old_count, new_count)`` shards in shard order; the shards that
    stay (``0..new_count-1``) must already run as ``K/new_count``, so new ingests land right too.

    With ``source_index`` (an index built by ``kyb ingest``, e.g. by the build Job) and
    ``old_count=0``, every reference of that index is copied to its shard instead (nothing deleted).
    ``progress(n)`` is called after each batch with the number of keys in it. ``timeout_s`` bounds
    each call (an export streams for as long as the shard takes to read out).
    """
    if new_count < 1 or old_count < (0 if source_index is not None else 1):
        raise InvalidRequest("shard counts must be >= 1 (--from 0 only with a source index)")
    if source_index is not None and old_count:
        raise InvalidRequest("copy from a source index or move between shards, not both")
    if len(addresses) != max(old_count, new_count):
        raise InvalidRequest(f"{len(addresses)} matcher addresses given, {max(old_count, new_count)} needed")
    if batch < 1:
        raise InvalidRequest("batch must be >= 1")
    started = time.perf_counter()
    metadata = bearer_metadata(rpc.outgoing_token)
    policy = RetryPolicy.from_config(rpc)
    channels = [open_channel(address, rpc) for address in addresses]
    stubs = [matcher_pb2_grpc.MatcherStub(channel) for channel in channels]

    def call(k: int, method: str, request: object) -> Any:
        return call_unary(getattr(stubs[k], method), request, deadline=Deadline(timeout_s), metadata=metadata,
                          policy=policy, target=addresses[k], name=method)  # fmt: skip

    def sources() -> Iterator[tuple[int, Iterator[matcher_pb2.AddItem]]]:
        if source_index is not None:
            yield _FROM_INDEX, _index_items(source_index)
        for source in range(old_count):
            request = matcher_pb2.ExportRequest(target_count=new_count)
            yield source, stubs[source].Export(request, timeout=timeout_s, metadata=metadata)

    report = ReshardReport(old_count, new_count, dry_run=dry_run)
    try:
        versions = _check_topology(call, new_count, addresses)
        if source_index is not None and versions != {source_index.codebook.version}:
            raise NotReady(f"the index was built with codebook {source_index.codebook.version}, the shards "
                           f"use {', '.join(sorted(versions))}: point matcher.codebook_dir at this index")  # fmt: skip
        for source, items in sources():
            pending: dict[int, list[matcher_pb2.AddItem]] = {}
            try:
                for item in items:
                    target = shard_for(item.reference_id, new_count)
                    pending.setdefault(target, []).append(item)
                    if len(pending[target]) >= batch:
                        _move(call, source, target, new_count, pending.pop(target), report, dry_run, progress)
            except grpc.RpcError as exc:
                raise error_from_rpc(exc, target=addresses[source]) from None
            for target, batch_items in pending.items():
                _move(call, source, target, new_count, batch_items, report, dry_run, progress)
        report.sizes_after = [
            int(call(k, "Stats", matcher_pb2.StatsRequest()).references) for k in range(len(addresses))
        ]
    finally:
        for channel in channels:
            channel.close()
    report.elapsed_s = time.perf_counter() - started
    return report


def _index_items(index: ReferenceIndex) -> Iterator[matcher_pb2.AddItem]:
    for key in index.reference_ids():
        yield matcher_pb2.AddItem(
            reference_id=key, sha256=index.sha256_of(key) or "", encoding=encoding_to_proto(index.encoding(key))
        )


def _check_topology(call: Callable[..., Any], new_count: int, addresses: Sequence[str]) -> set[str]:
    """Every shard answers as the one its position says and all share one codebook (returned)."""
    versions = set()
    for k, address in enumerate(addresses):
        stats = call(k, "Stats", matcher_pb2.StatsRequest())
        index, count = int(stats.shard_index), int(stats.shard_count)
        if index != k:
            raise NotReady(f"{address} is shard {index}, expected {k}: list the matchers in shard order")
        if k < new_count and count != new_count:
            raise NotReady(
                f"{address} still runs as shard {index}/{count}: restart the matchers with "
                f"matcher.shard=auto/{new_count} (and the gateway with gateway.shards={new_count}) first"
            )
        versions.add(str(stats.codebook_version))
    if len(versions) > 1:
        raise NotReady(f"the shards use different codebooks ({', '.join(sorted(versions))}): finish that rollout first")
    return versions


def _move(
    call: Callable[..., Any],
    source: int,
    target: int,
    new_count: int,
    items: list[matcher_pb2.AddItem],
    report: ReshardReport,
    dry_run: bool,
    progress: Callable[[int], None],
) -> None:
    """Adds ``items`` to ``target`` (durable), then deletes their references from ``source``."""
    if not dry_run:
        call(target, "Add", matcher_pb2.AddRequest(items=items, expected_shard=f"{target}/{new_count}"))
        # Exact keys, not base ids: the other regions of a reference may still be in a later batch.
        keys = [item.reference_id for item in items]
        if source != _FROM_INDEX:
            call(source, "Delete", matcher_pb2.DeleteRequest(reference_id=keys[0], reference_ids=keys[1:]))
    report.moved[(source, target)] = report.moved.get((source, target), 0) + len(items)
    progress(len(items))
