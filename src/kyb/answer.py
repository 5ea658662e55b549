"""From found objects to the answer: the one describe step of embedded and served identification.

:func:`describe` turns the search's :class:`~kyb.search.FoundObject` s into
:class:`~kyb.results.IdentifiedObject` s: outlines in original photo pixels, one line per band or
album (a band's several references read as one line), the catalog's metadata attached. The engine
calls it on its own search; the gateway on the merged answer of its shards and regions, and then
maps the result to protobuf (:mod:`kyb.rpc`), so both say the same thing the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kyb.catalog import Album, Band, Catalog, ReferenceImage
from kyb.index import base_reference_id
from kyb.results import IdentifiedObject, Match
from kyb.search import FoundObject
from kyb.verify import Verification

__all__ = ["CatalogLookup", "describe"]


@dataclass
class CatalogLookup:
    """The catalog rows read while answering one request (a photo often shows one band twice)."""

    catalog: Catalog
    references: dict[str, ReferenceImage | None] = field(default_factory=dict)
    bands: dict[str, Band | None] = field(default_factory=dict)
    albums: dict[str, Album | None] = field(default_factory=dict)

    def reference(self, reference_id: str) -> ReferenceImage | None:
        if reference_id not in self.references:
            self.references[reference_id] = self.catalog.get_reference(reference_id)
        return self.references[reference_id]

    def band(self, band_id: str | None) -> Band | None:
        if not band_id:
            return None
        if band_id not in self.bands:
            self.bands[band_id] = self.catalog.get_band(band_id)
        return self.bands[band_id]

    def album(self, album_id: str | None) -> Album | None:
        if not album_id:
            return None
        if album_id not in self.albums:
            self.albums[album_id] = self.catalog.get_album(album_id)
        return self.albums[album_id]


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
