"""What identification answers: each object found in a photo with the references that explain it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kyb.bandsearch import SimilarBand
from kyb.catalog import Album, Band

__all__ = ["IdentifiedObject", "IdentifyResult", "Match"]


@dataclass
class Match:
    """One reference verified in the photo; ``outline`` is in original photo pixels (4 x [x, y])."""

    reference_id: str
    score: float
    inliers: int
    outline: list[list[float]]
    band_id: str | None = None
    album_id: str | None = None
    kind: str | None = None
    band: Band | None = None
    album: Album | None = None
    #: The matcher shard that verified it (served answers; "" embedded).
    shard: str = ""
    #: Found in the opposite polarity to the reference (a white print of a black-on-white logo).
    inverted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_id": self.reference_id,
            "kind": self.kind,
            "band_id": self.band_id,
            "album_id": self.album_id,
            "score": round(self.score, 4),
            "inliers": self.inliers,
            "inverted": self.inverted,
            "outline": self.outline,
            "shard": self.shard,
            "band": self.band.to_dict() if self.band else None,
            "album": self.album.to_dict() if self.album else None,
        }


@dataclass
class IdentifiedObject:
    """One object in the photo with the references that explain it, best first."""

    outline: list[list[float]]
    box: list[float]
    matches: list[Match]
    #: Bands nearest to the best match's band by its catalog vector (filled where a band search is at
    #: hand: the gateway, ``kyb identify``), never the band itself.
    similar_bands: list[SimilarBand] = field(default_factory=list)

    @property
    def best(self) -> Match:
        return self.matches[0]

    @property
    def kind(self) -> str | None:
        return self.best.kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "box": self.box,
            "outline": self.outline,
            "band": self.best.band.to_dict() if self.best.band else None,
            "album": self.best.album.to_dict() if self.best.album else None,
            "score": round(self.best.score, 4),
            "inliers": self.best.inliers,
            "shard": self.best.shard,
            "matches": [m.to_dict() for m in self.matches],
            "similar_bands": [s.to_dict() for s in self.similar_bands],
        }


@dataclass
class IdentifyResult:
    """The answer for one photo."""

    objects: list[IdentifiedObject]
    width: int
    height: int
    sha256: str
    features: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    candidates: list[str] = field(default_factory=list)  # shortlist order, for retrieval metrics
    cache: str = ""  # "hit" / "miss" from the descriptor cache, "" when none was asked
    #: Served answers: some matcher shards did not answer (named), so objects may be missing.
    partial: bool = False
    missing_shards: list[str] = field(default_factory=list)
    #: The caller's request id, echoed (served answers).
    request_id: str = ""
    #: The catalog could not be read: band/album records are the ones last seen (or missing).
    catalog_unavailable: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image": {"width": self.width, "height": self.height, "sha256": self.sha256},
            "features": self.features,
            "objects": [o.to_dict() for o in self.objects],
            "timings_ms": {k: round(v, 1) for k, v in sorted(self.timings_ms.items())},
            "partial": self.partial,
            "missing_shards": list(self.missing_shards),
            "catalog_unavailable": self.catalog_unavailable,
        }
        if self.cache:
            out["cache"] = self.cache
        if self.request_id:
            out["request_id"] = self.request_id
        return out
