"""The Matcher servicer: one shard of the reference index behind kyb.v1.Matcher.

One process serves shard K of N: the :class:`~kyb.index.ReferenceIndex` in its own folder. The index
loads in a background thread after the port opens, so health answers NOT_SERVING (and Search
UNAVAILABLE) until it is in memory; a folder with no index yet is retried every ``matcher.reload_s``
until one appears, unless ``matcher.codebook_dir`` names an index whose codebook seeds an empty shard
(a shard just added to a StatefulSet, which ``kyb reshard`` then fills through Add). Search runs
:func:`kyb.search.search`, the same code as the embedded engine, so a one-shard deployment answers
exactly what ``kyb identify`` answers. Export streams stored references out for ``kyb reshard``.

Across several shards the gateway runs that same search loop itself (:func:`kyb.search.run_search`)
and asks the shards for its two steps: Shortlist (this shard's scored shortlist sources, merged by
the gateway into the global shortlist) and Verify (the keys of that shortlist this shard holds), both
answered by :class:`kyb.search.IndexSource`, the code behind Search. So no shard verifies more than
its part of what one index would verify, plus the few first candidates of its own a Shortlist may be
asked to verify ahead (``verify_first``: the ones the global shortlist most likely starts with, so the
common photo needs no Verify call). The first call of a search sends the photo's encoding with a query
id; the shard keeps the prepared query (:mod:`kyb_services.matcher.queries`) and the later calls of
that search send the id alone.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from kyb.blas import one_blas_thread
from kyb.encoder import Encoding
from kyb.errors import InvalidRequest, KybError, NotReady, Unavailable
from kyb.index import ReferenceIndex, fuse_ranked, has_index, writer_lock
from kyb.rpc import (
    ServiceConfig,
    base_reference_id,
    encoding_from_proto,
    encoding_to_proto,
    found_to_proto,
    parse_shard,
    ranked_to_proto,
    rows_from_proto,
    shard_for,
    shard_name,
    verification_to_proto,
)
from kyb.search import NOT_INDEXED, IndexSource, search
from kyb.v1 import matcher_pb2, matcher_pb2_grpc
from kyb.verify import Verification
from kyb_services.matcher.queries import HeldQuery, QueryCache, query_bytes

__all__ = ["MatcherServicer"]

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Most keys one Verify may ask for, and the longest shortlist one Shortlist may ask for: far above
#: what a search uses (verify_max), low enough that one request cannot occupy a shard for minutes.
_MAX_KEYS = 1000


class MatcherServicer(matcher_pb2_grpc.MatcherServicer):
    """Search, Add, Delete and Stats on one shard; writes are saved before they are acknowledged."""

    def __init__(self, config: ServiceConfig) -> None:
        self._config = config
        self.shard_index, self.shard_count = config.shard()
        self.name = shard_name(self.shard_index)
        self.index_dir: Path = config.matcher_index_dir()
        self._index: ReferenceIndex | None = None
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._loader: threading.Thread | None = None
        self._on_ready: Callable[[bool], None] = lambda ready: None
        matcher = config.matcher
        #: The queries of the searches across shards in progress (their encoding sent once).
        self.queries = QueryCache(int(matcher.query_cache_mb * 2**20), matcher.query_keep_s)

    # ------------------------------------------------------------------ lifecycle
    def start(self, on_ready: Callable[[bool], None]) -> None:
        """Begins loading the index in the background; ``on_ready(True)`` once it is in memory."""
        self._on_ready = on_ready
        self._loader = threading.Thread(target=self._load_until_ready, name=f"kyb-{self.name}-load", daemon=True)
        self._loader.start()

    def _load_until_ready(self) -> None:
        waiting_logged = False
        while not self._stop.is_set():
            try:
                self._seed()
                index = ReferenceIndex.load(self.index_dir, self._config.engine.search)
            except NotReady as exc:
                if not waiting_logged:
                    log.warning("%s: %s; retrying every %g s", self.name, exc, self._config.matcher.reload_s)
                    waiting_logged = True
            except KybError as exc:
                log.error("%s: cannot load %s: %s", self.name, self.index_dir, exc)
            else:
                self._index = index
                stats = index.stats()
                log.info(
                    "%s (%d/%d): %d references, generation %s, codebook %s from %s",
                    self.name,
                    self.shard_index,
                    self.shard_count,
                    stats["references"],
                    stats["generation"],
                    stats["codebook_version"],
                    self.index_dir,
                )
                self._on_ready(True)
                return
            self._stop.wait(self._config.matcher.reload_s)

    def _seed(self) -> None:
        """Writes an empty index like ``matcher.codebook_dir``'s (its codebook and residual bins:
        :meth:`ReferenceIndex.empty_like`) when this shard has none, so the references a reshard
        brings from that index are stored with the bins they were stored with there."""
        seed = self._config.matcher.codebook_dir
        if seed is None or has_index(self.index_dir):
            return
        # NotReady while the codebook job has not written it yet.
        empty = ReferenceIndex.empty_like(seed, self._config.engine.search, self.index_dir)
        with writer_lock(self.index_dir):
            if not has_index(self.index_dir):  # another process may have seeded it meanwhile
                empty.save(self.index_dir)
                log.info("%s: seeded an empty index with codebook %s from %s", self.name, empty.codebook.version, seed)

    def close(self) -> None:
        self._stop.set()
        if self._loader is not None:
            self._loader.join(timeout=5)

    @property
    def ready(self) -> bool:
        return self._index is not None

    def _require_index(self) -> ReferenceIndex:
        index = self._index
        if index is None:
            raise Unavailable(f"{self.name}: index {self.index_dir} is not loaded yet")
        return index

    def _check_encoding(self, index: ReferenceIndex, encoding: Encoding, name: str) -> None:
        codebook = index.codebook
        if encoding.codebook_version != codebook.version:
            raise NotReady(
                f"{self.name}: {name} was made with codebook {encoding.codebook_version}, this shard uses "
                f"{codebook.version}; the encoder and the matchers must load the same codebook"
            )
        if encoding.descriptors.shape[1] != codebook.pca_dims or encoding.global_vector.shape[0] != (
            codebook.global_dims
        ):
            raise InvalidRequest(f"{name}: descriptor or global vector size does not match the codebook")
        if len(encoding) and (int(encoding.words.min()) < 0 or int(encoding.words.max()) >= codebook.n_words):
            raise InvalidRequest(f"{name}: visual word out of range 0..{codebook.n_words - 1}")

    # ------------------------------------------------------------------ RPCs
    def Search(self, request: matcher_pb2.SearchRequest, context: grpc.ServicerContext) -> Any:
        index = self._require_index()
        encoding = encoding_from_proto(request.encoding)
        self._check_encoding(index, encoding, "encoding")
        if request.image_width <= 0 or request.image_height <= 0:
            raise InvalidRequest("image_width and image_height must be > 0 (search pixels)")
        found, order = search(
            encoding,
            (int(request.image_width), int(request.image_height)),
            index,
            self._config.engine.search,
            exclude=frozenset(request.exclude_reference_ids),
            reserve=not request.skip_reserve,
            max_candidates=int(request.max_candidates) or None,
        )
        return matcher_pb2.SearchResponse(
            objects=found_to_proto(found), candidates=order, shard=self.name, generation=index.generation
        )

    def _held(self, index: ReferenceIndex, request: Any) -> HeldQuery:
        """The request's query: decoded from its encoding (and kept under its query_id), or the one
        this shard keeps under that id from an earlier call of the same search."""
        query_id = request.query_id
        if request.HasField("encoding"):
            encoding = encoding_from_proto(request.encoding)
            self._check_encoding(index, encoding, "encoding")
            held = HeldQuery(IndexSource(encoding, index), query_bytes(encoding))
            if query_id:
                self.queries.put(query_id, held)
            return held
        if not query_id:
            raise InvalidRequest("encoding is required when no query_id names a query this shard holds")
        held_or_none = self.queries.get(query_id)
        if held_or_none is None or held_or_none.index is not index:
            raise NotReady(
                f"{self.name} holds no query {query_id} (restarted, or it expired or was evicted): "
                "send the encoding again"
            )
        return held_or_none

    @staticmethod
    def _rows(request: Any, source: IndexSource) -> np.ndarray | None:
        return rows_from_proto(request.rows, len(source.query)) if request.HasField("rows") else None

    @staticmethod
    def _set_size(source: IndexSource, width: int, height: int) -> None:
        """Gives ``source`` the photo's size, needed to verify (a query kept from a Shortlist may lack it)."""
        if width <= 0 or height <= 0:
            raise InvalidRequest("image_width and image_height must be > 0 (search pixels)")
        if source.image_size is None:
            source.image_size = (width, height)
        elif source.image_size != (width, height):
            raise InvalidRequest(f"image size {width}x{height} differs from the query's {source.image_size}")

    @staticmethod
    def _outcomes(source: IndexSource, keys: list[str], rows: np.ndarray | None, *, sure: int = 0) -> list[Any]:
        every = np.arange(len(source.query)) if rows is None else rows
        outcomes = []
        for key, result in zip(keys, source.verify(keys, every, sure=sure), strict=True):
            outcome = matcher_pb2.VerifyOutcome(reference_id=key, indexed=result is not NOT_INDEXED)
            if isinstance(result, Verification):
                outcome.match.CopyFrom(verification_to_proto(result))
            outcomes.append(outcome)
        return outcomes

    def Shortlist(self, request: matcher_pb2.ShortlistRequest, context: grpc.ServicerContext) -> Any:
        index = self._require_index()
        limit = int(request.limit) or self._config.engine.search.verify_top
        if not 0 < limit <= _MAX_KEYS:
            raise InvalidRequest(f"limit must be in 1..{_MAX_KEYS}")
        if not 0 <= request.verify_first <= limit:
            raise InvalidRequest(f"verify_first must be in 0..limit ({limit})")
        held = self._held(index, request)
        with held.lock, one_blas_thread():
            source = held.source
            rows = self._rows(request, source)
            lists = source.ranked(rows, frozenset(request.exclude_reference_ids), limit)
            verified = []
            if request.verify_first:
                self._set_size(source, int(request.image_width), int(request.image_height))
                first = [key for key, *_ in fuse_ranked(lists, source.config, int(request.verify_first))]
                verified = self._outcomes(source, first, rows, sure=len(first))  # all verified: in parallel
        global_list, words = ranked_to_proto(lists)
        return matcher_pb2.ShortlistResponse(
            global_list=global_list, words=words, shard=self.name, generation=index.generation, verified=verified
        )

    def Verify(self, request: matcher_pb2.VerifyRequest, context: grpc.ServicerContext) -> Any:
        index = self._require_index()
        keys = list(request.reference_ids)
        if len(keys) > _MAX_KEYS:
            raise InvalidRequest(f"at most {_MAX_KEYS} reference_ids per call")
        held = self._held(index, request)
        with held.lock, one_blas_thread():
            source = held.source
            self._set_size(source, int(request.image_width), int(request.image_height))
            outcomes = self._outcomes(source, keys, self._rows(request, source))
        return matcher_pb2.VerifyResponse(outcomes=outcomes, shard=self.name, generation=index.generation)

    def Add(self, request: matcher_pb2.AddRequest, context: grpc.ServicerContext) -> Any:
        index = self._require_index()
        if request.expected_shard:
            expected = parse_shard(request.expected_shard, name="expected_shard")
            if expected != (self.shard_index, self.shard_count):
                raise NotReady(
                    f"{self.name} is shard {self.shard_index}/{self.shard_count}, the caller meant "
                    f"{request.expected_shard}: check the order of gateway.matcher_addresses"
                )
        items = []
        for i, item in enumerate(request.items):
            if not item.reference_id.strip():
                raise InvalidRequest(f"items[{i}].reference_id is empty")
            if not _SHA256.match(item.sha256):
                raise InvalidRequest(f"items[{i}].sha256 must be 64 lower-case hex digits")
            encoding = encoding_from_proto(item.encoding, name=f"items[{i}].encoding")
            self._check_encoding(index, encoding, f"items[{i}].encoding")
            items.append((item.reference_id, item.sha256, encoding))
        with self._write_lock:
            outcomes = index.add(items)
            if index.dirty:
                index.save(self.index_dir)
        return matcher_pb2.AddResponse(outcomes=outcomes, generation=index.generation, shard=self.name)

    def Delete(self, request: matcher_pb2.DeleteRequest, context: grpc.ServicerContext) -> Any:
        index = self._require_index()
        wanted = {r.strip() for r in (request.reference_id, *request.reference_ids) if r.strip()}
        if not wanted:
            raise InvalidRequest("reference_id is empty")
        with self._write_lock:
            keys = [k for k in index.reference_ids() if k in wanted or base_reference_id(k) in wanted]
            deleted = any([index.delete(key) for key in keys])
            if deleted:
                index.save(self.index_dir)
        return matcher_pb2.DeleteResponse(deleted=deleted, generation=index.generation)

    def Stats(self, request: matcher_pb2.StatsRequest, context: grpc.ServicerContext) -> Any:
        stats = self._require_index().stats()
        return matcher_pb2.StatsResponse(
            references=int(stats["references"]),
            bytes=int(stats["bytes"]),
            codebook_version=str(stats["codebook_version"]),
            generation=int(stats["generation"]),
            shard=self.name,
            shard_index=self.shard_index,
            shard_count=self.shard_count,
            deleted=int(stats["deleted"]),
            features=int(stats["features"]),
        )

    def Export(self, request: matcher_pb2.ExportRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        index = self._require_index()
        target = int(request.target_count)
        if target < 0:
            raise InvalidRequest("target_count must be >= 0")
        for key in index.reference_ids():  # a snapshot: references added meanwhile wait for the next export
            if target and shard_for(key, target) == self.shard_index:
                continue
            sha = index.sha256_of(key)
            try:
                encoding = index.encoding(key)
            except KeyError:  # deleted since the snapshot
                continue
            yield matcher_pb2.AddItem(reference_id=key, sha256=sha or "", encoding=encoding_to_proto(encoding))
