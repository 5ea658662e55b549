"""One ingest pipeline for the embedded engine and the gateway: what an item is, its id and index
keys, its catalog row, its status, and the log line of a failure.

A reference's id comes from its content (and its regions), so ingesting the same file again is
``unchanged`` and the same photo with other boxes is another reference. The catalog row is written
before the index entries: a crash in between leaves a row the index does not know, which the same
ingest run again completes (it is not ``unchanged`` until both exist).

``kyb ingest --workers N`` encodes in N processes (:class:`EncodingPool`: decode, SIFT, words and
global vector, the CPU-bound part) while the calling process stays the one writer of the catalog and
the index: the same commit order as a single-process ingest, so a kill loses at most the references
committed since the last save, and running the ingest again completes them without duplicates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kyb.catalog import Catalog, ReferenceImage, validate_box
from kyb.codebook import Codebook
from kyb.config import FeatureConfig, ImageLimits
from kyb.encoder import Box, Encoder, Encoding, extract_reference, scaled_box
from kyb.errors import InvalidRequest, KybError
from kyb.imageio import DecodedImage, decode_image

__all__ = [
    "EncodedReference",
    "EncodingPool",
    "IngestItem",
    "IngestOutcome",
    "combined_status",
    "decode_reference",
    "index_keys",
    "record_outcome",
    "reference_id_for",
    "reference_record",
    "unique_regions",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestItem:
    """A reference image to ingest: bytes or a path, what it shows, and optional regions."""

    source: str
    kind: str
    band_id: str | None
    album_id: str | None = None
    regions: tuple[Box, ...] = ()
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        try:
            return Path(self.source).read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"cannot read {self.source}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one item: ``added``, ``replaced``, ``unchanged`` or ``failed`` (with why)."""

    source: str
    status: str
    reference_id: str | None = None
    message: str = ""


def reference_id_for(sha256: str, regions: Sequence[Box]) -> str:
    """Stable id from the content hash (and the regions, so the same photo with other boxes differs)."""
    if not regions:
        return sha256[:24]
    spec = ";".join(",".join(f"{v:g}" for v in box) for box in regions)
    return sha256[:16] + hashlib.sha256(spec.encode()).hexdigest()[:8]


def unique_regions(regions: Sequence[Box]) -> list[Box]:
    """``regions`` without repeats, in order (a box listed twice is encoded once)."""
    seen: list[Box] = []
    for box in regions:
        as_floats = scaled_box(box, 1.0)
        if as_floats not in seen:
            seen.append(as_floats)
    return seen


def decode_reference(item: IngestItem, limits: ImageLimits) -> tuple[DecodedImage, str, list[Box | None]]:
    """``item``'s image decoded at the reference size, its reference id, and the regions to encode (the
    listed boxes without repeats, or None: the whole image)."""
    decoded = decode_image(item.read(), limits, max_side=limits.reference_max_side)
    return decoded, reference_id_for(decoded.sha256, item.regions), list(unique_regions(item.regions)) or [None]


def index_keys(reference_id: str, regions: int) -> list[str]:
    """The index keys of a reference with ``regions`` encoded regions: its id, or ``id#i`` per region."""
    return [reference_id] if regions <= 1 else [f"{reference_id}#{i}" for i in range(regions)]


def reference_record(item: IngestItem, reference_id: str, image: DecodedImage) -> ReferenceImage:
    """The catalog row of ``item`` decoded as ``image``."""
    return ReferenceImage(
        reference_id=reference_id,
        sha256=image.sha256,
        kind=item.kind,
        band_id=item.band_id,
        album_id=item.album_id,
        source=item.source,
        width=image.original_width,
        height=image.original_height,
        size_bytes=image.size_bytes,
        regions=tuple(validate_box(round(v) for v in r) for r in item.regions),
    )


def combined_status(results: Sequence[str]) -> str:
    """One reference's status from its keys' index results: added, else replaced, else unchanged."""
    return "added" if "added" in results else ("replaced" if "replaced" in results else "unchanged")


def record_outcome(catalog: Catalog, outcome: IngestOutcome, sha256: str | None = None) -> None:
    """Logs a failure in the one form both ingest paths use and appends ``outcome`` to the catalog's
    ingestion log (best effort: the outcome is reported to the caller either way)."""
    if outcome.status == "failed":
        log.warning("ingest %s failed: %s", outcome.source, outcome.message)
        detail = f"{outcome.source}: {outcome.message}"
    else:
        detail = outcome.source
    try:
        catalog.record_ingestion(outcome.reference_id, sha256, outcome.status, detail)
    except Exception as exc:
        log.debug("could not record the ingestion of %s: %s", outcome.source, exc)


@dataclass(frozen=True)
class EncodedReference:
    """An item encoded by a worker: what the writer commits (the pixels stay in the worker)."""

    item: IngestItem
    decoded: DecodedImage  # its ``rgb`` is empty
    reference_id: str
    regions: list[Box | None]
    encodings: list[Encoding]


#: Items in flight per worker process (each holds its file's bytes until its result is taken).
_IN_FLIGHT = 32
_NO_PIXELS = np.zeros((0, 0, 3), dtype=np.uint8)
_WORKER: tuple[Encoder, ImageLimits, FeatureConfig] | None = None


def _start_worker(codebook: Codebook, limits: ImageLimits, features: FeatureConfig, heap_retain_mb: int) -> None:
    global _WORKER
    import cv2

    from kyb.heap import retain_freed_heap

    cv2.setNumThreads(1)  # one process a core: OpenCV's own threads would only compete with the others
    retain_freed_heap(heap_retain_mb)  # as the engine's process does: SIFT's large frees cost ~1.7x without
    _WORKER = (Encoder(codebook, features), limits, features)


def _encode_in_worker(item: IngestItem) -> EncodedReference | IngestOutcome:
    assert _WORKER is not None, "not an encoding worker"
    encoder, limits, features = _WORKER
    try:
        decoded, reference_id, regions = decode_reference(item, limits)
        encodings = []
        for region in regions:
            scaled = None if region is None else scaled_box(region, decoded.scale)
            found = extract_reference(decoded, scaled, features)
            encodings.append(encoder.encode_features(found[0], found[1], scale=decoded.scale))
    except KybError as exc:
        return IngestOutcome(item.source, "failed", message=str(exc))
    return EncodedReference(item, dataclasses.replace(decoded, rgb=_NO_PIXELS), reference_id, regions, encodings)


class EncodingPool:
    """``processes`` worker processes that encode ingest items with ``codebook``, in order.

    Processes are started fresh (``spawn``): a forked copy of a process that holds search threads,
    hnswlib graphs or a database connection is not safe to use.
    """

    def __init__(
        self, codebook: Codebook, limits: ImageLimits, features: FeatureConfig, processes: int, heap_retain_mb: int = 0
    ) -> None:
        if processes < 1:
            raise InvalidRequest(f"workers must be >= 1, not {processes}")
        self.processes = processes
        self._pool = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(codebook, limits, features, heap_retain_mb),
        )

    def encode(self, items: Iterator[IngestItem]) -> Iterator[EncodedReference | IngestOutcome]:
        """Each item's encoding (or its failure), in the order given, with a bounded number in flight."""
        pending: list[Future[EncodedReference | IngestOutcome]] = []
        for item in items:
            pending.append(self._pool.submit(_encode_in_worker, item))
            # Deep enough that the workers keep encoding while the writer commits a batch.
            if len(pending) >= _IN_FLIGHT * self.processes:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> EncodingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
