"""The encoder's descriptor cache over gRPC: Redis down never fails Identify; Redis up serves repeats."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kyb.client import identify_response_to_dict
from kyb.v1 import gateway_pb2, gateway_pb2_grpc
from kyb_services._local import LocalStack, start_local
from tests.services.conftest import BANDS, Corpus, empty_shards, service_config, wait_ready

REDIS_URL = "redis://127.0.0.1:6379/0"

CacheStack = Callable[[str], tuple[LocalStack, gateway_pb2_grpc.GatewayStub]]


@pytest.fixture
def cache_stack(corpus: Corpus, tmp_path: Path) -> Iterator[CacheStack]:
    """Like ``make_stack`` (one shard, corpus ingested) but with ``engine.cache.url`` set to ``url``."""
    stacks: list[LocalStack] = []
    channels: list[grpc.Channel] = []

    def factory(url: str) -> tuple[LocalStack, gateway_pb2_grpc.GatewayStub]:
        base = service_config(tmp_path, corpus.engine.config)
        cache = dataclasses.replace(base.engine.cache, url=url)
        config = base.replace(engine=base.engine.replace(cache=cache))
        empty_shards(corpus, config, 1)
        stack = start_local(config, shards=1)
        stacks.append(stack)
        wait_ready(stack)
        channel = grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}")
        channels.append(channel)
        stub = gateway_pb2_grpc.GatewayStub(channel)
        reply = stub.Ingest(iter(corpus.ingest_requests()), timeout=20)
        assert [r.status for r in reply.results] == ["added"] * BANDS, reply
        return stack, stub

    yield factory
    for channel in channels:
        channel.close()
    for stack in stacks:
        stack.stop()


def _encoder_stats(stack: LocalStack) -> dict[str, Any]:
    return stack.encoder.servicers["kyb.v1.Encoder"].cache_stats()


def _bands(answer: dict[str, Any]) -> list[str]:
    return sorted(obj["band"]["band_id"] for obj in answer["objects"])


def _redis() -> Any:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:  # the set-up script starts Redis: its absence is a failure
        pytest.fail(f"no Redis at {REDIS_URL} (run scripts/setup.sh): {exc}")
    return client


def test_identify_answers_quickly_with_redis_down(corpus: Corpus, cache_stack: CacheStack) -> None:
    stack, stub = cache_stack("redis://127.0.0.1:1/0")  # closed port: every cache call fails at once
    photo = corpus.photo([0, 3, 5], seed=1)
    embedded = corpus.engine.identify(photo).to_dict()
    for _ in range(2):
        served = identify_response_to_dict(stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10))
        assert _bands(served) == _bands(embedded) == ["band-0", "band-3", "band-5"]
        assert not served["partial"]
    stats = _encoder_stats(stack)
    assert stats["hits"] == 0 and stats["puts"] == 0
    # Quick: the first failure was noticed, then Redis was skipped (the encoder's backoff is 5 s; the
    # photos are encoded inside it) instead of costing a socket timeout per call.
    assert stats["errors"] >= 1 and stats["skipped"] >= 1


def test_second_identify_of_the_same_photo_is_a_cache_hit(corpus: Corpus, cache_stack: CacheStack) -> None:
    client = _redis()
    prefix = f"kyb-test-{uuid.uuid4().hex}:"
    try:
        stack, stub = cache_stack(f"{REDIS_URL}?prefix={prefix}")
        photo = corpus.photo([1, 2], seed=7)
        first = identify_response_to_dict(stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10))
        after_first = _encoder_stats(stack)
        assert after_first["hits"] == 0 and after_first["puts"] >= 1
        assert list(client.scan_iter(match=f"{prefix}enc:*"))
        second = identify_response_to_dict(stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=10))
        after_second = _encoder_stats(stack)
        assert after_second["hits"] >= 1
        assert after_second["puts"] == after_first["puts"]
        assert after_second["errors"] == 0
        assert _bands(first) == _bands(second) == ["band-1", "band-2"]
        assert [(o["inliers"], o["score"], o["outline"]) for o in first["objects"]] == [
            (o["inliers"], o["score"], o["outline"]) for o in second["objects"]
        ]
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
