from kyb.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdentifyRequest(_message.Message):
    __slots__ = ("image", "crop", "request_id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    crop: _common_pb2.Box
    request_id: str
    def __init__(self, image: _Optional[bytes] = ..., crop: _Optional[_Union[_common_pb2.Box, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ImageInfo(_message.Message):
    __slots__ = ("width", "height", "sha256")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    sha256: str
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("image", "features", "objects", "partial", "missing_shards", "timings_ms", "request_id", "candidates", "catalog_unavailable")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CATALOG_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    image: ImageInfo
    features: int
    objects: _containers.RepeatedCompositeFieldContainer[_common_pb2.IdentifiedObject]
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[str]
    timings_ms: _containers.ScalarMap[str, float]
    request_id: str
    candidates: _containers.RepeatedScalarFieldContainer[str]
    catalog_unavailable: bool
    def __init__(self, image: _Optional[_Union[ImageInfo, _Mapping]] = ..., features: _Optional[int] = ..., objects: _Optional[_Iterable[_Union[_common_pb2.IdentifiedObject, _Mapping]]] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[str]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., request_id: _Optional[str] = ..., candidates: _Optional[_Iterable[str]] = ..., catalog_unavailable: _Optional[bool] = ...) -> None: ...

class IdentifyBatchResult(_message.Message):
    __slots__ = ("request_id", "index", "response", "code", "message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    index: int
    response: IdentifyResponse
    code: int
    message: str
    def __init__(self, request_id: _Optional[str] = ..., index: _Optional[int] = ..., response: _Optional[_Union[IdentifyResponse, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("image", "kind", "band_id", "album_id", "regions", "source", "band", "album")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BAND_ID_FIELD_NUMBER: _ClassVar[int]
    ALBUM_ID_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    ALBUM_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    kind: _common_pb2.Kind
    band_id: str
    album_id: str
    regions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Box]
    source: str
    band: _common_pb2.Band
    album: _common_pb2.Album
    def __init__(self, image: _Optional[bytes] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., band_id: _Optional[str] = ..., album_id: _Optional[str] = ..., regions: _Optional[_Iterable[_Union[_common_pb2.Box, _Mapping]]] = ..., source: _Optional[str] = ..., band: _Optional[_Union[_common_pb2.Band, _Mapping]] = ..., album: _Optional[_Union[_common_pb2.Album, _Mapping]] = ...) -> None: ...

class IngestResult(_message.Message):
    __slots__ = ("index", "source", "status", "reference_id", "message", "shard")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    index: int
    source: str
    status: str
    reference_id: str
    message: str
    shard: str
    def __init__(self, index: _Optional[int] = ..., source: _Optional[str] = ..., status: _Optional[str] = ..., reference_id: _Optional[str] = ..., message: _Optional[str] = ..., shard: _Optional[str] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("results", "added", "replaced", "unchanged", "failed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[IngestResult]
    added: int
    replaced: int
    unchanged: int
    failed: int
    def __init__(self, results: _Optional[_Iterable[_Union[IngestResult, _Mapping]]] = ..., added: _Optional[int] = ..., replaced: _Optional[int] = ..., unchanged: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class GetBandRequest(_message.Message):
    __slots__ = ("band_id",)
    BAND_ID_FIELD_NUMBER: _ClassVar[int]
    band_id: str
    def __init__(self, band_id: _Optional[str] = ...) -> None: ...

class GetBandResponse(_message.Message):
    __slots__ = ("band", "albums", "similar_bands")
    BAND_FIELD_NUMBER: _ClassVar[int]
    ALBUMS_FIELD_NUMBER: _ClassVar[int]
    SIMILAR_BANDS_FIELD_NUMBER: _ClassVar[int]
    band: _common_pb2.Band
    albums: _containers.RepeatedCompositeFieldContainer[_common_pb2.Album]
    similar_bands: _containers.RepeatedCompositeFieldContainer[_common_pb2.SimilarBand]
    def __init__(self, band: _Optional[_Union[_common_pb2.Band, _Mapping]] = ..., albums: _Optional[_Iterable[_Union[_common_pb2.Album, _Mapping]]] = ..., similar_bands: _Optional[_Iterable[_Union[_common_pb2.SimilarBand, _Mapping]]] = ...) -> None: ...

class SearchBandsRequest(_message.Message):
    __slots__ = ("query", "limit", "country", "status", "formed_from", "formed_to")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FORMED_FROM_FIELD_NUMBER: _ClassVar[int]
    FORMED_TO_FIELD_NUMBER: _ClassVar[int]
    query: str
    limit: int
    country: str
    status: str
    formed_from: int
    formed_to: int
    def __init__(self, query: _Optional[str] = ..., limit: _Optional[int] = ..., country: _Optional[str] = ..., status: _Optional[str] = ..., formed_from: _Optional[int] = ..., formed_to: _Optional[int] = ...) -> None: ...

class SearchBandsResponse(_message.Message):
    __slots__ = ("bands", "scores", "mode", "notice")
    BANDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    bands: _containers.RepeatedCompositeFieldContainer[_common_pb2.Band]
    scores: _containers.RepeatedScalarFieldContainer[float]
    mode: str
    notice: str
    def __init__(self, bands: _Optional[_Iterable[_Union[_common_pb2.Band, _Mapping]]] = ..., scores: _Optional[_Iterable[float]] = ..., mode: _Optional[str] = ..., notice: _Optional[str] = ...) -> None: ...

class ListReferencesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "band_id", "kind")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BAND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    band_id: str
    kind: _common_pb2.Kind
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., band_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ...) -> None: ...

class ListReferencesResponse(_message.Message):
    __slots__ = ("references", "next_page_token")
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    references: _containers.RepeatedCompositeFieldContainer[_common_pb2.ReferenceInfo]
    next_page_token: str
    def __init__(self, references: _Optional[_Iterable[_Union[_common_pb2.ReferenceInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetReferenceRequest(_message.Message):
    __slots__ = ("reference_id",)
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    def __init__(self, reference_id: _Optional[str] = ...) -> None: ...

class DeleteReferenceRequest(_message.Message):
    __slots__ = ("reference_id",)
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    def __init__(self, reference_id: _Optional[str] = ...) -> None: ...

class DeleteReferenceResponse(_message.Message):
    __slots__ = ("deleted_from_index", "deleted_from_catalog", "shard")
    DELETED_FROM_INDEX_FIELD_NUMBER: _ClassVar[int]
    DELETED_FROM_CATALOG_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    deleted_from_index: bool
    deleted_from_catalog: bool
    shard: str
    def __init__(self, deleted_from_index: _Optional[bool] = ..., deleted_from_catalog: _Optional[bool] = ..., shard: _Optional[str] = ...) -> None: ...
