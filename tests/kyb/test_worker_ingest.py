"""Ingest with encoding worker processes: the same index as one process; a kill loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from kyb import synth
from kyb.config import EngineConfig
from kyb.engine import Engine, IngestItem
from kyb.index import ReferenceIndex, current_generation
from tests.conftest import Library, encode_jpeg, make_config

CHILD = textwrap.dedent(
    """
    import json, sys
    from kyb.config import load_config
    from kyb.engine import Engine, IngestItem

    root, listing = sys.argv[1], sys.argv[2]
    config = load_config(overrides={"index_dir": root + "/index", "catalog_url": root + "/catalog.db"})
    items = [IngestItem(path, "album_cover", band) for path, band in json.loads(open(listing).read())]
    Engine(config).ingest(items, processes=2, save_every=2)
    """
)


def _new_covers(library: Library, folder: Path, count: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(77)
    listing = []
    for i in range(count):
        band = library.bands[i % len(library.bands)]
        path = folder / f"new-{i:02d}.jpg"
        path.write_bytes(encode_jpeg(synth.draw_album_cover(f"Worker Title {i}", band.name, rng), 92))
        listing.append((str(path), band.band_id))
    return listing


def test_worker_ingest_equals_one_process(library: Library, library_copy: EngineConfig, tmp_path: Path) -> None:
    listing = _new_covers(library, tmp_path, 4)
    items = [IngestItem(path, "album_cover", band) for path, band in listing]
    other = tmp_path / "other"
    shutil.copytree(library_copy.index_dir, other / "index")
    shutil.copy2(library_copy.catalog_url, other / "catalog.db")
    with Engine(library_copy) as one, Engine(make_config(other)) as two:
        first = one.ingest(items)
        second = two.ingest(items, processes=2)
        assert [o.status for o in second] == [o.status for o in first] == ["added"] * 4
        assert [o.reference_id for o in second] == [o.reference_id for o in first]
        for outcome in first:
            key = outcome.reference_id
            assert key is not None
            a, b = one.index.encoding(key), two.index.encoding(key)
            assert np.array_equal(a.words, b.words) and np.array_equal(a.descriptors, b.descriptors)
            assert np.allclose(a.global_vector, b.global_vector, atol=1e-6)
        assert [o.status for o in two.ingest(items, processes=2)] == ["unchanged"] * 4


def test_a_kill_during_a_worker_ingest_loses_nothing_and_duplicates_nothing(
    library: Library, library_copy: EngineConfig, tmp_path: Path
) -> None:
    listing = _new_covers(library, tmp_path, 16)
    (tmp_path / "listing.json").write_text(json.dumps(listing))
    with Engine(library_copy) as engine:
        before_refs = set(engine.index.reference_ids())
        before_rows = engine.catalog.count_references()
    start = current_generation(library_copy.index_dir)
    log = tmp_path / "child.log"
    with open(log, "wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(tmp_path / "listing.json")],
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,  # its worker processes are killed with it
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 240
        while current_generation(library_copy.index_dir) == start and child.poll() is None:
            assert time.monotonic() < deadline, "the worker ingest saved nothing in time"
            time.sleep(0.05)
        assert child.poll() is None, log.read_text()
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
    midway = ReferenceIndex.load(library_copy.index_dir, library_copy.search)
    saved = set(midway.reference_ids()) - before_refs
    assert 0 < len(saved) < len(listing)  # killed part way, after a save

    items = [IngestItem(path, "album_cover", band) for path, band in listing]
    with Engine(library_copy) as engine:
        outcomes = engine.ingest(items, processes=2)
        statuses = {o.reference_id: o.status for o in outcomes}
        assert all(statuses[key] == "unchanged" for key in saved)
        assert sorted(set(statuses.values()) - {"unchanged"}) == ["added"]
        after = ReferenceIndex.load(library_copy.index_dir, library_copy.search)
        new = [k for k in after.reference_ids() if k not in before_refs]
        assert sorted(new) == sorted(statuses) and len(statuses) == len(listing)  # each once
        assert after.stats()["references"] == len(before_refs) + len(listing)
        assert engine.catalog.count_references() == before_rows + len(listing)
        assert all(engine.catalog.get_reference(key) is not None for key in new)
