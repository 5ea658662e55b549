"""Multi-object search: the loop that finds every indexed reference visible in a photo, and the
candidate sources it asks for shortlists and verifications (:class:`IndexSource` over one index;
the gateway's sharded source over matcher shards), so embedded and served search are one loop.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from kyb.blas import one_blas_thread
from kyb.codebook import Codebook
from kyb.config import SearchConfig
from kyb.encoder import Encoding
from kyb.index import RankedLists, ReferenceIndex, VoteMemo, search_pool
from kyb.verify import QueryFeatures, Verification, verify

__all__ = [
    "NOT_INDEXED",
    "OWNED_SHARE",
    "CandidateSource",
    "FoundObject",
    "IndexSource",
    "NotIndexed",
    "inside_outline",
    "prefer_complete",
    "probe_encoding",
    "round_one_depth",
    "run_search",
    "search",
    "verify_ahead",
]


#: A verified reference with this share of its inliers inside an object already found is another
#: explanation of that object (an alternative), not a new object.
OWNED_SHARE = 0.3


@dataclass
class FoundObject:
    """One object found by :func:`search`: the best verification and the other references that explain it."""

    verification: Verification
    alternatives: list[Verification] = field(default_factory=list)


def inside_outline(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Boolean mask of ``points`` (N, 2) inside the convex ``polygon`` (4, 2), clockwise in image axes."""
    edges = np.roll(polygon, -1, axis=0) - polygon
    rel = points[:, None, :] - polygon[None, :, :]
    cross = edges[None, :, 0] * rel[:, :, 1] - edges[None, :, 1] * rel[:, :, 0]
    return np.all(cross >= 0, axis=1)


class CandidateSource(Protocol):
    """Where :func:`run_search` gets shortlists and verifications from.

    :class:`IndexSource` answers from one :class:`~kyb.index.ReferenceIndex` (embedded mode, one
    matcher shard); the gateway's sharded source answers from every matcher shard, so the search
    loop below is the one implementation of multi-object search either way.
    """

    def shortlist(self, rows: np.ndarray | None, exclude: set[str], limit: int) -> list[str]:
        """Up to ``limit`` index keys, best first, for the photo's features ``rows`` (None = all)."""
        ...

    def verify(
        self, keys: Sequence[str], rows: np.ndarray, *, sure: int = 0
    ) -> Iterator[Verification | NotIndexed | None]:
        """The verification of each key in order (None: not in the photo; :data:`NOT_INDEXED`: deleted
        since it was shortlisted). Consumed lazily: the loop stops pulling when it has seen enough,
        never before the first ``sure`` keys (those may be verified ahead of their turn)."""
        ...


class NotIndexed:
    def __repr__(self) -> str:
        return "NOT_INDEXED"


#: Yielded by :meth:`CandidateSource.verify` for a key that is no longer indexed (not a miss).
NOT_INDEXED = NotIndexed()


def probe_encoding(query: Encoding, rows: np.ndarray, codebook: Codebook, projected: np.ndarray) -> Encoding:
    """The photo's features ``rows`` as an encoding of their own (global vector recomputed), to
    shortlist again with what is left once the objects found so far are masked out."""
    inverted = None if query.inverted is None else query.inverted[rows]
    as_is = rows if inverted is None else rows[~inverted]  # the global vector is the photo's as it is
    return Encoding(
        xy=query.xy[rows],
        descriptors=query.descriptors[rows],
        words=query.words[rows],
        near_words=None if query.near_words is None else query.near_words[rows],
        global_vector=codebook.global_vector(projected[as_is]),
        region_size=query.region_size,
        codebook_version=query.codebook_version,
        inverted=inverted,
    )


class IndexSource:
    """:class:`CandidateSource` over one index; the photo's features are prepared once, on first use.

    ``image_size`` (search pixels) is needed to verify; a shard that only shortlists passes None.
    """

    def __init__(self, query: Encoding, index: ReferenceIndex, image_size: tuple[int, int] | None = None) -> None:
        self.query = query
        self.index = index
        self.config = index.search_config
        self.image_size = image_size
        # Later rounds of this photo update the first round's word vote instead of voting again.
        self.memo = VoteMemo()

    @functools.cached_property
    def projected(self) -> np.ndarray:
        return self.index.codebook.dequantize(self.query.descriptors)

    @functools.cached_property
    def photo(self) -> QueryFeatures:
        if self.image_size is None:
            raise ValueError("IndexSource needs image_size to verify")
        xy = self.query.xy + np.asarray(self.query.origin, dtype=np.float32)
        words = self.query.words if self.query.near_words is None else self.query.near_words
        return QueryFeatures.build(xy, self.projected, self.image_size, words, self.query.inverted)

    def probe(self, rows: np.ndarray | None) -> Encoding:
        return self.query if rows is None else probe_encoding(self.query, rows, self.index.codebook, self.projected)

    def ranked(self, rows: np.ndarray | None, exclude: set[str] | frozenset[str], limit: int) -> RankedLists:
        """The shortlist's two lists before fusion (what a matcher shard sends the gateway)."""
        return self.index.ranked(self.probe(rows), exclude=exclude, limit=limit, memo=self.memo)

    def shortlist(self, rows: np.ndarray | None, exclude: set[str], limit: int) -> list[str]:
        candidates = self.index.shortlist(self.probe(rows), exclude=exclude, limit=limit, memo=self.memo)
        return [c.reference_id for c in candidates]

    def verify(
        self, keys: Sequence[str], rows: np.ndarray, *, sure: int = 0
    ) -> Iterator[Verification | NotIndexed | None]:
        codebook = self.index.codebook
        subset = None if rows.size == len(self.query) else rows  # None: every feature, no copy
        photo = self.photo  # built here, not in a pool thread

        def check(key: str) -> Verification | NotIndexed | None:
            try:
                reference = self.index.features(key)
            except KeyError:  # deleted since the shortlist was made
                return NOT_INDEXED
            return verify(photo, reference, codebook.dequantize(reference.descriptors), self.config, subset)

        return verify_ahead(check, keys, self.config.verify_threads, sure=sure)


#: A walk down a shortlist verifies this many candidates in the caller's thread before the pool
#: verifies ahead: most photos that hold a reference find it among the first and stop 6 misses
#: later (search.patience), so look-ahead there would only be work thrown away.
SERIAL_LOOKS = 8
#: Candidates per pool task: one candidate a task spent a tenth of a first look handing it over.
LOOKS_PER_TASK = 4


def _check_each(check: Callable[[str], Any], keys: Sequence[str]) -> list[Any]:
    return [check(key) for key in keys]


def verify_ahead(check: Callable[[str], Any], keys: Sequence[str], threads: int, *, sure: int = 0) -> Iterator[Any]:
    """``check(key)`` of each key, yielded in order, ``threads`` workers of the search pool checking
    ahead of the caller (at most ``threads + 1`` tasks ahead).

    The first ``sure`` keys are ones the caller takes whatever they show (round 1 always looks at
    1 + search.patience candidates, a later round at its whole short list): they go to the workers
    one a task from the first. Past them, the caller checks up to SERIAL_LOOKS keys itself; then,
    while none has verified, the workers take LOOKS_PER_TASK keys a task.

    A first look is mostly BLAS and OpenCV, which release the GIL, so two threads take a walk of
    strangers (a photo where nothing verifies looks at up to verify_max) ~1.5x as fast. Once one
    verifies, the caller is about to stop (search.patience), so the tasks not started past ``sure``
    are taken back and checked in the caller's thread; when the caller stops, the tasks not started
    are cancelled and at most ``threads`` run on, discarded.
    """
    sure = min(sure, len(keys))
    pool = search_pool(threads) if threads > 1 and (sure > 1 or len(keys) > SERIAL_LOOKS + LOOKS_PER_TASK) else None
    # (future, its keys, whether the caller takes them whatever happens)
    pending: collections.deque[tuple[Future[list[Any]], Sequence[str], bool]] = collections.deque()
    scheduled = 0  # keys[:scheduled] are checked or in a pending task
    found = False
    try:
        while True:
            while pool is not None and len(pending) <= threads:
                if scheduled < sure:
                    task, certain = keys[scheduled : scheduled + 1], True
                elif not found and scheduled >= SERIAL_LOOKS:
                    task, certain = keys[scheduled : scheduled + LOOKS_PER_TASK], False
                else:
                    break
                if not task:
                    break
                pending.append((pool.submit(_check_each, check, task), task, certain))
                scheduled += len(task)
            if pending:
                future, task, certain = pending.popleft()
                taken_back = found and not certain and (future.cancelled() or future.cancel())
                results: Iterable[Any] = (check(key) for key in task) if taken_back else future.result()
            elif scheduled < len(keys):
                results = (check(keys[scheduled]),)
                scheduled += 1
            else:
                return
            for result in results:
                if not found and isinstance(result, Verification):
                    found = True
                    for later, _, later_certain in pending:  # what has not started is checked here, in order
                        if not later_certain:
                            later.cancel()
                yield result
    finally:
        for future, _, _ in pending:
            future.cancel()


def search(
    query: Encoding,
    image_size: tuple[int, int],
    index: ReferenceIndex,
    config: SearchConfig,
    *,
    exclude: frozenset[str] = frozenset(),
    reserve: bool = True,
    max_candidates: int | None = None,
) -> tuple[list[FoundObject], list[str]]:
    """Finds every indexed reference visible in the photo described by ``query`` (see :func:`run_search`).

    ``reserve=False`` stops round 1 after verify_top candidates even when none verified, and
    ``max_candidates`` caps round 1 (the second look's depth, and gateways that still search shards one by one).
    Returns (objects, shortlist order).
    """
    first_round = round_one_depth(config, reserve=reserve, max_candidates=max_candidates)
    with one_blas_thread():
        source = IndexSource(query, index, image_size)
        return run_search(
            source, source.photo.xy, config, exclude=exclude, first_round=first_round, image_size=image_size
        )


def round_one_depth(config: SearchConfig, *, reserve: bool = True, max_candidates: int | None = None) -> int:
    """How many candidates round 1 may verify: verify_max (verify_top without the reserve), capped by
    ``max_candidates`` when given (the second look's depth)."""
    depth = config.verify_max if reserve else config.verify_top
    return min(depth, max_candidates) if max_candidates else depth


def run_search(
    source: CandidateSource,
    xy: np.ndarray,
    config: SearchConfig,
    *,
    exclude: frozenset[str] = frozenset(),
    first_round: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[list[FoundObject], list[str]]:
    """Multi-object search over ``source``; ``xy`` (N, 2) are the photo's feature positions.

    Round 1 shortlists and verifies with all the photo's features; each accepted object then removes
    the features inside its outline, and the next round shortlists again with what is left, so a
    shelf of covers returns each cover once even when they crowd each other out of one shortlist.
    A verified reference whose inliers lie mostly inside an object already found is kept as an
    alternative explanation of that object, not as a new one. References in ``exclude`` are never
    considered. Round 1 fetches up to ``first_round`` (default verify_max) candidates but goes past
    verify_top only while nothing has verified. With ``image_size`` (search pixels) each object is
    then named by its most complete explanation (:func:`prefer_complete`). Returns (objects,
    shortlist order).
    """
    first_round = config.verify_max if first_round is None else first_round
    active = np.ones(len(xy), dtype=bool)
    tried: set[str] = set(exclude)
    found: list[FoundObject] = []
    order: dict[str, None] = {}  # every shortlisted key once, first seen first (an ordered set)
    for round_number in range(config.max_objects):
        rows = np.flatnonzero(active)
        if rows.size < config.min_inliers:
            break
        limit = min(config.verify_top, first_round) if round_number == 0 else max(8, config.verify_top // 4)
        keys = source.shortlist(None if round_number == 0 else rows, tried, limit)
        if not keys:
            break
        order.update(dict.fromkeys(keys))
        verified: list[Verification] = []
        misses = 0
        position = 0
        # Round 1 looks at its first candidate and the run of misses after it at least, a later round
        # at its whole short list (below): those may all be verified at once.
        sure = len(keys) if round_number > 0 else min(limit, 1 + config.patience)
        results = iter(source.verify(keys, rows, sure=sure))
        while True:
            if position == len(keys):
                # Round 1 goes past verify_top only while nothing has verified (a steeply tilted or
                # partly hidden cover can rank low in both shortlists): only then is the deeper
                # shortlist fetched, so the common photo never pays for lists first_round deep.
                # The deeper shortlist is the one a first_round request makes; what was verified
                # already is skipped, so the order is as if it had been fetched at once.
                if round_number > 0 or verified or len(keys) >= first_round:
                    break
                deeper = source.shortlist(None, set(exclude), first_round)
                keys = keys + [key for key in deeper if key not in tried]
                if position == len(keys):
                    break
                order.update(dict.fromkeys(keys[position:]))
                results = iter(source.verify(keys[position:], rows))
            key = keys[position]
            # Once round 1 has verified something, a run of misses means the rest of its shortlist is
            # noise; what it skips comes back in the next round's shortlist if the photo still
            # supports it. Later rounds look for further objects with the features no object
            # explained, and their short list (limit) is verified whole: what is left of the photo
            # is mostly clutter, so a third, darker or tilted cover can rank behind a run of
            # strangers (8th behind 7 in a demo shelf photo), and a stranger's first look costs
            # ~0.5 ms, so the whole list costs ~2 ms more than stopping at the run.
            if position >= limit and (verified or round_number > 0):
                break
            if round_number == 0 and verified and misses >= config.patience:
                break
            tried.add(key)
            position += 1
            result = next(results)
            if result is NOT_INDEXED:
                continue
            if isinstance(result, Verification):
                verified.append(result)
                misses = 0
            else:
                misses += 1
        verified.sort(key=lambda v: (-v.inliers, v.reference_id))
        new_objects = 0
        for result in verified:
            points = xy[result.inlier_rows]
            owner = None
            for item in found:
                if inside_outline(points, item.verification.outline).mean() >= OWNED_SHARE:
                    owner = item
                    break
            if owner is not None:
                owner.alternatives.append(result)
                continue
            if active[result.inlier_rows].sum() < config.min_inliers:
                continue
            found.append(FoundObject(result))
            new_objects += 1
            active &= ~inside_outline(xy, result.outline)
            if len(found) >= config.max_objects:
                break
        if new_objects == 0 or len(found) >= config.max_objects:
            break
    if image_size is not None:
        for item in found:
            prefer_complete(item, image_size)
    return found, list(order)


#: An alternative explains an object "about as well" as its best with this share of its inliers.
COMPLETE_INLIER_SHARE = 0.85


def prefer_complete(item: FoundObject, image_size: tuple[int, int]) -> None:
    """Names ``item`` by the reference that shows the whole object in view, among those that explain
    it about as well as its best.

    A catalog can hold an object twice: a scan of the whole sleeve (or DVD case) and its artwork
    cropped, as another reference. Both verify on a photo of either with nearly the same inliers, so
    the inlier count alone picks either. Of the best and its alternatives with at least 85% of its
    inliers whose outlines nest with the best's (one holds 90% of the other), those lying in the
    photo (95% of the outline inside it) are what the photo can show; the largest of them names the
    object: the sleeve when the whole sleeve is in the photo, the artwork when the photo is the
    artwork alone (the sleeve's outline then runs off it). With none in view the best stays.
    """
    width, height = image_size
    frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    best = item.verification
    best_area = cv2.contourArea(best.outline)

    def in_view(v: Verification, area: float) -> bool:
        return cv2.intersectConvexConvex(v.outline, frame)[0] >= 0.95 * area

    pick, pick_area = (best, best_area) if in_view(best, best_area) else (None, 0.0)
    for alternative in item.alternatives:
        if alternative.inliers < COMPLETE_INLIER_SHARE * best.inliers:
            continue
        area = cv2.contourArea(alternative.outline)
        shared = cv2.intersectConvexConvex(best.outline, alternative.outline)[0]
        if shared < 0.9 * min(area, best_area) or area <= pick_area or not in_view(alternative, area):
            continue
        pick, pick_area = alternative, area
    if pick is not None and pick is not best:
        item.alternatives.remove(pick)
        item.alternatives.insert(0, best)
        item.verification = pick
