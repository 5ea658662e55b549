"""The JSON shapes of the web API, for its OpenAPI description (``/openapi.json``).

They mirror :func:`kyb.client.identify_response_to_dict` and the catalog records' ``to_dict()``:
pixels are original (upright) photo pixels, outlines are 4 points in the order top-left, top-right,
bottom-right, bottom-left of the reference.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["Album", "Band", "BandAnswer", "ErrorAnswer", "IdentifyAnswer"]

Point = list[float]


class Band(BaseModel):
    band_id: str
    name: str
    country: str | None = None
    location: str | None = None
    status: str | None = None
    formed_in: int | None = None
    genre: str | None = None
    themes: list[str] = []
    label: str | None = None
    years_active: str | None = None
    members: list[str] = []
    similar_artists: list[str] = []
    links: list[str] = []
    logo_url: str | None = None


class Album(BaseModel):
    album_id: str
    band_id: str
    title: str
    year: int | None = None


class Match(BaseModel):
    reference_id: str
    kind: str | None = Field(description="logo or album_cover")
    band_id: str | None
    album_id: str | None
    score: float = Field(description="inliers / (inliers + min_inliers), in (0, 1)")
    inliers: int
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
