"""Ingest through the gateway, then identify; the catalog reads; delete; per-item failures."""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest

from kyb.catalog import Album
from kyb.client import GatewayClient
from kyb.engine import IngestItem
from kyb.errors import NotFound
from kyb.rpc import shard_for
from kyb.v1 import gateway_pb2, matcher_pb2, matcher_pb2_grpc


def _client(stack) -> GatewayClient:
    return GatewayClient(f"127.0.0.1:{stack.gateway_port}", timeout=20)


def test_ingest_then_identify(corpus, make_stack):
    stack, _stub = make_stack(2, ingest=False)
    items = [
        IngestItem("cover-1.png", "album_cover", "band-1", data=corpus.images[1]),
        IngestItem("cover-4.png", "album_cover", "band-4", album_id="album-4", data=corpus.images[4]),
    ]
    album = Album(album_id="album-4", band_id="band-4", title="Fourth Rite", year=1994)
    with _client(stack) as client:
        assert client.identify(corpus.photo([1, 4], seed=5))["objects"] == []
        results = client.ingest(
            [*items[:1], IngestItem("broken.png", "album_cover", "band-1", data=b"nope"), items[1]],
            bands=corpus.bands,
            albums=[album],
        )
        assert [r["status"] for r in results] == ["added", "failed", "added"]
        assert "not an image" in results[1]["message"]
        for result in (results[0], results[2]):
            assert result["shard"] == f"shard-{shard_for(result['reference_id'], 2)}"
        again = client.ingest(items)
        assert [r["status"] for r in again] == ["unchanged", "unchanged"]

        answer = client.identify(corpus.photo([1, 4], seed=5))
        assert sorted(o["band"]["band_id"] for o in answer["objects"]) == ["band-1", "band-4"]
        assert {o["matches"][0]["reference_id"] for o in answer["objects"]} == {
            results[0]["reference_id"],
            results[2]["reference_id"],
        }

        band = client.get_band("band-4")
        assert band["band"]["name"] == "Band 4" and band["band"]["formed_in"] == 1994
        assert band["albums"] == [album.to_dict()]
        with pytest.raises(NotFound):
            client.get_band("band-404")

        listed = list(client.list_references(page_size=1))
        assert [r["reference_id"] for r in listed] == [results[0]["reference_id"], results[2]["reference_id"]]
        assert [r["shard"] for r in listed] == [results[0]["shard"], results[2]["shard"]]

        deleted = client.delete_reference(results[0]["reference_id"])
        assert deleted == {
            "deleted_from_index": True,
            "deleted_from_catalog": True,
            "shard": results[0]["shard"],
        }
        answer = client.identify(corpus.photo([1, 4], seed=5))
        assert [o["band"]["band_id"] for o in answer["objects"]] == ["band-4"]
        with pytest.raises(NotFound):
            client.delete_reference(results[0]["reference_id"])


def test_multi_region_reference_is_found_by_each_region(corpus, make_stack):
    stack, _stub = make_stack(2, ingest=False)
    sheet = np.concatenate([corpus.covers[2], corpus.covers[5]], axis=1)  # two covers on one scan
    data = cv2.imencode(".png", sheet)[1].tobytes()
    item = IngestItem("sheet.png", "album_cover", "band-2", regions=((0, 0, 320, 320), (320, 0, 640, 320)), data=data)
    with _client(stack) as client:
        [result] = client.ingest([item], bands=corpus.bands)
        assert result["status"] == "added"
        answer = client.identify(corpus.photo([5], seed=6))
        assert [o["matches"][0]["reference_id"] for o in answer["objects"]] == [result["reference_id"]]
    address = stack.gateway_servicer._shards[shard_for(result["reference_id"], 2)].address
    with grpc.insecure_channel(address) as channel:
        stats = matcher_pb2_grpc.MatcherStub(channel).Stats(matcher_pb2.StatsRequest(), timeout=5)
    assert stats.references == 2  # one index entry per region, both on the reference's shard


def test_ingest_refuses_items_without_kind_or_band(corpus, make_stack):
    _stack, stub = make_stack(1, ingest=False)
    reply = stub.Ingest(
        iter(
            [
                gateway_pb2.IngestRequest(image=corpus.images[0], band_id="band-0"),
                gateway_pb2.IngestRequest(image=corpus.images[0], kind=1),
            ]
        ),
        timeout=10,
    )
    assert [r.status for r in reply.results] == ["failed", "failed"]
    assert "kind" in reply.results[0].message and "band_id" in reply.results[1].message
    assert reply.failed == 2 and reply.added == 0


def test_list_references_rejects_a_forged_page_token(make_stack):
    _stack, stub = make_stack(1, ingest=False)
    with pytest.raises(grpc.RpcError) as failure:
        stub.ListReferences(gateway_pb2.ListReferencesRequest(page_token="x"), timeout=5)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in failure.value.details()
