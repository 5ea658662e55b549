"""Descriptor cache: identifying the same photo again skips feature extraction and encoding.

An :class:`~kyb.encoder.Encoding` depends only on the photo's bytes, the region searched and the
encoder (codebook + feature settings), so :func:`cache_key` hashes exactly those: a new codebook or
feature setting changes the key, and a stale encoding can never be returned. Values are a compact
binary format (:func:`pack_encoding`: a header with a format version, the shapes and dtypes, then the
raw little-endian arrays and a CRC32), never pickle; a value that fails any check is a miss.

Backends, chosen by :func:`open_cache` from ``cache.url``:

* ``""`` / ``"none"``: no cache.
* ``memory://?max_mb=64``: :class:`LocalLRUCache`, in-process, bounded by bytes.
* ``redis://host:port/db?ttl=86400&prefix=kyb:``: :class:`RedisCache`, shared by every process.

A cache is an optimisation only: Redis down or slow makes ``get`` a miss and ``put`` a no-op after at
most the socket timeout (50-200 ms), then Redis is skipped for a few seconds; errors are logged once
(then at most once a minute), counted in :meth:`EncodingCache.stats`, and never raised.

Redis deployment: run the cache Redis with a memory bound and LRU eviction over all keys, e.g.::

    maxmemory 2gb
    maxmemory-policy allkeys-lru
    save ""
    appendonly no

A 2,500-feature photo takes about 190 kB, so 2 GB holds about 10,000 photos. ``allkeys-lru`` (not
``volatile-lru``) keeps Redis from refusing writes when memory is full; every key also carries the
TTL of ``cache.ttl_s``. Do not share this Redis with data that must not be evicted; persistence is
useless for a cache (every value can be recomputed).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from kyb.encoder import Box, Encoder, Encoding
from kyb.errors import ConfigError
from kyb.imageio import DecodedImage

__all__ = [
    "CacheFormatError",
    "EncodingCache",
    "LocalLRUCache",
    "RedisCache",
    "cache_key",
    "encode_photo",
    "open_cache",
    "pack_encoding",
    "unpack_encoding",
]

log = logging.getLogger(__name__)

_MAGIC = b"KYBE"
FORMAT_VERSION = 1
#: magic, format version, flags (unused), array count, then region w/h, origin x/y, scale, version length.
_HEADER = struct.Struct("<4sBBH5dH")
_ARRAY = struct.Struct("<3sB")  # dtype string (e.g. "<f4", "|i1"), number of dimensions
_CRC = struct.Struct("<I")
#: (name, allowed dtypes, number of dimensions) of the arrays of an Encoding, in the stored order.
_ARRAYS: tuple[tuple[str, frozenset[str], int], ...] = (
    ("xy", frozenset({"<f4", "<f8"}), 2),
    ("descriptors", frozenset({"|i1", "|u1"}), 2),
    ("words", frozenset({"<i4", "<i8"}), 1),
    ("global_vector", frozenset({"<f4", "<f8"}), 1),
)
#: Stored after those, in this order, when the encoding has them (a photo's near words, then which of
#: its rows are inverted twins). Their count says which are present, so a photo with inverted rows
#: but no near words stores its words as one near word each (the same thing).
_OPTIONAL_ARRAYS: tuple[tuple[str, frozenset[str], int], ...] = (
    ("near_words", frozenset({"<i4", "<i8"}), 2),
    ("inverted", frozenset({"|u1"}), 1),
)


class CacheFormatError(ValueError):
    """A stored value is not a valid packed encoding (truncated, corrupt or another format version)."""


# ---------------------------------------------------------------------------- format
def pack_encoding(encoding: Encoding) -> bytes:
    """``encoding`` as bytes: header (format version, numbers, shapes, dtypes), raw arrays, CRC32."""
    version = encoding.codebook_version.encode()
    present = 2 if encoding.inverted is not None else 1 if encoding.near_words is not None else 0
    layout = _ARRAYS + _OPTIONAL_ARRAYS[:present]
    optional = {
        "near_words": encoding.words[:, None] if encoding.near_words is None else encoding.near_words,
        "inverted": None if encoding.inverted is None else np.asarray(encoding.inverted, dtype=np.uint8),
    }
    parts: list[bytes] = [
        _HEADER.pack(
            _MAGIC,
            FORMAT_VERSION,
            0,
            len(layout),
            float(encoding.region_size[0]),
            float(encoding.region_size[1]),
            float(encoding.origin[0]),
            float(encoding.origin[1]),
            float(encoding.scale),
            len(version),
        ),
        version,
    ]
    arrays: list[np.ndarray] = []
    for name, allowed, ndim in layout:
        array = np.asarray(optional[name] if name in optional else getattr(encoding, name))
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        code = little.dtype.str
        if code not in allowed or little.ndim != ndim:
            raise CacheFormatError(f"cannot pack {name} of dtype {array.dtype} and shape {array.shape}")
        parts.append(_ARRAY.pack(code.encode(), ndim))
        parts.append(struct.pack(f"<{ndim}I", *little.shape))
        arrays.append(little)
    parts.extend(a.tobytes() for a in arrays)
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def unpack_encoding(data: bytes | bytearray | memoryview) -> Encoding:
    """The :class:`Encoding` packed in ``data`` (writable arrays); :class:`CacheFormatError` if invalid."""
    view = memoryview(data).cast("B")
    if len(view) < _HEADER.size + _CRC.size:
        raise CacheFormatError("value too short")
    body, (crc,) = view[: -_CRC.size], _CRC.unpack(view[-_CRC.size :])
    if zlib.crc32(body) != crc:
        raise CacheFormatError("checksum mismatch")
    magic, fmt, _flags, count, rw, rh, ox, oy, scale, version_len = _HEADER.unpack_from(body, 0)
    if magic != _MAGIC or fmt != FORMAT_VERSION or not len(_ARRAYS) <= count <= len(_ARRAYS) + len(_OPTIONAL_ARRAYS):
        raise CacheFormatError(f"not a packed encoding of format {FORMAT_VERSION}")
    layout = _ARRAYS + _OPTIONAL_ARRAYS[: count - len(_ARRAYS)]
    offset = _HEADER.size
    version = bytes(body[offset : offset + version_len]).decode("utf-8", errors="strict")
    offset += version_len
    specs: list[tuple[str, np.dtype[Any], tuple[int, ...]]] = []
    for name, allowed, ndim in layout:
        if offset + _ARRAY.size > len(body):
            raise CacheFormatError("truncated array table")
        code_bytes, stored_ndim = _ARRAY.unpack_from(body, offset)
        code = code_bytes.decode("ascii", errors="replace")
        if code not in allowed or stored_ndim != ndim:
            raise CacheFormatError(f"{name}: unexpected dtype {code!r} or {stored_ndim} dimensions")
        offset += _ARRAY.size
        if offset + 4 * ndim > len(body):
            raise CacheFormatError("truncated array table")
        shape = struct.unpack_from(f"<{ndim}I", body, offset)
        offset += 4 * ndim
        specs.append((name, np.dtype(code), tuple(int(v) for v in shape)))
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape in specs:
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + size > len(body):
            raise CacheFormatError(f"{name}: truncated data")
        array = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(shape)
        arrays[name] = array.astype(dtype.newbyteorder("="), copy=True)
        offset += size
    if offset != len(body):
        raise CacheFormatError("trailing bytes")
    count_features = arrays["xy"].shape[0]
    if (
        arrays["xy"].shape[1] != 2
        or arrays["descriptors"].shape[0] != count_features
        or arrays["words"].shape[0] != count_features
        or ("near_words" in arrays and arrays["near_words"].shape[0] != count_features)
        or ("inverted" in arrays and arrays["inverted"].shape[0] != count_features)
    ):
        raise CacheFormatError("arrays describe different numbers of features")
    return Encoding(
        xy=arrays["xy"],
        descriptors=arrays["descriptors"],
        words=arrays["words"],
        global_vector=arrays["global_vector"],
        region_size=(rw, rh),
        origin=(ox, oy),
        scale=scale,
        codebook_version=version,
        near_words=arrays.get("near_words"),
        inverted=arrays["inverted"].astype(bool) if "inverted" in arrays else None,
    )


def cache_key(image_sha256: str, encoder_version: str, box: Sequence[float] | None) -> str:
    """Key of the encoding of ``box`` (``None``: whole photo) of the photo with hash ``image_sha256``.

    Anything that changes an encoding must be in ``encoder_version``; the box is keyed by the exact
    float values, so two boxes share a key only when they are the same region.
    """
    if not image_sha256 or not encoder_version:
        raise ValueError("cache_key needs the image hash and the encoder version")
    region = "full" if box is None else ",".join(repr(float(v)) for v in box)
    digest = hashlib.sha256(f"{FORMAT_VERSION}|{encoder_version}|{region}".encode()).hexdigest()[:24]
    return f"enc:{image_sha256}:{digest}"


def encode_photo(
    cache: EncodingCache | None,
    encoder: Encoder,
    image: DecodedImage,
    box: Box | None,
    *,
    search_max_side: int,
) -> tuple[Encoding, bool]:
    """``encoder.encode(image, box)`` through ``cache``; returns (encoding, whether it was a hit).

    The one key recipe the embedded engine and the encoder service share: the photo's hash, the
    encoder version plus the search size (it changes the pixels encoded) and the box. A cached
    encoding made with another codebook is a miss and is overwritten.
    """
    if cache is None or not image.sha256:
        return encoder.encode(image, box), False
    key = cache_key(image.sha256, f"{encoder.version}-x{search_max_side}", box)
    encoding = cache.get(key)
    if encoding is not None and encoding.codebook_version == encoder.codebook.version:
        return encoding, True
    encoding = encoder.encode(image, box)
    cache.put(key, encoding)
    return encoding, False


# ---------------------------------------------------------------------------- caches
class EncodingCache(ABC):
    """Encodings by :func:`cache_key`; never raises on a backend failure (a miss instead)."""

    def __init__(self) -> None:
        self._counts = {"hits": 0, "misses": 0, "errors": 0, "corrupt": 0, "puts": 0, "skipped": 0}
        self._counts_lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1

    def _decode(self, key: str, data: bytes | None) -> Encoding | None:
        if data is None:
            self._count("misses")
            return None
        try:
            encoding = unpack_encoding(data)
        except (CacheFormatError, ValueError, struct.error) as exc:
            log.warning("descriptor cache: corrupt value for %s treated as a miss (%s)", key, exc)
            self._count("corrupt")
            self._count("misses")
            return None
        self._count("hits")
        return encoding

    @abstractmethod
    def get(self, key: str) -> Encoding | None:
        """The cached encoding, or ``None`` (not cached, unreadable, or the backend failed)."""

    @abstractmethod
    def put(self, key: str, encoding: Encoding) -> None:
        """Stores ``encoding`` under ``key`` when the backend allows; never raises for backend failures."""

    def stats(self) -> dict[str, Any]:
        """Counters: hits, misses, errors (backend failures), corrupt values, puts, skipped operations."""
        with self._counts_lock:
            return dict(self._counts)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Releases connections; the cache may be used again afterwards."""


class LocalLRUCache(EncodingCache):
    """In-process cache of packed encodings, least recently used first out, bounded by ``max_bytes``."""

    #: Rough per-entry bookkeeping (dict slot, key string, bytes object headers).
    ENTRY_OVERHEAD = 200

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _size(self, key: str, value: bytes) -> int:
        return len(value) + len(key) + self.ENTRY_OVERHEAD

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: str) -> Encoding | None:
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
        return self._decode(key, data)

    def put(self, key: str, encoding: Encoding) -> None:
        value = pack_encoding(encoding)
        size = self._size(key, value)
        if size > self.max_bytes:
            self._count("skipped")
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= self._size(key, old)
            self._entries[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                evicted, data = self._entries.popitem(last=False)
                self._bytes -= self._size(evicted, data)
        self._count("puts")

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        with self._lock:
            out.update(entries=len(self._entries), bytes=self._bytes, max_bytes=self.max_bytes)
        return out


class RedisCache(EncodingCache):
    """Encodings in Redis (``SET key value EX ttl``), shared by every process; failures are misses.

    After a failure Redis is not asked again for ``backoff_s`` seconds (operations are counted as
    ``skipped``), so a Redis that is down costs one socket timeout per ``backoff_s``, not per photo.
    """

    #: Seconds between two warnings about failures (the first one is logged at once).
    LOG_EVERY_S = 60.0

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int = 86400,
        prefix: str = "kyb:",
        socket_timeout_s: float = 0.1,
        connect_timeout_s: float = 0.1,
        backoff_s: float = 5.0,
    ) -> None:
        super().__init__()
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.url = url
        self.ttl_s = int(ttl_s)
        self.prefix = prefix
        self.backoff_s = backoff_s
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._state_lock = threading.Lock()
        self._down_until = 0.0
        self._logged_at: float | None = None
        self._suppressed = 0

    def _available(self) -> bool:
        if time.monotonic() < self._down_until:
            self._count("skipped")
            return False
        return True

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._count("errors")
        now = time.monotonic()
        with self._state_lock:
            self._down_until = now + self.backoff_s
            if self._logged_at is None or now - self._logged_at >= self.LOG_EVERY_S:
                more = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
                log.warning(
                    "descriptor cache: Redis %s failed, encoding without cache for %.0f s: %s%s",
                    operation,
                    self.backoff_s,
                    exc,
                    more,
                )
                self._logged_at, self._suppressed = now, 0
            else:
                self._suppressed += 1

    def get(self, key: str) -> Encoding | None:
        if not self._available():
            self._count("misses")
            return None
        try:
            data = self._client.get(self.prefix + key)
        except self._redis_errors as exc:
            self._failed("get", exc)
            self._count("misses")
            return None
        return self._decode(key, data)

    def put(self, key: str, encoding: Encoding) -> None:
        if not self._available():
            return
        value = pack_encoding(encoding)
        try:
            self._client.set(self.prefix + key, value, ex=self.ttl_s)
        except self._redis_errors as exc:
            self._failed("put", exc)
            return
        self._count("puts")

    def close(self) -> None:
        with contextlib.suppress(*self._redis_errors):
            self._client.close()


# ---------------------------------------------------------------------------- factory
def open_cache(url: str, *, ttl_s: int = 86400, max_mb: float = 64.0, prefix: str = "kyb:") -> EncodingCache | None:
    """The cache ``url`` names (``None`` for ``""``/``"none"``); query parameters win over the keywords.

    ``memory://?max_mb=64`` or ``redis://host:port/db?ttl=86400&prefix=kyb:&timeout=0.1``; other
    query parameters of a Redis URL go to redis-py.
    """
    text = url.strip()
    if text.lower() in {"", "none", "off"}:
        return None
    parts = urlsplit(text)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.scheme == "memory":
        mb = _number(url, params.pop("max_mb", max_mb), float)
        if params or mb <= 0:
            raise ConfigError(f"cache url {url!r}: only max_mb (> 0) is allowed, got {parts.query!r}")
        return LocalLRUCache(int(mb * 1024 * 1024))
    if parts.scheme in {"redis", "rediss", "unix"}:
        ttl = _number(url, params.pop("ttl", ttl_s), int)
        key_prefix = params.pop("prefix", prefix)
        timeout = _number(url, params.pop("timeout", 0.1), float)
        if ttl <= 0 or not 0 < timeout <= 5:
            raise ConfigError(f"cache url {url!r}: ttl must be > 0 and timeout in (0, 5]")
        rest = urlunsplit(parts._replace(query=urlencode(params)))
        return RedisCache(rest, ttl_s=ttl, prefix=key_prefix, socket_timeout_s=timeout, connect_timeout_s=timeout)
    raise ConfigError(f"cache url {url!r}: expected '', 'none', memory://... or redis://...")


def _number(url: str, value: Any, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"cache url {url!r}: cannot read {value!r} as {kind.__name__}") from None
