"""Descriptor cache: exact binary round trip, LRU by bytes, the real Redis (TTL, down, corrupt), engine wiring."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from kyb import synth
from kyb.cache import (
    CacheFormatError,
    LocalLRUCache,
    RedisCache,
    cache_key,
    open_cache,
    pack_encoding,
    unpack_encoding,
)
from kyb.config import CacheConfig
from kyb.encoder import Encoding
from kyb.engine import Engine
from kyb.errors import ConfigError
from tests.conftest import Library, encode_jpeg

REDIS_URL = "redis://127.0.0.1:6379/0"
SHA = "ab" * 32


def _encoding(n: int = 50, dims: int = 64, seed: int = 0) -> Encoding:
    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(256).astype(np.float32)
    return Encoding(
        xy=(rng.random((n, 2)) * 1000).astype(np.float32),
        descriptors=rng.integers(-128, 128, (n, dims), dtype=np.int8),
        words=rng.integers(0, 16384, n, dtype=np.int32),
        global_vector=vector / np.linalg.norm(vector),
        region_size=(1023.5, 767.25),
        origin=(12.125, 0.1),
        scale=1.0 / 3.0,
        codebook_version="cb-1234-abcd",
    )


def _same(a: Encoding, b: Encoding) -> None:
    for name in ("xy", "descriptors", "words", "global_vector"):
        left, right = getattr(a, name), getattr(b, name)
        assert left.dtype == right.dtype, name
        assert np.array_equal(left, right), name
    assert (a.region_size, a.origin, a.scale, a.codebook_version) == (
        b.region_size,
        b.origin,
        b.scale,
        b.codebook_version,
    )


@pytest.fixture()
def prefix() -> Iterator[str]:
    """A key prefix of its own on the real Redis, whose keys are deleted at the end."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:  # the set-up script starts Redis: its absence is a failure
        pytest.fail(f"no Redis at {REDIS_URL} (run scripts/setup.sh): {exc}")
    name = f"kyb-test-{uuid.uuid4().hex[:12]}:"
    yield name
    keys = list(client.scan_iter(match=name + "*"))
    if keys:
        client.delete(*keys)
    client.close()


# ---------------------------------------------------------------------------- format
@pytest.mark.parametrize("n", [0, 1, 2500])
def test_pack_unpack_round_trip_is_exact(n: int) -> None:
    encoding = _encoding(n)
    data = pack_encoding(encoding)
    back = unpack_encoding(data)
    _same(encoding, back)
    assert back.xy.flags.writeable and back.descriptors.flags.writeable
    raw = sum(getattr(encoding, f).nbytes for f in ("xy", "descriptors", "words", "global_vector"))
    assert len(data) - raw < 128  # compact: a small header and the raw arrays


def test_a_photos_near_words_round_trip_and_references_stay_without() -> None:
    plain = _encoding(30)
    assert unpack_encoding(pack_encoding(plain)).near_words is None
    near = np.stack([plain.words, np.roll(plain.words, 1)], axis=1)
    photo = dataclasses.replace(plain, near_words=near)
    back = unpack_encoding(pack_encoding(photo))
    _same(photo, back)
    assert back.near_words is not None and np.array_equal(back.near_words, near)
    wrong = dataclasses.replace(plain, near_words=near[:-1])
    with pytest.raises(CacheFormatError, match="different numbers"):
        unpack_encoding(pack_encoding(wrong))


def test_a_photos_inverted_rows_round_trip_with_or_without_near_words() -> None:
    plain = _encoding(30)
    inverted = np.arange(30) >= 15
    near = np.stack([plain.words, np.roll(plain.words, 1)], axis=1)
    for near_words in (None, near):
        photo = dataclasses.replace(plain, near_words=near_words, inverted=inverted)
        back = unpack_encoding(pack_encoding(photo))
        assert back.inverted is not None and back.inverted.dtype == bool
        assert np.array_equal(back.inverted, inverted)
        assert back.near_words is not None  # one near word each (the words) when there were none
        assert np.array_equal(back.near_words[:, 0], plain.words)
    assert unpack_encoding(pack_encoding(plain)).inverted is None
    wrong = dataclasses.replace(plain, inverted=inverted[:-1])
    with pytest.raises(CacheFormatError, match="different numbers"):
        unpack_encoding(pack_encoding(wrong))


def test_corrupt_or_foreign_values_are_refused() -> None:
    data = bytearray(pack_encoding(_encoding(20)))
    for broken in (b"", b"KYBE", bytes(data[:-10]), b"x" * len(data)):
        with pytest.raises(CacheFormatError):
            unpack_encoding(broken)
    data[100] ^= 0xFF
    with pytest.raises(CacheFormatError):
        unpack_encoding(bytes(data))


def test_key_depends_on_photo_encoder_version_and_box() -> None:
    key = cache_key(SHA, "cb1-q2500", None)
    assert key == cache_key(SHA, "cb1-q2500", None)
    assert key != cache_key(SHA, "cb2-q2500", None)
    assert key != cache_key("cd" * 32, "cb1-q2500", None)
    assert key != cache_key(SHA, "cb1-q2500", (0.0, 0.0, 100.0, 100.0))
    assert cache_key(SHA, "v", (0, 0, 100, 100)) != cache_key(SHA, "v", (0, 0, 100, 100.5))


# ---------------------------------------------------------------------------- local LRU
def test_lru_evicts_least_recently_used_by_bytes() -> None:
    one = len(pack_encoding(_encoding(100)))
    cache = LocalLRUCache(max_bytes=3 * (one + 400))
    keys = [cache_key(SHA, "v", (0, 0, 10 + i, 10)) for i in range(4)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, _encoding(100, seed=i))
    assert len(cache) == 3
    assert cache.get(keys[0]) is not None  # 0 is now the most recently used
    cache.put(keys[3], _encoding(100, seed=3))
    assert keys[1] not in cache and keys[0] in cache and keys[3] in cache
    assert cache.size_bytes <= cache.max_bytes
    cache.put(cache_key(SHA, "v", None), _encoding(5000))  # bigger than the whole cache: not stored
    assert len(cache) == 3 and cache.stats()["skipped"] == 1
    _same(cache.get(keys[3]), _encoding(100, seed=3))  # type: ignore[arg-type]
    assert cache.get(keys[1]) is None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["errors"]) == (2, 1, 0)


def test_open_cache_urls() -> None:
    assert open_cache("") is None and open_cache("none") is None
    memory = open_cache("memory://?max_mb=2")
    assert isinstance(memory, LocalLRUCache) and memory.max_bytes == 2 * 1024 * 1024
    assert isinstance(open_cache("memory://", max_mb=1), LocalLRUCache)
    remote = open_cache("redis://127.0.0.1:6379/0?ttl=60&prefix=p:")
    assert isinstance(remote, RedisCache) and (remote.ttl_s, remote.prefix) == (60, "p:")
    for bad in ("ftp://x", "memory://?max_mb=0", "memory://?size=3", "redis://h/0?ttl=soon"):
        with pytest.raises(ConfigError):
            open_cache(bad)
    with pytest.raises(ConfigError):
        CacheConfig(ttl_s=0)


# ---------------------------------------------------------------------------- real Redis
def test_redis_round_trip_with_ttl(prefix: str) -> None:
    cache = RedisCache(REDIS_URL, ttl_s=120, prefix=prefix)
    key = cache_key(SHA, "v1", None)
    assert cache.get(key) is None
    encoding = _encoding(2500)
    cache.put(key, encoding)
    _same(cache.get(key), encoding)  # type: ignore[arg-type]
    client = redis.Redis.from_url(REDIS_URL)
    assert 0 < client.ttl(prefix + key) <= 120
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["errors"], stats["puts"]) == (1, 1, 0, 1)
    client.set(prefix + key, b"garbage", ex=60)  # corrupt value: a miss, never an error raised
    assert cache.get(key) is None
    assert cache.stats()["corrupt"] == 1
    client.close()
    cache.close()


def test_redis_down_is_a_fast_miss_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    cache = open_cache("redis://127.0.0.1:1/0")
    assert isinstance(cache, RedisCache)
    cache.backoff_s = 3600.0  # the whole test runs inside one backoff period, however slow the machine
    key = cache_key(SHA, "v1", None)
    for _ in range(20):
        assert cache.get(key) is None
        cache.put(key, _encoding(10))
    stats = cache.stats()
    # Fast: Redis was tried once (one socket timeout at most); the 39 operations after it skipped it.
    assert stats["errors"] == 1 and stats["skipped"] == 39
    assert stats["misses"] == 20 and stats["hits"] == 0
    warnings = [r for r in caplog.records if r.name == "kyb.cache" and "Redis" in r.getMessage()]
    assert len(warnings) == 1


# ---------------------------------------------------------------------------- engine
def _photos(library: Library, count: int) -> list[bytes]:
    names = sorted({**library.covers, **library.logos})
    out = []
    for seed in range(count):
        rng = np.random.default_rng(100 + seed)
        refs = [{**library.covers, **library.logos}[names[seed % len(names)]]]
        scene, _ = synth.compose_scene(refs, rng, size=(800, 600), background=synth.draw_background(rng))
        out.append(encode_jpeg(scene, 85))
    return out


def _answer(result) -> list:
    return [(o.best.reference_id, o.best.inliers, o.outline) for o in result.objects]


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_engine_second_identify_is_a_hit_with_the_same_answer(library: Library, prefix: str, kind: str) -> None:
    url = "memory://" if kind == "memory" else f"{REDIS_URL}?prefix={prefix}"
    config = dataclasses.replace(library.config, cache=CacheConfig(url=url))
    photo = _photos(library, 1)[0]
    with Engine(config) as engine:
        first = engine.identify(photo)
        second = engine.identify(photo)
        cached = engine.cache.get(cache_key(first.sha256, _version(engine), None))  # type: ignore[union-attr]
        fresh = engine.encoder.encode(engine.decode_query(photo), None)
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.to_dict()["cache"] == "hit"
    assert first.objects and _answer(first) == _answer(second)
    assert first.features == second.features
    assert cached is not None
    _same(cached, fresh)
    with Engine(dataclasses.replace(library.config, cache=CacheConfig(url="none"))) as engine:
        plain = engine.identify(photo)
    assert plain.cache == "" and "cache" not in plain.to_dict() and _answer(plain) == _answer(first)


def _version(engine: Engine) -> str:
    return f"{engine.encoder.version}-x{engine.config.limits.search_max_side}"


def test_engine_with_redis_down_answers_correctly_and_quickly(library: Library) -> None:
    photos = _photos(library, 3)
    with Engine(dataclasses.replace(library.config, cache=CacheConfig(url="none"))) as engine:
        expected = [_answer(engine.identify(p)) for p in photos]
    with Engine(dataclasses.replace(library.config, cache=CacheConfig(url="redis://127.0.0.1:1/0"))) as engine:
        cache = engine.cache
        assert isinstance(cache, RedisCache)
        cache.backoff_s = 3600.0
        results = [engine.identify(p) for p in photos]
        stats = cache.stats()
    assert [_answer(r) for r in results] == expected
    assert all(r.cache == "miss" for r in results)
    # Quick: one failed attempt, then every photo's get and put skipped Redis instead of waiting on it.
    assert stats["errors"] == 1 and stats["hits"] == 0 and stats["skipped"] == 2 * len(photos) - 1


def test_engine_encoder_change_misses(library: Library) -> None:
    config = dataclasses.replace(library.config, cache=CacheConfig(url="memory://"))
    photo = _photos(library, 1)[0]
    with Engine(config) as engine:
        engine.identify(photo)
        before = _version(engine)
        changed = dataclasses.replace(config.features, query_features=config.features.query_features - 100)
        engine.config = dataclasses.replace(config, features=changed)
        engine._encoder = None  # the next encoder has other settings, hence another version and key
        again = engine.identify(photo)
        assert _version(engine) != before
    assert again.cache == "miss"
