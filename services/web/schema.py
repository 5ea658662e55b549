"""The JSON shapes of the web API, for its OpenAPI description (``/openapi.json``).

They mirror :mod:`kyb.client`'s dicts (``identify_response_to_dict``, ``reference_info_to_dict``);
bands and albums are the catalog's own record classes (pydantic reads their dataclass fields).
Pixels are original (upright) photo pixels; outlines are 4 points in the order top-left, top-right,
bottom-right, bottom-left of the reference. Errors are RFC 9457 problem details (:class:`Problem`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kyb.catalog import Album, Band

__all__ = [
    "BandAnswer",
    "BandList",
    "BatchAnswer",
    "DeleteAnswer",
    "IdentifyAnswer",
    "IngestAnswer",
    "Problem",
    "ReferenceInfo",
    "ReferencePage",
]

Point = list[float]


class SimilarBand(BaseModel):
    """A band near another one by genre, themes and country (never the band itself)."""

    band_id: str
    name: str
    genre: str | None
    country: str | None
    similarity: float = Field(description="cosine similarity of the two bands' vectors, at most 1")


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
    similar_bands: list[SimilarBand] = Field(default=[], description="bands like this object's band, best first")


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
    catalog_unavailable: bool = Field(
        default=False, description="the catalog could not be read: band and album records are the last ones seen"
    )


class BandAnswer(BaseModel):
    band: Band
    albums: list[Album]
    similar_bands: list[SimilarBand] = Field(default=[], description="bands like this one, best first")


class FoundBand(BaseModel):
    """Every field of a band (as in ``BandAnswer.band``) plus its score."""

    model_config = ConfigDict(extra="allow")

    band_id: str
    name: str
    score: float = Field(description="higher is better; an exact name scores above 10")


class BandList(BaseModel):
    """What ``Gateway.SearchBands`` answered: bands by meaning and name within the filters, best first."""

    bands: list[FoundBand]
    mode: str = Field(description='"meaning+name", or "name" when the search could not use the meaning of words')
    notice: str = Field(description="why the search was by name only, for a person; empty otherwise")


class ReferenceInfo(BaseModel):
    reference_id: str = Field(description="stable id derived from the image's SHA-256 and its regions")
    sha256: str
    kind: str | None = Field(description="logo or album_cover")
    band_id: str | None
    album_id: str | None
    source: str = Field(description="where the image came from (a path, a URI or the uploaded file's name)")
    width: int
    height: int
    size_bytes: int
    regions: list[list[float]] = Field(description="x1, y1, x2, y2 boxes indexed; empty = the whole image")
    created_at: float = Field(description="when it was ingested, Unix seconds")
    shard: str = Field(description="the matcher shard that holds it")


class ReferencePage(BaseModel):
    references: list[ReferenceInfo] = Field(description="in ingestion order")
    next_page_token: str = Field(description="pass as page_token for the next page; empty on the last page")


class IngestAnswer(BaseModel):
    """What ``Gateway.Ingest`` answered for the one image."""

    source: str
    status: str = Field(description="added, replaced or unchanged (the same bytes and regions again)")
    reference_id: str | None
    message: str
    shard: str


class DeleteAnswer(BaseModel):
    deleted_from_index: bool
    deleted_from_catalog: bool
    shard: str


class Problem(BaseModel):
    """An error as RFC 9457 problem details (``application/problem+json``)."""

    type: str = Field(description='"about:blank": the HTTP status and ``code`` say what happened')
    title: str = Field(description="the HTTP status phrase")
    status: int
    detail: str = Field(description="one line for a person")
    instance: str | None = Field(default=None, description="the request path")
    code: str = Field(description="the gRPC status name behind it, e.g. INVALID_ARGUMENT or UNAVAILABLE")
    request_id: str = Field(
        default="", description="the X-Request-Id of the answer: the web front's log has the full text under it"
    )


class BatchResult(BaseModel):
    index: int = Field(description="position of the photo in the request, from 0")
    filename: str
    answer: IdentifyAnswer | None = Field(description="the photo's answer, when it could be identified")
    error: Problem | None = Field(description="why not, when it could not (the other photos are unaffected)")


class BatchAnswer(BaseModel):
    """One result per photo, in request order (``Gateway.IdentifyBatch``)."""

    results: list[BatchResult]
