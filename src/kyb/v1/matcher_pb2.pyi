from kyb.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchRequest(_message.Message):
    __slots__ = ("encoding", "image_width", "image_height", "exclude_reference_ids", "skip_reserve", "max_candidates")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_REFERENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    SKIP_RESERVE_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    encoding: _common_pb2.Encoding
    image_width: int
    image_height: int
    exclude_reference_ids: _containers.RepeatedScalarFieldContainer[str]
    skip_reserve: bool
    max_candidates: int
    def __init__(self, encoding: _Optional[_Union[_common_pb2.Encoding, _Mapping]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., exclude_reference_ids: _Optional[_Iterable[str]] = ..., skip_reserve: _Optional[bool] = ..., max_candidates: _Optional[int] = ...) -> None: ...

class VerifiedMatch(_message.Message):
    __slots__ = ("reference_id", "inliers", "score", "outline", "inlier_rows", "tentative", "homography", "spread", "inverted")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    INLIERS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    OUTLINE_FIELD_NUMBER: _ClassVar[int]
    INLIER_ROWS_FIELD_NUMBER: _ClassVar[int]
    TENTATIVE_FIELD_NUMBER: _ClassVar[int]
    HOMOGRAPHY_FIELD_NUMBER: _ClassVar[int]
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    INVERTED_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    inliers: int
    score: float
    outline: _common_pb2.Outline
    inlier_rows: _common_pb2.PackedArray
    tentative: int
    homography: _common_pb2.PackedArray
    spread: float
    inverted: bool
    def __init__(self, reference_id: _Optional[str] = ..., inliers: _Optional[int] = ..., score: _Optional[float] = ..., outline: _Optional[_Union[_common_pb2.Outline, _Mapping]] = ..., inlier_rows: _Optional[_Union[_common_pb2.PackedArray, _Mapping]] = ..., tentative: _Optional[int] = ..., homography: _Optional[_Union[_common_pb2.PackedArray, _Mapping]] = ..., spread: _Optional[float] = ..., inverted: _Optional[bool] = ...) -> None: ...

class VerifiedObject(_message.Message):
    __slots__ = ("match", "alternatives")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    match: VerifiedMatch
    alternatives: _containers.RepeatedCompositeFieldContainer[VerifiedMatch]
    def __init__(self, match: _Optional[_Union[VerifiedMatch, _Mapping]] = ..., alternatives: _Optional[_Iterable[_Union[VerifiedMatch, _Mapping]]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("objects", "candidates", "shard", "generation")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[VerifiedObject]
    candidates: _containers.RepeatedScalarFieldContainer[str]
    shard: str
    generation: int
    def __init__(self, objects: _Optional[_Iterable[_Union[VerifiedObject, _Mapping]]] = ..., candidates: _Optional[_Iterable[str]] = ..., shard: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class ShortlistRequest(_message.Message):
    __slots__ = ("encoding", "rows", "exclude_reference_ids", "limit", "query_id", "verify_first", "image_width", "image_height")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_REFERENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIRST_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    encoding: _common_pb2.Encoding
    rows: _common_pb2.PackedArray
    exclude_reference_ids: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    query_id: str
    verify_first: int
    image_width: int
    image_height: int
    def __init__(self, encoding: _Optional[_Union[_common_pb2.Encoding, _Mapping]] = ..., rows: _Optional[_Union[_common_pb2.PackedArray, _Mapping]] = ..., exclude_reference_ids: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ..., query_id: _Optional[str] = ..., verify_first: _Optional[int] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ...) -> None: ...

class ScoredKey(_message.Message):
    __slots__ = ("reference_id", "score")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    score: float
    def __init__(self, reference_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ShortlistResponse(_message.Message):
    __slots__ = ("global_list", "words", "shard", "generation", "verified")
    GLOBAL_LIST_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    global_list: _containers.RepeatedCompositeFieldContainer[ScoredKey]
    words: _containers.RepeatedCompositeFieldContainer[ScoredKey]
    shard: str
    generation: int
    verified: _containers.RepeatedCompositeFieldContainer[VerifyOutcome]
    def __init__(self, global_list: _Optional[_Iterable[_Union[ScoredKey, _Mapping]]] = ..., words: _Optional[_Iterable[_Union[ScoredKey, _Mapping]]] = ..., shard: _Optional[str] = ..., generation: _Optional[int] = ..., verified: _Optional[_Iterable[_Union[VerifyOutcome, _Mapping]]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("encoding", "image_width", "image_height", "rows", "reference_ids", "query_id")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    encoding: _common_pb2.Encoding
    image_width: int
    image_height: int
    rows: _common_pb2.PackedArray
    reference_ids: _containers.RepeatedScalarFieldContainer[str]
    query_id: str
    def __init__(self, encoding: _Optional[_Union[_common_pb2.Encoding, _Mapping]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., rows: _Optional[_Union[_common_pb2.PackedArray, _Mapping]] = ..., reference_ids: _Optional[_Iterable[str]] = ..., query_id: _Optional[str] = ...) -> None: ...

class VerifyOutcome(_message.Message):
    __slots__ = ("reference_id", "indexed", "match")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    indexed: bool
    match: VerifiedMatch
    def __init__(self, reference_id: _Optional[str] = ..., indexed: _Optional[bool] = ..., match: _Optional[_Union[VerifiedMatch, _Mapping]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("outcomes", "shard", "generation")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[VerifyOutcome]
    shard: str
    generation: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[VerifyOutcome, _Mapping]]] = ..., shard: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class AddItem(_message.Message):
    __slots__ = ("reference_id", "sha256", "encoding")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    sha256: str
    encoding: _common_pb2.Encoding
    def __init__(self, reference_id: _Optional[str] = ..., sha256: _Optional[str] = ..., encoding: _Optional[_Union[_common_pb2.Encoding, _Mapping]] = ...) -> None: ...

class AddRequest(_message.Message):
    __slots__ = ("items", "expected_shard")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHARD_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AddItem]
    expected_shard: str
    def __init__(self, items: _Optional[_Iterable[_Union[AddItem, _Mapping]]] = ..., expected_shard: _Optional[str] = ...) -> None: ...

class AddResponse(_message.Message):
    __slots__ = ("outcomes", "generation", "shard")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedScalarFieldContainer[str]
    generation: int
    shard: str
    def __init__(self, outcomes: _Optional[_Iterable[str]] = ..., generation: _Optional[int] = ..., shard: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("reference_id", "reference_ids")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    reference_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reference_id: _Optional[str] = ..., reference_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "generation")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    generation: int
    def __init__(self, deleted: _Optional[bool] = ..., generation: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("references", "bytes", "codebook_version", "generation", "shard", "shard_index", "shard_count", "deleted", "features")
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CODEBOOK_VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    references: int
    bytes: int
    codebook_version: str
    generation: int
    shard: str
    shard_index: int
    shard_count: int
    deleted: int
    features: int
    def __init__(self, references: _Optional[int] = ..., bytes: _Optional[int] = ..., codebook_version: _Optional[str] = ..., generation: _Optional[int] = ..., shard: _Optional[str] = ..., shard_index: _Optional[int] = ..., shard_count: _Optional[int] = ..., deleted: _Optional[int] = ..., features: _Optional[int] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("target_count",)
    TARGET_COUNT_FIELD_NUMBER: _ClassVar[int]
    target_count: int
    def __init__(self, target_count: _Optional[int] = ...) -> None: ...
