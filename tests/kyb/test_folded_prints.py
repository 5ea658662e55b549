"""Folded prints: guided matching finds the matches the ratio test drops (verify.py, search.guided_*), and
prints on folded shirts are found, outlined, and no-logo ones stay unmatched."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from kyb import synth
from kyb.config import SearchConfig
from kyb.engine import Engine
from kyb.index import ReferenceFeatures
from kyb.verify import QueryFeatures, verify
from tests.conftest import Library, encode_jpeg

GUIDED = SearchConfig()  # guided matching is on by default
OFF = dataclasses.replace(GUIDED, guided_neighbours=0)
SIZE = (400.0, 300.0)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _reference(rng: np.random.Generator, n: int = 200) -> tuple[ReferenceFeatures, np.ndarray]:
    xy = (rng.random((n, 2)) * np.array(SIZE)).astype(np.float32)
    descriptors = _unit(rng.normal(size=(n, 64)))
    features = ReferenceFeatures("ref", xy, np.zeros((n, 64), np.int8), np.zeros(n, np.int64), SIZE)
    return features, descriptors


def _homography() -> np.ndarray:
    angle = np.deg2rad(12)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return (
        np.array([[0.9, 0, 300], [0, 0.9, 200], [0, 0, 1]])
        @ rotation
        @ np.array([[1, 0.05, 0], [0, 1, 0], [0.0002, 0, 1]])
    )


def _photo(
    rng: np.random.Generator,
    reference: ReferenceFeatures,
    descriptors: np.ndarray,
    clean: int,
    damaged: int,
    look_alikes: int = 0,
    unique: int = 0,
) -> QueryFeatures:
    """The reference seen through :func:`_homography`: ``clean`` features as they are (enough for a
    seed fit, short of min_inliers), ``damaged`` ones whose descriptor lies between their own and
    another reference feature's (as a fold's shading moves it: the ratio test fails, the right one
    is still among the two nearest), clutter over a 1024 x 768 photo and ``look_alikes``: features
    strewn over the print's area with descriptors like the reference's features from ``unique`` on
    (foliage, repeated text); the clean ones are then the reference's first features."""
    n = descriptors.shape[0]
    picked = np.arange(clean) if look_alikes else rng.permutation(n)[: clean + damaged]
    projected = cv2.perspectiveTransform(reference.xy[picked][:, None, :], _homography())[:, 0, :]
    xy = projected + rng.normal(0, 1.0, projected.shape)
    desc = descriptors[picked] + rng.normal(0, 0.05, (picked.size, 64))
    siblings = descriptors[(picked[clean:] + 1 + rng.integers(n - 1, size=damaged)) % n]
    desc[clean:] = 0.52 * descriptors[picked[clean:]] + 0.48 * siblings
    clutter = 800
    xy = np.vstack([xy, rng.random((clutter, 2)) * np.array([1024, 768])]).astype(np.float32)
    desc = np.vstack([_unit(desc), _unit(rng.normal(size=(clutter, 64)))])
    if look_alikes:
        spots = cv2.perspectiveTransform(
            (rng.random((look_alikes, 1, 2)) * np.array(SIZE)).astype(np.float32), _homography()
        )
        xy = np.vstack([xy, spots[:, 0, :]]).astype(np.float32)
        like = descriptors[rng.integers(unique, n, size=look_alikes)] + rng.normal(0, 0.08, (look_alikes, 64))
        desc = np.vstack([desc, _unit(like)])
    return QueryFeatures.build(xy, desc, (1024, 768))


def test_a_print_whose_descriptors_moved_is_found_by_guided_matching() -> None:
    rng = np.random.default_rng(3)
    reference, descriptors = _reference(rng)
    photo = _photo(rng, reference, descriptors, clean=8, damaged=120)
    assert verify(photo, reference, descriptors, OFF) is None  # 8 ratio-test inliers: short of 10
    found = verify(photo, reference, descriptors, GUIDED)
    assert found is not None and found.inliers >= 100
    corners = np.array([[0, 0], [SIZE[0], 0], [SIZE[0], SIZE[1]], [0, SIZE[1]]], np.float32)
    truth = cv2.perspectiveTransform(corners[:, None, :], _homography())[:, 0, :]
    assert np.abs(found.outline - truth).max() < 4.0


def test_a_seed_fit_alone_does_not_pass_the_guided_bar() -> None:
    """A seed of chance-like size with nothing behind it: the pairs guided matching adds under its
    homography are chance ones, too few for search.guided_min_inliers."""
    rng = np.random.default_rng(4)
    reference, descriptors = _reference(rng)
    photo = _photo(rng, reference, descriptors, clean=8, damaged=0)
    assert verify(photo, reference, descriptors, OFF) is None
    assert verify(photo, reference, descriptors, GUIDED) is None


def test_chance_pairs_among_look_alike_features_do_not_pass() -> None:
    """A seed over an area dense with features like the reference's: guided matching pairs many of
    them by chance, but as many under a shifted homography, so the pairing does not stand out."""
    rng = np.random.default_rng(6)
    reference, descriptors = _reference(rng)
    # All but the reference's first 20 features are of 10 kinds (one corner shape, one blob), so a
    # look-alike's nearest descriptors are some feature of its kind, anywhere in the reference.
    kinds = _unit(rng.normal(size=(10, 64)))
    descriptors[20:] = _unit(kinds[rng.integers(10, size=180)] + rng.normal(0, 0.03, (180, 64)))
    photo = _photo(rng, reference, descriptors, clean=8, damaged=0, look_alikes=3000, unique=20)
    without_null = dataclasses.replace(GUIDED, guided_null_factor=0.0)
    assert verify(photo, reference, descriptors, without_null) is not None  # what a count bar alone lets in
    assert verify(photo, reference, descriptors, GUIDED) is None


def test_a_print_found_without_guidance_is_verified_as_before() -> None:
    rng = np.random.default_rng(5)
    reference, descriptors = _reference(rng)
    photo = _photo(rng, reference, descriptors, clean=60, damaged=60)
    plain, guided = verify(photo, reference, descriptors, OFF), verify(photo, reference, descriptors, GUIDED)
    assert plain is not None and guided is not None
    assert guided.inliers == plain.inliers
    np.testing.assert_array_equal(guided.inlier_rows, plain.inlier_rows)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    inter = cv2.intersectConvexConvex(a, b)[0]
    return float(inter / (cv2.contourArea(a) + cv2.contourArea(b) - inter))


@pytest.mark.parametrize("inverted", [False, True])
def test_logos_printed_on_folded_shirts_are_found_with_their_outline(
    engine: Engine, library: Library, inverted: bool
) -> None:
    """Each of the library's logos on a crumpled shirt (folds 1) in a cluttered scene: named and
    outlined; one faint logo may be lost, as it is flat too."""
    found = 0
    for i, (name, logo) in enumerate(library.logos.items()):
        rng = np.random.default_rng([25, i, inverted])
        style = synth.MerchStyle(inverted=inverted, folds=1.0, medium="shirt", print_scale=(0.4, 0.55))
        photo, quad = synth.draw_merch_photo(logo, rng, style)
        result = engine.identify(encode_jpeg(photo))
        if not result.objects:
            continue
        best = result.objects[0].best
        assert best.band_id == library.band_of[name]
        assert _iou(np.array(best.outline), quad) > 0.7
        found += 1
    assert found >= len(library.logos) - 1
