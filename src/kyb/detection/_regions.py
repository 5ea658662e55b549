"""Detector-first identification: each detected region is searched on its own, then the whole photo.

A crop gets the search to itself: the encoder enlarges a small crop (more keypoints on a small
logo), and the shortlist is not crowded by the rest of the scene. The whole photo is still searched
so a verified object the detector missed is not lost; it is kept when it is outside every region's
object. Used by the embedded engine (``Engine.detector``) and ``kyb eval --detector``; the gateway
applies the same :func:`expand_box` to the detector's boxes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kyb.engine import Engine
    from kyb.results import IdentifiedObject, IdentifyResult

__all__ = ["MARGIN", "expand_box", "identify_detected"]

#: Each side of a detected box grows by this share of the box's size: a detector box hugs the
#: object, and feature matching needs the object's edges (and its outline's corners) inside the crop.
MARGIN = 0.15


def expand_box(
    box: Sequence[float], width: float, height: float, margin: float = MARGIN
) -> tuple[float, float, float, float]:
    """``box`` (x1, y1, x2, y2) grown by ``margin`` x its width/height on each side, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    return max(0.0, x1 - dx), max(0.0, y1 - dy), min(float(width), x2 + dx), min(float(height), y2 + dy)


def _centre_inside(obj: IdentifiedObject, box: Sequence[float]) -> bool:
    cx, cy = (obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def identify_detected(engine: Engine, data: bytes, detector: Any, *, margin: float = MARGIN,
                      max_regions: int = 8) -> IdentifyResult:  # fmt: skip
    """Identify photo ``data`` region by region: one object per detected region (its best verified
    match), plus the whole photo's verified objects that lie outside those. ``detector`` is a
    :class:`kyb.detection.Detector`. Without detections this is exactly ``engine.identify(data)``."""
    started = time.perf_counter()
    decoded = engine.decode_query(data)  # once: every search below reuses these pixels
    decoded_at = time.perf_counter()
    detections = detector.detect([decoded.rgb])[0][:max_regions]
    detected_at = time.perf_counter()
    whole = engine.identify_decoded(decoded)
    whole.timings_ms["decode"] = (decoded_at - started) * 1000
    if not detections:
        whole.timings_ms["detect"] = (detected_at - started) * 1000
        whole.timings_ms["total"] += whole.timings_ms["decode"]
        return whole
    objects: list[IdentifiedObject] = []
    for det in detections:
        # Detector boxes are in the decoded photo's pixels; identify takes original ones.
        box = tuple(v * decoded.scale for v in expand_box(det.box, decoded.width, decoded.height, margin))
        result = engine.identify_decoded(decoded, box=box)  # type: ignore[arg-type]
        if result.objects:
            best = result.objects[0]
            if all(o.best.reference_id != best.best.reference_id for o in objects):
                objects.append(best)
    for obj in whole.objects:
        duplicate = any(o.best.reference_id == obj.best.reference_id for o in objects)
        if not duplicate and not any(_centre_inside(obj, o.box) for o in objects):
            objects.append(obj)
    finished = time.perf_counter()
    whole.objects = objects
    whole.timings_ms = {**whole.timings_ms, "detect": (detected_at - started) * 1000,
                        "total": (finished - started) * 1000}  # fmt: skip
    return whole
