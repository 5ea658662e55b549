"""Synthesized small views of a reference (kyb.encoder.extract_views / with_views)."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from kyb import synth
from kyb.catalog import Band
from kyb.config import FeatureConfig, ImageLimits
from kyb.encoder import extract_reference, extract_views, with_views
from kyb.engine import Engine, IngestItem
from kyb.imageio import decode_image
from tests.conftest import encode_jpeg, encode_png, make_config


def _logo(seed: int = 3) -> np.ndarray:
    return synth.draw_logo("Grave Orbit", np.random.default_rng(seed))


def test_views_are_small_renderings_mapped_back_into_the_reference_frame():
    gray = cv2.cvtColor(synth.draw_logo("Sulphur Choir", np.random.default_rng(5)), cv2.COLOR_BGR2GRAY)
    features = FeatureConfig(reference_view_features=40, reference_view_side=48)
    views = extract_views(gray, features, contrast_threshold=features.contrast_threshold)
    longer = max(gray.shape)
    expected = [s for s in (48, 72, 108) if s <= 0.75 * longer]
    assert len(views) == len(expected) and all(0 < len(v) <= 40 for v in views)
    height, width = gray.shape
    for view in views:
        assert view.xy[:, 0].min() >= -1 and view.xy[:, 0].max() <= width
        assert view.xy[:, 1].min() >= -1 and view.xy[:, 1].max() <= height
    # A keypoint of the smallest view is a large one in the reference's frame.
    assert np.median(views[0].size) > np.median(views[-1].size)


def test_with_views_adds_at_most_count_and_skips_what_the_reference_has():
    gray = cv2.cvtColor(_logo(), cv2.COLOR_BGR2GRAY)
    features = FeatureConfig(reference_view_features=30, reference_view_side=48)
    views = extract_views(gray, features, contrast_threshold=features.contrast_threshold)
    base = views[-1]
    # A view against itself adds nothing: each of its keypoints repeats one kept.
    assert len(with_views(base, [base], 30)) == len(base)
    combined = with_views(base, views[:-1], 10)
    assert len(base) < len(combined) <= len(base) + 10
    np.testing.assert_array_equal(combined.xy[: len(base)], base.xy)  # the reference's own rows first


def test_a_boxed_region_keeps_its_own_keypoints_first_and_a_whole_image_gets_no_views():
    image = decode_image(encode_png(_logo()), ImageLimits())
    on = FeatureConfig(reference_view_features=55, reference_view_side=48)
    off = replace(on, reference_view_features=0)
    box = (20.0, 10.0, 20.0 + image.width * 0.8, 10.0 + image.height * 0.8)
    plain, used = extract_reference(image, box, off)
    viewed, same = extract_reference(image, box, on)
    assert used == same
    assert len(plain) < len(viewed) <= len(plain) + 55
    np.testing.assert_array_equal(viewed.descriptors[: len(plain)], plain.descriptors)
    added = viewed.xy[len(plain) :]  # in the box's own frame
    assert added.min() >= -1 and added[:, 0].max() <= used[2] - used[0] and added[:, 1].max() <= used[3] - used[1]
    # A whole image keeps its larger keypoints already (features.reference_scale_weight): no views.
    whole_plain, _ = extract_reference(image, None, off)
    whole, _ = extract_reference(image, None, on)
    np.testing.assert_array_equal(whole.descriptors, whole_plain.descriptors)


def test_a_small_print_is_found_thanks_to_the_views(tmp_path):
    """Drawn logos, each indexed as a box of a larger image (a logo cut out of a photo), printed as
    stickers at 8-10% of a 1600 x 1200 photo's side: two that the boxes' own keypoints miss are found,
    and outlined, once the references keep their views."""
    bands = synth.make_bands(6, seed=7, albums_per_band=(1, 2))
    rng = np.random.default_rng(1234)
    logos = {b.band_id: synth.draw_logo(b.name, rng) for b in bands}
    items = []
    for band, logo in logos.items():
        height, width = logo.shape[:2]
        canvas = np.full((height + 80, width + 80, 3), 128, np.uint8)
        canvas[40 : 40 + height, 40 : 40 + width] = logo
        box = (40.0, 40.0, 40.0 + width, 40.0 + height)
        items.append(IngestItem(f"{band}.jpg", "logo", band, None, (box,), data=encode_jpeg(canvas, 95)))
    engines = {}
    for views in (0, 55):
        config = make_config(tmp_path / str(views), cache={"url": "none"}, features={"reference_view_features": views})
        engine = Engine(config)
        engine.catalog.upsert_bands(Band(band_id=b.band_id, name=b.name) for b in bands)
        engine.ingest(items)
        engines[views] = engine
    try:
        found = {0: 0, 55: 0}
        for seed, band in ((0, "band_0000"), (1, "band_0001")):
            style = synth.MerchStyle(medium="sticker", print_scale=(0.08, 0.1), size=(1600, 1200))
            photo, quad = synth.draw_merch_photo(logos[band], np.random.default_rng([seed, 9]), style)
            for views, engine in engines.items():
                objects = engine.identify(encode_jpeg(photo, 92)).objects
                if objects and objects[0].best.band_id == band:
                    found[views] += 1
                    if views:
                        outline = np.asarray(objects[0].best.outline, np.float32)
                        inter = cv2.intersectConvexConvex(outline, quad.astype(np.float32))[0]
                        assert inter / cv2.contourArea(quad.astype(np.float32)) > 0.7
        assert found[55] == 2 and found[0] < 2
    finally:
        for engine in engines.values():
            engine.close()
