"""Indexes made from another index's references carry its residual bins and its stored codes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from kyb.engine import Engine
from kyb.index import ReferenceIndex
from kyb.index._residuals import ResidualQuantizer
from kyb.index._store import load_quantizer
from kyb.rpc import shard_for, split_index
from tests.conftest import Library, make_config


def _same_bins(a: ResidualQuantizer | None, b: ResidualQuantizer | None) -> bool:
    assert a is not None and b is not None
    return a.bits == b.bits and np.array_equal(a.edges, b.edges) and np.array_equal(a.levels, b.levels)


def _codes(index: ReferenceIndex, key: str) -> np.ndarray:
    segment, row = index._where[key]
    return segment.codes[int(segment.offsets[row]) : int(segment.offsets[row + 1])]


@pytest.fixture(scope="module")
def compact(library: Library, tmp_path_factory: pytest.TempPathFactory) -> Library:
    """The library's references indexed with 1-bit residual codes (``search.residual_bits`` 1)."""
    root = tmp_path_factory.mktemp("compact")
    lib = dataclasses.replace(library, root=root, config=make_config(root, search={"residual_bits": 1}))
    with Engine(lib.config) as engine:
        lib.seed_catalog(engine)
        assert all(o.status == "added" for o in engine.ingest(lib.items()))
        assert engine.index.stats()["residual_bits"] == 1
    return lib


def test_split_shards_hold_the_source_bins_and_its_codes(compact: Library, tmp_path: Path) -> None:
    search = compact.config.search
    source = ReferenceIndex.load(compact.config.index_dir, search)
    folders = [tmp_path / f"shard-{k}" for k in range(3)]
    sizes = split_index(compact.config.index_dir, search, 3, lambda k: folders[k])
    assert sum(sizes) == len(source) and sum(size > 0 for size in sizes) >= 2
    shards = [ReferenceIndex.load(folder, search) for folder in folders]
    seen = set()
    for k, shard in enumerate(shards):
        assert _same_bins(shard._quantizer, source._quantizer), k
        assert _same_bins(load_quantizer(folders[k]), source._quantizer)
        for key in shard.reference_ids():
            assert shard_for(key, 3) == k
            assert np.array_equal(_codes(shard, key), _codes(source, key))  # copied, not re-encoded
            a, b = shard.features(key), source.features(key)
            assert np.array_equal(a.descriptors, b.descriptors) and np.array_equal(a.xy, b.xy)
            assert shard.sha256_of(key) == source.sha256_of(key)
            seen.add(key)
    assert seen == set(source.reference_ids())


def test_bins_trained_per_copy_would_differ(compact: Library) -> None:
    """Why the copies take the source's bins: a shard's own bins, from its own first references,
    restore descriptors differently (this is what the shared bins prevent)."""
    source = ReferenceIndex.load(compact.config.index_dir, compact.config.search)
    keys = [k for k in source.reference_ids() if shard_for(k, 2) == 1]
    own = ReferenceIndex(source.codebook, compact.config.search)
    own.add([(k, source.sha256_of(k) or "", source.encoding(k)) for k in keys])
    assert not _same_bins(own._quantizer, source._quantizer)
    like = ReferenceIndex.empty_like(compact.config.index_dir, compact.config.search)
    assert len(like) == 0 and like.codebook.version == source.codebook.version
    assert _same_bins(like._quantizer, source._quantizer)


def test_an_int8_index_loaded_compact_gives_its_copies_the_bins_its_load_trains(
    library: Library, tmp_path: Path
) -> None:
    root = tmp_path / "raw"
    raw = Engine(make_config(root, search={"residual_bits": -1}))
    library.seed_catalog(raw)
    raw.ingest(library.items())
    assert load_quantizer(raw.config.index_dir) is None
    search = make_config(root, search={"residual_bits": 1}).search
    embedded = ReferenceIndex.load(raw.config.index_dir, search)
    assert _same_bins(load_quantizer(raw.config.index_dir, search.residual_bits), embedded._quantizer)
    folders = [tmp_path / f"shard-{k}" for k in range(2)]
    split_index(raw.config.index_dir, search, 2, lambda k: folders[k])
    for folder in folders:
        shard = ReferenceIndex.load(folder, search)
        assert _same_bins(shard._quantizer, embedded._quantizer)
        for key in shard.reference_ids():
            assert np.array_equal(shard.features(key).descriptors, embedded.features(key).descriptors)


def test_a_merge_of_two_compact_slices_equals_one_build(compact: Library, tmp_path: Path) -> None:
    search = compact.config.search
    source = ReferenceIndex.load(compact.config.index_dir, search)
    keys = source.reference_ids()
    halves = []
    for k in range(2):
        half = ReferenceIndex.empty_like(source, search)
        half.merge(source, keep=lambda key, k=k: keys.index(key) % 2 == k)
        halves.append(half.save(tmp_path / f"slice-{k}") and ReferenceIndex.load(tmp_path / f"slice-{k}", search))
    merged = ReferenceIndex.empty_like(tmp_path / "slice-0", search, tmp_path / "merged")
    for half in halves:
        merged.merge(half)
    merged.save()
    merged = ReferenceIndex.load(tmp_path / "merged", search)
    assert _same_bins(merged._quantizer, source._quantizer)
    assert sorted(merged.reference_ids()) == sorted(keys)
    for key in keys:
        assert np.array_equal(_codes(merged, key), _codes(source, key))
        assert np.array_equal(merged.features(key).descriptors, source.features(key).descriptors)
    assert np.array_equal(merged._df, source._df)
    photo = source.encoding(keys[-1])
    assert [k for k, _ in merged.ranked(photo).words] == [k for k, _ in source.ranked(photo).words]
