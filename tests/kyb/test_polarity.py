"""Prints in the opposite polarity: a dark-on-light logo printed light on a dark shirt, and back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from kyb import synth
from kyb.engine import Engine, IngestItem
from kyb.features import INVERTED_ORDER, extract_rootsift, invert_polarity
from tests.conftest import Library, encode_jpeg, encode_png, make_config


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    inter = cv2.intersectConvexConvex(a, b)[0]
    return float(inter / (cv2.contourArea(a) + cv2.contourArea(b) - inter))


def test_the_inverted_image_has_the_same_keypoints_and_permuted_descriptors() -> None:
    """What lets a photo be searched in both polarities from one extraction: SIFT of the inverted
    image finds every keypoint again, turned by 180 degrees, with the descriptor cell-permuted."""
    rng = np.random.default_rng(11)
    gray = cv2.cvtColor(synth.draw_logo("Frozen Monolith", rng), cv2.COLOR_BGR2GRAY)
    as_is = extract_rootsift(gray, max_features=800, contrast_threshold=0.025)
    inverted = extract_rootsift(255 - gray, max_features=800, contrast_threshold=0.025)
    assert len(as_is) > 200
    # Pair keypoints by position and descriptor (one position can carry several orientations).
    flipped = invert_polarity(as_is.descriptors)
    paired = 0
    for i in range(len(as_is)):
        near = np.flatnonzero(np.abs(inverted.xy - as_is.xy[i]).max(axis=1) < 1e-3)
        if near.size and np.abs(inverted.descriptors[near] - flipped[i]).max(axis=1).min() < 2e-3:
            paired += 1
    assert paired >= 0.97 * len(as_is)
    assert np.array_equal(np.sort(INVERTED_ORDER), np.arange(128))
    assert np.array_equal(INVERTED_ORDER[INVERTED_ORDER], np.arange(128))  # inverting twice is the identity


def test_a_photo_encodes_an_inverted_twin_of_every_feature(engine: Engine, library: Library) -> None:
    photo = synth.draw_background(np.random.default_rng(2), (640, 480))
    decoded = engine.decode_query(encode_jpeg(photo))
    encoding = engine.encoder.encode(decoded)
    assert encoding.inverted is not None
    n = len(encoding) // 2
    assert not encoding.inverted[:n].any() and encoding.inverted[n:].all()
    assert np.array_equal(encoding.xy[:n], encoding.xy[n:])
    reference = engine.encoder.encode(decoded, reference=True)
    assert reference.inverted is None
    off = dataclasses.replace(library.config.features, query_inverted_features=0)
    with Engine(library.config.replace(features=off)) as plain:
        single = plain.encoder.encode(decoded)
    assert single.inverted is None and len(single) == n
    np.testing.assert_array_equal(single.descriptors, encoding.descriptors[:n])
    np.testing.assert_array_equal(single.global_vector, encoding.global_vector)  # the photo as it is


@pytest.mark.parametrize("medium,folds", [("shirt", 0.0), ("shirt", 1.0), ("patch", 0.6), ("sticker", 0.0)])
def test_a_logo_printed_inverted_is_found_with_its_outline(
    engine: Engine, library: Library, medium: str, folds: float
) -> None:
    """Each of the library's logos printed in the opposite polarity, in a cluttered scene: found, named,
    outlined, and reported as inverted; searched as photographed only, most are not found at all. One
    faint logo (dark grey on black) may be lost, as it is in some photos of its own polarity."""
    found = found_as_is = 0
    off = dataclasses.replace(library.config.features, query_inverted_features=0)
    with Engine(library.config.replace(features=off)) as as_is:
        for i, (name, logo) in enumerate(library.logos.items()):
            rng = np.random.default_rng([5, i, int(folds * 10)])
            style = synth.MerchStyle(inverted=True, folds=folds, medium=medium, print_scale=(0.4, 0.55))
            photo, quad = synth.draw_merch_photo(logo, rng, style)
            data = encode_jpeg(photo)
            result = engine.identify(data)
            found_as_is += bool(as_is.identify(data).objects)
            if not result.objects:
                continue
            best = result.objects[0].best
            assert best.band_id == library.band_of[name]
            assert best.inverted
            assert _iou(np.array(best.outline), quad) > 0.7
            found += 1
    assert found >= len(library.logos) - 1
    assert found_as_is <= len(library.logos) // 2


def test_an_inverted_reference_matches_a_normal_print(tmp_path: Path, library: Library) -> None:
    """The catalog holds a logo light on dark (or dark on light) and the photo shows it the other way."""
    config = make_config(tmp_path)
    with Engine(config) as engine:
        library.seed_catalog(engine)
        items = [
            IngestItem(name, "logo", library.band_of[name], data=encode_png(255 - logo))
            for name, logo in library.logos.items()
        ]
        items += [item for item in library.items() if item.kind == "album_cover"]  # enough to train a codebook
        assert all(o.status == "added" for o in engine.ingest(items))
        name, logo = next(iter(library.logos.items()))
        rng = np.random.default_rng(8)
        photo, quad = synth.draw_merch_photo(logo, rng, synth.MerchStyle(medium="poster", print_scale=(0.45, 0.5)))
        result = engine.identify(encode_jpeg(photo))
        assert result.objects and result.objects[0].best.band_id == library.band_of[name]
        assert result.objects[0].best.inverted
        assert _iou(np.array(result.objects[0].best.outline), quad) > 0.7


def test_no_logo_merch_stays_unmatched_in_either_polarity(engine: Engine) -> None:
    """Blank items and prints of logos the catalog does not hold, inverted or not, folded (guided
    matching looks at them too) or flat."""
    bands = synth.make_bands(4, seed=99)
    for i, band in enumerate(bands):
        stranger = synth.draw_logo(band.name, np.random.default_rng([99, i]))
        for inverted in (False, True):
            rng = np.random.default_rng([7, i, inverted])
            style = synth.MerchStyle(inverted=inverted, folds=float(i < 2), medium=synth.MERCH_MEDIA[i])
            photo, _ = synth.draw_merch_photo(stranger if i % 2 == 0 else None, rng, style)
            assert not engine.identify(encode_jpeg(photo)).objects


def _plain_mark(ink: int, paper: int, size: tuple[int, int] = (400, 300)) -> np.ndarray:
    """Three chevrons of different sizes, a bar, a wedge and two dots in one flat colour: a mark with
    little texture (a few dozen keypoints, all on its outline)."""
    w, h = size
    img = np.full((h, w, 3), paper, np.uint8)
    colour = (ink, ink, ink)
    for x0, y0, s in ((40, 70, 1.0), (150, 110, 0.7), (235, 60, 1.3)):
        pts = np.array([[0, 0], [50, 70], [0, 140], [25, 140], [75, 70], [25, 0]]) * s + (x0, y0)
        cv2.fillPoly(img, [pts.round().astype(np.int32)], colour, cv2.LINE_AA)
    cv2.rectangle(img, (40, 240), (250, 262), colour, -1, cv2.LINE_AA)
    cv2.circle(img, (345, 250), 22, colour, -1, cv2.LINE_AA)
    cv2.fillPoly(img, [np.array([[300, 180], [380, 200], [330, 215]], np.int32)], colour, cv2.LINE_AA)
    cv2.circle(img, (190, 40), 12, colour, -1, cv2.LINE_AA)
    return img


def test_a_faint_low_texture_mark_is_indexed_and_found(tmp_path: Path, library: Library) -> None:
    """A catalog's washed-out scan of a plain mark (12 grey levels of contrast: no keypoint at the
    usual contrast threshold) is indexed at a lower threshold, and a crisp print of it, in either
    polarity, is found."""
    faded = _plain_mark(188, 200)
    gray = cv2.cvtColor(faded, cv2.COLOR_BGR2GRAY)
    threshold = library.config.features.contrast_threshold
    assert len(extract_rootsift(gray, max_features=450, contrast_threshold=threshold)) == 0
    config = make_config(tmp_path)
    with Engine(config) as engine:
        library.seed_catalog(engine)
        band = library.bands[0].band_id
        items = [*library.items(), IngestItem("mark.png", "logo", band, data=encode_png(faded))]
        outcomes = engine.ingest(items)
        assert all(o.status == "added" for o in outcomes), [o.message for o in outcomes if o.status != "added"]
        crisp = _plain_mark(30, 235)
        for inverted in (False, True):
            rng = np.random.default_rng([21, inverted])
            style = synth.MerchStyle(inverted=inverted, medium="poster", print_scale=(0.5, 0.6))
            photo, quad = synth.draw_merch_photo(crisp, rng, style)
            result = engine.identify(encode_jpeg(photo))
            assert result.objects, f"inverted={inverted}: not found"
            best = result.objects[0].best
            assert best.band_id == band and best.inverted == inverted
            assert _iou(np.array(best.outline), quad) > 0.6
