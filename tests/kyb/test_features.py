"""RootSIFT extraction: which keypoints a reference keeps."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from kyb import synth
from kyb.config import FeatureConfig, ImageLimits
from kyb.encoder import extract_region
from kyb.features import LocalFeatures, extract_rootsift
from kyb.imageio import decode_image
from tests.conftest import encode_png


def _inliers(reference: LocalFeatures, photo: LocalFeatures) -> int:
    """One-to-one ratio-test matches that agree on a homography (what verification counts)."""
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(photo.descriptors, reference.descriptors, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.85 * n.distance]
    if len(good) < 4:
        return 0
    src = np.float32([reference.xy[m.trainIdx] for m in good])
    dst = np.float32([photo.xy[m.queryIdx] for m in good])
    _, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, 8.0)
    return 0 if mask is None else int(mask.sum())


def test_a_reference_keeps_keypoints_that_a_small_blurred_photo_of_it_still_has() -> None:
    """Kept by response alone, a reference's 450 keypoints lean to its finest scale, which a photo
    showing it at a third of its size, slightly out of focus, has lost; weighted by size too
    (features.reference_scale_weight), it keeps larger ones that such a photo still matches. Summed
    over six drawn covers, each in two such photos (one cover alone can go either way)."""
    strongest_inliers = weighted_inliers = 0
    strongest_sizes, weighted_sizes = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        cover = cv2.cvtColor(synth.draw_album_cover("Ashen Procession", "Vorthrax", rng, size=600), cv2.COLOR_RGB2GRAY)
        background = cv2.cvtColor(synth.draw_background(rng, (1000, 750)), cv2.COLOR_RGB2GRAY)
        strongest = extract_rootsift(cover, max_features=450, contrast_threshold=0.025)
        weighted = extract_rootsift(cover, max_features=450, contrast_threshold=0.025, scale_weight=1.0)
        assert len(weighted) == len(strongest) == 450
        strongest_sizes.append(np.median(strongest.size))
        weighted_sizes.append(np.median(weighted.size))
        for side, blur in ((200, 1.2), (240, 2.0)):
            scene = background.copy()
            small = cv2.resize(cover, (side, side), interpolation=cv2.INTER_AREA)
            scene[300 : 300 + side, 400 : 400 + side] = cv2.GaussianBlur(small, (0, 0), blur)
            photo = extract_rootsift(scene, max_features=2500, contrast_threshold=0.025)
            strongest_inliers += _inliers(strongest, photo)
            weighted_inliers += _inliers(weighted, photo)
    assert np.mean(weighted_sizes) > 1.2 * np.mean(strongest_sizes)
    assert weighted_inliers > 1.5 * strongest_inliers


def test_scale_weighted_keypoints_are_described_as_detected() -> None:
    """The weighted path detects first and describes only what it keeps: the same descriptors as
    describing those keypoints directly, rows best first."""
    rng = np.random.default_rng(3)
    cover = cv2.cvtColor(synth.draw_album_cover("Cold Iron", "Nattsvart", rng, size=400), cv2.COLOR_RGB2GRAY)
    weighted = extract_rootsift(cover, max_features=100, contrast_threshold=0.025, scale_weight=1.0)
    sift = cv2.SIFT_create(contrastThreshold=0.025)
    found = sift.detect(cover, None)
    best = sorted(found, key=lambda kp: -kp.response * kp.size)[:100]
    _, raw = sift.compute(cover, best)
    raw = np.sqrt(raw / (raw.sum(axis=1, keepdims=True) + 1e-7))
    np.testing.assert_allclose(weighted.xy, np.float32([kp.pt for kp in best]), atol=1e-4)
    np.testing.assert_allclose(weighted.descriptors, raw, atol=1e-5)


def test_whole_references_are_scale_weighted_and_boxed_regions_are_not() -> None:
    """A whole reference image (artwork, a scan) keeps keypoints by response x size; a box in a photo
    (a logo on a merch photo, photographed already) keeps its strongest; a photo keeps its strongest."""
    rng = np.random.default_rng(5)
    rgb = synth.draw_album_cover("Grave Orbit", "Sulphur Choir", rng, size=600)
    image = decode_image(encode_png(rgb), ImageLimits())
    features = FeatureConfig()
    assert features.reference_scale_weight > 0
    gray = image.gray()
    whole, _ = extract_region(image, None, features, reference=True)
    weighted = extract_rootsift(
        gray, max_features=features.reference_features, contrast_threshold=0.025, scale_weight=1
    )
    np.testing.assert_array_equal(whole.xy, weighted.xy)
    boxed, _ = extract_region(image, (0, 0, 600, 600), features, reference=True)
    strongest = extract_rootsift(gray, max_features=features.reference_features, contrast_threshold=0.025)
    np.testing.assert_array_equal(boxed.xy, strongest.xy)
    photo, _ = extract_region(image, None, features, reference=False)
    assert np.median(photo.size[: features.reference_features]) < np.median(whole.size)


def test_a_region_of_a_photo_is_enlarged_further_than_the_whole_photo() -> None:
    """A photo region (a detector box, the second look) goes to features.query_region_side, up to
    query_region_upscale; the whole photo stops at 2x. Positions stay in the region's own frame."""
    rng = np.random.default_rng(11)
    rgb = synth.draw_album_cover("Grave Orbit", "Sulphur Choir", rng, size=480)
    image = decode_image(encode_png(rgb), ImageLimits())
    features = FeatureConfig(query_features=20000)
    box = (100.0, 120.0, 260.0, 240.0)  # 160 x 120: 1500 / 160 > the cap, so the cap applies
    region, used = extract_region(image, box, features, reference=False)
    assert used == box
    crop = image.gray()[120:240, 100:260]
    at_cap = extract_rootsift(crop, max_features=20000, contrast_threshold=0.025, upscale=features.query_region_upscale)
    np.testing.assert_array_equal(region.xy, at_cap.xy)
    assert region.xy.min() >= 0 and region.xy[:, 0].max() <= 160 and region.xy[:, 1].max() <= 120
    at_two, _ = extract_region(image, box, replace(features, query_region_upscale=2.0), reference=False)
    assert at_two.xy.shape != region.xy.shape or not np.array_equal(at_two.xy, region.xy)
    # The whole 480-px photo: 1000 / 480 = 2.08, capped at 2x whatever the region settings say.
    whole, _ = extract_region(image, None, features, reference=False)
    twice = extract_rootsift(image.gray(), max_features=20000, contrast_threshold=0.025, upscale=2.0)
    np.testing.assert_array_equal(whole.xy, twice.xy)
