"""The page in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright).

Photos of drawn covers are uploaded as a person would; each test keeps a screenshot under
``$KYB_SCREENSHOTS`` (default ``<tmp>/kyb-screenshots``) for CI artefacts, never in git. The
accessibility check injects axe-core (bundled by the axe-playwright-python package).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.services.conftest import Corpus, WebFront, start_stack, start_web

CHROMIUM = os.environ.get("KYB_CHROMIUM", "/usr/bin/chromium")
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
SHOTS = Path(os.environ.get("KYB_SCREENSHOTS") or Path(tempfile.gettempdir()) / "kyb-screenshots")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium and chromium-driver")
    driver: Playwright = sync_playwright().start()
    launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield launched
    launched.close()
    driver.stop()


def open_page(browser: Browser, url: str, viewport: dict[str, int] = PHONE) -> Page:
    context = browser.new_context(viewport=viewport, device_scale_factor=1, is_mobile=viewport is PHONE)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(url)
    return page


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def upload(page: Page, path: Path) -> None:
    page.set_input_files("#file", str(path))


def identify(page: Page) -> None:
    page.click("#search")
    expect(page.locator("#message")).to_contain_text("Found", timeout=30_000)


@pytest.fixture
def two_covers(corpus: Corpus, tmp_path: Path) -> Path:
    path = tmp_path / "two-covers.jpg"
    path.write_bytes(corpus.photo([0, 1], seed=3))
    return path


def test_two_covers_give_two_outlines_and_two_cards(browser: Browser, web_front: WebFront, two_covers: Path) -> None:
    page = open_page(browser, web_front.url)
    upload(page, two_covers)
    expect(page.locator("#picture")).to_be_visible()
    identify(page)
    outlines = page.locator("#overlay polygon")
    expect(outlines).to_have_count(2)
    # Each outline is the projected quadrilateral (4 corners), not a box drawn from two numbers.
    assert all(len(p.split()) == 4 for p in outlines.evaluate_all("ps => ps.map(p => p.getAttribute('points'))"))
    cards = page.locator("#cards > li")
    expect(cards).to_have_count(2)
    assert sorted(cards.locator("h3").all_inner_texts()) == ["Band 0", "Band 1"]
    expect(cards.first).to_contain_text("Black Metal")
    expect(page.locator("#overlay text")).to_have_count(2)
    assert page.evaluate("window.kybTimings.length") == 1
    shot(page, "phone-two-covers")
    page.set_viewport_size(DESKTOP)
    shot(page, "desktop-two-covers")
    page.context.close()


def test_crop_to_one_cover_gives_one(browser: Browser, web_front: WebFront, two_covers: Path) -> None:
    page = open_page(browser, web_front.url, DESKTOP)
    upload(page, two_covers)
    picture = page.locator("#picture")
    expect(picture).to_be_visible()
    box = picture.bounding_box()
    assert box is not None
    scale = box["width"] / 720  # the photo is 720 px wide; cover 0 is at about x 20..280, y 60..320
    page.mouse.move(box["x"] + 2 * scale, box["y"] + 35 * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + 200 * scale, box["y"] + 200 * scale, steps=5)
    page.mouse.move(box["x"] + 320 * scale, box["y"] + 350 * scale, steps=5)
    page.mouse.up()
    expect(page.locator("#crop-box")).to_be_visible()
    expect(page.locator("#search")).to_have_text("Identify in the box")
    shot(page, "desktop-crop")
    identify(page)
    expect(page.locator("#overlay polygon")).to_have_count(1)
    expect(page.locator("#cards > li")).to_have_count(1)
    expect(page.locator("#cards h3")).to_have_text("Band 0")
    page.context.close()


def test_a_file_that_is_not_a_photo_says_so(browser: Browser, web_front: WebFront, tmp_path: Path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("shopping list: strings, picks, earplugs\n")
    page = open_page(browser, web_front.url)
    upload(page, notes)
    message = page.locator("#message")
    expect(message).to_contain_text("not a photo Know Your Bands can read")
    expect(message).to_have_class("message error")
    expect(page.locator("#cards > li")).to_have_count(0)
    shot(page, "phone-bad-file")
    page.context.close()


def test_a_photo_with_no_band_says_so(browser: Browser, web_front: WebFront, corpus: Corpus, tmp_path: Path) -> None:
    from tests.services.conftest import compose_photo, draw_cover, encode

    empty = tmp_path / "unknown.png"
    empty.write_bytes(encode(compose_photo([draw_cover(999)], seed=1)))
    page = open_page(browser, web_front.url)
    upload(page, empty)
    page.click("#search")
    expect(page.locator("#message")).to_contain_text("No band found")
    expect(page.locator("#overlay polygon")).to_have_count(0)
    page.context.close()


@pytest.mark.timeout(60)
def test_gateway_stopped_shows_the_down_message(
    browser: Browser, corpus: Corpus, tmp_path: Path, two_covers: Path
) -> None:
    stack, channel = start_stack(corpus, tmp_path, shards=1, ingest=False)
    # The client waits for a restarting gateway up to the front's deadline: keep it short here.
    server = start_web(stack.config, f"127.0.0.1:{stack.gateway_port}", deadline_s=1.0)
    try:
        page = open_page(browser, f"http://127.0.0.1:{server.port}")
        upload(page, two_covers)
        channel.close()
        stack.stop()
        page.click("#search")
        expect(page.locator("#message")).to_contain_text("The search service is down")
        expect(page.locator("#search")).to_be_enabled()
        shot(page, "phone-gateway-down")
        page.context.close()
    finally:
        server.stop()
        stack.stop()


def test_band_search_box_shows_the_matching_bands(browser: Browser, web_front: WebFront) -> None:
    page = open_page(browser, web_front.url)
    page.fill("#band-query", "band 4")
    page.click("#band-search button")
    cards = page.locator("#band-cards > li")
    expect(page.locator("#message")).to_contain_text("found for “band 4”")
    expect(cards.first.locator("h3")).to_have_text("Band 4")  # the exact name first
    expect(cards.first).to_contain_text("Black Metal")
    page.fill("#band-query", "zzzz no such band")
    page.press("#band-query", "Enter")
    expect(page.locator("#message")).to_contain_text("No band found")
    expect(page.locator("#band-results")).to_be_hidden()
    shot(page, "phone-band-search")
    page.context.close()


def test_no_serious_accessibility_violations(browser: Browser, web_front: WebFront, two_covers: Path) -> None:
    axe = Axe()
    for viewport in (PHONE, DESKTOP):
        page = open_page(browser, web_front.url, viewport)
        states = {"empty": axe.run(page)}
        upload(page, two_covers)
        identify(page)
        states["answered"] = axe.run(page)
        for state, results in states.items():
            serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
            assert not serious, f"{state} at {viewport}: " + "; ".join(
                f"{v['id']}: {v['help']} ({len(v['nodes'])} nodes)" for v in serious
            )
        page.context.close()


def test_token_is_asked_for_then_used(browser: Browser, web_front: WebFront, two_covers: Path) -> None:
    config = web_front.stack.config
    guarded = config.replace(rpc=dataclasses.replace(config.rpc, tokens=("s3cret",)))
    server = start_web(guarded, web_front.gateway_address)
    try:
        page = open_page(browser, f"http://127.0.0.1:{server.port}")
        upload(page, two_covers)
        page.click("#search")
        expect(page.locator("#message")).to_contain_text("needs an access token")
        expect(page.locator("#token-form")).to_be_visible()
        page.fill("#token", "s3cret")
        page.click("#token-form button")
        expect(page.locator("#message")).to_contain_text("Found 2 objects")
        expect(page.locator("#token-form")).to_be_hidden()
        page.context.close()
    finally:
        server.stop()


def test_band_search_filters_and_a_bad_filter(browser: Browser, web_front: WebFront) -> None:
    page = open_page(browser, web_front.url)
    page.click("text=Filters")
    page.fill("#band-formed", "1991..1991")
    page.fill("#band-query", "band")
    page.click("#band-search button[type=submit]")
    cards = page.locator("#band-cards > li")
    expect(cards).to_have_count(1)
    expect(cards.first.locator("h3")).to_have_text("Band 1")
    # No band vectors in this catalog: the page says the search was by name only.
    expect(page.locator("#message")).to_contain_text("searching names only")
    shot(page, "phone-band-search-filters")
    page.fill("#band-formed", "nineties")
    page.click("#band-search button[type=submit]")
    expect(page.locator("#message")).to_contain_text("bad year range")
    expect(page.locator("#message")).to_have_class("message error")
    page.context.close()
