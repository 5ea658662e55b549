from kyb.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectRequest(_message.Message):
    __slots__ = ("image", "decoded", "min_score", "max_boxes")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DECODED_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    MAX_BOXES_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    decoded: _common_pb2.RawImage
    min_score: float
    max_boxes: int
    def __init__(self, image: _Optional[bytes] = ..., decoded: _Optional[_Union[_common_pb2.RawImage, _Mapping]] = ..., min_score: _Optional[float] = ..., max_boxes: _Optional[int] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "kind", "score")
    BOX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    box: _common_pb2.Box
    kind: _common_pb2.Kind
    score: float
    def __init__(self, box: _Optional[_Union[_common_pb2.Box, _Mapping]] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., score: _Optional[float] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("detections", "model_version")
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    model_version: str
    def __init__(self, detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...
