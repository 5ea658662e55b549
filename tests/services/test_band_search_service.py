"""Gateway.SearchBands by meaning and name with filters, and similar bands on GetBand and Identify
answers, through a real stack over SQLite and Postgres catalogs that hold band vectors."""

from __future__ import annotations

import grpc
import pytest

from kyb.bandsearch import refresh_band_vectors
from kyb.catalog import Band, open_catalog
from kyb.client import GatewayClient
from kyb.v1 import gateway_pb2, gateway_pb2_grpc
from kyb_services._local import LocalStack, start_local
from tests.kyb.test_bandsearch import BANDS
from tests.services.conftest import Corpus, empty_shards, service_config, start_stack, wait_ready


def _ready(stack: LocalStack, embedder: object) -> None:
    """The gateway's band search picks up the catalog's vectors now (what its thread does every 30 s)."""
    refresher = stack.gateway_servicer.band_search
    refresher.embedder = embedder  # the session's loaded model: no second load in this process
    assert refresher.refresh_now().semantic


def test_search_bands_by_meaning_with_filters(corpus: Corpus, tmp_path, catalog_url: str, embedder) -> None:
    with open_catalog(catalog_url) as catalog:
        catalog.upsert_bands(BANDS)
        refresh_band_vectors(catalog, embedder)
    config = service_config(tmp_path, corpus.engine.config)
    config = config.replace(engine=config.engine.replace(catalog_url=catalog_url))
    empty_shards(corpus, config, 1)
    stack = start_local(config, shards=1)
    try:
        wait_ready(stack)
        _ready(stack, embedder)
        with GatewayClient(f"127.0.0.1:{stack.gateway_port}", timeout=20) as client:
            answer = client.find_bands("songs about outer space and the stars", limit=3)
            assert answer["mode"] == "meaning+name" and answer["notice"] == ""
            assert answer["bands"][0]["band_id"] in {"b-cosmos", "b-twin"}
            assert client.search_bands("warfare")[0]["band_id"] == "b-warfare"  # the exact name
            swedish = client.find_bands("war", country="Schweden", status="active", formed=(1990, 1999), limit=10)
            assert [b["band_id"] for b in swedish["bands"]] == ["b-swe-war", "b-grief"]
            assert client.find_bands("war", formed=(None, 1989))["bands"][0]["band_id"] == "b-swe-old"
            card = client.get_band("b-cosmos")
            assert card["similar_bands"][0]["band_id"] == "b-twin"
            assert "b-cosmos" not in [s["band_id"] for s in card["similar_bands"]]
            assert len(card["similar_bands"]) == 5
        with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            for request, message in [
                (gateway_pb2.SearchBandsRequest(query="war", country="Atlantis"), "unknown country"),
                (gateway_pb2.SearchBandsRequest(query="war", status="alive"), "unknown status"),
                (gateway_pb2.SearchBandsRequest(query="war", formed_from=2000, formed_to=1990), "after the last"),
                (gateway_pb2.SearchBandsRequest(query="", limit=5), "query"),
            ]:
                with pytest.raises(grpc.RpcError) as info:
                    stub.SearchBands(request, timeout=10)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert message in (info.value.details() or "")
    finally:
        stack.stop()


def test_identified_bands_carry_similar_bands(corpus: Corpus, tmp_path, embedder) -> None:
    stack, channel = start_stack(corpus, tmp_path, shards=1)  # ingests the corpus covers with their bands
    try:
        with open_catalog(stack.config.engine.catalog_url) as catalog:
            # Give the corpus bands something to be alike in, then embed them.
            themes = [("War",), ("War", "Battles"), ("Space",), ("Space", "Cosmos"), ("Gore",), ("Love",)]
            catalog.upsert_bands(
                Band(band_id=b.band_id, name=b.name, genre=b.genre, formed_in=b.formed_in, themes=t)
                for b, t in zip(corpus.bands, themes, strict=True)
            )
            refresh_band_vectors(catalog, embedder)
        _ready(stack, embedder)
        with GatewayClient(f"127.0.0.1:{stack.gateway_port}", timeout=30) as client:
            answer = client.identify(corpus.photo([0, 2], seed=3))
        found = {obj["band"]["band_id"]: obj["similar_bands"] for obj in answer["objects"]}
        assert sorted(found) == ["band-0", "band-2"]
        assert found["band-0"][0]["band_id"] == "band-1"  # the other war band
        assert found["band-2"][0]["band_id"] == "band-3"  # the other space band
        for band_id, similar in found.items():
            assert band_id not in [s["band_id"] for s in similar] and len(similar) == 5
    finally:
        channel.close()
        stack.stop()
