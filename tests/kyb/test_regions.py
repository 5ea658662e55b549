"""Detector-first identification (kyb.regions): which regions are searched and how their objects
merge, and the embedded engine's use of them. The detector here reports the scene's true boxes
(what a perfect model would), so the tests are about the region logic, not about a model's quality."""

from __future__ import annotations

import dataclasses

import numpy as np

from kyb import synth
from kyb.engine import Engine
from kyb.regions import Detection, Region, expand_box, merge_regions, search_regions, second_look
from kyb.search import FoundObject
from kyb.verify import Verification
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


def test_a_photo_where_nothing_was_found_is_searched_again_as_an_enlarged_region(
    library: Library, engine: Engine
) -> None:
    rng = np.random.default_rng(21)
    nothing = encode_jpeg(synth.draw_background(rng, (500, 375)), 90)
    name = sorted(library.covers)[0]
    style = synth.SceneStyle(scale=(0.5, 0.55), perspective=0.05, glare=0.0, occlusion=0.0)
    scene, _ = synth.compose_scene([library.covers[name]], rng, size=(500, 375), style=style)
    cover = encode_jpeg(scene, 90)
    whole_only = dataclasses.replace(library.config.search, second_look=False)
    with Engine(library.config.replace(search=whole_only)) as once:
        first = once.identify(nothing)
        found = once.identify(cover)
    assert not first.objects and [o.best.album_id for o in found.objects] == [library.album_of[name]]
    again = engine.identify(nothing)
    assert not again.objects
    # The second look's features (the photo enlarged 3x instead of 2x) come on top of the first's.
    assert again.features > first.features
    assert again.timings_ms["encode"] > first.timings_ms["encode"]
    # Something found: no second look, the same answer as with it off.
    answer = engine.identify(cover)
    assert answer.features == found.features and answer.to_dict()["objects"] == found.to_dict()["objects"]
    # A caller's crop is not looked at again.
    crop = engine.identify(nothing, box=(0, 0, 250, 200))
    with Engine(library.config.replace(search=whole_only)) as once:
        assert crop.features == once.identify(nothing, box=(0, 0, 250, 200)).features


def test_second_look_only_when_the_whole_photo_was_searched_and_found_nothing() -> None:
    found = [_found("A", 30, (10, 10, 20, 20), [0, 1, 2])]
    assert second_look([None], [], 640, 480, enabled=True) == (0.0, 0.0, 640.0, 480.0)
    assert second_look([None, (1.0, 2.0, 30.0, 40.0)], [], 640, 480, enabled=True) == (0.0, 0.0, 640.0, 480.0)
    assert second_look([None], found, 640, 480, enabled=True) is None
    assert second_look([(1.0, 2.0, 30.0, 40.0)], [], 640, 480, enabled=True) is None  # a caller's crop
    assert second_look([None], [], 640, 480, enabled=False) is None


def test_expand_box_grows_and_clips() -> None:
    assert expand_box((10, 10, 110, 60), 200, 100, 0.1) == (0.0, 5.0, 120.0, 65.0)
    assert expand_box((150, 0, 200, 100), 200, 100, 0.5) == (125.0, 0.0, 200.0, 100.0)


def test_search_regions_put_the_whole_photo_first_then_the_best_boxes() -> None:
    detected = [((0, 0, 10, 10), 0.5), ((20, 20, 40, 40), 0.9), ((50, 50, 60, 60), 0.7)]
    regions = search_regions(detected, 100, 100, limit=2)
    assert regions[0] is None
    assert regions[1:] == [expand_box((20, 20, 40, 40), 100, 100), expand_box((50, 50, 60, 60), 100, 100)]
    assert search_regions([], 100, 100, limit=2) == [None]


def _found(key: str, inliers: int, square: tuple[float, float, float, float], rows: list[int]) -> FoundObject:
    x1, y1, x2, y2 = square
    outline = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float32)
    verification = Verification(
        key, inliers, inliers, np.eye(3), outline, np.array(rows), 0.5, inliers / (inliers + 10)
    )
    return FoundObject(verification)


def test_merge_regions_keeps_one_object_per_outline_most_inliers_first() -> None:
    xy = np.array([[15, 15], [16, 16], [17, 17], [70, 70], [71, 71]], dtype=np.float32)
    # The whole photo found A (3 inliers) and B; the crop found A again with more inliers, and C,
    # whose inliers lie inside B's outline: A once (the crop's, most inliers), B, C as B's alternative.
    whole = Region([_found("A", 30, (10, 10, 20, 20), [0, 1, 2]), _found("B", 20, (60, 60, 80, 80), [3, 4])], xy)
    crop = Region([_found("A2", 40, (9, 9, 21, 21), [0, 1, 2]), _found("C", 15, (65, 65, 75, 75), [3, 4])], xy)
    merged = merge_regions([whole, crop], max_objects=10)
    assert [m.verification.reference_id for m in merged] == ["A2", "B"]
    assert [a.reference_id for a in merged[0].alternatives] == ["A"]
    assert [a.reference_id for a in merged[1].alternatives] == ["C"]
    assert len(merge_regions([whole, crop], max_objects=1)) == 1
    assert merge_regions([whole], max_objects=10) == whole.objects


def test_the_second_look_walks_its_shortlist_only_second_look_depth_deep(
    library: Library, engine: Engine, monkeypatch
) -> None:
    import kyb.engine

    walked: list[int] = []
    real_search = kyb.engine.search

    def counting_search(*args, **kwargs):
        found, order = real_search(*args, **kwargs)
        walked.append(len(order))
        return found, order

    monkeypatch.setattr(kyb.engine, "search", counting_search)
    nothing = encode_jpeg(synth.draw_background(np.random.default_rng(21), (500, 375)), 90)
    depth = 2
    assert len(library.covers) > depth
    shallow = dataclasses.replace(library.config.search, second_look_depth=depth)
    with Engine(library.config.replace(search=shallow)) as looked:
        assert not looked.identify(nothing).objects
    # The first look walks every reference (fewer than verify_max), the second look `depth` of them.
    assert walked == [len(looked.index.reference_ids()), depth]
