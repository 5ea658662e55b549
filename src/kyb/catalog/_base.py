"""The backend-neutral catalog interface and the ``open_catalog`` URL factory.

Every backend (SQLite now, Postgres next) implements :class:`Catalog`; callers only see this interface,
so signatures use plain Python types and never a driver's connection or cursor. The import logic that
needs only the interface (:meth:`Catalog.import_parsed`) lives here, once, for all backends.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self

from ._model import (
    REFERENCE_KINDS,
    Album,
    Band,
    BandVector,
    CatalogError,
    ImportReport,
    IngestionRecord,
    ParsedCatalog,
    ReferenceEntry,
    ReferenceImage,
    RowError,
)

__all__ = ["Catalog"]


class Catalog(abc.ABC):
    """Bands, albums, reference images and the ingestion log, behind one interface.

    Implementations must be safe to call from a few threads at once, make every batch method atomic (all
    rows or none), and raise :class:`CatalogError` (or :class:`CatalogUnavailable` when the store cannot be
    reached) rather than driver exceptions. Use as a context manager to close it.
    """

    # -- lifecycle -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> int:
        """Apply pending schema migrations and return the schema version; safe to call repeatedly."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection(s); idempotent. Later calls raise :class:`CatalogError`."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- bands ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_band(self, band: Band) -> None:
        """Insert the band or replace every field of the band with the same ``band_id``."""

    @abc.abstractmethod
    def upsert_bands(self, bands: Iterable[Band]) -> int:
        """Upsert many bands in one transaction; return how many rows were written."""

    @abc.abstractmethod
    def get_band(self, band_id: str) -> Band | None:
        """Return the band with this id, or None."""

    @abc.abstractmethod
    def find_bands(self, name: str, limit: int = 20, *, fuzzy: bool = True) -> list[Band]:
        """Search band names, ignoring case and accents (see :func:`normalize_name`).

        Substring match; exact matches rank first, then prefix matches, then shorter names. Backends
        that can also find close spellings (Postgres) do so unless ``fuzzy`` is False.
        """

    @abc.abstractmethod
    def count_bands(self) -> int:
        """Return the number of bands."""

    # -- albums --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_album(self, album: Album) -> None:
        """Insert or replace the album; its band must exist (else :class:`CatalogError`)."""

    @abc.abstractmethod
    def upsert_albums(self, albums: Iterable[Album]) -> int:
        """Upsert many albums in one transaction (all or none); return how many rows were written."""

    @abc.abstractmethod
    def get_album(self, album_id: str) -> Album | None:
        """Return the album with this id, or None."""

    @abc.abstractmethod
    def list_albums(self, band_id: str) -> list[Album]:
        """Return the band's albums ordered by year (unknown years last), then title."""

    # -- reference images ----------------------------------------------------------------------------
    @abc.abstractmethod
    def add_reference(self, ref: ReferenceImage) -> bool:
        """Store the reference; return False (and change nothing) if ``reference_id`` already exists.

        Its band and album, when set, must exist (else :class:`CatalogError`).
        """

    @abc.abstractmethod
    def get_reference(self, reference_id: str) -> ReferenceImage | None:
        """Return the reference with this id, or None."""

    @abc.abstractmethod
    def get_reference_by_sha256(self, sha256: str) -> ReferenceImage | None:
        """Return the oldest reference made from the image with this SHA-256 (hex), or None."""

    @abc.abstractmethod
    def delete_reference(self, reference_id: str) -> bool:
        """Delete the reference; return whether it existed."""

    @abc.abstractmethod
    def list_references(
        self,
        *,
        band_id: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[ReferenceImage]:
        """Return references in insertion order (``created_at``, then id), optionally filtered, paged."""

    @abc.abstractmethod
    def count_references(self) -> int:
        """Return the number of references."""

    # -- ingestion log -------------------------------------------------------------------------------
    @abc.abstractmethod
    def record_ingestion(self, reference_id: str | None, sha256: str | None, status: str, message: str = "") -> None:
        """Append one line to the ingestion log (``status`` e.g. ``ok``, ``duplicate``, ``failed``).

        The log is kept even when the reference is later deleted, so failures stay visible.
        """

    @abc.abstractmethod
    def list_ingestions(self, limit: int = 100) -> list[IngestionRecord]:
        """Return the newest ``limit`` log lines, newest first."""

    # -- band search -------------------------------------------------------------------------------
    def get_bands(self, band_ids: Sequence[str]) -> dict[str, Band]:
        """The bands with these ids that exist, by id (one round trip in the backends that override it)."""
        found = {}
        for band_id in dict.fromkeys(band_ids):
            band = self.get_band(band_id)
            if band is not None:
                found[band_id] = band
        return found

    @abc.abstractmethod
    def scan_bands(
        self, *, updated_after: float | None = None, after_band_id: str = "", limit: int = 1000
    ) -> list[tuple[Band, float]]:
        """One page of ``(band, updated_at)`` in band_id order, after ``after_band_id``; only bands written
        after ``updated_after`` (unix seconds) when it is given."""

    @abc.abstractmethod
    def band_stamp(self) -> tuple[int, float]:
        """``(number of bands, latest updated_at)``: cheap, so readers can tell whether anything changed."""

    @abc.abstractmethod
    def upsert_band_vectors(self, vectors: Iterable[BandVector]) -> int:
        """Insert or replace band vectors (key: model, band_id) in one transaction, stamping ``updated_at``
        with the current time; return how many rows were written. Every band must exist."""

    @abc.abstractmethod
    def band_vector_states(self, model: str, band_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """``band_id -> BandVector.state`` for those of ``band_ids`` that have a vector of ``model``."""

    @abc.abstractmethod
    def list_band_vectors(
        self, model: str, *, updated_after: float | None = None, after_band_id: str = "", limit: int = 1000
    ) -> list[BandVector]:
        """One page of ``model``'s vectors in band_id order, after ``after_band_id``; only rows written
        after ``updated_after`` when it is given."""

    @abc.abstractmethod
    def band_vector_stamp(self, model: str) -> tuple[int, float]:
        """``(number of vectors of model, latest updated_at)``; ``(0, 0.0)`` when there are none."""

    @abc.abstractmethod
    def band_vector_ids(self, model: str) -> list[str]:
        """Every band_id that has a vector of ``model``."""

    @abc.abstractmethod
    def band_vector_models(self) -> list[str]:
        """The models that have vectors, the most recently written first."""

    @abc.abstractmethod
    def delete_band_vectors(self, model: str) -> int:
        """Delete every vector of ``model``; return how many there were."""

    # -- import --------------------------------------------------------------------------------------
    def import_parsed(self, parsed: ParsedCatalog) -> ImportReport:
        """Upsert a parsed catalog file's bands, then its albums; check references against the catalog.

        Rows that point at a band or album known neither to the file nor to the catalog become
        :class:`RowError` s instead of failing the batch. References are not stored here (they must be
        encoded first); the valid ones come back in :attr:`ImportReport.references`.
        """
        started = time.perf_counter()
        errors = list(parsed.errors)
        file_bands = {band.band_id for band in parsed.bands}
        bands_upserted = self.upsert_bands(parsed.bands) if parsed.bands else 0

        known_bands: dict[str, bool] = dict.fromkeys(file_bands, True)

        def band_exists(band_id: str) -> bool:
            if band_id not in known_bands:
                known_bands[band_id] = self.get_band(band_id) is not None
            return known_bands[band_id]

        albums: list[Album] = []
        for album in parsed.albums:
            if band_exists(album.band_id):
                albums.append(album)
                continue
            default_origin = (parsed.sources[0] if parsed.sources else "<catalog>", 0)
            source, line = parsed.album_origins.get(album.album_id, default_origin)
            errors.append(RowError(source, line, f"album {album.album_id!r}: unknown band_id {album.band_id!r}"))
        albums_upserted = self.upsert_albums(albums) if albums else 0

        album_bands = {album.album_id: album.band_id for album in albums}
        references: list[ReferenceEntry] = []
        for entry in parsed.references:
            problem, resolved = self._resolve_reference(entry, album_bands, band_exists)
            if problem:
                errors.append(RowError(entry.source, entry.line, problem))
            else:
                references.append(resolved)

        errors.sort(key=lambda err: (err.source, err.line))
        return ImportReport(
            bands_upserted=bands_upserted,
            albums_upserted=albums_upserted,
            references=references,
            errors=errors,
            sources=list(parsed.sources),
            elapsed_s=time.perf_counter() - started,
        )

    def _resolve_reference(
        self,
        entry: ReferenceEntry,
        album_bands: dict[str, str],
        band_exists: Callable[[str], bool],
    ) -> tuple[str, ReferenceEntry]:
        """Check one reference's band/album; return (problem, entry with band_id filled from its album)."""
        band_id = entry.band_id
        if entry.album_id is not None:
            album_band = album_bands.get(entry.album_id)
            if album_band is None:
                album = self.get_album(entry.album_id)
                album_band = album.band_id if album else None
            if album_band is None:
                return f"reference: unknown album_id {entry.album_id!r}", entry
            if band_id is not None and band_id != album_band:
                return (
                    f"reference: album {entry.album_id!r} belongs to band {album_band!r}, not {band_id!r}",
                    entry,
                )
            band_id = album_band
        if band_id is None:
            return "reference: needs a band_id or an album_id", entry
        if not band_exists(band_id):
            return f"reference: unknown band_id {band_id!r}", entry
        if band_id != entry.band_id:
            entry = ReferenceEntry(
                entry.image_path, entry.kind, band_id, entry.album_id, entry.regions, entry.line, entry.source
            )
        return "", entry

    # -- helpers for implementations -----------------------------------------------------------------
    @staticmethod
    def _reference_filter(band_id: str | None, kind: str | None, placeholder: str) -> tuple[str, list[Any]]:
        """``WHERE ...`` (with a trailing space, or "") and its parameters for list_references."""
        clauses = [(column, value) for column, value in (("band_id", band_id), ("kind", kind)) if value is not None]
        if not clauses:
            return "", []
        where = " AND ".join(f"{column} = {placeholder}" for column, _ in clauses)
        return f"WHERE {where} ", [value for _, value in clauses]

    @staticmethod
    def _check_kind(kind: str | None) -> None:
        """Raise :class:`CatalogError` for a kind filter that is not one of ``REFERENCE_KINDS``."""
        if kind is not None and kind not in REFERENCE_KINDS:
            raise CatalogError(f"unknown reference kind {kind!r}; expected one of {', '.join(REFERENCE_KINDS)}")

    @staticmethod
    def _check_page(limit: int, offset: int = 0) -> None:
        """Raise :class:`CatalogError` for a negative page size or offset."""
        if limit < 0 or offset < 0:
            raise CatalogError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")


def album_params(album: Album, now: float) -> tuple[Any, ...]:
    """The row an album upsert writes (both backends use the same column order)."""
    if not isinstance(album, Album):
        raise TypeError(f"expected an Album, got {type(album).__name__}")
    return (album.album_id, album.band_id, album.title, album.year, now)


def reference_params(ref: ReferenceImage, encode_regions: Callable[[Any], Any]) -> tuple[Any, ...]:
    """The row an add_reference writes; ``encode_regions`` stores the boxes (JSON text or JSONB)."""
    if not isinstance(ref, ReferenceImage):
        raise TypeError(f"expected a ReferenceImage, got {type(ref).__name__}")
    return (
        ref.reference_id,
        ref.sha256,
        ref.kind,
        ref.band_id,
        ref.album_id,
        ref.source,
        ref.width,
        ref.height,
        ref.size_bytes,
        encode_regions(ref.regions),
        ref.created_at,
    )


def reference_from_row(row: tuple[Any, ...], decode_regions: Callable[[Any], Any]) -> ReferenceImage:
    """A ReferenceImage from a reference_images row; ``decode_regions`` reads the regions column
    (JSON text in SQLite, JSONB already decoded in Postgres)."""
    (reference_id, sha256, kind, band_id, album_id, source, width, height, size_bytes, regions, created) = row
    return ReferenceImage(
        reference_id=reference_id,
        sha256=sha256,
        kind=kind,
        band_id=band_id,
        album_id=album_id,
        source=source,
        width=width,
        height=height,
        size_bytes=size_bytes,
        regions=tuple(tuple(box) for box in decode_regions(regions)),
        created_at=created,
    )
