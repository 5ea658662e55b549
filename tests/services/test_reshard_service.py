"""``kyb reshard`` against live matcher shards: 2 -> 3 shards, a new shard seeded from the codebook,
only the references whose placement changed move, nothing is lost or duplicated, a second run is a no-op."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from kyb.errors import NotReady
from kyb.index import ReferenceIndex
from kyb.rpc import ServiceConfig, expand_addresses, reshard, shard_for, wait_until_serving
from kyb.rpc.cli import run_reshard
from kyb.v1 import matcher_pb2, matcher_pb2_grpc
from kyb_services.matcher.server import create_server
from tests.services.conftest import Corpus

# 40 single-region references plus one with 3 regions (its keys must move together).
KEYS = [f"ref-{i:02d}" for i in range(40)] + [f"multi#{i}" for i in range(3)]


def _old_shards(corpus: Corpus, config: ServiceConfig, root: Path, count: int) -> list[Path]:
    """Shard folders of ``count`` shards holding KEYS as placed among ``count`` (copies of corpus encodings)."""
    source = corpus.engine.index
    encodings = [source.encoding(key) for key in source.reference_ids()]
    folders = [root / f"shard-{k}" for k in range(count)]
    shards = [ReferenceIndex(source.codebook, config.engine.search, f) for f in folders]
    for i, key in enumerate(KEYS):
        sha = hashlib.sha256(key.encode()).hexdigest()
        shards[shard_for(key, count)].add([(key, sha, encodings[i % len(encodings)])])
    for shard, folder in zip(shards, folders, strict=True):
        shard.save(folder)
    return folders


@contextmanager
def _serving(corpus: Corpus, config: ServiceConfig, folders: list[Path]) -> Iterator[list[str]]:
    """One matcher per folder, shard K of len(folders), empty folders seeded with the corpus codebook."""
    servers, addresses = [], []
    for k, folder in enumerate(folders):
        section = dataclasses.replace(
            config.matcher,
            shard=f"{k}/{len(folders)}",
            index_dir=str(folder),
            codebook_dir=corpus.engine.config.index_dir,
        )
        server, port = create_server(config.replace(matcher=section))
        server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    try:
        for address in addresses:
            wait_until_serving(address, config.rpc, service="kyb.v1.Matcher", timeout_s=10)
        yield addresses
    finally:
        for server in servers:
            server.stop(0).wait(5)


@pytest.fixture
def matchers(corpus: Corpus, config: ServiceConfig, tmp_path: Path) -> Iterator[list[str]]:
    """Shards 0 and 1 of an old 2-shard layout and an empty new shard 2, all running as K/3."""
    with _serving(corpus, config, [*_old_shards(corpus, config, tmp_path, 2), tmp_path / "shard-2"]) as addresses:
        yield addresses


def _contents(addresses: list[str]) -> list[set[str]]:
    out = []
    for address in addresses:
        with grpc.insecure_channel(address) as channel:
            stub = matcher_pb2_grpc.MatcherStub(channel)
            out.append({item.reference_id for item in stub.Export(matcher_pb2.ExportRequest(), timeout=10)})
    return out


def test_new_shard_is_seeded_empty_with_the_codebook(corpus: Corpus, matchers: list[str]) -> None:
    with grpc.insecure_channel(matchers[2]) as channel:
        stats = matcher_pb2_grpc.MatcherStub(channel).Stats(matcher_pb2.StatsRequest(), timeout=10)
    assert (stats.references, stats.shard_index, stats.shard_count) == (0, 2, 3)
    assert stats.codebook_version == corpus.engine.index.codebook.version


def test_reshard_moves_exactly_the_changed_placements(config: ServiceConfig, matchers: list[str]) -> None:
    expected_moves = sum(shard_for(key, 2) != shard_for(key, 3) for key in KEYS)
    assert expected_moves > 0
    dry = reshard(matchers, 2, 3, config.rpc, batch=2, dry_run=True)
    assert dry.total_moved == expected_moves
    assert _contents(matchers)[2] == set()  # a dry run changes nothing

    report = reshard(matchers, 2, 3, config.rpc, batch=2)  # batch 2 splits the 3 regions of "multi"
    assert report.total_moved == expected_moves
    assert all(target == 2 for _source, target in report.moved)  # growing: moves go to the new shard only
    contents = _contents(matchers)
    assert sorted(key for shard in contents for key in shard) == sorted(KEYS)  # none lost, none twice
    for k, keys in enumerate(contents):
        assert all(shard_for(key, 3) == k for key in keys)
    assert report.sizes_after == [len(c) for c in contents]

    again = reshard(matchers, 2, 3, config.rpc)
    assert again.total_moved == 0


def test_reshard_refuses_a_shard_still_running_with_the_old_count(config: ServiceConfig, matchers: list[str]) -> None:
    with pytest.raises(NotReady, match="shard 0, expected 1"):
        reshard([matchers[0], matchers[0], matchers[2]], 2, 3, config.rpc)
    with pytest.raises(NotReady, match=r"runs as shard 0/3.*auto/4"):
        reshard([*matchers, matchers[2]], 3, 4, config.rpc)


def test_reshard_cli(config: ServiceConfig, matchers: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from kyb.cli import build_parser

    args = build_parser().parse_args(["reshard", "--matchers", ",".join(matchers), "--from", "2", "--to", "3"])
    assert args.func is run_reshard
    assert run_reshard(args) == 0
    assert "moved" in capsys.readouterr().out
    assert all(all(shard_for(key, 3) == k for key in keys) for k, keys in enumerate(_contents(matchers)))
    assert expand_addresses("matcher-{k}.matcher:50053", 2) == ["matcher-0.matcher:50053", "matcher-1.matcher:50053"]


def test_load_from_a_built_index(corpus: Corpus, config: ServiceConfig, tmp_path: Path) -> None:
    """The build Job's last step: every reference of an offline-built index copied to its shard."""
    from kyb.cli import build_parser

    source = corpus.engine.config.index_dir
    with _serving(corpus, config, [tmp_path / "a", tmp_path / "b"]) as addresses:
        argv = ["reshard", "--matchers", ",".join(addresses), "--from-index", str(source), "--to", "2"]
        assert run_reshard(build_parser().parse_args(argv)) == 0
        contents = _contents(addresses)
    keys = corpus.engine.index.reference_ids()
    assert sorted(k for shard in contents for k in shard) == sorted(keys)
    assert all(all(shard_for(key, 2) == k for key in shard) for k, shard in enumerate(contents))
    # The seeded shards took the index's residual bins (none for int8 descriptors), so the references
    # they were sent as encodings are stored with the codes they had there: each descriptor restores
    # as it did.
    embedded = corpus.engine.index
    for folder in (tmp_path / "a", tmp_path / "b"):
        shard = ReferenceIndex.load(folder, config.engine.search)
        if embedded._quantizer is None:
            assert shard._quantizer is None
        else:
            assert shard._quantizer is not None
            assert np.array_equal(shard._quantizer.edges, embedded._quantizer.edges)
            assert np.array_equal(shard._quantizer.levels, embedded._quantizer.levels)
        for key in shard.reference_ids():
            assert np.array_equal(shard.features(key).descriptors, embedded.features(key).descriptors), key
