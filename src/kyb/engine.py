"""The identification engine: ingest references, identify every reference visible in a photo.

This wires the stages together in one process (embedded mode). The services of issue 4 call the
same pieces — :class:`~kyb.encoder.Encoder`, :class:`~kyb.index.ReferenceIndex`,
:func:`~kyb.search.search` — across process boundaries, so embedded and served answers are the same
by construction.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kyb.answer import CatalogLookup, LastSeen, describe
from kyb.cache import EncodingCache, encode_photo, open_cache
from kyb.catalog import Album, Band, Catalog, CatalogUnavailable, ReferenceImage, open_catalog
from kyb.codebook import Codebook, train_codebook
from kyb.config import EngineConfig
from kyb.encoder import Box, Encoder, Encoding, extract_reference, scaled_box
from kyb.errors import InvalidRequest, KybError, NotFound, NotReady
from kyb.features import LocalFeatures
from kyb.heap import retain_freed_heap
from kyb.imageio import DecodedImage, decode_image
from kyb.index import ReferenceIndex, base_reference_id, current_generation, has_index, writer_lock
from kyb.ingest import (
    EncodedReference,
    EncodingPool,
    IngestItem,
    IngestOutcome,
    combined_status,
    decode_reference,
    index_keys,
    record_outcome,
    reference_id_for,
    reference_record,
    unique_regions,
)
from kyb.regions import Region, RegionDetector, merge_regions, original_box, search_regions, second_look
from kyb.results import IdentifyResult
from kyb.search import search

__all__ = [
    "Engine",
    "IngestItem",
    "IngestOutcome",
    "reference_id_for",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- ingest
@dataclass
class _Prepared:
    item: IngestItem
    decoded: DecodedImage
    reference_id: str
    regions: list[Box | None]
    features: list[tuple[LocalFeatures, Box]]
    encodings: list[Encoding] = field(default_factory=list)


def _exclusive(method: Callable[..., Any]) -> Callable[..., Any]:
    """Runs an Engine method that writes the index under the folder's writer lock (see _writing)."""

    @functools.wraps(method)
    def locked(self: Engine, *args: Any, **kwargs: Any) -> Any:
        with self._writing():
            return method(self, *args, **kwargs)

    return locked


class Engine:
    """Embedded engine over one index folder and one catalog.

    ``Engine(config)`` opens (or prepares) both; the index is loaded lazily so commands that only
    touch the catalog start instantly.
    """

    def __init__(self, config: EngineConfig, *, catalog: Catalog | None = None) -> None:
        self.config = config
        retain_freed_heap(config.heap_retain_mb)  # process-wide: a photo's SIFT reuses the last one's pages
        self._catalog = catalog
        self._index: ReferenceIndex | None = None
        self._encoder: Encoder | None = None
        self._cache: EncodingCache | None = None
        self._cache_opened = False
        self._lock = threading.RLock()
        #: Catalog rows answers used last: what an answer names while the catalog is down.
        self._last_seen = LastSeen()
        #: Finds regions for detector-first identification (a :class:`kyb.detection.Detector`);
        #: None = the whole photo is one region.
        self.detector: RegionDetector | None = None

    # ------------------------------------------------------------------ parts
    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            url = self.config.catalog_url
            if "://" not in url:
                Path(url).parent.mkdir(parents=True, exist_ok=True)
            self._catalog = open_catalog(url)
        return self._catalog

    @property
    def index(self) -> ReferenceIndex:
        with self._lock:
            if self._index is None:
                self._index = ReferenceIndex.load(self.config.index_dir, self.config.search)
            return self._index

    def has_index(self) -> bool:
        return self._index is not None or has_index(self.config.index_dir)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Takes the index folder's writer lock and, if another process saved since this engine
        loaded the index, reloads it first, so no write is based on a stale generation."""
        with writer_lock(self.config.index_dir):
            with self._lock:
                on_disk = current_generation(self.config.index_dir)
                if self._index is not None and on_disk is not None and on_disk != self._index.generation:
                    log.info("index %s changed on disk (generation %d): reloading", self.config.index_dir, on_disk)
                    self._swap(ReferenceIndex.load(self.config.index_dir, self.config.search))
            yield

    def _rebuild(
        self, source: Codebook | Sequence[_Prepared], progress: Callable[[str, int, int], None] | None = None
    ) -> tuple[ReferenceIndex, Encoder]:
        """An empty index for a new generation and its encoder: over the codebook ``source``, or over
        one trained on the features of the prepared references ``source`` (``progress`` as in
        :func:`~kyb.codebook.train_codebook`)."""
        if isinstance(source, Codebook):
            codebook = source
        else:
            codebook = train_codebook(
                [f.descriptors for p in source for f, _ in p.features],
                self.config.codebook,
                pca_dims=self.config.features.pca_dims,
                progress=progress,
            )
        index = ReferenceIndex(codebook, self.config.search, self.config.index_dir)
        return index, Encoder(codebook, self.config.features)

    def _swap(self, index: ReferenceIndex, encoder: Encoder | None = None) -> None:
        """Makes ``index`` the one this engine searches and writes; the encoder follows its codebook
        (``encoder`` when the caller already built it for that codebook)."""
        with self._lock:
            self._index = index
            self._encoder = encoder if encoder is not None and encoder.codebook is index.codebook else None

    @property
    def encoder(self) -> Encoder:
        with self._lock:
            if self._encoder is None or self._encoder.codebook is not self.index.codebook:
                self._encoder = Encoder(self.index.codebook, self.config.features)
            return self._encoder

    @property
    def cache(self) -> EncodingCache | None:
        """The descriptor cache ``config.cache`` names (``None`` when off), opened on first use."""
        with self._lock:
            if not self._cache_opened:
                settings = self.config.cache
                self._cache = open_cache(settings.url, ttl_s=settings.ttl_s, max_mb=settings.max_mb)
                self._cache_opened = True
            return self._cache

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ identify
    def decode_query(self, data: bytes) -> DecodedImage:
        return decode_image(data, self.config.limits, max_side=self.config.limits.search_max_side)

    def identify(self, data: bytes, *, box: Box | None = None, use_detector: bool = True) -> IdentifyResult:
        """Finds every indexed reference in the photo ``data`` (or in ``box`` of it, original pixels).

        With a :attr:`detector` set (and no ``box``), each detected region is searched on its own as
        well as the whole photo, and their objects merged (:mod:`kyb.regions`, the gateway's rule);
        ``use_detector=False`` skips it.
        """
        started = time.perf_counter()
        decoded = self.decode_query(data)
        decoded_at = time.perf_counter()
        regions: list[Box | None] = [box]
        if box is None and use_detector and self.detector is not None:
            detections = self.detector.detect([decoded.rgb])[0]
            boxes = [(original_box(d.box, decoded.width, decoded.height, decoded.scale), d.score) for d in detections]
            if boxes:
                limit = self.config.detector.max_regions
                regions = search_regions(boxes, decoded.original_width, decoded.original_height, limit)
        detected_at = time.perf_counter()
        result = self.identify_decoded(decoded, regions)
        finished = time.perf_counter()
        result.timings_ms["decode"] = (decoded_at - started) * 1000
        if self.detector is not None and use_detector and box is None:
            result.timings_ms["detect"] = (detected_at - decoded_at) * 1000
        result.timings_ms["total"] = (finished - started) * 1000
        return result

    def identify_decoded(self, decoded: DecodedImage, regions: Sequence[Box | None] = (None,)) -> IdentifyResult:
        """:meth:`identify` of a photo :meth:`decode_query` already decoded, searching each of ``regions``
        (original pixels; None = the whole photo) and merging their objects."""
        encode_ms = search_ms = 0.0
        searched: list[Region] = []
        candidates: dict[str, None] = {}
        features = 0
        scale = decoded.scale
        hits: list[bool] = []
        cache = self.cache

        def look(region: Box | None, *, skip_featureless: bool, depth: int | None = None) -> None:
            nonlocal encode_ms, search_ms, features, scale
            began = time.perf_counter()
            search_box = None if region is None else scaled_box(region, decoded.scale)
            try:
                encoding, hit = encode_photo(
                    cache,
                    self.encoder,
                    decoded,
                    search_box,
                    search_max_side=self.config.limits.search_max_side,
                )
            except InvalidRequest:
                if skip_featureless:
                    return  # a featureless region: the others still answer
                raise
            encoded = time.perf_counter()
            found, order = search(
                encoding, (decoded.width, decoded.height), self.index, self.config.search, max_candidates=depth
            )
            encode_ms += (encoded - began) * 1000
            search_ms += (time.perf_counter() - encoded) * 1000
            searched.append(Region(found, encoding.xy + np.asarray(encoding.origin, dtype=np.float32)))
            candidates.update(dict.fromkeys(order))
            features += len(encoding)
            scale = encoding.scale
            hits.append(hit)

        for region in regions:
            look(region, skip_featureless=len(regions) > 1)
        merged = merge_regions(searched, self.config.search.max_objects)
        size = (decoded.original_width, decoded.original_height)
        again = second_look(regions, merged, *size, enabled=self.config.search.second_look)
        if again is not None:
            before = len(searched)
            look(again, skip_featureless=True, depth=self.config.search.second_look_depth)
            merged = merge_regions(searched[before:], self.config.search.max_objects)  # nothing was found before
        lookup = self._lookup()
        objects = describe(merged, scale, lookup, alternatives=self.config.search.alternatives)
        result = IdentifyResult(
            objects=objects,
            width=decoded.original_width,
            height=decoded.original_height,
            sha256=decoded.sha256,
            features=features,
            candidates=list(candidates),
            timings_ms={"decode": 0.0, "encode": encode_ms, "search": search_ms, "total": encode_ms + search_ms},
        )
        result.cache = "" if cache is None else "hit" if hits and all(hits) else "miss"
        result.catalog_unavailable = bool(lookup.unavailable)
        return result

    def _lookup(self) -> CatalogLookup:
        """This answer's catalog reads; a catalog that cannot be opened yields the rows last seen."""
        try:
            catalog = self.catalog
        except CatalogUnavailable as exc:
            log.warning("catalog unavailable, answering with the metadata last seen: %s", exc)
            return CatalogLookup(None, self._last_seen, unavailable=str(exc))
        return CatalogLookup(catalog, self._last_seen)

    def identify_encoding(self, encoding: Encoding, image_size: tuple[int, int]) -> IdentifyResult:
        """Search + metadata for an already encoded photo (``image_size`` at search scale)."""
        found, order = search(encoding, image_size, self.index, self.config.search)
        lookup = self._lookup()
        objects = describe(found, encoding.scale, lookup, alternatives=self.config.search.alternatives)
        result = IdentifyResult(objects=objects, width=0, height=0, sha256="", features=len(encoding), candidates=order)
        result.catalog_unavailable = bool(lookup.unavailable)
        return result

    # ------------------------------------------------------------------ ingest
    def _prepare(self, item: IngestItem) -> _Prepared:
        decoded, reference_id, regions = decode_reference(item, self.config.limits)
        features = []
        for region in regions:
            scaled = None if region is None else scaled_box(region, decoded.scale)
            features.append(extract_reference(decoded, scaled, self.config.features))
        return _Prepared(item, decoded, reference_id, regions, features)

    @_exclusive
    def ingest(
        self,
        items: Iterable[IngestItem],
        *,
        progress: Callable[[IngestOutcome], None] | None = None,
        save: bool = True,
        codebook_images: int = 4000,
        processes: int = 0,
        save_every: int = 0,
    ) -> list[IngestOutcome]:
        """Decodes, encodes and indexes ``items``; records them in the catalog.

        Per item the outcome is ``added``, ``replaced``, ``unchanged`` (same bytes and regions already
        indexed: nothing is re-encoded) or ``failed`` with a one-line reason; a failure never stops
        the others. With no index yet, the first ``codebook_images`` items train the codebook.
        With ``processes`` >= 1 the encoding runs in that many worker processes
        (:class:`~kyb.ingest.EncodingPool`) and this one only commits; ``save_every`` > 0 also saves
        the index after each that many committed items, so a killed ingest keeps most of its work.
        """
        outcomes: list[IngestOutcome] = []
        iterator = iter(items)
        if not self.has_index():
            iterator = self._bootstrap(iterator, codebook_images, outcomes, progress)
        index = self.index
        encoder = self.encoder
        batch: list[_Prepared | EncodedReference] = []
        since_save = 0

        def flush() -> None:
            nonlocal since_save
            for outcome in self._commit(batch, index):
                outcomes.append(outcome)
                if progress:
                    progress(outcome)
            since_save += len(batch)
            batch.clear()
            if save_every and since_save >= save_every and index.dirty:
                index.save(self.config.index_dir)
                since_save = 0

        if processes >= 1:
            with EncodingPool(
                index.codebook, self.config.limits, self.config.features, processes, self.config.heap_retain_mb
            ) as workers:
                for encoded in workers.encode(self._not_indexed(iterator, index, outcomes, progress)):
                    if isinstance(encoded, IngestOutcome):
                        outcomes.append(encoded)
                        self._log_failure(encoded)
                        if progress:
                            progress(encoded)
                        continue
                    batch.append(encoded)
                    # Small batches: the workers wait for nothing while one commits.
                    if len(batch) >= (min(16, save_every) if save_every else 16):
                        flush()
            flush()
            if save and index.dirty:
                index.save(self.config.index_dir)
            return outcomes

        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            for _item, prepared in _map_ordered(pool, self._prepare_safe, iterator, self.config.workers * 4):
                if isinstance(prepared, IngestOutcome):
                    outcomes.append(prepared)
                    self._log_failure(prepared)
                    if progress:
                        progress(prepared)
                    continue
                prepared.encodings = [
                    encoder.encode_features(f, region, scale=prepared.decoded.scale) for f, region in prepared.features
                ]
                batch.append(prepared)
                if len(batch) >= 64:
                    flush()
        flush()
        if save and index.dirty:
            index.save(self.config.index_dir)
        return outcomes

    def _not_indexed(
        self,
        items: Iterator[IngestItem],
        index: ReferenceIndex,
        outcomes: list[IngestOutcome],
        progress: Callable[[IngestOutcome], None] | None,
    ) -> Iterator[IngestItem]:
        """The items not indexed yet, with their bytes read (a worker gets them, not the path); the
        others are ``unchanged`` (or ``failed`` when unreadable) without being sent to a worker."""
        for item in items:
            try:
                data = item.read()
            except KybError as exc:
                outcome = IngestOutcome(item.source, "failed", message=str(exc))
            else:
                sha256 = hashlib.sha256(data).hexdigest()
                reference_id = reference_id_for(sha256, item.regions)
                keys = index_keys(reference_id, max(1, len(unique_regions(item.regions))))
                known = all(index.sha256_of(k) == sha256 for k in keys)
                if not (known and self.catalog.get_reference(reference_id) is not None):
                    yield dataclasses.replace(item, data=data)
                    continue
                outcome = IngestOutcome(item.source, "unchanged", reference_id)
            outcomes.append(outcome)
            if outcome.status == "failed":
                self._log_failure(outcome)
            if progress:
                progress(outcome)

    def _prepare_safe(self, item: IngestItem) -> _Prepared | IngestOutcome:
        try:
            prepared = self._prepare(item)
        except KybError as exc:
            return IngestOutcome(item.source, "failed", message=str(exc))
        if self._index is not None and self._already_indexed(prepared):
            return IngestOutcome(item.source, "unchanged", prepared.reference_id)
        return prepared

    def _already_indexed(self, prepared: _Prepared) -> bool:
        index = self._index
        assert index is not None
        keys = self._keys(prepared)
        return all(index.sha256_of(key) == prepared.decoded.sha256 for key in keys) and (
            self.catalog.get_reference(prepared.reference_id) is not None
        )

    @staticmethod
    def _keys(prepared: _Prepared | EncodedReference) -> list[str]:
        return index_keys(prepared.reference_id, len(prepared.regions))

    def _log_failure(self, outcome: IngestOutcome) -> None:
        record_outcome(self.catalog, outcome)

    def _commit(self, batch: Sequence[_Prepared | EncodedReference], index: ReferenceIndex) -> list[IngestOutcome]:
        """Catalog rows first, then the index: a crash in between leaves an invisible catalog row
        that the next ingest of the same file completes (it is not 'unchanged' until both exist)."""
        outcomes = []
        for prepared in batch:
            item = prepared.item
            try:
                self.catalog.add_reference(reference_record(item, prepared.reference_id, prepared.decoded))
                keys = self._keys(prepared)
                results = index.add(
                    (key, prepared.decoded.sha256, enc) for key, enc in zip(keys, prepared.encodings, strict=True)
                )
                outcome = IngestOutcome(item.source, combined_status(results), prepared.reference_id)
                record_outcome(self.catalog, outcome, prepared.decoded.sha256)
                outcomes.append(outcome)
            except (KybError, ValueError) as exc:
                outcome = IngestOutcome(item.source, "failed", prepared.reference_id, str(exc))
                self._log_failure(outcome)
                outcomes.append(outcome)
        return outcomes

    def _bootstrap(
        self,
        iterator: Iterator[IngestItem],
        count: int,
        outcomes: list[IngestOutcome],
        progress: Callable[[IngestOutcome], None] | None,
    ) -> Iterator[IngestItem]:
        """Trains a codebook on the first ``count`` items and indexes them; yields the rest."""
        head: list[IngestItem] = []
        for item in iterator:
            head.append(item)
            if len(head) >= count:
                break
        prepared: list[_Prepared] = []
        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            for _, result in _map_ordered(pool, self._prepare_safe, iter(head), self.config.workers * 4):
                if isinstance(result, IngestOutcome):
                    outcomes.append(result)
                    self._log_failure(result)
                    if progress:
                        progress(result)
                else:
                    prepared.append(result)
        if len(prepared) < 2:
            raise NotReady(f"only {len(prepared)} usable reference image(s): a codebook needs at least 2 to train")
        log.info("no index at %s yet: training a codebook on %d references", self.config.index_dir, len(prepared))
        index, encoder = self._rebuild(prepared)
        self._swap(index, encoder)
        for chunk_start in range(0, len(prepared), 64):
            chunk = prepared[chunk_start : chunk_start + 64]
            for p in chunk:
                p.encodings = [encoder.encode_features(f, region, scale=p.decoded.scale) for f, region in p.features]
            # The residual bins from the first 64 references, not from the first one alone.
            index.fit_residuals([e for p in chunk for e in p.encodings])
            for outcome in self._commit(chunk, index):
                outcomes.append(outcome)
                if progress:
                    progress(outcome)
        return iterator

    # ------------------------------------------------------------------ other operations
    @_exclusive
    def delete_reference(self, reference_id: str) -> None:
        """Removes a reference from the index and the catalog (NotFound when it is in neither)."""
        index = self.index
        keys = [k for k in index.reference_ids() if k == reference_id or k.startswith(reference_id + "#")]
        removed = any([index.delete(k) for k in keys])
        if removed:  # index first: a crash in between leaves a catalog row Identify never returns
            index.save(self.config.index_dir)
        in_catalog = self.catalog.delete_reference(reference_id)
        if not removed and not in_catalog:
            raise NotFound(f"no reference {reference_id}")

    def upsert_metadata(self, bands: Sequence[Band], albums: Sequence[Album]) -> None:
        self.catalog.upsert_bands(bands)
        self.catalog.upsert_albums(albums)

    @_exclusive
    def retrain_codebook(
        self, items: Sequence[IngestItem], progress: Callable[[str, int, int], None] | None = None
    ) -> Codebook:
        """Trains a new codebook from ``items`` and re-encodes every indexed reference with it.

        The references are re-read from their catalog sources; the new index replaces the old one in
        one atomic save, so searches keep working on the old generation until the switch.
        ``progress(stage, done, total)`` is called as each stage advances: "read images", the
        codebook's own stages, then "re-encode index".
        """
        report = progress or (lambda _stage, _done, _total: None)
        prepared = []
        for done, item in enumerate(items, start=1):
            # Every readable image counts, indexed already or not (_prepare_safe would skip those).
            try:
                prepared.append(self._prepare(item))
            except KybError as exc:
                log.warning("skipped %s: %s", item.source, exc)
            report("read images", done, len(items))
        fresh, encoder = self._rebuild(prepared, progress)
        old = self.index if self.has_index() else None
        sources = []
        if old is not None:
            seen = set()
            for key in old.reference_ids():
                reference = self.catalog.get_reference(base_reference_id(key))
                if reference is not None and reference.reference_id not in seen:
                    seen.add(reference.reference_id)
                    sources.append(
                        IngestItem(
                            reference.source,
                            reference.kind,
                            reference.band_id,
                            reference.album_id,
                            tuple(reference.regions),
                        )
                    )
        for done, item in enumerate(sources, start=1):
            result = self._prepare_safe(item)
            report("re-encode index", done, len(sources))
            if isinstance(result, IngestOutcome):
                log.warning("re-encoding %s failed: %s", item.source, result.message)
                continue
            fresh.add(
                (key, result.decoded.sha256, encoder.encode_features(f, region, scale=result.decoded.scale))
                for key, (f, region) in zip(self._keys(result), result.features, strict=True)
            )
        fresh.save(self.config.index_dir)
        self._swap(fresh, encoder)
        return fresh.codebook

    @_exclusive
    def reindex(
        self, progress: Callable[[IngestOutcome], None] | None = None, *, codebook_images: int = 4000
    ) -> dict[str, Any]:
        """Rebuilds the index from the catalog's reference rows into a new generation (one atomic switch).

        Each row's source image is read again and encoded, with its regions, under the row's id; the
        current codebook is kept (with no index yet, one is trained on the first ``codebook_images``
        rows). A row whose source cannot be read or no longer has the catalog's sha256 keeps its
        encoding from the current generation when there is one (``kept``), else it is left out
        (``failed``); either way it gives one line in ``failures``, never an error. Index entries
        without a catalog row are dropped. With nothing rebuilt or kept, the current index stays.
        """
        started = time.perf_counter()
        old = self.index if self.has_index() else None
        rows = self._catalog_rows()
        failures: list[str] = []
        counts = {"references": 0, "rebuilt": 0, "kept": 0, "failed": 0}

        def report(outcome: IngestOutcome) -> None:
            counts[outcome.status] += 1
            if outcome.message:
                failures.append(f"{outcome.reference_id} ({outcome.source}): {outcome.message}")
            if progress:
                progress(outcome)

        prepared_rows = self._prepare_rows(rows)
        head: list[tuple[ReferenceImage, _Prepared | str]] = []
        source: Codebook | list[_Prepared]
        if old is not None:
            source = old.codebook
        else:
            for row, result in prepared_rows:
                head.append((row, result))
                if sum(isinstance(r, _Prepared) for _, r in head) >= codebook_images:
                    break
            usable = [r for _, r in head if isinstance(r, _Prepared)]
            if len(usable) < 2:
                raise NotReady(f"only {len(usable)} readable reference image(s) in the catalog: a codebook needs 2")
            source = usable
        fresh, encoder = self._rebuild(source)
        pending: list[tuple[str, str, Encoding]] = []
        for row, result in itertools.chain(head, prepared_rows):
            counts["references"] += 1
            if isinstance(result, _Prepared):
                encodings = [encoder.encode_features(f, r, scale=result.decoded.scale) for f, r in result.features]
                pending.extend((k, row.sha256, e) for k, e in zip(self._keys(result), encodings, strict=True))
                report(IngestOutcome(row.source, "rebuilt", row.reference_id))
            else:
                keys = [] if old is None else self._index_keys(old, row.reference_id)
                if old is not None and keys and all(old.sha256_of(k) == row.sha256 for k in keys):
                    pending.extend((k, row.sha256, old.encoding(k)) for k in keys)
                    report(IngestOutcome(row.source, "kept", row.reference_id, result + "; kept its current encoding"))
                else:
                    report(IngestOutcome(row.source, "failed", row.reference_id, result))
            if len(pending) >= 64:
                fresh.add(pending)
                pending.clear()
        fresh.add(pending)
        switched = old is None or counts["references"] == 0 or counts["rebuilt"] + counts["kept"] > 0
        if switched:
            fresh.save(self.config.index_dir)
            self._swap(fresh, encoder)
        current = fresh if switched else old
        assert current is not None
        stale = 0 if old is None else sum(1 for k in old.reference_ids() if k not in fresh)
        return {
            **counts,
            "dropped": stale if switched else 0,
            "failures": failures,
            "switched": switched,
            "generation": current.generation,
            "codebook_version": fresh.codebook.version,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }

    def consistency(self, *, examples: int = 5) -> dict[str, Any]:
        """Whether catalog and index agree: references the catalog lists that the index lacks (an ingest
        that stopped between the two writes: the same ingest again, or ``kyb reindex``, completes
        them) and index entries with no catalog row (deleted from the catalog by hand: ``kyb delete``
        removes them). Counts, plus a few ids of each for a person to look at."""
        indexed = {base_reference_id(key) for key in self.index.reference_ids()} if self.has_index() else set()
        listed: set[str] = set()
        unindexed: list[str] = []
        for row in self._catalog_rows():
            listed.add(row.reference_id)
            if row.reference_id not in indexed:
                unindexed.append(row.reference_id)
        orphans = sorted(indexed - listed)
        return {
            "catalog_without_index": len(unindexed),
            "index_without_catalog": len(orphans),
            "examples_catalog_without_index": sorted(unindexed)[:examples],
            "examples_index_without_catalog": orphans[:examples],
        }

    def _catalog_rows(self, page: int = 500) -> Iterator[ReferenceImage]:
        offset = 0
        while True:
            rows = self.catalog.list_references(limit=page, offset=offset)
            yield from rows
            if len(rows) < page:
                return
            offset += len(rows)

    def _prepare_rows(self, rows: Iterator[ReferenceImage]) -> Iterator[tuple[ReferenceImage, _Prepared | str]]:
        """Each catalog row with its source re-read and extracted (in parallel), or why that failed."""

        def prepare(row: ReferenceImage) -> _Prepared | str:
            item = IngestItem(row.source, row.kind, row.band_id, row.album_id, tuple(row.regions))
            try:
                prepared = self._prepare(item)
            except KybError as exc:
                return str(exc)
            if prepared.decoded.sha256 != row.sha256:
                return f"source changed since ingest (sha256 {prepared.decoded.sha256[:12]}, catalog {row.sha256[:12]})"
            prepared.reference_id = row.reference_id  # the catalog's id, whatever the regions' rounding
            return prepared

        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            yield from _map_ordered(pool, prepare, rows, self.config.workers * 4)

    @staticmethod
    def _index_keys(index: ReferenceIndex, reference_id: str) -> list[str]:
        if reference_id in index:
            return [reference_id]
        keys, i = [], 0
        while f"{reference_id}#{i}" in index:
            keys.append(f"{reference_id}#{i}")
            i += 1
        return keys


def _map_ordered(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterator[Any], window: int):
    """Like ``pool.map`` but with a bounded window, so a million-file ingest does not queue them all."""
    pending: list[tuple[Any, Any]] = []
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            head, future = pending.pop(0)
            yield head, future.result()
    for head, future in pending:
        yield head, future.result()
