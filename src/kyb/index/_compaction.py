"""Tiered compaction: which segments a save merges, and the merged segments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kyb.codebook import Codebook
from kyb.index._residuals import ResidualQuantizer
from kyb.index._store import _Segment

#: Segments under this many references are small: merged together once there are more than 8.
_SMALL_SEGMENT = 2048
#: Larger segments merge this many of one size tier into one of the next (see _compaction_groups).
_TIER_FANOUT = 10


def _insertion_order(segment: _Segment) -> int:
    """Sort key keeping segments in the order their references were added (first ordinal)."""
    return int(segment.ordinals.min()) if len(segment) else 0


def _compaction_groups(segments: Sequence[_Segment]) -> list[list[_Segment]]:
    """Which segments to merge, each group into one segment (tiered, as log-structured stores do).

    * every segment whose deleted rows are 20% of it or more, with the small ones once there are
      more than 8 small ones (< 2,048 references): one group;
    * of the larger segments, once ten or more share a size tier (2,048-20,479, 20,480-204,799,
      ... references) they all merge, oldest first, ten at a time into the next tier, and the last
      group takes the tier's remainder (up to nineteen): a search visits every segment (the word
      vote is one pass over the postings per segment), so 100k references in 2,500-reference ingests
      are 4 segments instead of 40, while each reference is rewritten only about once per tier.
    * the small ones left (up to 8) join the first group of the lowest tier that merges.
    """
    segments = sorted(segments, key=_insertion_order)
    wasteful = [s for s in segments if (~s.alive).sum() >= max(1, 0.2 * len(s))]
    small = [s for s in segments if len(s) < _SMALL_SEGMENT and s not in wasteful]
    first = wasteful + (small if len(small) > 8 else [])
    groups = [first] if first else []
    taken = {id(s) for s in first}
    tiers: dict[int, list[_Segment]] = {}
    for segment in segments:
        if id(segment) not in taken and len(segment) >= _SMALL_SEGMENT:
            tier = int(np.log10(len(segment) / _SMALL_SEGMENT))
            tiers.setdefault(tier, []).append(segment)
    tier_groups: list[list[_Segment]] = []
    for tier in sorted(tiers):
        members = tiers[tier]
        full = len(members) // _TIER_FANOUT
        for k in range(full):
            # The tier's remainder joins its last group instead of waiting as up to nine small
            # segments, each of which the vote visits (many small segments cost it the most).
            end = len(members) if k == full - 1 else (k + 1) * _TIER_FANOUT
            tier_groups.append(members[k * _TIER_FANOUT : end])
    waiting = [s for s in small if id(s) not in taken]
    if tier_groups and waiting:
        # Small segments ride along with a merge that happens anyway (into the lowest tier's
        # first group): rewriting them costs little, and each costs every vote a pass of its own.
        tier_groups[0] = sorted(waiting + tier_groups[0], key=_insertion_order)
    return groups + tier_groups


def compact(
    segments: Sequence[_Segment], codebook: Codebook, quantizer: ResidualQuantizer | None
) -> tuple[list[_Segment], bool] | None:
    """``segments`` with the groups of :func:`_compaction_groups` merged, each into one segment without
    its deleted rows and with every reference's ordinal kept, in insertion order; and whether deleted
    rows were dropped (the graph is then rebuilt without their labels). None when nothing merges.
    The merged segments copy the stored arrays (positions, signatures, codes): nothing is re-encoded."""
    groups = _compaction_groups(segments)
    if not groups:
        return None
    merging = {id(s) for group in groups for s in group}
    rebuild_graph = any((~s.alive).any() for group in groups for s in group)
    merged: list[_Segment] = []
    for group in groups:
        parts = [segment.part(np.flatnonzero(segment.alive)) for segment in group if segment.alive.any()]
        if parts:
            ordinals = np.concatenate([p["ordinals"] for p in parts])
            name = f"seg-{int(ordinals.min()):09d}-m{len(ordinals)}.npz"
            merged.append(_Segment.join(name, parts, codebook, quantizer))
        del parts
    keep = [s for s in segments if id(s) not in merging]
    return sorted(keep + merged, key=_insertion_order), rebuild_graph
