"""Gateway.SearchBands over both catalog backends (SQLite and a real Postgres database)."""

from __future__ import annotations

import grpc
import pytest

from kyb.catalog import Band, open_catalog
from kyb.client import GatewayClient
from kyb.errors import InvalidRequest
from kyb.v1 import gateway_pb2, gateway_pb2_grpc
from kyb_services._local import start_local
from tests.services.conftest import empty_shards, service_config, wait_ready

BANDS = [
    Band(band_id="motorhead", name="Motörhead", country="United Kingdom", genre="Heavy Metal"),
    Band(band_id="mortician", name="Mortician", country="United States", genre="Death Metal"),
    Band(band_id="death", name="Death", country="United States", genre="Death Metal"),
    Band(band_id="death-angel", name="Death Angel", country="United States", genre="Thrash Metal"),
    Band(band_id="at-the-gates", name="At the Gates", country="Sweden", genre="Melodic Death Metal"),
]


def test_search_bands_through_the_gateway(corpus, tmp_path, catalog_url: str) -> None:
    with open_catalog(catalog_url) as catalog:
        catalog.upsert_bands(BANDS)
    config = service_config(tmp_path, corpus.engine.config)
    config = config.replace(engine=config.engine.replace(catalog_url=catalog_url))
    empty_shards(corpus, config, 1)
    stack = start_local(config, shards=1)
    try:
        wait_ready(stack)
        with GatewayClient(f"127.0.0.1:{stack.gateway_port}", timeout=20) as client:
            # Case and accents do not matter; the exact name ranks before names that only start with it.
            assert client.search_bands("MOTORHEAD")[0]["band_id"] == "motorhead"
            assert [b["band_id"] for b in client.search_bands("death")][:2] == ["death", "death-angel"]
            assert [b["band_id"] for b in client.search_bands("gates")] == ["at-the-gates"]
            assert client.search_bands("death", limit=1)[0]["country"] == "United States"
            if catalog_url.startswith("postgresql://"):  # pg_trgm: a misspelt name still finds the band
                assert "motorhead" in [b["band_id"] for b in client.search_bands("motorhaed")]
            assert client.search_bands("no such band at all") == []
            with pytest.raises(InvalidRequest, match="query"):
                client.search_bands("   ")
            with pytest.raises(InvalidRequest, match="limit"):
                client.search_bands("death", limit=1000)
        with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.SearchBands(gateway_pb2.SearchBandsRequest(query="x" * 201), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stack.stop()
