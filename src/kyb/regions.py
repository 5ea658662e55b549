"""Detector-first identification: which regions of a photo are searched, and how their answers merge.

A detected region gets the search to itself: the encoder enlarges a small crop (more keypoints on a
small logo), and the shortlist is not crowded by the rest of the scene. The whole photo is searched
too, so a verified object the detector missed is not lost. The embedded engine and the gateway both
build the regions with :func:`search_regions` and merge their objects with :func:`merge_regions`, so
a detector-first answer is the same embedded and served.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kyb.search import OWNED_SHARE, FoundObject, inside_outline

__all__ = [
    "MARGIN",
    "Detection",
    "Region",
    "RegionDetector",
    "expand_box",
    "merge_regions",
    "original_box",
    "search_regions",
    "second_look",
]

#: Each side of a detected box grows by this share of the box's size: a detector box hugs the
#: object, and feature matching needs the object's edges (and its outline's corners) inside the crop.
MARGIN = 0.15

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One region: ``box`` ``(x1, y1, x2, y2)`` float pixels of the input image (x2/y2 exclusive), the
    ``label`` (a category name: ``logo`` or ``album_cover``) and the detector's ``score`` in [0, 1]."""

    box: tuple[float, float, float, float]
    label: str
    score: float


class RegionDetector(Protocol):
    """What the engine needs of a detector: boxes for a batch of RGB uint8 images, best first."""

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]: ...


def expand_box(box: Sequence[float], width: float, height: float, margin: float = MARGIN) -> Box:
    """``box`` (x1, y1, x2, y2) grown by ``margin`` x its width/height on each side, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    return max(0.0, x1 - dx), max(0.0, y1 - dy), min(float(width), x2 + dx), min(float(height), y2 + dy)


def original_box(box: Sequence[float], width: int, height: int, scale: float) -> Box:
    """A box in decoded pixels (``width`` x ``height``) clipped to the image, in original pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(0.0, x1) * scale, max(0.0, y1) * scale, min(width, x2) * scale, min(height, y2) * scale


def search_regions(
    detected: Iterable[tuple[Sequence[float], float]], width: int, height: int, limit: int
) -> list[Box | None]:
    """The regions searched for ``detected`` ``(box, score)`` pairs in original pixels of a ``width`` x
    ``height`` photo: the whole photo (None) first, then the ``limit`` best boxes, each grown by
    :data:`MARGIN`. No detections = the whole photo alone."""
    ranked = sorted(detected, key=lambda item: -item[1])[:limit]
    return [None, *(expand_box(box, width, height) for box, _score in ranked)]


def second_look(
    regions: Sequence[Box | None], found: Sequence[FoundObject], width: int, height: int, *, enabled: bool
) -> Box | None:
    """The region a photo is searched again as when none of its ``regions`` found anything: the whole
    ``width`` x ``height`` photo (original pixels) as a box, which the encoder enlarges further than a
    whole photo (``features.query_region_side``), so a logo filling a small part of a web-sized photo
    gets the pixels SIFT needs. None: no second look (something was found, the caller asked for a
    crop, or ``search.second_look`` is off)."""
    if not enabled or found or not regions or regions[0] is not None:
        return None
    return 0.0, 0.0, float(width), float(height)


@dataclass
class Region:
    """One searched region's objects; ``feature_xy`` are its features' positions in search pixels of
    the whole photo (encoding ``xy + origin``), which the objects' ``inlier_rows`` index."""

    objects: list[FoundObject]
    feature_xy: np.ndarray


def merge_regions(regions: Sequence[Region], max_objects: int) -> list[FoundObject]:
    """One object per outline from several regions' answers, by the search's own rule.

    Objects are taken most inliers first (each region's own order is kept: a k-way merge); one whose
    inliers lie at least :data:`~kyb.search.OWNED_SHARE` inside an object already taken becomes an
    alternative explanation of it (the same cover found in its box and in the whole photo, or a
    neighbour reaching into a box), otherwise it is a new object.
    """
    if len(regions) == 1:
        return list(regions[0].objects)
    heads = [0] * len(regions)
    found: list[FoundObject] = []
    while len(found) < max_objects:
        best = -1
        for r, region in enumerate(regions):
            if heads[r] >= len(region.objects):
                continue
            head = region.objects[heads[r]].verification
            if best < 0:
                best = r
                continue
            leader = regions[best].objects[heads[best]].verification
            if (-head.inliers, head.reference_id) < (-leader.inliers, leader.reference_id):
                best = r
        if best < 0:
            break
        item = regions[best].objects[heads[best]]
        heads[best] += 1
        points = regions[best].feature_xy[item.verification.inlier_rows]
        owner = next(
            (f for f in found if points.size and inside_outline(points, f.verification.outline).mean() >= OWNED_SHARE),
            None,
        )
        if owner is not None:
            owner.alternatives.extend([item.verification, *item.alternatives])
            continue
        found.append(FoundObject(item.verification, list(item.alternatives)))
    return found
