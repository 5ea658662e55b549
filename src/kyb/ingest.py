"""One ingest pipeline for the embedded engine and the gateway: what an item is, its id and index
keys, its catalog row, its status, and the log line of a failure.

A reference's id comes from its content (and its regions), so ingesting the same file again is
``unchanged`` and the same photo with other boxes is another reference. The catalog row is written
before the index entries: a crash in between leaves a row the index does not know, which the same
ingest run again completes (it is not ``unchanged`` until both exist).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kyb.catalog import Catalog, ReferenceImage, validate_box
from kyb.config import ImageLimits
from kyb.encoder import Box, scaled_box
from kyb.errors import InvalidRequest
from kyb.imageio import DecodedImage, decode_image

__all__ = [
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
