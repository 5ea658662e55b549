"""Tests for kyb.synth: determinism, distinctiveness/matchability of the drawings, exact scene geometry and
the demo data set layout."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from kyb import synth

_SIFT = cv2.SIFT_create()


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


def _ransac_inliers(query: np.ndarray, ref: np.ndarray) -> int:
    """Inliers of a ratio-test (0.8) + RANSAC homography match of ``query`` against ``ref``.

    Matches are made one-to-one on the reference side (the best match per reference keypoint location):
    SIFT emits several keypoints at one spot (one per orientation), and many-to-one matches would let a
    degenerate homography collect fake inliers.
    """
    kq, dq = _SIFT.detectAndCompute(_gray(query), None)
    kr, dr = _SIFT.detectAndCompute(_gray(ref), None)
    if dq is None or dr is None or len(kr) < 2:
        return 0
    best: dict[tuple[int, int], cv2.DMatch] = {}
    for pair in cv2.BFMatcher(cv2.NORM_L2).knnMatch(dq, dr, k=2):
        if len(pair) == 2 and pair[0].distance < 0.8 * pair[1].distance:
            x, y = kr[pair[0].trainIdx].pt
            key = (round(x), round(y))
            if key not in best or pair[0].distance < best[key].distance:
                best[key] = pair[0]
    good = list(best.values())
    if len(good) < 4:
        return 0
    src = np.float32([kq[m.queryIdx].pt for m in good])
    dst = np.float32([kr[m.trainIdx].pt for m in good])
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
    return 0 if mask is None else int(mask.sum())


@pytest.fixture(scope="module")
def bands() -> list[synth.SampleBand]:
    return synth.make_bands(12, seed=5)


@pytest.fixture(scope="module")
def covers(bands: list[synth.SampleBand]) -> list[np.ndarray]:
    return [
        synth.draw_album_cover(b.albums[0].title, b.name, np.random.default_rng(i)) for i, b in enumerate(bands[:4])
    ]


@pytest.fixture(scope="module")
def logos(bands: list[synth.SampleBand]) -> list[np.ndarray]:
    return [synth.draw_logo(b.name, np.random.default_rng(100 + i)) for i, b in enumerate(bands[:4])]


# ----------------------------------------------------------------------------------------------- bands


def test_make_bands_unique_deterministic_and_plausible(bands: list[synth.SampleBand]) -> None:
    assert synth.make_bands(12, seed=5) == bands
    assert synth.make_bands(12, seed=6) != bands
    names = [b.name.lower() for b in bands]
    assert len(set(names)) == len(names)
    assert len({b.band_id for b in bands}) == len(bands)
    album_ids = [a.album_id for b in bands for a in b.albums]
    assert len(set(album_ids)) == len(album_ids)
    for b in bands:
        assert 1 <= len(b.albums) <= 3
        assert b.links[0] == f"https://example.org/bands/{synth.slugify(b.name)}"
        assert b.name not in b.similar_artists
        assert all(b.formed_in <= a.year <= 2024 for a in b.albums)
        assert 3 <= len(b.members) <= 5 and b.themes
        d = b.to_band_dict()
        assert set(d) == {f for f in synth.SampleBand.__dataclass_fields__ if f != "albums"}
        assert isinstance(d["members"], list) and isinstance(d["themes"], list)
        json.dumps(d)


def test_make_bands_many_names_stay_unique() -> None:
    many = synth.make_bands(400, seed=1, albums_per_band=(0, 1))
    assert len({b.name.lower() for b in many}) == 400
    assert len({synth.slugify(b.name) for b in many}) == 400


# ------------------------------------------------------------------------------------------- drawings


def test_drawings_are_deterministic_and_well_formed() -> None:
    a = synth.draw_logo("Grave Vortex", np.random.default_rng(3))
    b = synth.draw_logo("Grave Vortex", np.random.default_rng(3))
    assert a.shape == (320, 640, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert synth.draw_logo("Grave Vortex", np.random.default_rng(3), size=(600, 300)).shape == (300, 600, 3)
    c1 = synth.draw_album_cover("Rites of Ash", "Grave Vortex", np.random.default_rng(4))
    c2 = synth.draw_album_cover("Rites of Ash", "Grave Vortex", np.random.default_rng(4))
    assert c1.shape == (600, 600, 3) and np.array_equal(c1, c2)
    assert synth.draw_album_cover("Rites of Ash", "Grave Vortex", np.random.default_rng(4), size=300).shape == (
        300,
        300,
        3,
    )
    g1 = synth.draw_background(np.random.default_rng(5), size=(640, 480))
    g2 = synth.draw_background(np.random.default_rng(5), size=(640, 480))
    assert g1.shape == (480, 640, 3) and np.array_equal(g1, g2)


def test_references_differ_from_each_other(covers: list[np.ndarray], logos: list[np.ndarray]) -> None:
    for group in (covers, logos):
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                diff = np.abs(group[i].astype(np.int16) - group[j].astype(np.int16)).mean()
                assert diff > 25, (i, j, diff)
    # Same name and seed-independent: two logos of one band are still different drawings.
    l1 = synth.draw_logo("Ossuary of Ash", np.random.default_rng(1))
    l2 = synth.draw_logo("Ossuary of Ash", np.random.default_rng(2))
    assert np.abs(l1.astype(np.int16) - l2.astype(np.int16)).mean() > 15


def test_references_have_plenty_of_sift_keypoints(covers: list[np.ndarray], logos: list[np.ndarray]) -> None:
    for cover in covers:
        assert len(_SIFT.detect(_gray(cover))) >= 300
    for logo in logos:
        assert len(_SIFT.detect(_gray(logo))) >= 150


def test_warped_cover_matches_its_original_only(covers: list[np.ndarray]) -> None:
    style = synth.SceneStyle(perspective=0.15)
    for i, cover in enumerate(covers[:3]):
        warped, _ = synth.warp_reference(cover, np.random.default_rng(50 + i), style, scale=0.8)
        warped = cv2.GaussianBlur(warped, (0, 0), 1.0)
        assert _ransac_inliers(warped, cover) >= 30
        other = covers[(i + 1) % len(covers)]
        assert _ransac_inliers(warped, other) < 10


def test_warped_logo_matches_its_original(logos: list[np.ndarray]) -> None:
    warped, _ = synth.warp_reference(logos[0], np.random.default_rng(7), synth.SceneStyle(), scale=0.8)
    warped = cv2.GaussianBlur(warped, (0, 0), 0.8)
    assert _ransac_inliers(warped, logos[0]) >= 30
    assert _ransac_inliers(warped, logos[1]) < 10


# -------------------------------------------------------------------------------------------- geometry


def _coordinate_image(w: int, h: int) -> np.ndarray:
    """A reference whose colour encodes the pixel position (B = x, G = y, scaled to 0..255): any warped
    pixel tells exactly where in the reference it came from."""
    xs = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    ys = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return np.dstack([xs, ys, np.full_like(xs, 128)]).round().astype(np.uint8)


def test_warp_reference_homography_is_exact() -> None:
    w, h = 257, 129
    ref = _coordinate_image(w, h)
    img, hm = synth.warp_reference(ref, np.random.default_rng(0), synth.SceneStyle(perspective=0.15), scale=1.5)
    corners = synth.reference_corners(w, h)
    assert np.allclose(corners, [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    quad = cv2.perspectiveTransform(corners.reshape(-1, 1, 2).astype(np.float64), hm).reshape(-1, 2)
    assert np.allclose(synth.project_points(hm, corners), quad, atol=1e-3)
    # Sample interior reference points, project them, read the colour back: it must encode that point.
    rng = np.random.default_rng(1)
    pts = np.stack([rng.uniform(5, w - 6, 200), rng.uniform(5, h - 6, 200)], 1)
    proj = synth.project_points(hm, pts)
    px = img[np.round(proj[:, 1]).astype(int), np.round(proj[:, 0]).astype(int)].astype(np.float32)
    est_x = px[:, 0] / 255 * (w - 1)
    est_y = px[:, 1] / 255 * (h - 1)
    # Rounding to the nearest photo pixel moves up to ~0.7 px at scale 1.5 (~0.5 px in the reference),
    # plus the 8-bit colour quantisation (~0.5 px here).
    assert np.abs(est_x - pts[:, 0]).max() < 2.0
    assert np.abs(est_y - pts[:, 1]).max() < 2.0


def _quad_mask(quad: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    m = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillConvexPoly(m, np.round(quad).astype(np.int32), 1)
    return m


def test_placements_are_exact_and_do_not_overlap(covers: list[np.ndarray], logos: list[np.ndarray]) -> None:
    refs = [covers[0], logos[0], covers[1], _coordinate_image(300, 200)]
    size = (800, 600)
    style = synth.SceneStyle.clean(scale=(0.25, 0.45))
    for seed in range(4):
        rendered = synth.place_references(refs, np.random.default_rng(seed), size=size, style=style)
        assert rendered.image.shape == (600, 800, 3)
        assert len(rendered.placements) >= 2
        masks = []
        for k, p in enumerate(rendered.placements):
            ref = refs[p.ref_index]
            rh, rw = ref.shape[:2]
            assert p.quad.shape == (4, 2) and p.quad.dtype == np.float32
            expected = cv2.perspectiveTransform(
                synth.reference_corners(rw, rh).reshape(-1, 1, 2).astype(np.float64), p.homography
            ).reshape(-1, 2)
            assert np.allclose(p.quad, expected, atol=1e-3)
            x1, y1, x2, y2 = p.box
            assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]
            assert p.quad[:, 0].min() >= x1 and p.quad[:, 0].max() < x2
            assert p.quad[:, 1].min() >= y1 and p.quad[:, 1].max() < y2
            assert p.visible_fraction == pytest.approx(1.0)
            # The pixels around the projected centre come from the reference: back-project a 7x7 window
            # and compare with the reference, smoothed to the photo's resolution.
            centre = np.array([[(rw - 1) / 2, (rh - 1) / 2]])
            cx, cy = np.round(synth.project_points(p.homography, centre)[0]).astype(int)
            assert rendered.owner[cy, cx] == k
            scale = np.sqrt(cv2.contourArea(p.quad) / ((rw - 1) * (rh - 1)))
            smooth = cv2.GaussianBlur(ref, (0, 0), max(0.5, 0.6 / scale))
            dy, dx = np.mgrid[-3:4, -3:4]
            window = np.stack([cx + dx.ravel(), cy + dy.ravel()], 1)
            back = np.round(synth.project_points(np.linalg.inv(p.homography), window)).astype(int)
            got = rendered.image[window[:, 1], window[:, 0]].astype(np.float32).mean(0)
            want = smooth[back[:, 1], back[:, 0]].astype(np.float32).mean(0)
            assert np.abs(got - want).max() < 8, (got, want)
            masks.append(_quad_mask(p.quad, size))
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                assert not np.any(masks[i] & masks[j])


@pytest.mark.parametrize("scale", [(0.2, 0.25), (0.8, 0.9)])  # heavy minification (pre-shrunk source) and not
def test_coordinate_reference_lands_where_the_homography_says(scale: tuple[float, float]) -> None:
    ref = _coordinate_image(300, 200)
    style = synth.SceneStyle.clean(scale=scale)
    rendered = synth.place_references([ref], np.random.default_rng(3), size=(640, 480), style=style)
    (p,) = rendered.placements
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(20, 280, 2000), rng.uniform(20, 180, 2000)], 1)
    proj = synth.project_points(p.homography, pts).astype(np.float32)
    # Bilinear read of the photo at the exact projected points; the colour says where it came from.
    px = cv2.remap(rendered.image.astype(np.float32), proj[None, :, 0], proj[None, :, 1], cv2.INTER_LINEAR)[0]
    err_x = px[:, 0] / 255 * 299 - pts[:, 0]
    err_y = px[:, 1] / 255 * 199 - pts[:, 1]
    # No systematic offset (a half-pixel convention slip would show here) and only quantisation noise
    # (one colour level is 1.2 px in x).
    assert abs(err_x.mean()) < 0.1 and abs(err_y.mean()) < 0.1
    assert np.abs(err_x).max() < 2.0 and np.abs(err_y).max() < 2.0


def test_compose_scene_degrades_and_stays_deterministic(covers: list[np.ndarray], logos: list[np.ndarray]) -> None:
    refs = [covers[0], logos[1]]
    a, pa = synth.compose_scene(refs, np.random.default_rng(9))
    b, pb = synth.compose_scene(refs, np.random.default_rng(9))
    assert a.shape == (768, 1024, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert [p.box for p in pa] == [p.box for p in pb]
    assert all(np.array_equal(p.quad, q.quad) for p, q in zip(pa, pb, strict=True))
    # Occlusion hides some, never most, of each object; geometry is unchanged by degradation.
    style = synth.SceneStyle(occlusion=1.0, glare=1.0, motion_blur=1.0)
    _, placements = synth.compose_scene(refs, np.random.default_rng(2), style=style)
    assert len(placements) == 2
    for p in placements:
        assert 0.65 <= p.visible_fraction < 1.0
    empty, none = synth.compose_scene([], np.random.default_rng(1), size=(320, 240))
    assert empty.shape == (240, 320, 3) and none == []


def test_overlap_allowed_reports_hidden_parts(covers: list[np.ndarray]) -> None:
    style = synth.SceneStyle.clean(allow_overlap=True, scale=(0.7, 0.8))
    rendered = synth.place_references(covers[:3], np.random.default_rng(4), size=(640, 480), style=style)
    assert len(rendered.placements) == 3
    vis = [p.visible_fraction for p in rendered.placements]
    assert vis[-1] == pytest.approx(1.0)  # the last one is on top
    assert min(vis) < 1.0


# ---------------------------------------------------------------------------------------------- demo


def test_write_demo_set(tmp_path: Path) -> None:
    # Its speed is the demo's business (a benchmark's, not a timed test's): CI shares its cores.
    out = synth.write_demo_set(tmp_path / "demo")
    catalog = json.loads((out / "catalog.json").read_text("utf-8"))
    gt = json.loads((out / "gt.json").read_text("utf-8"))
    assert len(catalog["bands"]) == 8
    band_ids = {b["band_id"] for b in catalog["bands"]}
    album_ids = {a["album_id"] for a in catalog["albums"]}
    assert all(a["band_id"] in band_ids for a in catalog["albums"])
    kinds = {r["kind"] for r in catalog["references"]}
    assert kinds == {"logo", "album_cover"}
    for r in catalog["references"]:
        assert (out / r["image"]).is_file()
        assert r["band_id"] in band_ids
        assert (r["album_id"] is None) == (r["kind"] == "logo")
        assert r["album_id"] is None or r["album_id"] in album_ids
    assert gt["name"] == "demo"
    assert gt["database"] == [r["image"] for r in catalog["references"]]
    assert set(gt["labels"]) == set(gt["database"])
    assert all(" — " in label for label in gt["labels"].values())
    assert len(gt["queries"]) == 7 and len(gt["distractor_queries"]) == 1
    shirts = [q for q in gt["queries"] if q["query"].startswith("photos/shirt_")]
    assert len(shirts) == 1 and shirts[0]["objects"][0]["inverted"]
    assert shirts[0]["positives"][0].endswith("_logo.jpg")
    for q in gt["queries"]:
        photo = cv2.imread(str(out / q["query"]))
        assert photo is not None and photo.shape == (768, 1024, 3)
        assert 1 <= len(q["positives"]) <= 3
        assert [o["reference"] for o in q["objects"]] == q["positives"]
        for o in q["objects"]:
            assert o["reference"] in gt["database"]
            assert len(o["quad"]) == 4 and all(len(pt) == 2 for pt in o["quad"])
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= 1024 and 0 <= y1 < y2 <= 768
    for d in gt["distractor_queries"]:
        assert (out / d).is_file()
    ref = cv2.imread(str(out / gt["database"][0]))
    assert ref is not None and ref.shape == (320, 640, 3)
