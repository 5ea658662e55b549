"""Merging the answers of several matcher shards (and several photo regions) into one per object.

The rule is the embedded engine's (:func:`kyb.search.search`): candidates are taken most inliers
first; one whose inliers lie at least 30% inside an object already found becomes an alternative
explanation of that object; one left with fewer than ``min_inliers`` features once the features
inside the found objects are removed is dropped; otherwise it founds a new object. Each shard's own
answer already follows the rule, so its order is kept (a k-way merge), which makes a one-shard
deployment give exactly the embedded answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kyb.rpc import outline_from_proto, unpack_array
from kyb.search import inside_outline as inside
from kyb.v1 import matcher_pb2

__all__ = ["Candidate", "ShardObject", "inside", "merge_objects", "objects_from_response"]

#: Share of a candidate's inliers inside a found object that makes it that object's alternative.
OWNED_SHARE = 0.3


@dataclass
class Candidate:
    """One verified reference: ``outline`` (4, 2) and ``points`` (K, 2) in search pixels."""

    key: str
    inliers: int
    score: float
    outline: np.ndarray
    rows: np.ndarray
    points: np.ndarray
    shard: str
    inverted: bool = False


@dataclass
class ShardObject:
    """An object and the other references verified on it, in the order they were found."""

    best: Candidate
    alternatives: list[Candidate] = field(default_factory=list)


def _candidate(match: matcher_pb2.VerifiedMatch, feature_xy: np.ndarray, shard: str) -> Candidate:
    rows = unpack_array(match.inlier_rows, name="inlier_rows", dtype="int32", ndim=1).astype(np.int64)
    rows = rows[(rows >= 0) & (rows < len(feature_xy))]
    return Candidate(
        key=match.reference_id,
        inliers=int(match.inliers),
        score=float(match.score),
        outline=outline_from_proto(match.outline),
        rows=rows,
        points=feature_xy[rows],
        shard=shard,
        inverted=bool(match.inverted),
    )


def objects_from_response(
    response: matcher_pb2.SearchResponse, feature_xy: np.ndarray, shard: str
) -> list[ShardObject]:
    """A shard's answer as :class:`ShardObject` s; ``feature_xy`` are the searched features' positions."""
    return [
        ShardObject(
            best=_candidate(item.match, feature_xy, shard),
            alternatives=[_candidate(a, feature_xy, shard) for a in item.alternatives],
        )
        for item in response.objects
        if len(item.match.outline.points) == 4
    ]


def merge_objects(
    streams: Sequence[Sequence[ShardObject]],
    *,
    min_inliers: int,
    max_objects: int,
    feature_xy: np.ndarray | None = None,
) -> list[ShardObject]:
    """One object per outline from several ordered answers, by the rule in the module docstring.

    ``feature_xy`` (the searched features, search pixels) enables the ``min_inliers`` check; pass
    None when merging regions searched with different features (their rows do not compare).
    """
    heads = [0] * len(streams)
    active = np.ones(len(feature_xy), dtype=bool) if feature_xy is not None else None
    found: list[ShardObject] = []
    while len(found) < max_objects:
        best_stream = -1
        for s, stream in enumerate(streams):
            if heads[s] >= len(stream):
                continue
            head = stream[heads[s]].best
            if best_stream < 0:
                best_stream = s
                continue
            leader = streams[best_stream][heads[best_stream]].best
            if (-head.inliers, head.key) < (-leader.inliers, leader.key):
                best_stream = s
        if best_stream < 0:
            break
        item = streams[best_stream][heads[best_stream]]
        heads[best_stream] += 1
        points = item.best.points
        owned = (f for f in found if points.size and inside(points, f.best.outline).mean() >= OWNED_SHARE)
        owner = next(owned, None)
        if owner is not None:
            owner.alternatives.extend([item.best, *item.alternatives])
            continue
        if active is not None and int(active[item.best.rows].sum()) < min_inliers:
            continue
        found.append(ShardObject(item.best, list(item.alternatives)))
        if active is not None and feature_xy is not None:
            active &= ~inside(feature_xy, item.best.outline)
    return found
