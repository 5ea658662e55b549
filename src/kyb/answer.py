"""From found objects to the answer: the one describe step of embedded and served identification.

:func:`describe` turns the search's :class:`~kyb.search.FoundObject` s into
:class:`~kyb.results.IdentifiedObject` s: outlines in original photo pixels, one line per band or
album (a band's several references read as one line), the catalog's metadata attached. The engine
calls it on its own search; the gateway on the merged answer of its shards and regions, and then
maps the result to protobuf (:mod:`kyb.rpc`), so both say the same thing the same way.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from kyb.catalog import Album, Band, Catalog, CatalogUnavailable, ReferenceImage
from kyb.index import base_reference_id
from kyb.results import IdentifiedObject, Match
from kyb.search import FoundObject
from kyb.verify import Verification

__all__ = ["CatalogLookup", "LastSeen", "describe"]

log = logging.getLogger(__name__)


class LastSeen:
    """The catalog rows an answer used last, kept (bounded, least recently used dropped) so that an
    answer can still name what it found while the catalog is down.

    It is a fallback, never a cache in front of the catalog: while the catalog answers, every request
    reads it (so a changed band is seen at once) and the copy here is refreshed; only when a read
    fails with :class:`~kyb.catalog.CatalogUnavailable` is the last row seen used, and the answer says
    so (``catalog_unavailable``).
    """

    def __init__(self, max_rows: int = 100_000) -> None:
        self.max_rows = max_rows
        self._rows: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, table: str, key: str, row: Any) -> None:
        with self._lock:
            self._rows[(table, key)] = row
            self._rows.move_to_end((table, key))
            while len(self._rows) > self.max_rows:
                self._rows.popitem(last=False)

    def get(self, table: str, key: str) -> Any:
        with self._lock:
            return self._rows.get((table, key))

    def __len__(self) -> int:
        return len(self._rows)


class CatalogLookup:
    """The catalog rows read while answering one request (a photo often shows one band twice).

    With ``last_seen``, a catalog that cannot be reached does not fail the answer: each row is the one
    last seen (or missing, when never seen), and :attr:`unavailable` is set so the answer is marked.
    """

    def __init__(self, catalog: Catalog | None, last_seen: LastSeen | None = None, *, unavailable: str = "") -> None:
        """``catalog`` None: it could not even be opened (``unavailable`` says why)."""
        self.catalog = catalog
        self.last_seen = last_seen
        #: Why the catalog could not be read for this answer ("" = it could).
        self.unavailable = unavailable
        self._rows: dict[tuple[str, str], Any] = {}

    def _read(self, table: str, key: str, read: Callable[[str], Any]) -> Any:
        if (table, key) in self._rows:
            return self._rows[(table, key)]
        if self.unavailable or self.catalog is None:  # one failure per answer: the next would wait again
            row = self.last_seen.get(table, key) if self.last_seen is not None else None
        else:
            try:
                row = read(key)
            except CatalogUnavailable as exc:
                if self.last_seen is None:
                    raise
                self.unavailable = str(exc)
                log.warning("catalog unavailable, answering with the metadata last seen: %s", exc)
                row = self.last_seen.get(table, key)
            else:
                if self.last_seen is not None and row is not None:
                    self.last_seen.put(table, key, row)
        self._rows[(table, key)] = row
        return row

    def _open(self) -> Catalog:
        assert self.catalog is not None
        return self.catalog

    def reference(self, reference_id: str) -> ReferenceImage | None:
        return cast(
            ReferenceImage | None, self._read("reference", reference_id, lambda k: self._open().get_reference(k))
        )

    def band(self, band_id: str | None) -> Band | None:
        return cast(Band | None, self._read("band", band_id, lambda k: self._open().get_band(k))) if band_id else None

    def album(self, album_id: str | None) -> Album | None:
        return (
            cast(Album | None, self._read("album", album_id, lambda k: self._open().get_album(k))) if album_id else None
        )


def _match(verification: Verification, scale: float, lookup: CatalogLookup, shard: str) -> Match:
    reference_id = base_reference_id(verification.reference_id)
    outline = [[round(float(x) * scale, 1), round(float(y) * scale, 1)] for x, y in verification.outline]
    match = Match(
        reference_id=reference_id,
        score=float(verification.score),
        inliers=int(verification.inliers),
        outline=outline,
        shard=shard,
        inverted=bool(verification.inverted),
    )
    reference = lookup.reference(reference_id)
    if reference is not None:
        match.kind = reference.kind
        match.band_id = reference.band_id
        match.album_id = reference.album_id
        match.band = lookup.band(reference.band_id)
        match.album = lookup.album(reference.album_id)
    return match


def describe(
    found: Sequence[FoundObject],
    scale: float,
    lookup: CatalogLookup,
    *,
    alternatives: int,
    shard_of: Mapping[str, str] | None = None,
) -> list[IdentifiedObject]:
    """The answer's objects for ``found`` (search pixels; ``scale`` maps them to original pixels).

    Each object lists its best match and then up to ``alternatives`` other bands/albums verified on
    it; ``shard_of`` names the matcher shard that verified each index key (served answers).
    """
    objects: list[IdentifiedObject] = []
    for item in found:
        matches: list[Match] = []
        seen: set[tuple[str | None, str | None]] = set()
        for verification in [item.verification, *item.alternatives]:
            shard = (shard_of or {}).get(verification.reference_id, "")
            match = _match(verification, scale, lookup, shard)
            key = (match.band_id, match.album_id)
            if key in seen and matches:
                continue  # several references of one band/album: one line each is enough
            seen.add(key)
            matches.append(match)
            if len(matches) > alternatives:
                break
        xs = [p[0] for p in matches[0].outline]
        ys = [p[1] for p in matches[0].outline]
        objects.append(
            IdentifiedObject(
                outline=matches[0].outline,
                box=[round(min(xs), 1), round(min(ys), 1), round(max(xs), 1), round(max(ys), 1)],
                matches=matches,
            )
        )
    return objects
