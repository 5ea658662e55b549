"""Geometric verification: descriptor matching, a RANSAC homography and plausibility checks.

A shortlisted reference is accepted only when enough one-to-one, ratio-test matches agree on one
plausible homography. The checks after RANSAC are what keep photos with no reference rejected:
chance matches (repeated text, foliage, fabric) can agree on a degenerate homography — collapsed,
mirrored, wildly foreshortened — or pile up on a few pixels; none of those is a photographed print.
A plausible fit that falls a few inliers short is matched again under its homography (guided
matching, :func:`_guided`), and accepted only when that pairing stands well above what the same
pairing finds under the homography shifted aside (chance).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kyb.config import SearchConfig
from kyb.index import ReferenceFeatures

__all__ = ["QueryFeatures", "Verification", "match_descriptors", "verify", "worth_verifying"]


@dataclass(frozen=True)
class QueryFeatures:
    """A photo's features prepared once for many verifications: float descriptors and norms.

    ``augmented`` is each descriptor with a trailing 1, so that one matrix product against a
    reference prepared as ``[-2 r, |r|^2]`` yields ``|r|^2 - 2 q.r`` directly (the product is most of
    a verification's cost; this saves two passes over its result). ``words`` (the fine visual word of
    each feature, when known, or its k nearest words as (N, k)) let :func:`verify` look at a
    candidate cheaply first.
    """

    xy: np.ndarray  # (N, 2) float32, photo pixels at search size
    sq_norms: np.ndarray  # (N,) float32
    image_size: tuple[int, int]  # width, height at search size
    augmented: np.ndarray  # (N, d + 1) float32
    words: np.ndarray | None = None  # (N,) or (N, k) int, the codebook's fine words, nearest first
    inverted: np.ndarray | None = None  # (N,) bool: rows describing the luminance-inverted photo

    @property
    def descriptors(self) -> np.ndarray:
        """(N, d) float32: a view of ``augmented`` without its trailing column."""
        return self.augmented[:, :-1]

    @classmethod
    def build(
        cls,
        xy: np.ndarray,
        descriptors: np.ndarray,
        image_size: tuple[int, int],
        words: np.ndarray | None = None,
        inverted: np.ndarray | None = None,
    ) -> QueryFeatures:
        augmented = np.ones((descriptors.shape[0], descriptors.shape[1] + 1), dtype=np.float32)
        augmented[:, :-1] = descriptors
        desc = augmented[:, :-1]
        if words is not None:
            words = np.asarray(words, dtype=np.int64)
            if words.ndim not in (1, 2) or words.shape[0] != descriptors.shape[0]:
                n = descriptors.shape[0]
                raise ValueError(f"words must be ({n},) or ({n}, k), not {words.shape}")
        if inverted is not None:
            inverted = np.asarray(inverted, dtype=bool)
            if inverted.shape != (descriptors.shape[0],):
                raise ValueError(f"inverted must be ({descriptors.shape[0]},), not {inverted.shape}")
        return cls(xy.astype(np.float32), (desc * desc).sum(1), image_size, augmented, words, inverted)


@dataclass(frozen=True)
class Verification:
    """A reference geometrically verified in the photo.

    ``homography`` maps the reference's region frame to photo pixels (search size); ``outline`` is the
    region's rectangle mapped by it, (4, 2) float32 in order top-left, top-right, bottom-right,
    bottom-left of the reference; ``inlier_rows`` index the photo's features that support it.
    """

    reference_id: str
    inliers: int
    tentative: int
    homography: np.ndarray
    outline: np.ndarray
    inlier_rows: np.ndarray
    spread: float
    score: float
    #: The inliers are the photo's inverted twins: the print is in the reference's opposite polarity.
    inverted: bool = False


def _prepared(reference: np.ndarray) -> np.ndarray:
    """``[-2 r, |r|^2]`` per reference descriptor: against a photo's augmented rows one product gives
    ``|r|^2 - 2 q.r``, which orders ``|q - r|^2`` per photo row (:class:`QueryFeatures`)."""
    prepared = np.empty((reference.shape[0], reference.shape[1] + 1), dtype=np.float32)
    np.multiply(reference, -2.0, out=prepared[:, :-1])
    prepared[:, -1] = (reference * reference).sum(1)
    return prepared


def match_descriptors(
    query: QueryFeatures, reference: np.ndarray, ratio: float, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one ratio-test matches from photo features (``rows`` of them, or all) to ``reference``.

    ``reference`` is (M, d) float32. Returns (photo rows, reference rows), as-is rows first and then
    inverted twins (:attr:`QueryFeatures.inverted`). Each reference feature keeps only its closest
    photo feature of each polarity, so a repeated pattern in the photo cannot vote many times, and a
    twin that lies closer by chance cannot take a reference feature's match away from its true
    correspondence in the other polarity.
    """
    if reference.shape[0] < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    q_rows = np.arange(query.xy.shape[0]) if rows is None else rows
    if q_rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    q = query.augmented if rows is None else query.augmented[q_rows]
    # ||q - r||^2 = ||q||^2 + ||r||^2 - 2 q.r; the ||q||^2 term does not change which r is nearest,
    # so it is added back only to the two values the ratio test needs (saves a full pass).
    scores = q @ _prepared(reference).T
    nearest = np.argmin(scores, axis=1)
    pick = np.arange(scores.shape[0])
    q_sq = query.sq_norms[q_rows]
    best = scores[pick, nearest] + q_sq
    scores[pick, nearest] = np.inf
    second = scores.min(axis=1) + q_sq
    best = np.maximum(best, 0.0)
    good = best < (ratio * ratio) * np.maximum(second, 1e-12)
    qi, ri, dist = q_rows[good], nearest[good], best[good]
    if qi.size == 0:
        return qi, ri
    polarity = np.zeros(qi.size, np.int64) if query.inverted is None else query.inverted[qi].astype(np.int64)
    order = np.lexsort((dist, ri, polarity))  # by polarity, then reference row, closest first
    key = polarity[order] * reference.shape[0] + ri[order]
    first = np.r_[True, key[1:] != key[:-1]]
    keep = order[first]
    return qi[keep], ri[keep]


def _fit(
    query: QueryFeatures, reference: ReferenceFeatures, qi: np.ndarray, ri: np.ndarray, config: SearchConfig, need: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] | None:
    """The homography of matches (photo rows ``qi``, reference rows ``ri``) with the most distinct
    inliers, fitted to each polarity's matches on its own (a print is in one polarity: mixed, the
    other's chance matches only dilute RANSAC's sample). (H, qi, ri, inlier mask, count) of the
    polarity that won, or None when no polarity has ``need`` matches or a fit."""
    groups: list[slice | np.ndarray] = [slice(None)]
    if query.inverted is not None and qi.size:
        twin = query.inverted[qi]
        groups = [np.flatnonzero(~twin), np.flatnonzero(twin)]
    best = None
    for group in groups:
        q, r = qi[group], ri[group]
        if q.size < need:
            continue
        fit = _homography(reference.xy[r].astype(np.float32), query.xy[q].astype(np.float32), config)
        if fit is not None and (best is None or fit[2] > best[4]):
            best = (fit[0], q, r, fit[1], fit[2])
    return best


def _convex_quad(quad: np.ndarray) -> bool:
    """Strictly convex, not self-intersecting, same orientation as the reference (no mirror)."""
    edges = np.roll(quad, -1, axis=0) - quad
    nxt = np.roll(edges, -1, axis=0)
    cross = edges[:, 0] * nxt[:, 1] - edges[:, 1] * nxt[:, 0]
    return bool(np.all(cross > 0))


def _hull_area(points: np.ndarray) -> float:
    if points.shape[0] < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(points.astype(np.float32))))


def _distinct(points: np.ndarray, cell: float = 2.0) -> int:
    """How many ``cell``-px cells the points fall in (one feature detected twice counts once)."""
    if points.shape[0] < 2:
        return int(points.shape[0])
    cells = np.floor(points / cell).astype(np.int64)
    # One int64 key per cell: np.unique on a 1-D array is ~10x faster than its axis=0 form.
    return int(np.unique((cells[:, 0] << 32) + cells[:, 1]).shape[0])


def _homography(src: np.ndarray, dst: np.ndarray, config: SearchConfig) -> tuple[np.ndarray, np.ndarray, int] | None:
    """MAGSAC++ homography from ``src`` to ``dst``: (H, inlier mask, distinct inliers), or None."""
    homography, _ = cv2.findHomography(
        src, dst, cv2.USAC_MAGSAC, config.ransac_threshold, maxIters=config.ransac_iterations, confidence=0.999
    )
    if homography is None or not np.all(np.isfinite(homography)):
        return None
    projected = cv2.perspectiveTransform(src[:, None, :], homography)[:, 0, :]
    inlier = np.linalg.norm(projected - dst, axis=1) < config.ransac_threshold
    return homography, inlier, min(_distinct(src[inlier]), _distinct(dst[inlier]))


#: Guided matching's chance estimate shifts the homography by this many ransac_threshold radii ...
_NULL_SHIFT = 4.0
#: ... in this many directions, and keeps the most pairs any shift got.
_NULL_DIRECTIONS = 8


def _guided(
    query: QueryFeatures,
    reference: ReferenceFeatures,
    ref_descriptors: np.ndarray,
    homography: np.ndarray,
    twin: bool | None,
    config: SearchConfig,
    rows: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Matches again under ``homography``: each photo feature (``rows``, of the fit's polarity ``twin``)
    is paired with the reference feature, among its ``search.guided_neighbours`` nearest descriptors,
    that projects within ``search.ransac_threshold`` of it (closest descriptor first, one-to-one),
    and the pairs are refitted. (H, qi, ri, inlier mask, distinct inliers) as :func:`_fit`, or None.

    The ratio test asks a descriptor to be clearly nearer its match than anything else in the
    reference; a print shaded by folds keeps its keypoints where they were but its descriptors drift
    towards other features of the same logo (letters look alike), failing the ratio test while the
    right feature is still among the nearest few. The seed homography is what tells them apart.
    """
    q_rows = np.arange(query.xy.shape[0]) if rows is None else rows
    if twin is not None and query.inverted is not None:
        q_rows = q_rows[query.inverted[q_rows] == twin]
    k = min(config.guided_neighbours, ref_descriptors.shape[0])
    if q_rows.size == 0 or k == 0:
        return None
    projected = cv2.perspectiveTransform(reference.xy.astype(np.float32)[:, None, :], homography)[:, 0, :]
    if not np.all(np.isfinite(projected)):
        return None
    # Only photo features near the projected reference (or a shifted copy of it) can pair.
    radius = config.ransac_threshold
    shift = _NULL_SHIFT * radius
    lo, hi = projected.min(0) - radius - shift, projected.max(0) + radius + shift
    xy = query.xy[q_rows]
    q_rows = q_rows[np.all((xy >= lo) & (xy <= hi), axis=1)]
    if q_rows.size == 0:
        return None
    scores = query.augmented[q_rows] @ _prepared(ref_descriptors).T  # the order of |q - r|^2 per row
    nearest = (
        np.argpartition(scores, k - 1, axis=1)[:, :k]
        if k < scores.shape[1]
        else np.tile(np.arange(scores.shape[1]), (q_rows.size, 1))
    )
    qi = np.repeat(q_rows, k)
    ri = nearest.reshape(-1)
    dist = scores[np.repeat(np.arange(q_rows.size), k), ri]
    pairs_q, pairs_r = _pairs(projected[ri] - query.xy[qi], qi, ri, dist, radius)
    if pairs_q.size < max(config.guided_min_inliers, config.min_inliers):
        return None
    # What chance gives here: the same pairing under the homography shifted by a few radii, in
    # _NULL_DIRECTIONS directions (the same photo features, the same descriptors, the wrong place).
    # Where a photo is dense with features alike (foliage, text) chance pairs are many, and the
    # real pairing has to stand out from them, not only pass a count.
    angles = np.arange(_NULL_DIRECTIONS) * (2 * np.pi / _NULL_DIRECTIONS)
    null = max(
        _pairs(projected[ri] + shift * np.array([np.cos(a), np.sin(a)]) - query.xy[qi], qi, ri, dist, radius)[0].size
        for a in angles
    )
    if pairs_q.size < config.guided_null_factor * max(null, 1):
        return None
    fit = _homography(reference.xy[pairs_r].astype(np.float32), query.xy[pairs_q].astype(np.float32), config)
    if fit is None:
        return None
    return fit[0], pairs_q, pairs_r, fit[1], fit[2]


def _pairs(
    offsets: np.ndarray, qi: np.ndarray, ri: np.ndarray, dist: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs (photo rows ``qi``, reference rows ``ri``) whose projection lies within
    ``radius`` (``offsets``: projection - photo position), one-to-one, the closest descriptor first."""
    near = np.einsum("ij,ij->i", offsets, offsets) < radius * radius
    qi, ri, dist = qi[near], ri[near], dist[near]
    order = np.argsort(dist, kind="stable")
    qi, ri = qi[order], ri[order]
    _, first = np.unique(ri, return_index=True)
    keep = np.sort(first)
    qi, ri = qi[keep], ri[keep]
    _, first = np.unique(qi, return_index=True)
    keep = np.sort(first)
    return qi[keep], ri[keep]


def _plausible(
    query: QueryFeatures, reference: ReferenceFeatures, homography: np.ndarray, src: np.ndarray, config: SearchConfig
) -> tuple[np.ndarray, float] | None:
    """The checks that make a homography a photographed print: (outline, inlier spread) or None.

    ``src`` are the inliers' positions in the reference's region frame.
    """
    width, height = reference.region_size
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    outline = cv2.perspectiveTransform(corners[:, None, :], homography)[:, 0, :]
    if not np.all(np.isfinite(outline)) or not _convex_quad(outline):
        return None
    area = _hull_area(outline)
    photo_area = float(query.image_size[0] * query.image_size[1])
    if area < 24 * 24 or area > 6.0 * photo_area:
        return None
    sides = np.linalg.norm(np.roll(outline, -1, axis=0) - outline, axis=1)
    # Opposite sides of a photographed rectangle rarely differ by more than 4x (that is >75 degrees of tilt).
    if max(sides[0], sides[2]) > 4 * min(sides[0], sides[2]) or max(sides[1], sides[3]) > 4 * min(sides[1], sides[3]):
        return None
    spread = _hull_area(src) / max(width * height, 1.0)
    if spread < config.min_inlier_spread:
        return None
    return outline, spread


def _shared_word_rows(query: QueryFeatures, words: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """The photo's features (``rows`` of them, or all) with a visual word (any of its k nearest) in ``words``."""
    assert query.words is not None
    if words.size == 0 or query.xy.shape[0] == 0 or (rows is not None and rows.size == 0):
        return np.zeros(0, np.int64)
    top = int(max(words.max(), query.words.max())) + 1
    held = np.zeros(top, dtype=bool)
    held[words] = True
    # Looked up for every feature and combined column by column: gathering the rows' words first
    # and reducing with any(axis=1) cost 8x as much (a first look runs this once per candidate).
    shared = held[query.words]
    if shared.ndim == 2:
        combined = shared[:, 0].copy()
        for column in range(1, shared.shape[1]):
            combined |= shared[:, column]
        shared = combined
    if rows is None:
        return np.flatnonzero(shared)
    return rows[shared[rows]]


def worth_verifying(
    query: QueryFeatures,
    reference: ReferenceFeatures,
    ref_descriptors: np.ndarray,
    config: SearchConfig,
    rows: np.ndarray | None = None,
) -> bool:
    """The cheap first look of :func:`verify`: do the photo's features that share a visual word with
    the reference already agree on a homography (``search.prefilter_inliers`` distinct inliers)?

    Those features are typically 5-10% of the photo's, so this costs a tenth of the full descriptor
    product. Four matches always fit a homography; chance consensus on photos of strangers stays at
    4-5, while a reference in the photo keeps most of its inliers among its own words (docs/engine.md).
    True when the prefilter is off or the words are unknown.
    """
    need = config.prefilter_inliers
    if need == 0 or query.words is None:
        return True
    shared = _shared_word_rows(query, reference.words, rows)
    if shared.size < need:
        return False
    qi, ri = match_descriptors(query, ref_descriptors, config.prefilter_ratio, shared)
    fit = _fit(query, reference, qi, ri, config, need)
    return fit is not None and fit[4] >= need


def verify(
    query: QueryFeatures,
    reference: ReferenceFeatures,
    ref_descriptors: np.ndarray,
    config: SearchConfig,
    rows: np.ndarray | None = None,
) -> Verification | None:
    """Verifies ``reference`` against the photo (only its ``rows`` features, when given).

    ``ref_descriptors`` are the reference's dequantised float32 descriptors. Returns None when the
    reference is not in the photo by the rules in the module docstring. Candidates that fail
    :func:`worth_verifying` are rejected without the full descriptor product.
    """
    if not worth_verifying(query, reference, ref_descriptors, config, rows):
        return None
    matched_q, matched_r = match_descriptors(query, ref_descriptors, config.ratio, rows)
    fit = _fit(query, reference, matched_q, matched_r, config, config.min_inliers)
    if fit is None:
        return None
    homography, qi, ri, inlier, count = fit
    if count < config.min_inliers:
        # Short of min_inliers but not chance-like, on a plausible homography: guided matching may
        # find the rest (_guided). A degenerate seed (collapsed, say) would gather chance pairs.
        if config.guided_neighbours == 0 or count < max(config.prefilter_inliers, 5):
            return None
        if _plausible(query, reference, homography, reference.xy[ri[inlier]], config) is None:
            return None
        twin = None if query.inverted is None else bool(query.inverted[qi[0]])
        guided = _guided(query, reference, ref_descriptors, homography, twin, config, rows)
        if guided is None or guided[4] < max(config.guided_min_inliers, config.min_inliers):
            return None
        homography, qi, ri, inlier, count = guided
    checked = _plausible(query, reference, homography, reference.xy[ri[inlier]], config)
    if checked is None:
        return None
    outline, spread = checked
    score = count / (count + config.min_inliers)
    inlier_rows = qi[inlier]
    return Verification(
        reference_id=reference.reference_id,
        inliers=count,
        tentative=int(qi.size),
        homography=homography,
        outline=outline.astype(np.float32),
        inlier_rows=inlier_rows,
        spread=float(spread),
        score=float(score),
        inverted=query.inverted is not None and bool(query.inverted[inlier_rows].all()),
    )
