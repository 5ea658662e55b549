"""The engine on generated photos: geometry, several objects, rejection, incremental updates."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from kyb import synth
from kyb.catalog import Band
from kyb.config import SearchConfig
from kyb.engine import Engine, IngestItem
from kyb.errors import ImageTooLarge, InvalidImage, NotFound
from kyb.search import run_search
from kyb.verify import Verification
from tests.conftest import Library, encode_jpeg, encode_png, make_config


def _photo(library: Library, names: list[str], seed: int, **style: object) -> tuple[bytes, list]:
    rng = np.random.default_rng(seed)
    refs = [{**library.covers, **library.logos}[n] for n in names]
    scene, placements = synth.compose_scene(
        refs, rng, size=(1024, 768), style=synth.SceneStyle(**style), background=synth.draw_background(rng)
    )
    return encode_jpeg(scene, 85), placements


def _bands(result) -> list[str | None]:
    return [o.best.band_id for o in result.objects]


@pytest.mark.parametrize(
    ("style", "seed"),
    [
        ({"perspective": 0.2, "rotation_deg": 5, "scale": (0.5, 0.7)}, 1),  # strong perspective
        ({"perspective": 0.05, "rotation_deg": 45, "scale": (0.4, 0.6)}, 2),  # rotation
        ({"perspective": 0.1, "rotation_deg": 10, "scale": (0.22, 0.28)}, 3),  # small in the photo
        ({"perspective": 0.1, "blur_sigma": (1.5, 2.0), "scale": (0.5, 0.6)}, 4),  # blur
    ],
)
def test_single_cover_under_distortion(library: Library, engine: Engine, style: dict, seed: int) -> None:
    name = sorted(library.covers)[seed % len(library.covers)]
    data, placements = _photo(library, [name], seed, glare=0.0, occlusion=0.0, **style)
    result = engine.identify(data)
    assert _bands(result)[:1] == [library.band_of[name]]
    best = result.objects[0].best
    assert best.album_id == library.album_of[name]
    assert best.inliers >= engine.config.search.min_inliers
    # The outline is the reference's rectangle projected into the photo: compare with the truth.
    truth = placements[0].quad
    outline = np.array(result.objects[0].outline)
    assert np.abs(outline - truth).max() < 12, (outline, truth)


def test_logo_in_clutter(library: Library, engine: Engine) -> None:
    name = sorted(library.logos)[0]
    data, _ = _photo(library, [name], 11, scale=(0.35, 0.45), glare=0.0, occlusion=0.0)
    result = engine.identify(data)
    assert _bands(result)[:1] == [library.band_of[name]]
    assert result.objects[0].kind == "logo"
    assert result.objects[0].best.band and result.objects[0].best.band.name  # metadata comes from the catalog


def test_several_objects_each_once(library: Library, engine: Engine) -> None:
    names = sorted(library.covers)[:3]
    data, placements = _photo(library, names, 21, scale=(0.3, 0.36), perspective=0.08, glare=0.0, occlusion=0.0)
    placed = {names[p.ref_index] for p in placements}
    result = engine.identify(data)
    found = [o.best.album_id for o in result.objects]
    assert sorted(found) == sorted(library.album_of[n] for n in placed)
    assert len(found) == len(set(found))  # each cover once


def test_photo_without_reference_is_rejected(engine: Engine) -> None:
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        background = synth.draw_background(rng)
        assert engine.identify(encode_jpeg(background)).objects == []


def test_other_drawings_are_rejected(library: Library, engine: Engine) -> None:
    """Covers never ingested, drawn in the same style, must not match the ingested ones."""
    rng = np.random.default_rng(999)
    stranger = synth.draw_album_cover("Unheard Of", "Nobody Band", rng)
    scene, _ = synth.compose_scene([stranger], rng, background=synth.draw_background(rng))
    assert engine.identify(encode_jpeg(scene)).objects == []


def test_crop_box_limits_the_search(library: Library, engine: Engine) -> None:
    names = sorted(library.covers)[:2]
    data, placements = _photo(library, names, 31, scale=(0.32, 0.36), glare=0.0, occlusion=0.0)
    target = placements[0]
    result = engine.identify(data, box=tuple(float(v) for v in target.box))
    assert [o.best.album_id for o in result.objects] == [library.album_of[names[target.ref_index]]]


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        (b"", InvalidImage, "empty"),
        (b"hello, this is not an image", InvalidImage, "not an image"),
        (b"GIF89a" + b"\0" * 64, InvalidImage, ""),
    ],
)
def test_bad_bytes_get_one_clear_error(engine: Engine, payload: bytes, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        engine.identify(payload)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_featureless_and_tiny_images(library: Library, engine: Engine) -> None:
    cover = next(iter(library.covers.values()))
    whole = encode_jpeg(cover)
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        engine.identify(whole[: len(whole) // 3])
    with pytest.raises(InvalidImage, match="featureless"):
        engine.identify(encode_png(np.full((400, 400, 3), 128, np.uint8)))
    with pytest.raises(InvalidImage, match="both sides"):
        engine.identify(encode_png(np.zeros((8, 300, 3), np.uint8)))


def test_huge_image_refused_before_decoding(library: Library) -> None:
    config = make_config(library.root, **{"limits.max_pixels": 1_000_000})
    engine = Engine(config)
    big = encode_png(np.zeros((1200, 1200, 3), np.uint8))
    with pytest.raises(ImageTooLarge, match="pixels"):
        engine.identify(big)


def test_add_update_delete_and_reload(library: Library, tmp_path) -> None:
    config = make_config(tmp_path)
    engine = Engine(config)
    library.seed_catalog(engine)
    items = library.items()
    first = engine.ingest(items[:-1])
    assert {o.status for o in first} == {"added"}
    assert {o.status for o in engine.ingest(items[:-1])} == {"unchanged"}  # idempotent by content
    last = items[-1]
    assert [o.status for o in engine.ingest([last])] == ["added"]
    photo, _ = _photo(library, [last.source], 41, scale=(0.5, 0.6), glare=0.0, occlusion=0.0)
    assert _bands(engine.identify(photo))[:1] == [last.band_id]

    reloaded = Engine(config)  # a fresh process would see the same
    assert len(reloaded.index) == len(items)
    assert _bands(reloaded.identify(photo))[:1] == [last.band_id]

    reference_id = next(o.reference_id for o in reloaded.ingest([last]))
    reloaded.delete_reference(reference_id)
    assert reloaded.identify(photo).objects == []
    assert Engine(config).identify(photo).objects == []
    with pytest.raises(NotFound):
        reloaded.delete_reference(reference_id)

    # Re-adding after a delete brings it back.
    assert [o.status for o in reloaded.ingest([last])] == ["added"]
    assert _bands(Engine(config).identify(photo))[:1] == [last.band_id]


def test_ingest_goes_on_after_bad_files(library: Library, tmp_path) -> None:
    engine = Engine(make_config(tmp_path))
    library.seed_catalog(engine)
    good = library.items()[:4]
    bad = [
        IngestItem("empty.jpg", "album_cover", "x", data=b""),
        IngestItem("text.jpg", "album_cover", "x", data=b"not an image at all"),
        IngestItem(str(tmp_path / "missing.jpg"), "album_cover", "x"),
        IngestItem("flat.png", "logo", "x", data=encode_png(np.full((300, 300, 3), 200, np.uint8))),
    ]
    outcomes = engine.ingest([bad[0], *good[:2], bad[1], bad[2], *good[2:], bad[3]])
    statuses = {o.source: o.status for o in outcomes}
    assert [statuses[b.source] for b in bad] == ["failed"] * 4
    assert all(statuses[g.source] == "added" for g in good)
    messages = [o.message for o in outcomes if o.status == "failed"]
    assert all(m and "\n" not in m for m in messages)
    assert len(Engine(engine.config).index) == 4


def test_regions_index_only_the_box(library: Library, tmp_path) -> None:
    """A merch photo with the logo boxed: only the box is indexed, the rest of the photo is not."""
    rng = np.random.default_rng(5)
    logo_name = sorted(library.logos)[1]
    canvas = synth.draw_background(rng, (900, 700))
    other_cover = library.covers[sorted(library.covers)[0]]
    canvas[50:650, 0:600] = other_cover  # something else in the photo, outside the box
    logo = library.logos[logo_name]
    h, w = logo.shape[:2]
    canvas[500 : 500 + h // 2, 600 - 0 : 600 + w // 2] = logo[::2, ::2][:, :300]
    box = (600.0, 500.0, 900.0, 500.0 + h // 2)
    engine = Engine(make_config(tmp_path))
    library.seed_catalog(engine)
    engine.catalog.upsert_band(Band(band_id="band-a", name="Band A"))
    items = [
        IngestItem("merch.jpg", "logo", "band-a", data=encode_jpeg(canvas, 95), regions=(box,)),
        *library.items()[:3],
    ]
    assert {o.status for o in engine.ingest(items)} == {"added"}
    photo_of_cover, _ = _photo(library, [sorted(library.covers)[0]], 51, scale=(0.5, 0.6), glare=0.0, occlusion=0.0)
    assert "band-a" not in _bands(engine.identify(photo_of_cover))


def test_reserve_is_searched_only_when_nothing_verifies(library: Library) -> None:
    """With nothing in the photo, round 1 walks on past verify_top into the reserve (verify_max);
    sharded search can switch that off and ask for the reserve in a second pass."""
    import dataclasses

    from kyb.search import search

    engine = Engine(library.config)
    config = dataclasses.replace(engine.config.search, verify_top=4, verify_max=10, patience=2)
    rng = np.random.default_rng(77)
    decoded = engine.decode_query(encode_jpeg(synth.draw_background(rng)))
    query = engine.encoder.encode(decoded)
    size = (decoded.width, decoded.height)
    found, order = search(query, size, engine.index, config)
    assert found == [] and 4 < len(order) <= 10
    found, order = search(query, size, engine.index, config, reserve=False)
    assert found == [] and len(order) <= 4
    _, rest = search(query, size, engine.index, config, exclude=frozenset(order), max_candidates=6)
    assert not set(rest) & set(order) and len(rest) <= 6


def test_first_look_rejects_strangers_cheaply_and_keeps_every_match(library: Library, monkeypatch) -> None:
    """verify.worth_verifying: the same objects and inliers as full verification of every candidate,
    with most candidates spared the full descriptor product. (This library's vocabulary has a few
    hundred words, so a stranger shares words with a third of the photo's features, and the rows the
    first looks compare are not much fewer than the full products they save; with real vocabularies,
    5-10%.)"""
    import dataclasses

    import kyb.verify

    full_rows: list[int] = []
    first_look_rows: list[int] = []
    in_first_look = [False]
    real_match, real_worth = kyb.verify.match_descriptors, kyb.verify.worth_verifying

    def counting(query: Any, reference: np.ndarray, ratio: float, rows: np.ndarray | None = None) -> Any:
        n = query.xy.shape[0] if rows is None else rows.size
        (first_look_rows if in_first_look[0] else full_rows).append(n)
        return real_match(query, reference, ratio, rows)

    def first_look(*args: Any, **kwargs: Any) -> bool:
        in_first_look[0] = True
        try:
            return real_worth(*args, **kwargs)
        finally:
            in_first_look[0] = False

    monkeypatch.setattr(kyb.verify, "match_descriptors", counting)
    monkeypatch.setattr(kyb.verify, "worth_verifying", first_look)
    names = sorted(library.covers)[:2] + sorted(library.logos)[:1]
    data, _ = _photo(library, names, 61, scale=(0.3, 0.36), perspective=0.08, glare=0.0, occlusion=0.0)
    answers, full = [], []
    for prefilter in (0, 6):
        search_config = dataclasses.replace(library.config.search, prefilter_inliers=prefilter)
        with Engine(library.config.replace(search=search_config)) as engine:
            full_rows.clear()
            first_look_rows.clear()
            result = engine.identify(data)
        answers.append(sorted((o.best.reference_id, o.best.inliers) for o in result.objects))
        full.append(len(full_rows))
        looked = len(first_look_rows)
    assert len(answers[0]) >= 2 and answers[1] == answers[0]
    # The candidates get a first look; only the few that pass it get the full product.
    assert looked >= full[1] and full[1] <= 0.6 * full[0], (looked, full)


def test_the_whole_sleeve_names_an_object_over_its_cropped_artwork(library: Library, tmp_path) -> None:
    """A catalog holding a sleeve and, as another reference, its artwork alone (the sleeve is the
    artwork in a plain frame, so both verify with the same inliers): a photo of the sleeve is named by
    the sleeve, the artwork filling a photo by the artwork (engine.prefer_complete)."""
    import cv2

    name = sorted(library.covers)[1]
    artwork = library.covers[name]
    margin = artwork.shape[0] // 6
    sleeve = cv2.copyMakeBorder(artwork, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=(40, 40, 40))
    engine = Engine(make_config(tmp_path))
    library.seed_catalog(engine)
    band, album = library.band_of[name], library.album_of[name]
    items = [
        IngestItem("sleeve.jpg", "album_cover", band, album, data=encode_jpeg(sleeve, 95)),
        IngestItem("artwork.jpg", "album_cover", band, album, data=encode_jpeg(artwork, 95)),
        *[i for i in library.items() if i.source != name][:4],
    ]
    ids = {o.source: o.reference_id for o in engine.ingest(items)}
    rng = np.random.default_rng(71)
    style = synth.SceneStyle(scale=(0.55, 0.6), perspective=0.05, glare=0.0, occlusion=0.0)
    sleeve_photo, _ = synth.compose_scene([sleeve], rng, size=(1024, 768), style=style,
                                          background=synth.draw_background(rng))  # fmt: skip
    h, w = artwork.shape[:2]  # the artwork alone, filling the photo
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    frame = np.float32([[8, 6], [1016, 10], [1012, 760], [6, 764]])
    artwork_photo = cv2.warpPerspective(artwork, cv2.getPerspectiveTransform(corners, frame), (1024, 768))
    for photo, expected in ((sleeve_photo, "sleeve.jpg"), (artwork_photo, "artwork.jpg")):
        objects = engine.identify(encode_jpeg(photo, 90)).objects
        assert len(objects) == 1
        assert objects[0].best.reference_id == ids[expected], expected
    engine.close()


def test_prefer_complete_rules() -> None:
    """An alternative names the object only with nearly the best's inliers, nesting with the best's
    outline and in the photo: the largest such, or the one in view when the best runs off it."""
    from kyb.search import FoundObject, prefer_complete

    def square(x: float, y: float, side: float) -> np.ndarray:
        return np.float32([[x, y], [x + side, y], [x + side, y + side], [x, y + side]])

    def found(best: np.ndarray, other: np.ndarray, inliers: int) -> FoundObject:
        make = lambda key, outline, n: Verification(  # noqa: E731
            key, n, n, np.eye(3), outline, np.arange(n), 0.5, n / (n + 10)
        )
        return FoundObject(make("best", best, 100), [make("other", other, inliers)])

    crop, whole = square(300, 200, 200), square(250, 150, 300)
    cases = [
        (found(crop, whole, 90), "other"),  # encloses it, nearly as many inliers, in the photo
        (found(crop, whole, 60), "best"),  # too few inliers
        (found(crop, square(600, 150, 300), 95), "best"),  # larger but elsewhere
        (found(square(10, 10, 700), square(-100, -100, 900), 99), "best"),  # runs off the photo
        (found(square(-100, -100, 900), square(10, 10, 700), 95), "other"),  # the best runs off, it does not
    ]
    for item, expected in cases:
        prefer_complete(item, (1024, 768))
        assert item.verification.reference_id == expected
        assert len(item.alternatives) == 1


class _ScriptedSource:
    """A CandidateSource whose shortlists and verifications are scripted: counts what gets verified."""

    def __init__(self, found: Verification, rounds: list[list[str]]) -> None:
        self.found, self.rounds, self.verified = found, rounds, []

    def shortlist(self, rows: np.ndarray | None, exclude: set[str], limit: int) -> list[str]:
        return [key for key in self.rounds.pop(0) if key not in exclude][:limit] if self.rounds else []

    def verify(self, keys: Sequence[str], rows: np.ndarray, *, sure: int = 0) -> Iterator[Verification | None]:
        for key in keys:
            self.verified.append(key)
            yield self.found if key == self.found.reference_id else None


def _left_half_cover() -> tuple[np.ndarray, Verification]:
    """400 photo features and a verified "cover" over the left half (round 2 still has features)."""
    xy = np.random.default_rng(0).uniform(0, 1000, (400, 2)).astype(np.float32)
    outline = np.array([[0, 0], [500, 0], [500, 1000], [0, 1000]], dtype=np.float32)
    inside = np.flatnonzero(xy[:, 0] < 500)
    return xy, Verification("cover", 50, 60, np.eye(3), outline, inside[:50], 0.5, 0.8)


def test_round_one_stops_after_a_run_of_misses_and_later_rounds_verify_their_short_list() -> None:
    """After the first object, round 1 ends after `patience` misses in a row; round 2 verifies its
    short list (max(8, verify_top // 4)) whole, however many of it miss, and no more."""
    config = SearchConfig()
    xy, found = _left_half_cover()
    strangers = [f"stranger-{i}" for i in range(40)]
    source = _ScriptedSource(found, [["cover", *strangers[:20]], strangers[20:]])
    objects, _ = run_search(source, xy, config)
    assert [o.verification.reference_id for o in objects] == ["cover"]
    first_round = 1 + config.patience  # the cover, then a run of misses ends round 1
    assert len(source.verified) == first_round + max(8, config.verify_top // 4)


def test_a_further_object_behind_a_run_of_strangers_is_found() -> None:
    """Round 2's shortlist ranks a second cover (right half) behind more strangers than `patience`:
    it is still verified and returned."""
    config = SearchConfig()
    xy, left = _left_half_cover()
    right_rows = np.flatnonzero(xy[:, 0] >= 500)[:40]
    outline = np.array([[500, 0], [1000, 0], [1000, 1000], [500, 1000]], dtype=np.float32)
    right = Verification("second", 40, 50, np.eye(3), outline, right_rows, 0.5, 0.8)
    strangers = [f"stranger-{i}" for i in range(40)]

    class TwoCovers(_ScriptedSource):
        def verify(self, keys: Sequence[str], rows: np.ndarray, *, sure: int = 0) -> Iterator[Verification | None]:
            for key in keys:
                self.verified.append(key)
                yield {"cover": left, "second": right}.get(key)

    late = config.patience + 1  # past one run of misses, within the short list
    assert late < max(8, config.verify_top // 4)
    source = TwoCovers(left, [["cover", *strangers[:20]], [*strangers[20 : 20 + late], "second"]])
    objects, _ = run_search(source, xy, config)
    assert [o.verification.reference_id for o in objects] == ["cover", "second"]


class _RankedSource(_ScriptedSource):
    """One fixed ranking, cut at each request's limit; records the limits asked for."""

    def __init__(self, found: Verification, ranking: list[str]) -> None:
        super().__init__(found, [])
        self.ranking, self.limits = ranking, []

    def shortlist(self, rows: np.ndarray | None, exclude: set[str], limit: int) -> list[str]:
        self.limits.append(limit)
        return [key for key in self.ranking if key not in exclude][:limit]


def test_the_reserve_is_fetched_only_when_the_first_shortlist_verifies_nothing() -> None:
    """Round 1 asks for verify_top candidates; only when none verifies does it fetch the deeper
    verify_max shortlist and go on where it stopped (nothing verified twice)."""
    config = SearchConfig()
    xy, found = _left_half_cover()
    strangers = [f"stranger-{i}" for i in range(500)]

    near = _RankedSource(found, ["cover", *strangers])
    objects, _ = run_search(near, xy, config)
    assert [o.verification.reference_id for o in objects] == ["cover"]
    assert near.limits[0] == config.verify_top and config.verify_max not in near.limits

    deep_rank = config.verify_top + 50
    deep = _RankedSource(found, [*strangers[:deep_rank], "cover", *strangers[deep_rank:]])
    objects, order = run_search(deep, xy, config)
    assert [o.verification.reference_id for o in objects] == ["cover"]
    assert deep.limits[:2] == [config.verify_top, config.verify_max]
    assert deep.verified[: deep_rank + 1] == [*strangers[:deep_rank], "cover"]
    assert len(deep.verified) == len(set(deep.verified))  # the deeper list went on, it did not start over
    assert order[: deep_rank + 1] == deep.verified[: deep_rank + 1]

    nothing = _RankedSource(found, strangers)
    objects, order = run_search(nothing, xy, config)
    assert objects == [] and nothing.verified == strangers[: config.verify_max] == order


def test_verify_ahead_yields_every_answer_in_order_and_stops_with_its_caller() -> None:
    """kyb.search.verify_ahead: the first SERIAL_LOOKS keys in the caller's thread, the rest on pool
    threads, yielded in key order however long each takes; a caller that stops early leaves at most
    `threads` tasks running, and the tasks not started are never run; an error reaches the caller."""
    import threading
    import time

    from kyb.index import search_pool
    from kyb.search import LOOKS_PER_TASK, SERIAL_LOOKS, verify_ahead

    caller = threading.get_ident()
    checked: dict[int, int] = {}
    lock = threading.Lock()

    def check(key: str) -> str:
        time.sleep(0.002 * (int(key) % 3))  # later keys often finish first
        with lock:
            checked[int(key)] = threading.get_ident()
        return f"answer-{key}"

    keys = [str(i) for i in range(60)]
    assert list(verify_ahead(check, keys, threads=2)) == [f"answer-{k}" for k in keys]
    assert all(checked[i] == caller for i in range(SERIAL_LOOKS))
    assert any(thread != caller for i, thread in checked.items() if i >= SERIAL_LOOKS)

    checked.clear()
    assert list(verify_ahead(check, keys, threads=1)) == [f"answer-{k}" for k in keys]
    assert set(checked.values()) == {caller}

    checked.clear()
    walk = verify_ahead(check, keys, threads=2)
    taken = [next(walk) for _ in range(SERIAL_LOOKS + 1)]
    walk.close()
    # Every task already running has finished once both pool workers are free at the same time.
    gate = threading.Barrier(2)
    for done in [search_pool(2).submit(gate.wait, 30) for _ in range(2)]:
        done.result(timeout=30)
    assert taken == [f"answer-{k}" for k in keys[: SERIAL_LOOKS + 1]]
    assert len(checked) <= SERIAL_LOOKS + (2 + 1) * LOOKS_PER_TASK < len(keys)

    # Once one verifies, the caller is about to stop: the rest is checked in its thread, in order.
    match = Verification("20", 30, 40, np.eye(3), np.zeros((4, 2), np.float32), np.arange(30), 0.5, 0.75)

    def finds_20(key: str) -> Any:
        check(key)
        return match if key == "20" else None

    checked.clear()
    answers = list(verify_ahead(finds_20, keys, threads=2))
    assert answers == [match if k == "20" else None for k in keys]
    in_flight = (2 + 1) * LOOKS_PER_TASK  # at most this many were handed out when "20" verified
    assert all(checked[i] == caller for i in range(20 + in_flight + LOOKS_PER_TASK, len(keys)))

    # Keys the caller is sure to take go to the workers from the first, one a task, and a match among
    # them takes none back: here "2" verifies and "3".."6" are still checked on the workers.
    def finds_2(key: str) -> Any:
        check(key)
        return match if key == "2" else None

    checked.clear()
    walk = verify_ahead(finds_2, keys, threads=2, sure=7)
    assert [next(walk) for _ in range(7)] == [match if k == "2" else None for k in keys[:7]]
    walk.close()
    assert all(checked[i] != caller for i in range(7))
    short = keys[:10]
    assert list(verify_ahead(check, short, threads=1, sure=10)) == [f"answer-{k}" for k in short]

    def failing(key: str) -> str:
        if key == "30":
            raise RuntimeError("reference 30 is unreadable")
        return key

    walk = verify_ahead(failing, keys, threads=2)
    with pytest.raises(RuntimeError, match="reference 30"):
        for _ in walk:
            pass


def test_a_search_gives_the_same_answer_on_one_or_two_verify_threads(library: Library) -> None:
    """search.verify_threads only changes when the answers are ready: the objects, inliers and the
    shortlist order are the same, for a photo of references and for one of nothing (which walks
    past SERIAL_LOOKS into the pool)."""
    import dataclasses

    from kyb.search import SERIAL_LOOKS, search

    names = sorted(library.covers)[:2] + sorted(library.logos)[:1]
    photos = [_photo(library, names, 62, glare=0.0, occlusion=0.0)[0]]
    photos.append(encode_jpeg(synth.draw_background(np.random.default_rng(78))))
    engines = [
        Engine(library.config.replace(search=dataclasses.replace(library.config.search, verify_threads=threads)))
        for threads in (1, 2)
    ]
    assert [engine.index.search_config.verify_threads for engine in engines] == [1, 2]  # what verifies
    answers: list[list[Any]] = []
    for data in photos:
        decoded = engines[0].decode_query(data)
        query, size = engines[0].encoder.encode(decoded), (decoded.width, decoded.height)
        answers.append([])
        for engine in engines:
            found, order = search(query, size, engine.index, engine.config.search)
            answers[-1].append(([(o.verification.reference_id, o.verification.inliers) for o in found], order))
    for engine in engines:
        engine.close()
    (references, _), (nothing, walk) = answers[0][0], answers[1][0]
    assert len(references) >= 2 and nothing == [] and len(walk) > SERIAL_LOOKS + 4
    assert answers[0][1] == answers[0][0] and answers[1][1] == answers[1][0]


def test_a_photo_keeps_its_near_words_for_the_first_look(library: Library, engine: Engine) -> None:
    """features.query_near_words: a photo's features carry their next-nearest words (within
    query_near_ratio of the nearest), a reference's do not; the first look then shares a superset of
    the rows the nearest word alone shares, and finds the same objects."""
    from kyb.imageio import decode_image
    from kyb.verify import QueryFeatures, _shared_word_rows

    names = sorted(library.covers)[:2]
    data, _ = _photo(library, names, 83, glare=0.0, occlusion=0.0)
    decoded = decode_image(data, library.config.limits)
    photo = engine.encoder.encode(decoded)
    reference = engine.encoder.encode(decoded, reference=True)
    assert reference.near_words is None
    assert photo.near_words is not None and photo.near_words.shape == (len(photo), 2)
    assert np.array_equal(photo.near_words[:, 0], photo.words)
    codebook = engine.index.codebook
    projected = codebook.project(np.sqrt(np.full((5, 128), 1 / 128, np.float32)))
    assert np.array_equal(
        codebook.assign(projected, 3, within=1.0), np.repeat(codebook.assign(projected)[:, None], 3, 1)
    )
    assert (np.diff(np.sort(codebook.assign(projected, 3), axis=1), axis=1) > 0).all()  # three distinct words
    descriptors = codebook.dequantize(photo.descriptors)
    nearest = QueryFeatures.build(photo.xy, descriptors, (decoded.width, decoded.height), photo.words)
    near = QueryFeatures.build(photo.xy, descriptors, (decoded.width, decoded.height), photo.near_words)
    grew = 0
    for key in engine.index.reference_ids():
        words = engine.index.features(key).words
        one, two = _shared_word_rows(nearest, words, None), _shared_word_rows(near, words, None)
        assert set(one) <= set(two)
        grew += two.size > one.size
    assert grew > 0
    result = engine.identify(data)
    assert sorted(_bands(result)) == sorted(library.band_of[n] for n in names)


@pytest.mark.parametrize("near", [1, 2, 3])
def test_the_first_look_takes_exactly_the_features_that_share_a_word(near: int) -> None:
    """verify._shared_word_rows, feature by feature against its definition: a photo feature is taken
    when any of its words is one of the reference's, among the given rows (ascending) or all."""
    from kyb.verify import QueryFeatures, _shared_word_rows

    rng = np.random.default_rng(near)
    for trial in range(40):
        n = int(rng.integers(0, 400))
        words = rng.integers(0, 300, (n, near)) if near > 1 else rng.integers(0, 300, n)
        photo = QueryFeatures.build(
            rng.random((n, 2)).astype(np.float32), rng.random((n, 8)).astype(np.float32), (64, 64), words
        )
        reference_words = rng.integers(0, 350, int(rng.integers(0, 60)))  # may exceed the photo's words
        rows = None if trial % 2 else np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False))
        held = set(reference_words.tolist())
        expected = [i for i in (range(n) if rows is None else rows) if held & set(np.atleast_1d(words[i]).tolist())]
        assert _shared_word_rows(photo, reference_words, rows).tolist() == expected


def test_a_photo_is_assigned_its_words_at_features_query_assign_ef(library: Library, engine: Engine) -> None:
    """features.query_assign_ef is the hnswlib depth for a photo's words only: deeper finds more of
    the exact nearest words; a reference's words do not move with it; it is part of the encoder's
    version, so a cached photo encoding made at another depth is not reused."""
    from dataclasses import replace

    from kyb.codebook import _nearest
    from kyb.encoder import Encoder
    from kyb.imageio import decode_image

    codebook = engine.index.codebook
    data, _ = _photo(library, sorted(library.covers)[:2], 84, glare=0.0, occlusion=0.0)
    decoded = decode_image(data, library.config.limits)
    features = replace(library.config.features, query_near_words=1, query_inverted_features=0)
    deep = Encoder(codebook, replace(features, query_assign_ef=512))
    shallow = Encoder(codebook, replace(features, query_assign_ef=4))
    assert deep.version != shallow.version

    extracted, region = deep.extract(decoded, None, reference=False)  # one extraction for every encoding
    exact = _nearest(codebook.words, codebook.project(extracted.descriptors), exact_below=codebook.n_words)
    deep_agrees = (deep.encode_features(extracted, region, photo=True).words == exact).mean()
    shallow_agrees = (shallow.encode_features(extracted, region, photo=True).words == exact).mean()
    assert deep_agrees > 0.99 and shallow_agrees < deep_agrees, (deep_agrees, shallow_agrees, codebook.n_words)
    as_reference = [encoder.encode_features(extracted, region).words for encoder in (deep, shallow)]
    assert np.array_equal(*as_reference)


def test_a_photo_gets_the_same_words_on_any_number_of_assignment_threads(library: Library, engine: Engine) -> None:
    """features.query_assign_threads only splits the photo's rows between hnswlib threads: the near
    words are identical on 1 and 4 threads, so it is no part of the encoder's version."""
    from dataclasses import replace

    from kyb.encoder import Encoder
    from kyb.imageio import decode_image

    data, _ = _photo(library, sorted(library.covers)[:3], 85, glare=0.0, occlusion=0.0)
    decoded = decode_image(data, library.config.limits)
    one = Encoder(engine.index.codebook, replace(library.config.features, query_assign_threads=1))
    four = Encoder(engine.index.codebook, replace(library.config.features, query_assign_threads=4))
    assert one.version == four.version
    extracted, region = one.extract(decoded, None, reference=False)
    words = [encoder.encode_features(extracted, region, photo=True).near_words for encoder in (one, four)]
    assert words[0] is not None and words[0].shape[0] > 500, words[0]
    assert np.array_equal(*words)


def test_warm_up_builds_the_graphs_a_photo_and_a_reference_use(engine: Engine) -> None:
    """Encoder.warm_up (what the encoder service runs before it reports SERVING): afterwards encoding
    a photo or a reference builds no further assignment graph."""
    from dataclasses import replace

    from kyb.codebook import REFERENCE_ASSIGN_EF
    from kyb.encoder import Encoder

    codebook = replace(engine.index.codebook)  # the same arrays, no graph built yet
    assert codebook._graphs == {}
    features = replace(engine.config.features, query_assign_ef=16)
    encoder = Encoder(codebook, features)
    encoder.warm_up()
    built = dict(codebook._graphs)
    assert set(built) == {16, REFERENCE_ASSIGN_EF}
    projected = codebook.project(np.full((3, 128), 1 / np.sqrt(128), np.float32))
    codebook.assign(projected, features.query_near_words, features.query_near_ratio, ef=features.query_assign_ef)
    codebook.assign(projected)
    assert codebook._graphs == built  # the same graph objects, nothing rebuilt


def test_find_duplicates_names_one_picture_stored_twice(library: Library, tmp_path) -> None:
    """kyb.duplicates.find_duplicates: a cover and its scan padded onto a white square (another reference,
    as a catalog can hold both) are one pair; the other covers and logos, drawn apart, are in none."""
    import shutil

    from kyb.duplicates import find_duplicates

    shutil.copytree(library.root, tmp_path / "lib")
    engine = Engine(make_config(tmp_path / "lib"))
    name = sorted(library.covers)[0]
    cover = library.covers[name]
    side = max(cover.shape[:2]) + 160
    padded = np.full((side, side, 3), 255, np.uint8)
    top, left = (side - cover.shape[0]) // 2, (side - cover.shape[1]) // 2
    padded[top : top + cover.shape[0], left : left + cover.shape[1]] = cover
    item = IngestItem("padded-scan.jpg", "album_cover", library.band_of[name], None, data=encode_jpeg(padded, 95))
    (outcome,) = engine.ingest([item])
    assert outcome.status == "added"
    original = next(r.reference_id for r in engine.catalog.list_references() if r.source == name)
    pairs = find_duplicates(engine.index, engine.config.search)
    assert [{p.first, p.second} for p in pairs] == [{original, outcome.reference_id}]
    assert pairs[0].share >= 0.25 and pairs[0].inliers >= engine.config.search.min_inliers
    assert find_duplicates(engine.index, engine.config.search, min_share=0.99) == []
    engine.close()
