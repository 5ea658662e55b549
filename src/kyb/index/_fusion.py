"""Rank fusion: the shortlist's two ranked lists, merged across shards and fused into one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kyb.config import SearchConfig

#: Weight of the global-vector list in the rank fusion (the word list weighs 1): measured on photos of
#: covers, the inverted file ranks the right reference higher than VLAD does (recall@10 0.99 vs 0.95),
#: so VLAD mostly adds candidates the word vote missed rather than reordering the top.
_GLOBAL_WEIGHT = 0.5


@dataclass(frozen=True)
class RankedLists:
    """A shortlist before fusion: (reference id, score) pairs, best first, of each source.

    ``global_list``: hnswlib neighbours of the global vector with their inner product;
    ``words``: inverted-file votes with their idf-weighted score.
    """

    global_list: list[tuple[str, float]]
    words: list[tuple[str, float]]


def _depths(config: SearchConfig, limit: int) -> tuple[int, int]:
    """How deep each list goes for a shortlist of ``limit``: more than verify_top deepens both."""
    depth = max(1.0, limit / config.verify_top)
    return round(config.shortlist_global * depth), round(config.shortlist_words * depth)


def merge_ranked(lists: Sequence[RankedLists], config: SearchConfig, limit: int) -> RankedLists:
    """The lists of several indexes (matcher shards) as one index would rank them: by score, cut at
    the depth a shortlist of ``limit`` uses. Global similarities compare exactly across shards; word
    scores use each shard's own idf, which agrees with the whole index's as far as the shards' word
    statistics agree (references are spread over shards by a hash, so they do, up to sampling)."""
    depth_global, depth_words = _depths(config, limit)
    # sorted() is stable: equal scores keep shard order, as equal scores keep segment order in one index.
    merged_global = sorted((item for part in lists for item in part.global_list), key=lambda item: -item[1])
    merged_words = sorted((item for part in lists for item in part.words), key=lambda item: -item[1])
    return RankedLists(merged_global[:depth_global], merged_words[:depth_words])


def fuse_ranked(lists: RankedLists, config: SearchConfig, limit: int) -> list[tuple[str, float, float, float]]:
    """Weighted reciprocal-rank fusion of both lists: (reference id, global similarity, word score,
    fused score), best first, at most ``limit``."""
    by_ref: dict[str, list[float]] = {}
    for rank, (reference_id, similarity) in enumerate(lists.global_list):
        by_ref[reference_id] = [similarity, 0.0, _GLOBAL_WEIGHT / (20 + rank)]
    for rank, (reference_id, score) in enumerate(lists.words):
        entry = by_ref.setdefault(reference_id, [0.0, 0.0, 0.0])
        entry[1] = score
        entry[2] += 1.0 / (20 + rank)
    ranked = sorted(by_ref.items(), key=lambda item: -item[1][2])[:limit]
    return [(reference_id, values[0], values[1], values[2]) for reference_id, values in ranked]
