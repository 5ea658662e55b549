"""Engine objects <-> kyb.v1 messages: exact round trips, and refusals that name the field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kyb.catalog import Album, Band
from kyb.encoder import Encoding
from kyb.errors import InvalidRequest
from kyb.imageio import DecodedImage
from kyb.rpc import (
    album_from_proto,
    album_to_proto,
    band_from_proto,
    band_to_proto,
    box_from_proto,
    box_to_proto,
    decoded_from_proto,
    decoded_to_proto,
    encoding_from_proto,
    encoding_to_proto,
    kind_from_proto,
    kind_to_proto,
    pack_array,
    unpack_array,
)
from kyb.v1 import common_pb2


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int32", "float32", "float64"])
def test_arrays_round_trip(dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    back = unpack_array(pack_array(array), name="a", dtype=dtype, ndim=3)
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_big_endian_arrays_travel_as_little_endian():
    array = np.arange(5, dtype=">i4")
    message = pack_array(array)
    assert message.data[:4] == b"\x00\x00\x00\x00" and message.data[4:8] == b"\x01\x00\x00\x00"
    assert np.array_equal(unpack_array(message, name="a"), np.arange(5))


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (common_pb2.PackedArray(data=b"\0" * 7, dtype="int32", shape=[2]), "bytes do not hold"),
        (common_pb2.PackedArray(data=b"", dtype="object", shape=[0]), "unsupported dtype"),
        (common_pb2.PackedArray(data=b"\0" * 4, dtype="int32", shape=[1, 1]), "dimensions"),
        (common_pb2.PackedArray(data=b"\0" * 4, dtype="int8", shape=[4]), "expected dtype int32"),
    ],
)
def test_bad_arrays_are_refused_naming_the_field(message, words):
    with pytest.raises(InvalidRequest, match=words):
        unpack_array(message, name="encoding.words", dtype="int32", ndim=1)


def _encoding(n: int = 6) -> Encoding:
    rng = np.random.default_rng(0)
    return Encoding(
        xy=rng.random((n, 2), dtype=np.float32) * 100,
        descriptors=rng.integers(-127, 127, (n, 64)).astype(np.int8),
        words=rng.integers(0, 1000, n).astype(np.int32),
        global_vector=rng.random(32, dtype=np.float32),
        region_size=(320.0, 240.0),
        origin=(10.0, 20.0),
        scale=1.75,
        codebook_version="abc123",
    )


def test_encoding_round_trips_exactly():
    encoding = _encoding()
    back = encoding_from_proto(encoding_to_proto(encoding))
    for name in ("xy", "descriptors", "words", "global_vector"):
        assert np.array_equal(getattr(back, name), getattr(encoding, name))
    assert (back.region_size, back.origin, back.scale, back.codebook_version) == (
        encoding.region_size,
        encoding.origin,
        encoding.scale,
        encoding.codebook_version,
    )


def test_near_words_travel_only_when_there():
    encoding = _encoding()
    assert not encoding_to_proto(encoding).HasField("near_words")
    assert encoding_from_proto(encoding_to_proto(encoding)).near_words is None
    near = np.stack([encoding.words, encoding.words + 1], axis=1)
    photo = dataclasses.replace(encoding, near_words=near)
    assert np.array_equal(encoding_from_proto(encoding_to_proto(photo)).near_words, near)
    message = encoding_to_proto(dataclasses.replace(encoding, near_words=near[:3]))
    with pytest.raises(InvalidRequest, match="near_words"):
        encoding_from_proto(message)


def test_inverted_rows_travel_only_when_there():
    encoding = _encoding()
    assert not encoding_to_proto(encoding).HasField("inverted_bits")
    assert encoding_from_proto(encoding_to_proto(encoding)).inverted is None
    inverted = np.arange(len(encoding)) % 2 == 1
    photo = dataclasses.replace(encoding, inverted=inverted)
    message = encoding_to_proto(photo)
    assert message.inverted_bits.dtype == "uint8" and len(message.inverted_bits.data) == 1  # 6 flags, 1 byte
    back = encoding_from_proto(message).inverted
    assert back is not None and back.dtype == bool and np.array_equal(back, inverted)
    message = encoding_to_proto(dataclasses.replace(encoding, inverted=np.ones(20, bool)))
    with pytest.raises(InvalidRequest, match="inverted_bits"):
        encoding_from_proto(message)
    # A sender that writes one byte a flag (the older form) is read the same.
    legacy = encoding_to_proto(encoding)
    legacy.inverted.CopyFrom(pack_array(inverted.astype(np.uint8)))
    assert np.array_equal(encoding_from_proto(legacy).inverted, inverted)
    legacy.inverted.CopyFrom(pack_array(inverted[:3].astype(np.uint8)))
    with pytest.raises(InvalidRequest, match="inverted"):
        encoding_from_proto(legacy)


def test_encoding_travels_at_the_width_it_needs():
    encoding = _encoding(200)
    near = np.stack([encoding.words, (encoding.words + 7) % 1000], axis=1)
    photo = dataclasses.replace(encoding, near_words=near, inverted=np.arange(200) % 3 == 0)
    message = encoding_to_proto(photo)
    # The words are near_words' first column: sent once, as uint16 (they are below 65536).
    assert not message.HasField("words")
    assert message.near_words.dtype == "uint16"
    back = encoding_from_proto(message)
    assert back.words.dtype == np.int32 and np.array_equal(back.words, encoding.words)
    assert back.near_words is not None and back.near_words.dtype == np.int32
    assert np.array_equal(back.near_words, near) and np.array_equal(back.descriptors, encoding.descriptors)
    assert np.array_equal(back.inverted, photo.inverted) and np.array_equal(back.xy, encoding.xy)
    # What the older form took: words and near words as int32, one byte a polarity flag.
    wider = 200 * (4 + 2 * 4 + 1)
    narrower = len(message.near_words.data) + len(message.inverted_bits.data)
    assert wider - narrower == 200 * 13 - (200 * 4 + 25)
    # The encoder's layout, twins appended at their features' positions: those positions and the
    # flags are not sent at all, and come back exactly.
    twins = 80
    xy = np.concatenate([encoding.xy[:120], encoding.xy[:twins]])
    layout = dataclasses.replace(photo, xy=xy, inverted=np.arange(200) >= 120)
    message = encoding_to_proto(layout)
    assert message.twins == twins and not message.HasField("inverted_bits")
    assert tuple(message.xy.shape) == (120, 2)
    back = encoding_from_proto(message)
    assert np.array_equal(back.xy, xy) and np.array_equal(back.inverted, layout.inverted)
    assert np.array_equal(back.descriptors, encoding.descriptors)
    message.twins = 121  # more twins than positions before them
    with pytest.raises(InvalidRequest, match="twins"):
        encoding_from_proto(message)
    # A vocabulary past 65,536 words travels as int32, still exactly.
    large = dataclasses.replace(encoding, words=encoding.words + 70_000)
    message = encoding_to_proto(large)
    assert message.words.dtype == "int32"
    assert np.array_equal(encoding_from_proto(message).words, large.words)
    # Words that are not near_words' first column are sent as they are.
    other = dataclasses.replace(encoding, near_words=near[:, ::-1].copy())
    message = encoding_to_proto(other)
    assert message.HasField("words") and np.array_equal(encoding_from_proto(message).words, encoding.words)
    message.words.CopyFrom(pack_array(encoding.words.astype(np.float32)))
    with pytest.raises(InvalidRequest, match="uint16 or int32"):
        encoding_from_proto(message)
    message.ClearField("words")
    message.ClearField("near_words")
    with pytest.raises(InvalidRequest, match="words are required"):
        encoding_from_proto(message)


def test_inconsistent_encoding_is_refused():
    message = encoding_to_proto(_encoding())
    message.words.CopyFrom(pack_array(np.zeros(5, np.int32)))
    with pytest.raises(InvalidRequest, match="same features"):
        encoding_from_proto(message)
    message = encoding_to_proto(_encoding())
    message.scale = 0
    with pytest.raises(InvalidRequest, match="scale"):
        encoding_from_proto(message)


def test_decoded_image_round_trips():
    rgb = np.random.default_rng(1).integers(0, 255, (30, 40, 3)).astype(np.uint8)
    image = DecodedImage(rgb, "0" * 64, "PNG", 80, 60, 2.0, 1234)
    back = decoded_from_proto(decoded_to_proto(image))
    assert np.array_equal(back.rgb, rgb)
    assert (back.original_width, back.scale, back.sha256, back.size_bytes) == (80, 2.0, "0" * 64, 1234)
    bad = decoded_to_proto(image)
    bad.rgb.CopyFrom(pack_array(rgb[:, :, :2].copy()))
    with pytest.raises(InvalidRequest, match="height, width, 3"):
        decoded_from_proto(bad)


def test_catalog_records_round_trip():
    band = Band("b1", "Mayhem", country="Norway", formed_in=1984, themes=("Death",), links=("https://x",))
    assert band_from_proto(band_to_proto(band)) == band
    assert band_from_proto(band_to_proto(Band("b2", "X"))).formed_in is None
    album = Album("a1", "b1", "De Mysteriis", year=1994)
    assert album_from_proto(album_to_proto(album)) == album
    with pytest.raises(InvalidRequest, match="band"):
        band_from_proto(common_pb2.Band(band_id="b3"))


def test_boxes_and_kinds():
    assert box_from_proto(box_to_proto((1, 2, 3, 4))) == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(InvalidRequest, match="crop"):
        box_from_proto(box_to_proto((5, 2, 3, 4)), name="crop")
    with pytest.raises(InvalidRequest, match="finite"):
        box_from_proto(common_pb2.Box(x1=float("nan"), y1=0, x2=1, y2=1))
    assert [kind_from_proto(kind_to_proto(k)) for k in ("logo", "album_cover", None)] == [
        "logo",
        "album_cover",
        None,
    ]
