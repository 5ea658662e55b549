"""A cluster build: slices of one catalog encoded apart from one seed index, then merged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from kyb.cli import main
from kyb.engine import Engine
from kyb.index import ReferenceIndex
from tests.conftest import Library, make_config


@pytest.mark.parametrize("bits", [-1, 1], ids=["int8", "compact"])
def test_two_slices_built_apart_and_merged_equal_one_build(
    library: Library, tmp_path: Path, bits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KYB_SEARCH__RESIDUAL_BITS", str(bits))  # the merge-index command's config too
    items = library.items()
    seed_items, rest = items[:3], items[3:]
    seed = make_config(tmp_path / "seed", search={"residual_bits": bits})
    with Engine(seed) as engine:  # the seed: codebook and residual bins, as the Job's first step makes them
        library.seed_catalog(engine)
        engine.ingest(seed_items)

    def copy_of_seed(name: str) -> Path:
        shutil.copytree(tmp_path / "seed", tmp_path / name)
        return tmp_path / name

    with Engine(make_config(copy_of_seed("one"), search={"residual_bits": bits})) as one:  # one build of everything
        one.ingest(rest)
        whole = ReferenceIndex.load(one.config.index_dir, one.config.search)
    slices = []
    for k in range(2):  # each pod its every-other item, in its own folder and catalog
        with Engine(make_config(copy_of_seed(f"slice-{k}"), search={"residual_bits": bits})) as pod:
            pod.ingest(rest[k::2], processes=1)
            slices.append(str(pod.config.index_dir))
    merged_dir = tmp_path / "merged" / "index"
    assert main(["merge-index", str(merged_dir), *slices, "--index-dir", str(merged_dir)]) == 0
    merged = ReferenceIndex.load(merged_dir, whole.search_config)

    assert sorted(merged.reference_ids()) == sorted(whole.reference_ids())
    for key in whole.reference_ids():
        a, b = whole.encoding(key), merged.encoding(key)
        assert merged.sha256_of(key) == whole.sha256_of(key)
        assert np.array_equal(a.xy, b.xy) and np.array_equal(a.words, b.words)
        assert np.array_equal(a.descriptors, b.descriptors) and np.array_equal(a.global_vector, b.global_vector)
    assert np.array_equal(merged._df, whole._df)
    photo = whole.encoding(whole.reference_ids()[-1])
    assert merged.ranked(photo).words == whole.ranked(photo).words  # the same vote, score for score
    # Merging again changes nothing.
    again = ReferenceIndex.load(merged_dir, whole.search_config)
    assert set(again.merge(ReferenceIndex.load(Path(slices[0]), whole.search_config))) == {"unchanged"}
