from kyb.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeRequest(_message.Message):
    __slots__ = ("image", "decoded", "box", "is_reference")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DECODED_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    IS_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    decoded: _common_pb2.RawImage
    box: _common_pb2.Box
    is_reference: bool
    def __init__(self, image: _Optional[bytes] = ..., decoded: _Optional[_Union[_common_pb2.RawImage, _Mapping]] = ..., box: _Optional[_Union[_common_pb2.Box, _Mapping]] = ..., is_reference: _Optional[bool] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("encoding", "image_width", "image_height", "original_width", "original_height", "sha256", "encoder_version", "size_bytes")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_WIDTH_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    encoding: _common_pb2.Encoding
    image_width: int
    image_height: int
    original_width: int
    original_height: int
    sha256: str
    encoder_version: str
    size_bytes: int
    def __init__(self, encoding: _Optional[_Union[_common_pb2.Encoding, _Mapping]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., original_width: _Optional[int] = ..., original_height: _Optional[int] = ..., sha256: _Optional[str] = ..., encoder_version: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...
