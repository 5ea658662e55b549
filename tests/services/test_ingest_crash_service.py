"""Gateway.Ingest killed at each point of an ingest, over a real Postgres catalog and two matcher shards:
Identify never sees a reference without its catalog row, and the same Ingest sent again repairs what
the kill left (the embedded engine's version of this is tests/kyb/test_ingest_consistency.py).

The whole topology runs in a child process (``start_local``: gateway, encoder, two shards) that dies
with ``os._exit`` (no cleanup, no flush) at the chosen point; the parent then opens the shard folders
and the catalog as a restarted deployment would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kyb.catalog import open_catalog
from kyb.index import ReferenceIndex
from kyb.rpc import ServiceConfig
from kyb.v1 import gateway_pb2, gateway_pb2_grpc
from kyb_services._local import start_local
from tests.conftest import scratch_database
from tests.services.conftest import BANDS, Corpus, empty_shards, service_config, wait_ready

REPO = Path(__file__).resolve().parents[2]
SHARDS = 2
KILLED = 9

# The child builds the same configuration as the parent (same helpers), arms one kill, and ingests.
CHILD = textwrap.dedent(
    """
    import dataclasses, os, sys
    from pathlib import Path

    import grpc
    from kyb.index import _store
    from kyb.catalog import PostgresCatalog as Catalog  # the backend the test runs on
    from kyb.v1 import gateway_pb2, gateway_pb2_grpc
    from kyb_services._local import start_local
    from kyb_services.matcher.servicer import MatcherServicer
    from tests.services.conftest import engine_config, service_config, wait_ready

    tmp, corpus_root, url, when, requests_file = sys.argv[1:]
    config = service_config(Path(tmp), engine_config(Path(corpus_root)))
    config = config.replace(
        engine=config.engine.replace(catalog_url=url),
        gateway=dataclasses.replace(config.gateway, ingest_batch=2),  # a shard Add every 2 items
    )

    def die(*args, **kwargs):
        os._exit(9)

    if when == "after-catalog-write":  # the 3rd catalog row is written, its shard Add never sent
        real_add_reference, rows = Catalog.add_reference, []
        def add_reference(self, ref):
            result = real_add_reference(self, ref)
            rows.append(ref)
            return die() if len(rows) == 3 else result
        Catalog.add_reference = add_reference
    elif when == "after-shard-add":  # a shard saved the Add; the gateway dies before answering
        real_add = MatcherServicer.Add
        MatcherServicer.Add = lambda self, request, context: (real_add(self, request, context), die())[0]
    elif when == "mid-shard-save":  # a shard dies between writing a generation and switching CURRENT
        real_replace = _store.os.replace
        _store.os.replace = lambda s, d: die() if str(d).endswith("CURRENT") else real_replace(s, d)

    stack = start_local(config, shards=2)
    wait_ready(stack)
    data, requests = Path(requests_file).read_bytes(), []
    while data:  # length-prefixed IngestRequest messages (see _write_requests)
        size = int.from_bytes(data[:4], "big")
        requests.append(gateway_pb2.IngestRequest.FromString(data[4 : 4 + size]))
        data = data[4 + size :]
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
        gateway_pb2_grpc.GatewayStub(channel).Ingest(iter(requests), timeout=60)
    sys.exit(0)
    """
)


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh Postgres database for one test, dropped after it."""
    with scratch_database("kyb_test_crash") as url:
        yield url


def _config(corpus: Corpus, tmp_path: Path, url: str) -> ServiceConfig:
    config = service_config(tmp_path, corpus.engine.config)
    return config.replace(engine=config.engine.replace(catalog_url=url))


def _write_requests(path: Path, requests: list[gateway_pb2.IngestRequest]) -> Path:
    """The requests as length-prefixed messages, for the child to send."""
    path.write_bytes(b"".join(len(m).to_bytes(4, "big") + m for m in (r.SerializeToString() for r in requests)))
    return path


def _shard_ids(config: ServiceConfig) -> set[str]:
    ids: set[str] = set()
    for k in range(SHARDS):
        folder = config.matcher.shard_folder(config.engine.index_dir, k, SHARDS)
        ids |= set(ReferenceIndex.load(folder, config.engine.search).reference_ids())
    return ids


def _catalog_ids(url: str) -> set[str]:
    with open_catalog(url) as catalog:
        return {r.reference_id for r in catalog.list_references(limit=1000)}


@pytest.mark.parametrize("when", ["after-catalog-write", "after-shard-add", "mid-shard-save"])
def test_killed_ingest_leaves_no_orphan_and_a_rerun_repairs_it(
    corpus: Corpus, tmp_path: Path, database: str, when: str
) -> None:
    config = _config(corpus, tmp_path, database)
    empty_shards(corpus, config, SHARDS)
    requests = corpus.ingest_requests()
    spec = _write_requests(tmp_path / "requests.bin", requests)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), str(corpus.root), database, when, str(spec)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == KILLED, result.stderr[-2000:]

    # What a restarted deployment sees: every indexed reference has its catalog row (no orphan).
    indexed, cataloged = _shard_ids(config), _catalog_ids(database)
    assert indexed <= cataloged
    if when == "after-shard-add":
        assert indexed, "the kill came after a durable shard Add: that shard must hold its items"
    else:
        assert indexed < cataloged, "the kill came before a shard write: some catalog row has no shard entry"
    stack = start_local(config, shards=SHARDS)
    try:
        wait_ready(stack)
        with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
            gateway = gateway_pb2_grpc.GatewayStub(channel)
            catalog = _catalog_ids(database)
            for which in ([0, 1], [2, 3]):
                answer = gateway.Identify(gateway_pb2.IdentifyRequest(image=corpus.photo(which, seed=5)), timeout=30)
                for found in answer.objects:
                    for match in found.matches:
                        assert match.reference_id in catalog and match.band.band_id

            # The same ingest again repairs: nothing fails, and catalog and shards then hold all of them.
            again = gateway.Ingest(iter(requests), timeout=60)
            assert {r.status for r in again.results} <= {"added", "unchanged"}, again
            assert _shard_ids(config) == _catalog_ids(database)
            assert len(_catalog_ids(database)) == BANDS
            third = gateway.Ingest(iter(requests), timeout=60)
            assert [r.status for r in third.results] == ["unchanged"] * BANDS

            answer = gateway.Identify(gateway_pb2.IdentifyRequest(image=corpus.photo([0, 1], seed=5)), timeout=30)
            found_bands = {m.band.band_id for o in answer.objects for m in o.matches[:1]}
            assert found_bands == {corpus.bands[0].band_id, corpus.bands[1].band_id}
    finally:
        stack.stop()
