"""The JSON shapes of the web API, for its OpenAPI description (``/openapi.json``).

They mirror :func:`kyb.client.identify_response_to_dict`; bands and albums are the catalog's own
record classes (pydantic reads their dataclass fields). Pixels are original (upright) photo pixels;
outlines are 4 points in the order top-left, top-right, bottom-right, bottom-left of the reference.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from kyb.catalog import Album, Band

__all__ = ["BandAnswer", "ErrorAnswer", "IdentifyAnswer"]

Point = list[float]


class Match(BaseModel):
    reference_id: str
    kind: str | None = Field(description="logo or album_cover")
    band_id: str | None
    album_id: str | None
    score: float = Field(description="inliers / (inliers + min_inliers), in (0, 1)")
    inliers: int
    inverted: bool = Field(description="found in the reference's opposite polarity (a white print of a dark logo)")
    outline: list[Point]
    shard: str
    band: Band | None
    album: Album | None


class IdentifiedObject(BaseModel):
    kind: str | None = Field(description="logo or album_cover")
    box: list[float] = Field(description="x1, y1, x2, y2 of the outline's bounding box")
    outline: list[Point] = Field(description="the reference's corners projected into the photo")
    band: Band | None
    album: Album | None
    score: float
    inliers: int
    shard: str
    matches: list[Match] = Field(description="the best match first, then other explanations")


class ImageInfo(BaseModel):
    width: int
    height: int
    sha256: str


class IdentifyAnswer(BaseModel):
    """What ``Gateway.Identify`` answered, as JSON."""

    image: ImageInfo
    features: int
    objects: list[IdentifiedObject] = Field(description="one per object found, best first")
    timings_ms: dict[str, float]
    partial: bool = Field(description="true when some matcher shard did not answer")
    missing_shards: list[str]


class BandAnswer(BaseModel):
    band: Band
    albums: list[Album]


class ErrorDetail(BaseModel):
    code: str = Field(description="the gRPC status name, e.g. INVALID_ARGUMENT or UNAVAILABLE")
    message: str = Field(description="one line for a person")


class ErrorAnswer(BaseModel):
    error: ErrorDetail
