"""Band vectors in the catalog: what text a band is embedded from, and keeping the vectors current.

:func:`refresh_band_vectors` walks the catalog's bands, embeds those whose text or filter fields
changed since their vector was made (or that have none), in batches, and writes the vectors back with
the band (table ``band_vectors``, one row per band and model). Running it again with nothing changed
embeds nothing, so importing a file twice costs one scan.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kyb.catalog import Band, BandVector, Catalog

from ._embedder import Embedder

__all__ = ["RefreshReport", "band_text", "pack_vector", "refresh_band_vectors", "text_digest", "unpack_vectors"]

log = logging.getLogger(__name__)

#: Bumped when :func:`band_text` changes, so every band is embedded again from the new text.
TEXT_FORMAT = 1
_PAGE = 1000


def _listed(text: str | None) -> str:
    # The scraped tables separate list items with "| " inside one field.
    return ", ".join(part.strip() for part in (text or "").split("|") if part.strip())


def band_text(band: Band) -> str:
    """The sentence a band is embedded from: genre, lyrical themes, country, then the name.

    Meaning first (the model weighs early words more and reads at most 256 word pieces), the name last
    so that a name that is a word ("Death", "Mortuary") adds its sense without dominating.
    """
    parts = []
    genre = _listed(band.genre)
    country = (band.country or "").strip()
    if country in ("", "Unknown"):
        origin = ""
    elif country == "International":
        origin = " with members from several countries"
    else:
        origin = f" from {_listed(country)}"
    parts.append(f"{genre or 'Metal'} band{origin}.")
    themes = ", ".join(theme.strip() for theme in band.themes if theme.strip())
    if themes:
        parts.append(f"Lyrical themes: {themes}.")
    name = band.name.strip()
    parts.append(f"Name: {name}" + ("" if name.endswith((".", "!", "?")) else "."))
    return " ".join(parts)


def text_digest(text: str) -> str:
    """A short digest of a band's text (with :data:`TEXT_FORMAT`), stored with its vector."""
    return hashlib.sha256(f"{TEXT_FORMAT}\n{text}".encode()).hexdigest()[:24]


def pack_vector(vector: np.ndarray) -> bytes:
    """A unit vector as float16 little-endian bytes (half the size of float32; cosine changes < 1e-3)."""
    return np.asarray(vector, dtype="<f2").tobytes()


def unpack_vectors(blobs: Sequence[bytes]) -> np.ndarray:
    """``(n, dim)`` float32 unit rows from :func:`pack_vector` bytes (renormalised after the rounding)."""
    if not blobs:
        return np.zeros((0, 0), np.float32)
    matrix = np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), -1).astype(np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


@dataclass
class RefreshReport:
    """What one :func:`refresh_band_vectors` did."""

    model: str
    scanned: int = 0
    embedded: int = 0
    unchanged: int = 0
    #: Latest ``updated_at`` of the bands seen: pass it as ``updated_after`` next time.
    bands_stamp: float = 0.0
    elapsed_s: float = 0.0

    def line(self) -> str:
        return (
            f"band vectors ({self.model}): {self.embedded} embedded, {self.unchanged} unchanged "
            f"of {self.scanned} bands in {self.elapsed_s:.1f} s"
        )


def refresh_band_vectors(
    catalog: Catalog,
    embedder: Embedder,
    *,
    updated_after: float | None = None,
    rebuild: bool = False,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    text_of: Callable[[Band], str] = band_text,
) -> RefreshReport:
    """Embed every band whose vector is missing or stale; ``updated_after`` limits the walk to bands
    written since then, ``rebuild`` drops this model's vectors first. ``progress(n)`` is called as
    bands are done. ``text_of`` is :func:`band_text` unless a benchmark compares another text."""
    started = time.perf_counter()
    report = RefreshReport(embedder.model)
    if rebuild:
        dropped = catalog.delete_band_vectors(embedder.model)
        log.info("dropped %d band vectors of %s", dropped, embedder.model)
    pending: list[tuple[Band, str]] = []

    def flush(count: int) -> None:
        batch, pending[:] = pending[:count], pending[count:]
        vectors = embedder.embed([text for _, text in batch])
        catalog.upsert_band_vectors(
            BandVector(
                band_id=band.band_id,
                model=embedder.model,
                text_sha=text_digest(text),
                vector=pack_vector(vector),
                country=band.country,
                status=band.status,
                formed_in=band.formed_in,
            )
            for (band, text), vector in zip(batch, vectors, strict=True)
        )
        report.embedded += len(batch)
        if progress:
            progress(len(batch))

    after = ""
    while True:
        page = catalog.scan_bands(updated_after=updated_after, after_band_id=after, limit=_PAGE)
        if not page:
            break
        after = page[-1][0].band_id
        states = catalog.band_vector_states(embedder.model, [band.band_id for band, _ in page])
        unchanged = 0
        for band, updated_at in page:
            report.bands_stamp = max(report.bands_stamp, updated_at)
            text = text_of(band)
            state = (text_digest(text), band.country, band.status, band.formed_in)
            if states.get(band.band_id) == state:
                unchanged += 1
            else:
                pending.append((band, text))
        report.scanned += len(page)
        report.unchanged += unchanged
        if progress and unchanged:
            progress(unchanged)
        while len(pending) >= batch_size:
            flush(batch_size)
    if pending:
        flush(len(pending))
    report.elapsed_s = time.perf_counter() - started
    return report
