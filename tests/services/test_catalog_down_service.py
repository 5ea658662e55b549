"""The gateway over a real Postgres catalog that goes away: ingest fails UNAVAILABLE with nothing
half-written; identification still answers, with the metadata last seen, marked as such."""

from __future__ import annotations

import re

import grpc
import pytest

from kyb.v1 import gateway_pb2, gateway_pb2_grpc, matcher_pb2, matcher_pb2_grpc
from kyb_services._local import start_local
from tests.conftest import drop_database, scratch_database
from tests.services.conftest import BANDS, empty_shards, service_config, wait_ready


def _shard_references(stack) -> int:
    total = 0
    for server in stack.matchers:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stats = matcher_pb2_grpc.MatcherStub(channel).Stats(matcher_pb2.StatsRequest(), timeout=10)
            total += stats.references
    return total


def test_catalog_down_fails_ingest_and_identify_answers_with_the_metadata_last_seen(corpus, tmp_path) -> None:
    with scratch_database("kyb_test_down") as catalog_url:
        _catalog_goes_away(corpus, tmp_path, catalog_url)


def _catalog_goes_away(corpus, tmp_path, catalog_url: str) -> None:
    database = catalog_url.rsplit("/", 1)[1]
    config = service_config(tmp_path, corpus.engine.config)
    config = config.replace(engine=config.engine.replace(catalog_url=catalog_url))
    empty_shards(corpus, config, 2)
    stack = start_local(config, shards=2)
    try:
        wait_ready(stack)
        with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
            gateway = gateway_pb2_grpc.GatewayStub(channel)
            requests = corpus.ingest_requests()
            first = gateway.Ingest(iter(requests[:2]), timeout=30)
            assert [r.status for r in first.results] == ["added", "added"]
            assert _shard_references(stack) == 2
            seen = gateway.Identify(gateway_pb2.IdentifyRequest(image=corpus.photo([0], seed=3)), timeout=30)
            assert [o.band.band_id for o in seen.objects] == ["band-0"] and not seen.catalog_unavailable

            drop_database(catalog_url)  # the catalog is gone, for real
            with pytest.raises(grpc.RpcError) as info:
                gateway.Ingest(iter(requests[2:BANDS]), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            details = info.value.details()
            assert "\n" not in details and "catalog" in details
            # No address or DSN reaches the caller; the message carries the id of the logged details.
            assert "127.0.0.1" not in details and "5432" not in details and database not in details, details
            assert re.search(r"error id [0-9a-f]{12}", details), details
            assert _shard_references(stack) == 2  # nothing reached a shard without its catalog row

            # A band answered before: named from the rows last seen; one never answered: found, unnamed.
            again = gateway.Identify(gateway_pb2.IdentifyRequest(image=corpus.photo([0], seed=4)), timeout=30)
            assert again.catalog_unavailable
            assert [o.band for o in again.objects] == [seen.objects[0].band]
            assert again.objects[0].matches[0].reference_id == seen.objects[0].matches[0].reference_id
            unseen = gateway.Identify(gateway_pb2.IdentifyRequest(image=corpus.photo([1], seed=4)), timeout=30)
            assert unseen.catalog_unavailable and len(unseen.objects) == 1
            assert unseen.objects[0].matches[0].reference_id and not unseen.objects[0].HasField("band")
            metrics = stack.gateway_servicer._metrics.text().decode()
            assert 'kyb_degraded_answers_total{reason="catalog_unavailable"} 2.0' in metrics
    finally:
        stack.stop()
