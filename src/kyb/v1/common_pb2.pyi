from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    KIND_LOGO: _ClassVar[Kind]
    KIND_ALBUM_COVER: _ClassVar[Kind]
KIND_UNSPECIFIED: Kind
KIND_LOGO: Kind
KIND_ALBUM_COVER: Kind

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Outline(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class PackedArray(_message.Message):
    __slots__ = ("data", "dtype", "shape")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, data: _Optional[bytes] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("rgb", "scale", "original_width", "original_height", "sha256", "format", "size_bytes")
    RGB_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_WIDTH_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    rgb: PackedArray
    scale: float
    original_width: int
    original_height: int
    sha256: str
    format: str
    size_bytes: int
    def __init__(self, rgb: _Optional[_Union[PackedArray, _Mapping]] = ..., scale: _Optional[float] = ..., original_width: _Optional[int] = ..., original_height: _Optional[int] = ..., sha256: _Optional[str] = ..., format: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class Encoding(_message.Message):
    __slots__ = ("xy", "descriptors", "words", "global_vector", "region_width", "region_height", "origin_x", "origin_y", "scale", "codebook_version", "near_words", "inverted", "inverted_bits", "twins")
    XY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_VECTOR_FIELD_NUMBER: _ClassVar[int]
    REGION_WIDTH_FIELD_NUMBER: _ClassVar[int]
    REGION_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_X_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_Y_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    CODEBOOK_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEAR_WORDS_FIELD_NUMBER: _ClassVar[int]
    INVERTED_FIELD_NUMBER: _ClassVar[int]
    INVERTED_BITS_FIELD_NUMBER: _ClassVar[int]
    TWINS_FIELD_NUMBER: _ClassVar[int]
    xy: PackedArray
    descriptors: PackedArray
    words: PackedArray
    global_vector: PackedArray
    region_width: float
    region_height: float
    origin_x: float
    origin_y: float
    scale: float
    codebook_version: str
    near_words: PackedArray
    inverted: PackedArray
    inverted_bits: PackedArray
    twins: int
    def __init__(self, xy: _Optional[_Union[PackedArray, _Mapping]] = ..., descriptors: _Optional[_Union[PackedArray, _Mapping]] = ..., words: _Optional[_Union[PackedArray, _Mapping]] = ..., global_vector: _Optional[_Union[PackedArray, _Mapping]] = ..., region_width: _Optional[float] = ..., region_height: _Optional[float] = ..., origin_x: _Optional[float] = ..., origin_y: _Optional[float] = ..., scale: _Optional[float] = ..., codebook_version: _Optional[str] = ..., near_words: _Optional[_Union[PackedArray, _Mapping]] = ..., inverted: _Optional[_Union[PackedArray, _Mapping]] = ..., inverted_bits: _Optional[_Union[PackedArray, _Mapping]] = ..., twins: _Optional[int] = ...) -> None: ...

class Band(_message.Message):
    __slots__ = ("band_id", "name", "country", "location", "status", "formed_in", "genre", "themes", "label", "years_active", "members", "similar_artists", "links", "logo_url")
    BAND_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FORMED_IN_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    THEMES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    YEARS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    SIMILAR_ARTISTS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    LOGO_URL_FIELD_NUMBER: _ClassVar[int]
    band_id: str
    name: str
    country: str
    location: str
    status: str
    formed_in: int
    genre: str
    themes: _containers.RepeatedScalarFieldContainer[str]
    label: str
    years_active: str
    members: _containers.RepeatedScalarFieldContainer[str]
    similar_artists: _containers.RepeatedScalarFieldContainer[str]
    links: _containers.RepeatedScalarFieldContainer[str]
    logo_url: str
    def __init__(self, band_id: _Optional[str] = ..., name: _Optional[str] = ..., country: _Optional[str] = ..., location: _Optional[str] = ..., status: _Optional[str] = ..., formed_in: _Optional[int] = ..., genre: _Optional[str] = ..., themes: _Optional[_Iterable[str]] = ..., label: _Optional[str] = ..., years_active: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., similar_artists: _Optional[_Iterable[str]] = ..., links: _Optional[_Iterable[str]] = ..., logo_url: _Optional[str] = ...) -> None: ...

class SimilarBand(_message.Message):
    __slots__ = ("band_id", "name", "genre", "country", "similarity")
    BAND_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    band_id: str
    name: str
    genre: str
    country: str
    similarity: float
    def __init__(self, band_id: _Optional[str] = ..., name: _Optional[str] = ..., genre: _Optional[str] = ..., country: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class Album(_message.Message):
    __slots__ = ("album_id", "band_id", "title", "year")
    ALBUM_ID_FIELD_NUMBER: _ClassVar[int]
    BAND_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    album_id: str
    band_id: str
    title: str
    year: int
    def __init__(self, album_id: _Optional[str] = ..., band_id: _Optional[str] = ..., title: _Optional[str] = ..., year: _Optional[int] = ...) -> None: ...

class ReferenceInfo(_message.Message):
    __slots__ = ("reference_id", "sha256", "kind", "band_id", "album_id", "source", "width", "height", "size_bytes", "regions", "created_at", "shard")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BAND_ID_FIELD_NUMBER: _ClassVar[int]
    ALBUM_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    sha256: str
    kind: Kind
    band_id: str
    album_id: str
    source: str
    width: int
    height: int
    size_bytes: int
    regions: _containers.RepeatedCompositeFieldContainer[Box]
    created_at: float
    shard: str
    def __init__(self, reference_id: _Optional[str] = ..., sha256: _Optional[str] = ..., kind: _Optional[_Union[Kind, str]] = ..., band_id: _Optional[str] = ..., album_id: _Optional[str] = ..., source: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., size_bytes: _Optional[int] = ..., regions: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., created_at: _Optional[float] = ..., shard: _Optional[str] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("reference_id", "kind", "band_id", "album_id", "score", "inliers", "outline", "shard", "band", "album", "inverted")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BAND_ID_FIELD_NUMBER: _ClassVar[int]
    ALBUM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    INLIERS_FIELD_NUMBER: _ClassVar[int]
    OUTLINE_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    ALBUM_FIELD_NUMBER: _ClassVar[int]
    INVERTED_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    kind: Kind
    band_id: str
    album_id: str
    score: float
    inliers: int
    outline: Outline
    shard: str
    band: Band
    album: Album
    inverted: bool
    def __init__(self, reference_id: _Optional[str] = ..., kind: _Optional[_Union[Kind, str]] = ..., band_id: _Optional[str] = ..., album_id: _Optional[str] = ..., score: _Optional[float] = ..., inliers: _Optional[int] = ..., outline: _Optional[_Union[Outline, _Mapping]] = ..., shard: _Optional[str] = ..., band: _Optional[_Union[Band, _Mapping]] = ..., album: _Optional[_Union[Album, _Mapping]] = ..., inverted: _Optional[bool] = ...) -> None: ...

class IdentifiedObject(_message.Message):
    __slots__ = ("kind", "box", "outline", "band", "album", "score", "inliers", "shard", "matches", "similar_bands")
    KIND_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    OUTLINE_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    ALBUM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    INLIERS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    SIMILAR_BANDS_FIELD_NUMBER: _ClassVar[int]
    kind: Kind
    box: Box
    outline: Outline
    band: Band
    album: Album
    score: float
    inliers: int
    shard: str
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    similar_bands: _containers.RepeatedCompositeFieldContainer[SimilarBand]
    def __init__(self, kind: _Optional[_Union[Kind, str]] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., outline: _Optional[_Union[Outline, _Mapping]] = ..., band: _Optional[_Union[Band, _Mapping]] = ..., album: _Optional[_Union[Album, _Mapping]] = ..., score: _Optional[float] = ..., inliers: _Optional[int] = ..., shard: _Optional[str] = ..., matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., similar_bands: _Optional[_Iterable[_Union[SimilarBand, _Mapping]]] = ...) -> None: ...
