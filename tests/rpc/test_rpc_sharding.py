"""shard_for: stable, uniform, regions together, minimal movement when shards are added."""

from __future__ import annotations

from collections import Counter

import pytest

from kyb.errors import InvalidRequest
from kyb.rpc import shard_for, shard_name


def test_placement_is_pinned():
    # A change here would move references between the shards of every existing deployment.
    assert [shard_for(key, 8) for key in ("a", "b", "c", "d", "e", "f")] == [1, 5, 5, 0, 3, 1]
    assert [shard_for(f"ref-{i}", 4) for i in range(8)] == [3, 3, 1, 2, 1, 0, 1, 2]
    assert shard_for("a9f3c2", 1) == 0


def test_regions_of_a_reference_share_its_shard():
    assert {shard_for(f"abc#{i}", 16) for i in range(5)} == {shard_for("abc", 16)}


def test_uniform_and_minimal_movement():
    keys = [f"{i:024x}" for i in range(4000)]
    counts = Counter(shard_for(k, 4) for k in keys)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 850
    moved = [k for k in keys if shard_for(k, 4) != shard_for(k, 5)]
    assert all(shard_for(k, 5) == 4 for k in moved)  # only ever to the new shard
    assert 600 < len(moved) < 1000  # about 1/5


def test_bad_count_and_names():
    with pytest.raises(InvalidRequest):
        shard_for("x", 0)
    assert shard_name(3) == "shard-3"
