"""Conversions between engine objects and kyb.v1 messages, in one place so every service agrees.

Arrays travel as :class:`PackedArray` (raw little-endian C-order bytes + dtype + shape): no per-element
protobuf encoding, each array at the width it needs (int8 descriptors, uint16 words, polarity bits),
so a 2500-feature photo encoding is ~190 kB and converts with one copy per array. Everything that
comes off the wire is validated here and raises :class:`~kyb.errors.InvalidRequest` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from kyb.bandsearch import SimilarBand
from kyb.catalog import Album, Band, ReferenceImage
from kyb.encoder import Box, Encoding
from kyb.errors import InvalidRequest
from kyb.imageio import DecodedImage
from kyb.index import RankedLists
from kyb.results import IdentifiedObject, IdentifyResult, Match
from kyb.search import FoundObject
from kyb.v1 import common_pb2, gateway_pb2, matcher_pb2
from kyb.verify import Verification

__all__ = [
    "album_from_proto",
    "album_to_proto",
    "band_from_proto",
    "band_to_proto",
    "box_from_proto",
    "box_to_proto",
    "decoded_from_proto",
    "decoded_to_proto",
    "encoding_from_proto",
    "encoding_to_proto",
    "found_from_proto",
    "found_to_proto",
    "identify_result_from_proto",
    "identify_result_to_proto",
    "kind_from_proto",
    "kind_to_proto",
    "outline_from_proto",
    "outline_to_proto",
    "pack_array",
    "ranked_from_proto",
    "ranked_to_proto",
    "reference_to_proto",
    "rows_from_proto",
    "similar_band_from_proto",
    "similar_band_to_proto",
    "unpack_array",
    "verification_from_proto",
    "verification_to_proto",
]

#: dtypes allowed on the wire; anything else is refused before numpy sees the bytes.
_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "int32", "int64", "float32", "float64"})
_KINDS: dict[str, common_pb2.Kind] = {"logo": common_pb2.KIND_LOGO, "album_cover": common_pb2.KIND_ALBUM_COVER}
_KIND_NAMES: dict[int, str] = {value: key for key, value in _KINDS.items()}
_UINT16_MAX = 65535


def pack_array(array: np.ndarray) -> common_pb2.PackedArray:
    """Packs ``array`` (any shape, a dtype from the wire set) as little-endian C-order bytes."""
    array = np.asarray(array)
    if array.dtype.name not in _DTYPES:
        raise InvalidRequest(f"cannot send arrays of dtype {array.dtype}")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return common_pb2.PackedArray(data=little.tobytes(), dtype=array.dtype.name, shape=list(array.shape))


def unpack_array(
    message: common_pb2.PackedArray,
    *,
    name: str,
    dtype: str | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """The array in ``message`` (a read-only view of its bytes), checked against ``dtype``/``ndim``."""
    if message.dtype not in _DTYPES:
        raise InvalidRequest(f"{name}: unsupported dtype {message.dtype!r}")
    if dtype is not None and message.dtype != dtype:
        raise InvalidRequest(f"{name}: expected dtype {dtype}, got {message.dtype}")
    shape = tuple(int(v) for v in message.shape)
    if ndim is not None and len(shape) != ndim:
        raise InvalidRequest(f"{name}: expected {ndim} dimensions, got shape {list(shape)}")
    if any(v < 0 for v in shape):
        raise InvalidRequest(f"{name}: negative dimension in shape {list(shape)}")
    wire = np.dtype(message.dtype).newbyteorder("<")
    expected = math.prod(shape) * wire.itemsize
    if len(message.data) != expected:
        raise InvalidRequest(f"{name}: {len(message.data)} bytes do not hold shape {list(shape)} of {wire}")
    array = np.frombuffer(message.data, dtype=wire).reshape(shape)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _pack_words(words: np.ndarray) -> common_pb2.PackedArray:
    """Visual words as uint16 when they all fit (the default 16,384-word vocabulary), else int32."""
    words = np.asarray(words)
    fits = words.size == 0 or (int(words.min()) >= 0 and int(words.max()) <= _UINT16_MAX)
    return pack_array(words.astype(np.uint16 if fits else np.int32, copy=False))


def _unpack_words(message: common_pb2.PackedArray, *, name: str, ndim: int) -> np.ndarray:
    if message.dtype not in ("uint16", "int32"):
        raise InvalidRequest(f"{name}: expected dtype uint16 or int32, got {message.dtype}")
    return unpack_array(message, name=name, ndim=ndim).astype(np.int32, copy=False)


def encoding_to_proto(encoding: Encoding) -> common_pb2.Encoding:
    """An engine :class:`Encoding` as a message: arrays packed at the width they need, no field twice
    (a photo's words are the first column of its near words; the polarity flags are bits), lossless."""
    message = common_pb2.Encoding(
        xy=pack_array(np.asarray(encoding.xy, dtype=np.float32)),
        descriptors=pack_array(np.asarray(encoding.descriptors, dtype=np.int8)),
        global_vector=pack_array(np.asarray(encoding.global_vector, dtype=np.float32)),
        region_width=float(encoding.region_size[0]),
        region_height=float(encoding.region_size[1]),
        origin_x=float(encoding.origin[0]),
        origin_y=float(encoding.origin[1]),
        scale=float(encoding.scale),
        codebook_version=encoding.codebook_version,
    )
    near_words = encoding.near_words
    if near_words is not None and np.array_equal(near_words[:, 0], encoding.words):
        message.near_words.CopyFrom(_pack_words(near_words))
    else:
        message.words.CopyFrom(_pack_words(encoding.words))
        if near_words is not None:
            message.near_words.CopyFrom(_pack_words(near_words))
    if encoding.inverted is not None:
        flags = np.asarray(encoding.inverted, dtype=bool)
        twins = _twins(np.asarray(encoding.xy), flags)
        if twins:
            message.twins = twins
            message.xy.CopyFrom(pack_array(np.asarray(encoding.xy[: len(flags) - twins], dtype=np.float32)))
        else:
            message.inverted_bits.CopyFrom(pack_array(np.packbits(flags, bitorder="little")))
    return message


def _twins(xy: np.ndarray, inverted: np.ndarray) -> int:
    """T when the last T rows are exactly the inverted twins of the first T (the encoder's layout:
    twins appended, at their features' positions), else 0."""
    twins = int(inverted.sum())
    count = len(inverted) - twins
    if twins == 0 or twins > count or inverted[:count].any():
        return 0
    return twins if np.array_equal(xy[count:], xy[:twins]) else 0


def encoding_from_proto(message: common_pb2.Encoding, *, name: str = "encoding") -> Encoding:
    """Rebuilds an :class:`Encoding`; shapes must agree (N features, N positions, N words)."""
    xy = unpack_array(message.xy, name=f"{name}.xy", dtype="float32", ndim=2)
    descriptors = unpack_array(message.descriptors, name=f"{name}.descriptors", dtype="int8", ndim=2)
    vector = unpack_array(message.global_vector, name=f"{name}.global_vector", dtype="float32", ndim=1)
    twins = int(message.twins)
    inverted = None
    if twins:
        if not 0 < twins <= xy.shape[0] or message.HasField("inverted") or message.HasField("inverted_bits"):
            raise InvalidRequest(f"{name}: twins={twins} needs as many positions before them and no inverted flags")
        xy = np.concatenate([xy, xy[:twins]])
        inverted = np.arange(xy.shape[0]) >= xy.shape[0] - twins
    count = xy.shape[0]
    near_words = None
    if message.HasField("near_words"):
        near_words = _unpack_words(message.near_words, name=f"{name}.near_words", ndim=2)
        if near_words.shape[0] != count or near_words.shape[1] < 1:
            raise InvalidRequest(f"{name}: near_words {list(near_words.shape)} must be ({count}, k)")
    if message.HasField("words"):
        words = _unpack_words(message.words, name=f"{name}.words", ndim=1)
    elif near_words is not None:
        words = np.ascontiguousarray(near_words[:, 0])
    else:
        raise InvalidRequest(f"{name}: words are required when near_words are absent")
    if message.HasField("inverted_bits"):
        bits = unpack_array(message.inverted_bits, name=f"{name}.inverted_bits", dtype="uint8", ndim=1)
        if bits.shape[0] != (count + 7) // 8:
            raise InvalidRequest(
                f"{name}: inverted_bits holds {bits.shape[0]} bytes, {count} features need {(count + 7) // 8}"
            )
        inverted = np.unpackbits(bits, count=count, bitorder="little").astype(bool)
    elif message.HasField("inverted"):
        inverted = unpack_array(message.inverted, name=f"{name}.inverted", dtype="uint8", ndim=1).astype(bool)
    if inverted is not None and inverted.shape[0] != count:
        raise InvalidRequest(f"{name}: inverted {list(inverted.shape)} must be ({count},)")
    if xy.shape[1] != 2 or descriptors.shape[0] != count or words.shape[0] != count:
        raise InvalidRequest(
            f"{name}: xy {list(xy.shape)}, descriptors {list(descriptors.shape)} and words "
            f"{list(words.shape)} must describe the same features"
        )
    numbers = (message.region_width, message.region_height, message.origin_x, message.origin_y, message.scale)
    if not all(math.isfinite(v) for v in numbers) or message.scale <= 0:
        raise InvalidRequest(f"{name}: region, origin and scale must be finite and scale > 0")
    if not message.codebook_version:
        raise InvalidRequest(f"{name}: codebook_version is empty")
    return Encoding(
        xy=xy,
        descriptors=descriptors,
        words=words,
        global_vector=vector,
        region_size=(float(message.region_width), float(message.region_height)),
        origin=(float(message.origin_x), float(message.origin_y)),
        scale=float(message.scale),
        codebook_version=message.codebook_version,
        near_words=near_words,
        inverted=inverted,
    )


def decoded_to_proto(image: DecodedImage) -> common_pb2.RawImage:
    """Decoded pixels + provenance, so the next stage need not decode the bytes again."""
    return common_pb2.RawImage(
        rgb=pack_array(image.rgb),
        scale=image.scale,
        original_width=image.original_width,
        original_height=image.original_height,
        sha256=image.sha256,
        format=image.format,
        size_bytes=image.size_bytes,
    )


def decoded_from_proto(message: common_pb2.RawImage, *, name: str = "decoded") -> DecodedImage:
    """Rebuilds a :class:`DecodedImage`; pixels must be (H, W, 3) uint8 with a positive scale."""
    rgb = unpack_array(message.rgb, name=f"{name}.rgb", dtype="uint8", ndim=3)
    if rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise InvalidRequest(f"{name}.rgb: expected (height, width, 3) pixels, got {list(rgb.shape)}")
    if not math.isfinite(message.scale) or message.scale <= 0:
        raise InvalidRequest(f"{name}.scale: must be > 0, got {message.scale}")
    return DecodedImage(
        rgb=rgb,
        sha256=message.sha256,
        format=message.format,
        original_width=int(message.original_width) or round(rgb.shape[1] * message.scale),
        original_height=int(message.original_height) or round(rgb.shape[0] * message.scale),
        scale=float(message.scale),
        size_bytes=int(message.size_bytes),
    )


def box_to_proto(box: Sequence[float]) -> common_pb2.Box:
    x1, y1, x2, y2 = (float(v) for v in box)
    return common_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2)


def box_from_proto(message: common_pb2.Box, *, name: str = "box") -> Box:
    """``(x1, y1, x2, y2)``; refuses non-finite values and empty boxes."""
    values = (float(message.x1), float(message.y1), float(message.x2), float(message.y2))
    if not all(math.isfinite(v) for v in values):
        raise InvalidRequest(f"{name}: coordinates must be finite, got {list(values)}")
    if values[2] <= values[0] or values[3] <= values[1]:
        raise InvalidRequest(f"{name}: {list(values)} is empty; need x2 > x1 and y2 > y1")
    return values


def outline_to_proto(points: Iterable[Sequence[float]]) -> common_pb2.Outline:
    return common_pb2.Outline(points=[common_pb2.Point(x=float(p[0]), y=float(p[1])) for p in points])


def outline_from_proto(message: common_pb2.Outline) -> np.ndarray:
    """(4, 2) float32 corners, top-left first."""
    return np.array([[p.x, p.y] for p in message.points], dtype=np.float32).reshape(-1, 2)


def kind_to_proto(kind: str | None) -> common_pb2.Kind:
    return _KINDS.get(kind or "", common_pb2.KIND_UNSPECIFIED)


def kind_from_proto(kind: int) -> str | None:
    return _KIND_NAMES.get(kind)


def _text(value: str) -> str | None:
    return value or None


def band_to_proto(band: Band) -> common_pb2.Band:
    message = common_pb2.Band(
        band_id=band.band_id,
        name=band.name,
        country=band.country or "",
        location=band.location or "",
        status=band.status or "",
        genre=band.genre or "",
        themes=list(band.themes),
        label=band.label or "",
        years_active=band.years_active or "",
        members=list(band.members),
        similar_artists=list(band.similar_artists),
        links=list(band.links),
        logo_url=band.logo_url or "",
    )
    if band.formed_in is not None:
        message.formed_in = band.formed_in
    return message


def band_from_proto(message: common_pb2.Band) -> Band:
    """A catalog :class:`Band`; empty strings become None. Raises InvalidRequest for a bad record."""
    try:
        return Band(
            band_id=message.band_id,
            name=message.name,
            country=_text(message.country),
            location=_text(message.location),
            status=_text(message.status),
            formed_in=message.formed_in if message.HasField("formed_in") else None,
            genre=_text(message.genre),
            themes=tuple(message.themes),
            label=_text(message.label),
            years_active=_text(message.years_active),
            members=tuple(message.members),
            similar_artists=tuple(message.similar_artists),
            links=tuple(message.links),
            logo_url=_text(message.logo_url),
        )
    except ValueError as exc:
        raise InvalidRequest(f"band: {exc}") from None


def album_to_proto(album: Album) -> common_pb2.Album:
    message = common_pb2.Album(album_id=album.album_id, band_id=album.band_id, title=album.title)
    if album.year is not None:
        message.year = album.year
    return message


def album_from_proto(message: common_pb2.Album) -> Album:
    """A catalog :class:`Album`. Raises InvalidRequest for a bad record."""
    try:
        return Album(
            album_id=message.album_id,
            band_id=message.band_id,
            title=message.title,
            year=message.year if message.HasField("year") else None,
        )
    except ValueError as exc:
        raise InvalidRequest(f"album: {exc}") from None


def reference_to_proto(reference: ReferenceImage, shard: str = "") -> common_pb2.ReferenceInfo:
    return common_pb2.ReferenceInfo(
        reference_id=reference.reference_id,
        sha256=reference.sha256,
        kind=kind_to_proto(reference.kind),
        band_id=reference.band_id or "",
        album_id=reference.album_id or "",
        source=reference.source,
        width=reference.width,
        height=reference.height,
        size_bytes=reference.size_bytes,
        regions=[box_to_proto(box) for box in reference.regions],
        created_at=reference.created_at,
        shard=shard,
    )


def rows_from_proto(message: common_pb2.PackedArray, count: int, *, name: str = "rows") -> np.ndarray:
    """(K,) int64 feature rows, each in 0..count-1, strictly increasing (a subset, never repeats)."""
    rows = unpack_array(message, name=name, dtype="int32", ndim=1).astype(np.int64)
    if rows.size and (int(rows[0]) < 0 or int(rows[-1]) >= count or bool(np.any(np.diff(rows) <= 0))):
        raise InvalidRequest(f"{name}: must be increasing feature rows in 0..{count - 1}")
    return rows


def verification_to_proto(result: Verification) -> matcher_pb2.VerifiedMatch:
    """A verified reference as a matcher sends it (outline and homography in search pixels)."""
    return matcher_pb2.VerifiedMatch(
        reference_id=result.reference_id,
        inliers=int(result.inliers),
        score=float(result.score),
        outline=outline_to_proto(result.outline),
        inlier_rows=pack_array(np.asarray(result.inlier_rows).astype("int32")),
        tentative=int(result.tentative),
        homography=pack_array(np.asarray(result.homography, dtype=np.float64)),
        spread=float(result.spread),
        inverted=bool(result.inverted),
    )


def verification_from_proto(message: matcher_pb2.VerifiedMatch, count: int, *, name: str = "match") -> Verification:
    """A :class:`Verification` from a matcher's answer; its inlier rows must index ``count`` features."""
    rows = unpack_array(message.inlier_rows, name=f"{name}.inlier_rows", dtype="int32", ndim=1).astype(np.int64)
    if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= count):
        raise InvalidRequest(f"{name}.inlier_rows: rows outside the {count} features searched")
    outline = outline_from_proto(message.outline)
    if outline.shape != (4, 2):
        raise InvalidRequest(f"{name}.outline: expected 4 points, got {len(message.outline.points)}")
    homography = (
        unpack_array(message.homography, name=f"{name}.homography", dtype="float64", ndim=2)
        if message.HasField("homography")
        else np.full((3, 3), np.nan)
    )
    return Verification(
        reference_id=message.reference_id,
        inliers=int(message.inliers),
        tentative=int(message.tentative),
        homography=homography,
        outline=outline,
        inlier_rows=rows,
        spread=float(message.spread),
        score=float(message.score),
        inverted=bool(message.inverted),
    )


def ranked_to_proto(lists: RankedLists) -> tuple[list[matcher_pb2.ScoredKey], list[matcher_pb2.ScoredKey]]:
    """The global and word lists of a shortlist as ScoredKey messages (ShortlistResponse fields)."""
    return (
        [matcher_pb2.ScoredKey(reference_id=key, score=score) for key, score in lists.global_list],
        [matcher_pb2.ScoredKey(reference_id=key, score=score) for key, score in lists.words],
    )


def ranked_from_proto(response: matcher_pb2.ShortlistResponse) -> RankedLists:
    """A shard's :class:`RankedLists` from its ShortlistResponse."""
    return RankedLists(
        [(item.reference_id, float(item.score)) for item in response.global_list],
        [(item.reference_id, float(item.score)) for item in response.words],
    )


def found_to_proto(found: Sequence[FoundObject]) -> list[matcher_pb2.VerifiedObject]:
    """A search's objects as a matcher answers them (search pixels, rows of the searched features)."""
    return [
        matcher_pb2.VerifiedObject(
            match=verification_to_proto(item.verification),
            alternatives=[verification_to_proto(a) for a in item.alternatives],
        )
        for item in found
    ]


def found_from_proto(objects: Iterable[matcher_pb2.VerifiedObject], count: int, *, name: str) -> list[FoundObject]:
    """A matcher's objects back as :class:`~kyb.search.FoundObject` s over ``count`` searched features."""
    return [
        FoundObject(
            verification_from_proto(item.match, count, name=f"{name} object {i}"),
            [verification_from_proto(a, count, name=f"{name} object {i}") for a in item.alternatives],
        )
        for i, item in enumerate(objects)
    ]


def _match_to_proto(match: Match) -> common_pb2.Match:
    message = common_pb2.Match(
        reference_id=match.reference_id,
        kind=kind_to_proto(match.kind),
        band_id=match.band_id or "",
        album_id=match.album_id or "",
        score=match.score,
        inliers=match.inliers,
        outline=outline_to_proto(match.outline),
        shard=match.shard,
        inverted=match.inverted,
    )
    if match.band is not None:
        message.band.CopyFrom(band_to_proto(match.band))
    if match.album is not None:
        message.album.CopyFrom(album_to_proto(match.album))
    return message


def _outline_list(message: common_pb2.Outline) -> list[list[float]]:
    return [[round(p.x, 1), round(p.y, 1)] for p in message.points]


def _match_from_proto(message: common_pb2.Match) -> Match:
    return Match(
        reference_id=message.reference_id,
        score=message.score,
        inliers=message.inliers,
        outline=_outline_list(message.outline),
        band_id=message.band_id or None,
        album_id=message.album_id or None,
        kind=kind_from_proto(message.kind),
        band=band_from_proto(message.band) if message.HasField("band") else None,
        album=album_from_proto(message.album) if message.HasField("album") else None,
        shard=message.shard,
        inverted=message.inverted,
    )


def similar_band_to_proto(similar: SimilarBand) -> common_pb2.SimilarBand:
    return common_pb2.SimilarBand(
        band_id=similar.band_id,
        name=similar.name,
        genre=similar.genre or "",
        country=similar.country or "",
        similarity=similar.similarity,
    )


def similar_band_from_proto(message: common_pb2.SimilarBand) -> SimilarBand:
    genre, country = message.genre or None, message.country or None
    return SimilarBand(message.band_id, message.name, genre, country, message.similarity)


def identify_result_to_proto(result: IdentifyResult) -> gateway_pb2.IdentifyResponse:
    """An answer as the gateway sends it (the objects' best match repeated at object level)."""
    objects = []
    for obj in result.objects:
        matches = [_match_to_proto(m) for m in obj.matches]
        best = matches[0]
        message = common_pb2.IdentifiedObject(
            kind=best.kind,
            box=box_to_proto(obj.box),
            outline=best.outline,
            score=best.score,
            inliers=best.inliers,
            shard=best.shard,
            matches=matches,
            similar_bands=[similar_band_to_proto(similar) for similar in obj.similar_bands],
        )
        if best.HasField("band"):
            message.band.CopyFrom(best.band)
        if best.HasField("album"):
            message.album.CopyFrom(best.album)
        objects.append(message)
    response = gateway_pb2.IdentifyResponse(
        image=gateway_pb2.ImageInfo(width=result.width, height=result.height, sha256=result.sha256),
        features=result.features,
        objects=objects,
        partial=result.partial,
        missing_shards=result.missing_shards,
        request_id=result.request_id,
        candidates=result.candidates,
        catalog_unavailable=result.catalog_unavailable,
    )
    for key, value in result.timings_ms.items():
        response.timings_ms[key] = value
    return response


def identify_result_from_proto(response: gateway_pb2.IdentifyResponse) -> IdentifyResult:
    """A gateway's answer as the engine's :class:`~kyb.results.IdentifyResult` (what a client reads)."""
    objects = []
    for obj in response.objects:
        matches = [_match_from_proto(m) for m in obj.matches]
        box = [round(obj.box.x1, 1), round(obj.box.y1, 1), round(obj.box.x2, 1), round(obj.box.y2, 1)]
        similar = [similar_band_from_proto(message) for message in obj.similar_bands]
        objects.append(
            IdentifiedObject(outline=_outline_list(obj.outline), box=box, matches=matches, similar_bands=similar)
        )
    return IdentifyResult(
        objects=objects,
        width=response.image.width,
        height=response.image.height,
        sha256=response.image.sha256,
        features=response.features,
        timings_ms=dict(response.timings_ms),
        candidates=list(response.candidates),
        partial=response.partial,
        missing_shards=list(response.missing_shards),
        request_id=response.request_id,
        catalog_unavailable=response.catalog_unavailable,
    )
