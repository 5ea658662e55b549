"""Look-alike references: pairs of indexed references that are one picture stored twice."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kyb.config import SearchConfig
from kyb.index import ReferenceIndex
from kyb.search import search
from kyb.verify import Verification

__all__ = ["DuplicatePair", "find_duplicates"]


#: Two references are one picture when each re-finds this share of the other's features as inliers.
#: On the covers set a copy padded to another frame re-finds 39-53% of a 450-feature reference, two
#: seasons of one series' design 28% (a photo of either verifies both: listed); references sharing
#: only a part (a title logo, a studio or "DVD" mark) 2-13%, another edition of one artwork 15%.
DUPLICATE_SHARE = 0.25


@dataclass(frozen=True)
class DuplicatePair:
    """Two indexed references that each verify in the other's image with most of their features: one
    picture stored twice (an artwork and its padded scan, one logo filed under two bands).
    ``inliers`` and ``share`` (inliers / that reference's features) are the weaker direction's."""

    first: str
    second: str
    inliers: int
    share: float


def find_duplicates(
    index: ReferenceIndex,
    config: SearchConfig,
    *,
    min_share: float = DUPLICATE_SHARE,
    progress: Callable[[int], None] | None = None,
) -> list[DuplicatePair]:
    """Every pair of references of ``index`` that are one picture (see :data:`DUPLICATE_SHARE`).

    Each reference's stored features are searched as if they were a photo (itself excluded); a pair
    counts when each is found in the other with ``min_share`` of its features as inliers, so a cover
    that holds another reference's logo, or two covers sharing a studio mark, are not duplicates.
    Costs one search per reference.
    """
    seen_in: dict[str, dict[str, Verification]] = {}
    sizes: dict[str, int] = {}
    for key in index.reference_ids():
        encoding = index.encoding(key)
        sizes[key] = len(encoding)
        size = (round(encoding.region_size[0]), round(encoding.region_size[1]))
        found, _ = search(encoding, size, index, config, exclude=frozenset({key}))
        seen_in[key] = {v.reference_id: v for item in found for v in (item.verification, *item.alternatives)}
        if progress:
            progress(1)
    pairs = []
    for first, inside in seen_in.items():
        for second, there in inside.items():
            back = seen_in.get(second, {}).get(first)
            if first >= second or back is None:
                continue
            # `there`: `second` verified in first's image (its inliers are second's features); `back`: the reverse.
            share = min(there.inliers / max(1, sizes[second]), back.inliers / max(1, sizes[first]))
            if share >= min_share:
                pairs.append(DuplicatePair(first, second, min(there.inliers, back.inliers), round(share, 3)))
    return sorted(pairs, key=lambda pair: (pair.first, pair.second))
