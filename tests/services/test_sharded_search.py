"""Two-phase search across shards: merged shortlists, the one-index answer, and no more verification
than one index does (the shards' servicers are called in process, without gRPC, to count the work)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kyb.search
from kyb.catalog import Band
from kyb.engine import Engine, IngestItem
from kyb.index import ReferenceIndex, merge_ranked
from kyb.rpc import ServiceConfig, encoding_to_proto, split_index
from kyb.search import IndexSource, run_search, search
from kyb_services.gateway.sharded import ShardedSource
from kyb_services.matcher.servicer import MatcherServicer
from tests.services.conftest import compose_photo, draw_cover, encode, engine_config

#: References in this module's index: enough that a shortlist (verify_top = 40) is a real choice.
REFERENCES = 48
SHARDS = 2


@dataclass
class _Shard:
    name: str
    servicer: MatcherServicer


@dataclass
class Sharded:
    engine: Engine
    covers: list[np.ndarray]
    shards: list[_Shard]
    indexes: list[ReferenceIndex]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Sharded:
    root: Path = tmp_path_factory.mktemp("sharded")
    covers = [draw_cover(1000 + seed) for seed in range(REFERENCES)]
    engine = Engine(engine_config(root))
    engine.catalog.upsert_bands([Band(band_id=f"b{i}", name=f"B {i}") for i in range(REFERENCES)])
    outcomes = engine.ingest(
        IngestItem(source=f"c{i}.png", data=encode(c), kind="album_cover", band_id=f"b{i}")
        for i, c in enumerate(covers)
    )
    assert all(o.status == "added" for o in outcomes)
    search_config = engine.config.search
    folders = [root / f"shard-{k}" for k in range(SHARDS)]
    sizes = split_index(engine.config.index_dir, search_config, SHARDS, lambda k: folders[k])
    assert min(sizes) >= REFERENCES // 4  # both shards hold a real share
    indexes = [ReferenceIndex.load(folder, search_config) for folder in folders]
    shards = []
    for k, index in enumerate(indexes):
        servicer = MatcherServicer(ServiceConfig(engine=engine.config))
        servicer._index = index  # loaded here: no background loader in this test
        servicer.name = f"shard-{k}"
        shards.append(_Shard(f"shard-{k}", servicer))
    return Sharded(engine, covers, shards, indexes)


def _fan_out(calls: Sequence[tuple[Any, str, Any]]) -> list[Any]:
    return [getattr(shard.servicer, method)(request, None) for shard, method, request in calls]


def _photo(sharded: Sharded, which: list[int], seed: int) -> bytes:
    return encode(compose_photo([sharded.covers[i] for i in which], seed, (300 * len(which), 400)), ".jpg")


def test_merged_global_lists_of_shards_equal_the_whole_index(sharded):
    engine = sharded.engine
    config = engine.config.search
    encoding = engine.encoder.encode(engine.decode_query(_photo(sharded, [2, 7], seed=5)))
    whole = engine.index
    for exclude in (frozenset(), frozenset(whole.reference_ids()[:5])):
        expected = IndexSource(encoding, whole).ranked(None, exclude, config.verify_top)
        parts = [IndexSource(encoding, index).ranked(None, exclude, config.verify_top) for index in sharded.indexes]
        merged = merge_ranked(parts, config, config.verify_top)
        assert [key for key, _ in merged.global_list] == [key for key, _ in expected.global_list]
        assert np.allclose([s for _, s in merged.global_list], [s for _, s in expected.global_list])
        assert not exclude & {key for key, _ in [*merged.global_list, *merged.words]}
        assert len(merged.words) == len(expected.words)


@pytest.mark.parametrize("covers", [[3], [5, 11, 20], []])  # [] = a cover that is not indexed
def test_shards_give_the_one_index_answer_for_at_most_one_chunk_more_work(sharded, monkeypatch, covers):
    engine = sharded.engine
    config = engine.config.search
    real_verify = kyb.search.verify
    calls: list[str] = []

    def counting(query, reference, descriptors, search_config, rows=None):
        calls.append(reference.reference_id)
        return real_verify(query, reference, descriptors, search_config, rows)

    monkeypatch.setattr(kyb.search, "verify", counting)
    stranger = [draw_cover(99_999)]
    photo = _photo(sharded, covers, seed=31) if covers else encode(compose_photo(stranger, 31, (600, 400)), ".jpg")
    decoded = engine.decode_query(photo)
    encoding = engine.encoder.encode(decoded)
    size = (decoded.width, decoded.height)

    found, _order = search(encoding, size, engine.index, config)
    one_index = len(calls)
    calls.clear()
    source = ShardedSource(sharded.shards, _fan_out, encoding_to_proto(encoding), len(encoding), size, config)
    xy = encoding.xy + np.asarray(encoding.origin, np.float32)
    found_sharded, order_sharded = run_search(source, xy, config)

    def essence(items):
        return [
            (o.verification.reference_id, o.verification.inliers, [a.reference_id for a in o.alternatives])
            for o in items
        ]

    assert essence(found_sharded) == essence(found)
    bands = {engine.catalog.get_reference(o.verification.reference_id).band_id for o in found}
    assert bands == {f"b{i}" for i in covers}
    assert source.missing == {}
    # The loop stops where one index stops; at most the rest of a chunk (10 keys, doubling while
    # nothing verifies) is verified beyond that, spread over the shards.
    chunk = max(8, config.verify_top // 4)
    assert one_index <= len(calls) <= one_index + 2 * chunk * (len(found) + 1)
    assert {o.verification.reference_id for o in found} <= set(order_sharded)
