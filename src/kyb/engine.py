"""The identification engine: ingest references, identify every reference visible in a photo.

This wires the stages together in one process (embedded mode). The services of issue 4 call the
same pieces — :class:`~kyb.encoder.Encoder`, :class:`~kyb.index.ReferenceIndex`, :func:`search` —
across process boundaries, so embedded and served answers are the same by construction.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from kyb.blas import one_blas_thread
from kyb.cache import EncodingCache, encode_photo, open_cache
from kyb.catalog import Album, Band, Catalog, ReferenceImage, open_catalog
from kyb.codebook import Codebook, train_codebook
from kyb.config import EngineConfig, SearchConfig
from kyb.encoder import Box, Encoder, Encoding, extract_reference
from kyb.errors import InvalidRequest, KybError, NotFound, NotReady
from kyb.features import LocalFeatures
from kyb.heap import retain_freed_heap
from kyb.imageio import DecodedImage, decode_image
from kyb.index import (
    RankedLists,
    ReferenceIndex,
    VoteMemo,
    base_reference_id,
    current_generation,
    has_index,
    search_pool,
    writer_lock,
)
from kyb.verify import QueryFeatures, Verification, verify

__all__ = [
    "NOT_INDEXED",
    "CandidateSource",
    "DuplicatePair",
    "Engine",
    "FoundObject",
    "IdentifiedObject",
    "IdentifyResult",
    "IndexSource",
    "IngestItem",
    "IngestOutcome",
    "Match",
    "find_duplicates",
    "inside_outline",
    "prefer_complete",
    "probe_encoding",
    "reference_id_for",
    "run_search",
    "search",
    "verify_ahead",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- results
@dataclass
class Match:
    """One reference verified in the photo; ``outline`` is in original photo pixels (4 x [x, y])."""

    reference_id: str
    score: float
    inliers: int
    outline: list[list[float]]
    band_id: str | None = None
    album_id: str | None = None
    kind: str | None = None
    band: dict[str, Any] | None = None
    album: dict[str, Any] | None = None
    shard: str = ""
    #: Found in the opposite polarity to the reference (a white print of a black-on-white logo).
    inverted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_id": self.reference_id,
            "kind": self.kind,
            "band_id": self.band_id,
            "album_id": self.album_id,
            "score": round(self.score, 4),
            "inliers": self.inliers,
            "inverted": self.inverted,
            "outline": self.outline,
            "shard": self.shard,
            "band": self.band,
            "album": self.album,
        }


@dataclass
class IdentifiedObject:
    """One object in the photo with the references that explain it, best first."""

    outline: list[list[float]]
    box: list[float]
    matches: list[Match]

    @property
    def best(self) -> Match:
        return self.matches[0]

    @property
    def kind(self) -> str | None:
        return self.best.kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "box": self.box,
            "outline": self.outline,
            "band": self.best.band,
            "album": self.best.album,
            "score": round(self.best.score, 4),
            "inliers": self.best.inliers,
            "matches": [m.to_dict() for m in self.matches],
        }


@dataclass
class IdentifyResult:
    """The answer for one photo."""

    objects: list[IdentifiedObject]
    width: int
    height: int
    sha256: str
    features: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    candidates: list[str] = field(default_factory=list)  # shortlist order, for retrieval metrics
    cache: str = ""  # "hit" / "miss" from the descriptor cache, "" when none was asked

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image": {"width": self.width, "height": self.height, "sha256": self.sha256},
            "features": self.features,
            "objects": [o.to_dict() for o in self.objects],
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }
        if self.cache:
            out["cache"] = self.cache
        return out


# ---------------------------------------------------------------------------- search
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
    ) -> Iterator[Verification | _NotIndexed | None]:
        """The verification of each key in order (None: not in the photo; :data:`NOT_INDEXED`: deleted
        since it was shortlisted). Consumed lazily: the loop stops pulling when it has seen enough,
        never before the first ``sure`` keys (those may be verified ahead of their turn)."""
        ...


class _NotIndexed:
    def __repr__(self) -> str:
        return "NOT_INDEXED"


#: Yielded by :meth:`CandidateSource.verify` for a key that is no longer indexed (not a miss).
NOT_INDEXED = _NotIndexed()


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
    ) -> Iterator[Verification | _NotIndexed | None]:
        codebook = self.index.codebook
        subset = None if rows.size == len(self.query) else rows  # None: every feature, no copy
        photo = self.photo  # built here, not in a pool thread

        def check(key: str) -> Verification | _NotIndexed | None:
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
                pending.append((pool.submit(lambda task=task: [check(key) for key in task]), task, certain))
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
    ``max_candidates`` caps round 1 (kept for gateways that still search shards one by one).
    Returns (objects, shortlist order).
    """
    first_round = config.verify_max if reserve else config.verify_top
    if max_candidates:
        first_round = min(first_round, max_candidates)
    with one_blas_thread():
        source = IndexSource(query, index, image_size)
        return run_search(
            source, source.photo.xy, config, exclude=exclude, first_round=first_round, image_size=image_size
        )


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
                if inside_outline(points, item.verification.outline).mean() >= 0.3:
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


# ---------------------------------------------------------------------------- duplicates
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


# ---------------------------------------------------------------------------- ingest
@dataclass(frozen=True)
class IngestItem:
    """A reference image to ingest: bytes or a path, what it shows, and optional regions."""

    source: str
    kind: str
    band_id: str | None
    album_id: str | None = None
    regions: tuple[Box, ...] = ()
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        try:
            return Path(self.source).read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"cannot read {self.source}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one item: ``added``, ``replaced``, ``unchanged`` or ``failed`` (with why)."""

    source: str
    status: str
    reference_id: str | None = None
    message: str = ""


def reference_id_for(sha256: str, regions: Sequence[Box]) -> str:
    """Stable id from the content hash (and the regions, so the same photo with other boxes differs)."""
    if not regions:
        return sha256[:24]
    spec = ";".join(",".join(f"{v:g}" for v in box) for box in regions)
    return sha256[:16] + hashlib.sha256(spec.encode()).hexdigest()[:8]


def _unique_regions(regions: Sequence[Box]) -> list[Box]:
    seen: list[Box] = []
    for box in regions:
        box = tuple(float(v) for v in box)  # type: ignore[assignment]
        if box not in seen:
            seen.append(box)
    return seen


@dataclass
class _Prepared:
    item: IngestItem
    decoded: DecodedImage
    reference_id: str
    regions: list[Box | None]
    features: list[tuple[LocalFeatures, Box]]
    encodings: list[Encoding] = field(default_factory=list)


def _exclusive(method: Callable[..., Any]) -> Callable[..., Any]:
    """Runs an Engine method that writes the index under the folder's writer lock (see _writing)."""

    @functools.wraps(method)
    def locked(self: Engine, *args: Any, **kwargs: Any) -> Any:
        with self._writing():
            return method(self, *args, **kwargs)

    return locked


class Engine:
    """Embedded engine over one index folder and one catalog.

    ``Engine(config)`` opens (or prepares) both; the index is loaded lazily so commands that only
    touch the catalog start instantly.
    """

    def __init__(self, config: EngineConfig, *, catalog: Catalog | None = None) -> None:
        self.config = config
        retain_freed_heap(config.heap_retain_mb)  # process-wide: a photo's SIFT reuses the last one's pages
        self._catalog = catalog
        self._index: ReferenceIndex | None = None
        self._encoder: Encoder | None = None
        self._cache: EncodingCache | None = None
        self._cache_opened = False
        self._lock = threading.RLock()
        #: A :class:`kyb.detection.Detector` for detector-first identification; None = whole photo.
        self.detector: Any = None

    # ------------------------------------------------------------------ parts
    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            url = self.config.catalog_url
            if "://" not in url:
                Path(url).parent.mkdir(parents=True, exist_ok=True)
            self._catalog = open_catalog(url)
        return self._catalog

    @property
    def index(self) -> ReferenceIndex:
        with self._lock:
            if self._index is None:
                self._index = ReferenceIndex.load(self.config.index_dir, self.config.search)
            return self._index

    def has_index(self) -> bool:
        return self._index is not None or has_index(self.config.index_dir)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Takes the index folder's writer lock and, if another process saved since this engine
        loaded the index, reloads it first, so no write is based on a stale generation."""
        with writer_lock(self.config.index_dir):
            with self._lock:
                on_disk = current_generation(self.config.index_dir)
                if self._index is not None and on_disk is not None and on_disk != self._index.generation:
                    log.info("index %s changed on disk (generation %d): reloading", self.config.index_dir, on_disk)
                    self._index = ReferenceIndex.load(self.config.index_dir, self.config.search)
                    self._encoder = None
            yield

    @property
    def encoder(self) -> Encoder:
        with self._lock:
            if self._encoder is None or self._encoder.codebook is not self.index.codebook:
                self._encoder = Encoder(self.index.codebook, self.config.features)
            return self._encoder

    @property
    def cache(self) -> EncodingCache | None:
        """The descriptor cache ``config.cache`` names (``None`` when off), opened on first use."""
        with self._lock:
            if not self._cache_opened:
                settings = self.config.cache
                self._cache = open_cache(settings.url, ttl_s=settings.ttl_s, max_mb=settings.max_mb)
                self._cache_opened = True
            return self._cache

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ identify
    def decode_query(self, data: bytes) -> DecodedImage:
        return decode_image(data, self.config.limits, max_side=self.config.limits.search_max_side)

    def identify(self, data: bytes, *, box: Box | None = None, use_detector: bool = True) -> IdentifyResult:
        """Finds every indexed reference in the photo ``data`` (or in ``box`` of it, original pixels).

        With a :attr:`detector` set (and no ``box``), each detected region is searched on its own
        first (:func:`kyb.detection.identify_detected`); ``use_detector=False`` skips it.
        """
        if box is None and use_detector and self.detector is not None:
            from kyb.detection import identify_detected

            return identify_detected(self, data, self.detector)
        started = time.perf_counter()
        return self.identify_decoded(self.decode_query(data), box=box, started=started)

    def identify_decoded(
        self, decoded: DecodedImage, *, box: Box | None = None, started: float | None = None
    ) -> IdentifyResult:
        """:meth:`identify` of a photo :meth:`decode_query` already decoded, so several searches of one
        photo (detector-first: each region, then the whole photo) decode it once. ``started`` is when
        the decode began (for the "decode" timing; None = no decode time)."""
        decoded_at = time.perf_counter()
        started = decoded_at if started is None else started
        search_box = None if box is None else tuple(v / decoded.scale for v in box)
        cache = self.cache
        encoding, hit = encode_photo(
            cache,
            self.encoder,
            decoded,
            search_box,  # type: ignore[arg-type]
            search_max_side=self.config.limits.search_max_side,
        )
        encoded_at = time.perf_counter()
        result = self.identify_encoding(encoding, (decoded.width, decoded.height))
        finished = time.perf_counter()
        result.width, result.height, result.sha256 = (
            decoded.original_width,
            decoded.original_height,
            decoded.sha256,
        )
        result.timings_ms = {
            "decode": (decoded_at - started) * 1000,
            "encode": (encoded_at - decoded_at) * 1000,
            "search": (finished - encoded_at) * 1000,
            "total": (finished - started) * 1000,
        }
        result.cache = "" if cache is None else "hit" if hit else "miss"
        return result

    def identify_encoding(self, encoding: Encoding, image_size: tuple[int, int]) -> IdentifyResult:
        """Search + metadata for an already encoded photo (``image_size`` at search scale)."""
        found, order = search(encoding, image_size, self.index, self.config.search)
        objects = [self._describe(item, encoding.scale) for item in found]
        return IdentifyResult(objects=objects, width=0, height=0, sha256="", features=len(encoding), candidates=order)

    def _describe(self, item: FoundObject, scale: float) -> IdentifiedObject:
        matches: list[Match] = []
        seen: set[tuple[str | None, str | None]] = set()
        for verification in [item.verification, *item.alternatives]:
            match = self._match(verification, scale)
            key = (match.band_id, match.album_id)
            if key in seen and matches:
                continue  # several references of one band/album: one line each is enough
            seen.add(key)
            matches.append(match)
            if len(matches) > self.config.search.alternatives:
                break
        outline = matches[0].outline
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        return IdentifiedObject(
            outline=outline,
            box=[round(min(xs), 1), round(min(ys), 1), round(max(xs), 1), round(max(ys), 1)],
            matches=matches,
        )

    def _match(self, verification: Verification, scale: float) -> Match:
        reference_id = base_reference_id(verification.reference_id)
        outline = [[round(float(x) * scale, 1), round(float(y) * scale, 1)] for x, y in verification.outline]
        match = Match(
            reference_id=reference_id,
            score=verification.score,
            inliers=verification.inliers,
            outline=outline,
            inverted=verification.inverted,
        )
        reference = self.catalog.get_reference(reference_id)
        if reference is not None:
            match.kind = reference.kind
            match.band_id = reference.band_id
            match.album_id = reference.album_id
            band = self.catalog.get_band(reference.band_id) if reference.band_id else None
            album = self.catalog.get_album(reference.album_id) if reference.album_id else None
            match.band = band.to_dict() if band else None
            match.album = album.to_dict() if album else None
        return match

    # ------------------------------------------------------------------ ingest
    def _prepare(self, item: IngestItem) -> _Prepared:
        data = item.read()
        decoded = decode_image(data, self.config.limits, max_side=self.config.limits.reference_max_side)
        regions: list[Box | None] = list(_unique_regions(item.regions)) or [None]
        reference_id = reference_id_for(decoded.sha256, item.regions)
        features = []
        for region in regions:
            scaled = None if region is None else tuple(v / decoded.scale for v in region)
            features.append(extract_reference(decoded, scaled, self.config.features))  # type: ignore[arg-type]
        return _Prepared(item, decoded, reference_id, regions, features)

    @_exclusive
    def ingest(
        self,
        items: Iterable[IngestItem],
        *,
        progress: Callable[[IngestOutcome], None] | None = None,
        save: bool = True,
        codebook_images: int = 4000,
    ) -> list[IngestOutcome]:
        """Decodes, encodes and indexes ``items``; records them in the catalog.

        Per item the outcome is ``added``, ``replaced``, ``unchanged`` (same bytes and regions already
        indexed: nothing is re-encoded) or ``failed`` with a one-line reason; a failure never stops
        the others. With no index yet, the first ``codebook_images`` items train the codebook.
        """
        outcomes: list[IngestOutcome] = []
        iterator = iter(items)
        if not self.has_index():
            iterator = self._bootstrap(iterator, codebook_images, outcomes, progress)
        index = self.index
        encoder = self.encoder
        batch: list[_Prepared] = []

        def flush() -> None:
            for outcome in self._commit(batch, index):
                outcomes.append(outcome)
                if progress:
                    progress(outcome)
            batch.clear()

        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            for _item, prepared in _map_ordered(pool, self._prepare_safe, iterator, self.config.workers * 4):
                if isinstance(prepared, IngestOutcome):
                    outcomes.append(prepared)
                    self._log_failure(prepared)
                    if progress:
                        progress(prepared)
                    continue
                prepared.encodings = [
                    encoder.encode_features(f, region, scale=prepared.decoded.scale) for f, region in prepared.features
                ]
                batch.append(prepared)
                if len(batch) >= 64:
                    flush()
        flush()
        if save and index.dirty:
            index.save(self.config.index_dir)
        return outcomes

    def _prepare_safe(self, item: IngestItem) -> _Prepared | IngestOutcome:
        try:
            prepared = self._prepare(item)
        except KybError as exc:
            return IngestOutcome(item.source, "failed", message=str(exc))
        if self._index is not None and self._already_indexed(prepared):
            return IngestOutcome(item.source, "unchanged", prepared.reference_id)
        return prepared

    def _already_indexed(self, prepared: _Prepared) -> bool:
        index = self._index
        assert index is not None
        keys = self._keys(prepared)
        return all(index.sha256_of(key) == prepared.decoded.sha256 for key in keys) and (
            self.catalog.get_reference(prepared.reference_id) is not None
        )

    @staticmethod
    def _keys(prepared: _Prepared) -> list[str]:
        if len(prepared.regions) == 1:
            return [prepared.reference_id]
        return [f"{prepared.reference_id}#{i}" for i in range(len(prepared.regions))]

    def _log_failure(self, outcome: IngestOutcome) -> None:
        log.warning("skipped %s: %s", outcome.source, outcome.message)
        try:
            self.catalog.record_ingestion(None, None, "failed", f"{outcome.source}: {outcome.message}")
        except Exception as exc:  # the log is best effort; the outcome is still reported
            log.debug("could not record failure: %s", exc)

    def _commit(self, batch: list[_Prepared], index: ReferenceIndex) -> list[IngestOutcome]:
        """Catalog rows first, then the index: a crash in between leaves an invisible catalog row
        that the next ingest of the same file completes (it is not 'unchanged' until both exist)."""
        outcomes = []
        for prepared in batch:
            item = prepared.item
            try:
                self.catalog.add_reference(
                    ReferenceImage(
                        reference_id=prepared.reference_id,
                        sha256=prepared.decoded.sha256,
                        kind=item.kind,
                        band_id=item.band_id,
                        album_id=item.album_id,
                        source=item.source,
                        width=prepared.decoded.original_width,
                        height=prepared.decoded.original_height,
                        size_bytes=prepared.decoded.size_bytes,
                        regions=tuple(tuple(round(v) for v in r) for r in item.regions),  # type: ignore[misc]
                    )
                )
                keys = self._keys(prepared)
                results = index.add(
                    (key, prepared.decoded.sha256, enc) for key, enc in zip(keys, prepared.encodings, strict=True)
                )
                status = "added" if "added" in results else ("replaced" if "replaced" in results else "unchanged")
                self.catalog.record_ingestion(prepared.reference_id, prepared.decoded.sha256, status, item.source)
                outcomes.append(IngestOutcome(item.source, status, prepared.reference_id))
            except (KybError, ValueError) as exc:
                outcome = IngestOutcome(item.source, "failed", prepared.reference_id, str(exc))
                self._log_failure(outcome)
                outcomes.append(outcome)
        return outcomes

    def _bootstrap(
        self,
        iterator: Iterator[IngestItem],
        count: int,
        outcomes: list[IngestOutcome],
        progress: Callable[[IngestOutcome], None] | None,
    ) -> Iterator[IngestItem]:
        """Trains a codebook on the first ``count`` items and indexes them; yields the rest."""
        head: list[IngestItem] = []
        for item in iterator:
            head.append(item)
            if len(head) >= count:
                break
        prepared: list[_Prepared] = []
        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            for _, result in _map_ordered(pool, self._prepare_safe, iter(head), self.config.workers * 4):
                if isinstance(result, IngestOutcome):
                    outcomes.append(result)
                    self._log_failure(result)
                    if progress:
                        progress(result)
                else:
                    prepared.append(result)
        if len(prepared) < 2:
            raise NotReady(f"only {len(prepared)} usable reference image(s): a codebook needs at least 2 to train")
        log.info("no index at %s yet: training a codebook on %d references", self.config.index_dir, len(prepared))
        codebook = train_codebook(
            [f.descriptors for p in prepared for f, _ in p.features],
            self.config.codebook,
            pca_dims=self.config.features.pca_dims,
        )
        index = ReferenceIndex(codebook, self.config.search, self.config.index_dir)
        with self._lock:
            self._index = index
            self._encoder = None
        encoder = self.encoder
        for chunk_start in range(0, len(prepared), 64):
            chunk = prepared[chunk_start : chunk_start + 64]
            for p in chunk:
                p.encodings = [encoder.encode_features(f, region, scale=p.decoded.scale) for f, region in p.features]
            for outcome in self._commit(chunk, index):
                outcomes.append(outcome)
                if progress:
                    progress(outcome)
        return iterator

    # ------------------------------------------------------------------ other operations
    @_exclusive
    def delete_reference(self, reference_id: str) -> None:
        """Removes a reference from the index and the catalog (NotFound when it is in neither)."""
        index = self.index
        keys = [k for k in index.reference_ids() if k == reference_id or k.startswith(reference_id + "#")]
        removed = any([index.delete(k) for k in keys])
        if removed:  # index first: a crash in between leaves a catalog row Identify never returns
            index.save(self.config.index_dir)
        in_catalog = self.catalog.delete_reference(reference_id)
        if not removed and not in_catalog:
            raise NotFound(f"no reference {reference_id}")

    def upsert_metadata(self, bands: Sequence[Band], albums: Sequence[Album]) -> None:
        self.catalog.upsert_bands(bands)
        self.catalog.upsert_albums(albums)

    @_exclusive
    def retrain_codebook(self, items: Sequence[IngestItem]) -> Codebook:
        """Trains a new codebook from ``items`` and re-encodes every indexed reference with it.

        The references are re-read from their catalog sources; the new index replaces the old one in
        one atomic save, so searches keep working on the old generation until the switch.
        """
        prepared = [p for p in (self._prepare_safe(i) for i in items) if isinstance(p, _Prepared)]
        codebook = train_codebook(
            [f.descriptors for p in prepared for f, _ in p.features],
            self.config.codebook,
            pca_dims=self.config.features.pca_dims,
        )
        old = self.index if self.has_index() else None
        fresh = ReferenceIndex(codebook, self.config.search, self.config.index_dir)
        encoder = Encoder(codebook, self.config.features)
        sources = []
        if old is not None:
            seen = set()
            for key in old.reference_ids():
                reference = self.catalog.get_reference(base_reference_id(key))
                if reference is not None and reference.reference_id not in seen:
                    seen.add(reference.reference_id)
                    sources.append(
                        IngestItem(
                            reference.source,
                            reference.kind,
                            reference.band_id,
                            reference.album_id,
                            tuple(reference.regions),  # type: ignore[arg-type]
                        )
                    )
        for item in sources:
            result = self._prepare_safe(item)
            if isinstance(result, IngestOutcome):
                log.warning("re-encoding %s failed: %s", item.source, result.message)
                continue
            fresh.add(
                (key, result.decoded.sha256, encoder.encode_features(f, region, scale=result.decoded.scale))
                for key, (f, region) in zip(self._keys(result), result.features, strict=True)
            )
        fresh.save(self.config.index_dir)
        with self._lock:
            self._index = fresh
            self._encoder = None
        return codebook

    @_exclusive
    def reindex(
        self, progress: Callable[[IngestOutcome], None] | None = None, *, codebook_images: int = 4000
    ) -> dict[str, Any]:
        """Rebuilds the index from the catalog's reference rows into a new generation (one atomic switch).

        Each row's source image is read again and encoded, with its regions, under the row's id; the
        current codebook is kept (with no index yet, one is trained on the first ``codebook_images``
        rows). A row whose source cannot be read or no longer has the catalog's sha256 keeps its
        encoding from the current generation when there is one (``kept``), else it is left out
        (``failed``); either way it gives one line in ``failures``, never an error. Index entries
        without a catalog row are dropped. With nothing rebuilt or kept, the current index stays.
        """
        started = time.perf_counter()
        old = self.index if self.has_index() else None
        rows = self._catalog_rows()
        failures: list[str] = []
        counts = {"references": 0, "rebuilt": 0, "kept": 0, "failed": 0}

        def report(outcome: IngestOutcome) -> None:
            counts[outcome.status] += 1
            if outcome.message:
                failures.append(f"{outcome.reference_id} ({outcome.source}): {outcome.message}")
            if progress:
                progress(outcome)

        prepared_rows = self._prepare_rows(rows)
        head: list[tuple[ReferenceImage, _Prepared | str]] = []
        if old is not None:
            codebook = old.codebook
        else:
            for row, result in prepared_rows:
                head.append((row, result))
                if sum(isinstance(r, _Prepared) for _, r in head) >= codebook_images:
                    break
            usable = [r for _, r in head if isinstance(r, _Prepared)]
            if len(usable) < 2:
                raise NotReady(f"only {len(usable)} readable reference image(s) in the catalog: a codebook needs 2")
            codebook = train_codebook(
                [f.descriptors for p in usable for f, _ in p.features],
                self.config.codebook,
                pca_dims=self.config.features.pca_dims,
            )
        fresh = ReferenceIndex(codebook, self.config.search, self.config.index_dir)
        encoder = Encoder(codebook, self.config.features)
        pending: list[tuple[str, str, Encoding]] = []
        for row, result in itertools.chain(head, prepared_rows):
            counts["references"] += 1
            if isinstance(result, _Prepared):
                encodings = [encoder.encode_features(f, r, scale=result.decoded.scale) for f, r in result.features]
                pending.extend((k, row.sha256, e) for k, e in zip(self._keys(result), encodings, strict=True))
                report(IngestOutcome(row.source, "rebuilt", row.reference_id))
            else:
                keys = [] if old is None else self._index_keys(old, row.reference_id)
                if keys and all(old.sha256_of(k) == row.sha256 for k in keys):  # type: ignore[union-attr]
                    pending.extend((k, row.sha256, old.encoding(k)) for k in keys)  # type: ignore[union-attr]
                    report(IngestOutcome(row.source, "kept", row.reference_id, result + "; kept its current encoding"))
                else:
                    report(IngestOutcome(row.source, "failed", row.reference_id, result))
            if len(pending) >= 64:
                fresh.add(pending)
                pending.clear()
        fresh.add(pending)
        switched = old is None or counts["references"] == 0 or counts["rebuilt"] + counts["kept"] > 0
        if switched:
            fresh.save(self.config.index_dir)
            with self._lock:
                self._index = fresh
                self._encoder = None
        current = fresh if switched else old
        assert current is not None
        stale = 0 if old is None else sum(1 for k in old.reference_ids() if k not in fresh)
        return {
            **counts,
            "dropped": stale if switched else 0,
            "failures": failures,
            "switched": switched,
            "generation": current.generation,
            "codebook_version": codebook.version,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }

    def _catalog_rows(self, page: int = 500) -> Iterator[ReferenceImage]:
        offset = 0
        while True:
            rows = self.catalog.list_references(limit=page, offset=offset)
            yield from rows
            if len(rows) < page:
                return
            offset += len(rows)

    def _prepare_rows(self, rows: Iterator[ReferenceImage]) -> Iterator[tuple[ReferenceImage, _Prepared | str]]:
        """Each catalog row with its source re-read and extracted (in parallel), or why that failed."""

        def prepare(row: ReferenceImage) -> _Prepared | str:
            item = IngestItem(row.source, row.kind, row.band_id, row.album_id, tuple(row.regions))  # type: ignore[arg-type]
            try:
                prepared = self._prepare(item)
            except KybError as exc:
                return str(exc)
            if prepared.decoded.sha256 != row.sha256:
                return f"source changed since ingest (sha256 {prepared.decoded.sha256[:12]}, catalog {row.sha256[:12]})"
            prepared.reference_id = row.reference_id  # the catalog's id, whatever the regions' rounding
            return prepared

        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            yield from _map_ordered(pool, prepare, rows, self.config.workers * 4)

    @staticmethod
    def _index_keys(index: ReferenceIndex, reference_id: str) -> list[str]:
        if reference_id in index:
            return [reference_id]
        keys, i = [], 0
        while f"{reference_id}#{i}" in index:
            keys.append(f"{reference_id}#{i}")
            i += 1
        return keys


def _map_ordered(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterator[Any], window: int):
    """Like ``pool.map`` but with a bounded window, so a million-file ingest does not queue them all."""
    pending: list[tuple[Any, Any]] = []
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            head, future = pending.pop(0)
            yield head, future.result()
    for head, future in pending:
        yield head, future.result()
