"""Detector-first identification in the embedded engine: one object per detected region, plus the
whole photo's objects outside them. The detector here reports the scene's true boxes (what a perfect
model would), so the test is about the region logic, not about a model's quality."""

from __future__ import annotations

import numpy as np

from kyb import synth
from kyb.detection import Detection
from kyb.engine import Engine
from tests.conftest import Library, encode_jpeg


class BoxesDetector:
    """Answers fixed boxes (in the decoded photo's pixels) and records the images it was given."""

    def __init__(self, boxes: list[tuple[float, float, float, float]]) -> None:
        self.boxes = boxes
        self.calls: list[tuple[int, ...]] = []

    def detect(self, images):
        self.calls.append(tuple(images[0].shape))
        return [[Detection(b, "album_cover", 0.9) for b in self.boxes] for _ in images]


def test_each_detected_region_is_identified_and_objects_outside_are_kept(library: Library, engine: Engine) -> None:
    names = sorted(library.covers)[:2]
    rng = np.random.default_rng(5)
    refs = [library.covers[n] for n in names]
    style = synth.SceneStyle(scale=(0.3, 0.36), perspective=0.08, glare=0.0, occlusion=0.0)
    scene, placements = synth.compose_scene(refs, rng, size=(1024, 768), style=style,
                                            background=synth.draw_background(rng))  # fmt: skip
    assert len(placements) == 2
    data = encode_jpeg(scene, 90)
    # The detector sees only the first cover; the second must still come from the whole photo.
    first = placements[0]
    engine.detector = BoxesDetector([tuple(float(v) for v in first.box)])
    result = engine.identify(data)
    found = [o.best.album_id for o in result.objects]
    assert found[0] == library.album_of[names[first.ref_index]]  # the region's object comes first
    assert sorted(found) == sorted(library.album_of[n] for n in names) and len(found) == len(set(found))
    assert engine.detector.calls == [(768, 1024, 3)] and "detect" in result.timings_ms
    # No detections: exactly the whole-photo answer.
    engine.detector = BoxesDetector([])
    assert [o.best.album_id for o in engine.identify(data).objects] == [
        o.best.album_id for o in engine.identify(data, use_detector=False).objects
    ]
