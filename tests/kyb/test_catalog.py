"""Tests for kyb.catalog: the backend interface (parametrised over backends) and the catalog file parsers.

Every input file is written into tmp_path by the test itself; the scraped tables in /work/shared are
third-party data and are never read here. Each messy pattern of those tables is reproduced in a few rows.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import psycopg2
import psycopg2.sql
import pytest

from kyb.catalog import (
    Album,
    Band,
    Catalog,
    CatalogError,
    CatalogUnavailable,
    ParsedCatalog,
    PostgresCatalog,
    ReferenceEntry,
    ReferenceImage,
    RowError,
    SQLiteCatalog,
    import_catalog,
    normalize_name,
    open_catalog,
    parse_catalog_file,
    validate_box,
)
from tests.conftest import PG_SERVER, scratch_database

SHA_A = hashlib.sha256(b"image a").hexdigest()
SHA_B = hashlib.sha256(b"image b").hexdigest()


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh, migrated Postgres database for this test session, dropped at the end."""
    with scratch_database() as url:
        with open_catalog(url):
            pass
        yield url


def _open_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Catalog:
    if kind == "sqlite":
        return open_catalog(f"sqlite://{tmp_path / 'catalog.db'}")
    if kind == "postgres":
        cat = open_catalog(request.getfixturevalue("pg_url"))
        assert isinstance(cat, PostgresCatalog)
        cat.truncate()
        return cat
    raise AssertionError(f"unknown backend {kind}")


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    """A migrated, empty catalog of each backend (Postgres: the session database, truncated)."""
    cat = _open_backend(request.param, request, tmp_path)
    try:
        yield cat
    finally:
        cat.close()


def _band(band_id: str = "b1", name: str = "Motörhead", **extra: object) -> Band:
    return Band(band_id=band_id, name=name, **extra)  # type: ignore[arg-type]


def _ref(
    reference_id: str,
    sha256: str = SHA_A,
    *,
    kind: str = "logo",
    band_id: str | None = "b1",
    album_id: str | None = None,
    created_at: float = 1000.0,
) -> ReferenceImage:
    return ReferenceImage(
        reference_id=reference_id,
        sha256=sha256,
        kind=kind,
        band_id=band_id,
        album_id=album_id,
        source=f"/data/{reference_id}.jpg",
        width=640,
        height=480,
        size_bytes=12345,
        regions=((10, 20, 300, 200),),
        created_at=created_at,
    )


def _write(path: Path, text: str, *, encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


# -- model ---------------------------------------------------------------------------------------------


def test_band_to_dict_is_json_ready_and_round_trips() -> None:
    band = _band(themes=["War", "Death"], members=("Lemmy",), formed_in=1975)
    data = band.to_dict()
    assert data["themes"] == ["War", "Death"] and data["members"] == ["Lemmy"]
    json.dumps(data)
    assert Band.from_dict(data) == band
    assert isinstance(band.themes, tuple)


def test_reference_image_validates_and_serialises() -> None:
    ref = _ref("r1", SHA_A.upper())
    assert ref.sha256 == SHA_A
    assert ref.to_dict()["regions"] == [[10, 20, 300, 200]]
    assert ReferenceImage.from_dict(ref.to_dict()) == ref
    with pytest.raises(ValueError, match="kind"):
        _ref("r2", kind="poster")
    with pytest.raises(ValueError, match="sha256"):
        _ref("r3", "not-a-digest")
    with pytest.raises(ValueError, match="outside"):
        ReferenceImage("r4", SHA_A, "logo", "b1", None, "x", 100, 100, 1, ((0, 0, 101, 50),))


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((10, 10, 10, 20), "empty"),
        ((10, 10, 5, 20), "empty"),
        ((0, 0, 5), "4 values"),
        ((-1, 0, 5, 5), "negative"),
        ((0, 0, 5.5, 5), "integers"),
    ],
)
def test_validate_box_rejects_bad_boxes(box: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_box(box)


def test_row_error_str_and_normalize_name() -> None:
    assert str(RowError("bands.csv", 12, "missing name")) == "bands.csv:12: missing name"
    assert normalize_name("  MOTÖRHEAD ") == "motorhead"
    assert normalize_name("Dødheimsgard") == "dodheimsgard"
    assert normalize_name("Ветеран") == "ветеран"
    assert normalize_name("Viva\u200bDios") == "vivadios"


# -- backend: bands and albums --------------------------------------------------------------------------


def test_migrate_is_idempotent_and_recorded(catalog: Catalog) -> None:
    first = catalog.migrate()
    assert first >= 1
    assert catalog.migrate() == first
    assert catalog.count_bands() == 0


def test_migrations_are_loadable_package_data() -> None:
    folder = resources.files("kyb.catalog.migrations").joinpath("sqlite")
    sql = folder.joinpath("0001_initial.sql").read_text(encoding="utf-8")
    assert "CREATE TABLE bands" in sql


def test_band_round_trip_and_upsert_idempotent(catalog: Catalog) -> None:
    band = _band(
        country="United Kingdom",
        location="London",
        status="Split-up",
        formed_in=1975,
        genre="Heavy Metal",
        themes=("War", "Rock 'n' roll"),
        label="Bronze",
        years_active="1975-2015",
        members=("Lemmy",),
        similar_artists=("Tank",),
        links=("https://example.org/motorhead",),
        logo_url="https://example.org/logo.png",
    )
    catalog.upsert_band(band)
    catalog.upsert_band(band)
    assert catalog.count_bands() == 1
    assert catalog.get_band("b1") == band
    assert catalog.get_band("missing") is None

    renamed = Band(band_id="b1", name="Head Cat")
    assert catalog.upsert_bands([renamed]) == 1
    assert catalog.get_band("b1") == renamed
    assert catalog.find_bands("motorhead") == []
    assert [b.band_id for b in catalog.find_bands("head cat")] == ["b1"]


def test_find_bands_ignores_case_and_accents(catalog: Catalog) -> None:
    catalog.upsert_bands(
        [
            _band("b1", "Motörhead"),
            _band("b2", "Ветеран"),
            _band("b3", "Motorhead Tribute"),
            _band("b4", "The Motörhead Family"),
            _band("b5", "Queensrÿche"),
            _band("b6", "100% Death"),
        ]
    )
    assert [b.band_id for b in catalog.find_bands("motorhead")] == ["b1", "b3", "b4"]
    assert [b.band_id for b in catalog.find_bands("MOTÖRHEAD", limit=1)] == ["b1"]
    assert [b.band_id for b in catalog.find_bands("ветеран")] == ["b2"]
    assert [b.band_id for b in catalog.find_bands("ВЕТЕР")] == ["b2"]
    assert [b.band_id for b in catalog.find_bands("ryche")] == ["b5"]
    assert [b.band_id for b in catalog.find_bands("0%")] == ["b6"]  # no LIKE wildcard leaks
    assert catalog.find_bands("   ") == []


def test_album_round_trip_and_listing(catalog: Catalog) -> None:
    catalog.upsert_band(_band())
    albums = [
        Album("a2", "b1", "Ace of Spades", 1980),
        Album("a1", "b1", "Overkill", 1979),
        Album("a3", "b1", "Unknown Year", None),
    ]
    assert catalog.upsert_albums(albums) == 3
    catalog.upsert_album(albums[0])
    assert catalog.get_album("a2") == albums[0]
    assert catalog.get_album("zz") is None
    assert [a.album_id for a in catalog.list_albums("b1")] == ["a1", "a2", "a3"]
    assert catalog.list_albums("nobody") == []


def test_album_batch_with_unknown_band_is_atomic(catalog: Catalog) -> None:
    catalog.upsert_band(_band())
    with pytest.raises(CatalogError, match="ghost"):
        catalog.upsert_albums([Album("a1", "b1", "Good"), Album("a2", "ghost", "Bad")])
    assert catalog.list_albums("b1") == []


# -- backend: references and ingestion log --------------------------------------------------------------


def test_reference_add_get_list_delete_count(catalog: Catalog) -> None:
    catalog.upsert_bands([_band("b1"), _band("b2", "Ветеран")])
    catalog.upsert_album(Album("a1", "b2", "Album"))
    assert catalog.add_reference(_ref("r1", created_at=1.0)) is True
    assert catalog.add_reference(_ref("r1", created_at=1.0)) is False  # idempotent on reference_id
    catalog.add_reference(_ref("r2", SHA_B, kind="album_cover", band_id="b2", album_id="a1", created_at=2.0))
    catalog.add_reference(_ref("r3", SHA_A, band_id="b2", created_at=3.0))
    assert catalog.count_references() == 3
    assert catalog.get_reference("r2") == _ref(
        "r2", SHA_B, kind="album_cover", band_id="b2", album_id="a1", created_at=2.0
    )
    assert catalog.get_reference("nope") is None

    assert [r.reference_id for r in catalog.list_references()] == ["r1", "r2", "r3"]
    assert [r.reference_id for r in catalog.list_references(band_id="b2")] == ["r2", "r3"]
    assert [r.reference_id for r in catalog.list_references(kind="logo")] == ["r1", "r3"]
    assert [r.reference_id for r in catalog.list_references(band_id="b2", kind="logo")] == ["r3"]
    assert [r.reference_id for r in catalog.list_references(limit=1, offset=1)] == ["r2"]
    with pytest.raises(CatalogError):
        catalog.list_references(kind="poster")

    # sha256 lookup returns the oldest reference of that image
    by_sha = catalog.get_reference_by_sha256(SHA_A.upper())
    assert by_sha is not None and by_sha.reference_id == "r1"
    assert catalog.get_reference_by_sha256("0" * 64) is None

    assert catalog.delete_reference("r1") is True
    assert catalog.delete_reference("r1") is False
    assert catalog.count_references() == 2
    by_sha = catalog.get_reference_by_sha256(SHA_A)
    assert by_sha is not None and by_sha.reference_id == "r3"


def test_reference_to_unknown_band_is_refused(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="unknown band_id"):
        catalog.add_reference(_ref("r1", band_id="ghost"))
    assert catalog.count_references() == 0


def test_ingestion_log_newest_first(catalog: Catalog) -> None:
    catalog.record_ingestion("r1", SHA_A, "ok")
    catalog.record_ingestion(None, SHA_B, "failed", "cannot decode image")
    log = catalog.list_ingestions(10)
    assert [(e.reference_id, e.status, e.message) for e in log] == [
        (None, "failed", "cannot decode image"),
        ("r1", "ok", ""),
    ]
    assert catalog.list_ingestions(1)[0].sha256 == SHA_B
    with pytest.raises(CatalogError):
        catalog.record_ingestion("r1", SHA_A, "")


def test_concurrent_writers(catalog: Catalog) -> None:
    def write(worker: int) -> None:
        catalog.upsert_bands(_band(f"w{worker}-{i}", f"Band {worker} {i}") for i in range(25))
        for i in range(5):
            catalog.record_ingestion(None, None, "ok", f"{worker}-{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert catalog.count_bands() == 100
    assert len(catalog.list_ingestions(100)) == 20


def test_batch_repeating_an_id_keeps_the_last_row(catalog: Catalog) -> None:
    assert catalog.upsert_bands([_band("b1", "First"), _band("b2", "Other"), _band("b1", "Last")]) == 3
    assert catalog.count_bands() == 2
    band = catalog.get_band("b1")
    assert band is not None and band.name == "Last"
    catalog.upsert_albums([Album("a1", "b1", "One"), Album("a1", "b1", "Two")])
    assert [a.title for a in catalog.list_albums("b1")] == ["Two"]


def test_concurrent_overlapping_batches(catalog: Catalog) -> None:
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        ids = list(range(40)) if worker % 2 else list(reversed(range(40)))
        try:
            for _ in range(3):
                catalog.upsert_bands(_band(f"s{i}", f"Shared {i} {worker}") for i in ids)
        except BaseException as exc:  # collected, so a deadlock error fails the test instead of a thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert catalog.count_bands() == 40


# -- factory and lifecycle ------------------------------------------------------------------------------


def test_open_catalog_urls(tmp_path: Path) -> None:
    with open_catalog("sqlite://:memory:") as memory:
        assert isinstance(memory, SQLiteCatalog) and memory.count_bands() == 0
    with open_catalog(f"sqlite://{tmp_path}/a/b.db") as nested:
        nested.upsert_band(_band())
    assert (tmp_path / "a" / "b.db").exists()
    with open_catalog(tmp_path / "a" / "b.db") as bare:  # same file, plain path
        assert bare.get_band("b1") is not None
    with pytest.raises(CatalogError, match="scheme"):
        open_catalog("mysql://x")


def test_unmigrated_closed_and_unreachable(tmp_path: Path) -> None:
    raw = SQLiteCatalog(":memory:")
    with pytest.raises(CatalogError, match="migrate"):
        raw.count_bands()
    raw.close()
    raw.close()
    with pytest.raises(CatalogError, match="closed"):
        raw.count_bands()
    with pytest.raises(CatalogUnavailable):
        SQLiteCatalog(tmp_path)  # a folder, not a database file
    not_db = _write(tmp_path / "junk.db", "this is not a database" * 100)
    with pytest.raises(CatalogUnavailable):
        open_catalog(not_db)


# -- Postgres specifics ---------------------------------------------------------------------------------


def _schema_rows(url: str) -> list[tuple[int, str]]:
    with psycopg2.connect(url, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT version, name FROM schema_version ORDER BY version")
        rows = [(int(version), str(name)) for version, name in cur.fetchall()]
    conn.close()
    return rows


def test_postgres_open_catalog_urls(pg_url: str) -> None:
    with open_catalog(pg_url) as cat:
        assert isinstance(cat, PostgresCatalog)
        assert "password" not in repr(cat) and cat.where.endswith(pg_url.rpartition("/")[2])
    with open_catalog("postgres://" + pg_url.partition("://")[2], migrate=False) as short:
        assert isinstance(short, PostgresCatalog) and short.migrate() >= 1


def test_postgres_migrate_twice_and_concurrently() -> None:
    expected = [(1, "0001_initial.sql"), (2, "0002_band_vectors.sql")]
    with scratch_database() as url:
        barrier = threading.Barrier(4)
        versions: list[int] = []
        errors: list[BaseException] = []

        def migrate() -> None:
            try:
                with PostgresCatalog(url) as cat:
                    barrier.wait(timeout=10)
                    versions.append(cat.migrate())
            except BaseException as exc:
                errors.append(exc)

        script = "import sys; from kyb.catalog import open_catalog; open_catalog(sys.argv[1]).close()"
        procs = [subprocess.Popen([sys.executable, "-c", script, url]) for _ in range(2)]
        threads = [threading.Thread(target=migrate) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [proc.wait(timeout=60) for proc in procs] == [0, 0]
        assert errors == [] and versions == [2, 2, 2, 2]
        with PostgresCatalog(url) as cat:
            assert cat.migrate() == 2 and cat.migrate() == 2
        assert _schema_rows(url)[: len(expected)] == expected
        assert [version for version, _ in _schema_rows(url)] == [1, 2]


def test_postgres_fuzzy_search_finds_typos(pg_url: str) -> None:
    with open_catalog(pg_url) as cat:
        assert isinstance(cat, PostgresCatalog)
        cat.truncate()
        cat.upsert_bands(
            [_band("m1", "Mortuary"), _band("m2", "Mortuary Drape"), _band("m3", "Motörhead"), _band("m4", "Cynic")]
        )
        assert [b.band_id for b in cat.find_bands("morturay")][:1] == ["m1"]
        assert [b.band_id for b in cat.find_bands("MORTUARY")] == ["m1", "m2"]  # substring hits come first
        assert [b.band_id for b in cat.find_bands("mortuary", limit=1)] == ["m1"]
        assert "m4" not in [b.band_id for b in cat.find_bands("morturay")]


def test_postgres_stores_lists_as_jsonb(pg_url: str) -> None:
    with open_catalog(pg_url) as cat:
        assert isinstance(cat, PostgresCatalog)
        cat.truncate()
        cat.upsert_band(_band("j1", "Motörhead", themes=("War", "Speed")))
    with psycopg2.connect(pg_url, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT jsonb_typeof(themes), themes ->> 1, name_norm FROM bands WHERE band_id = %s", ("j1",))
        assert cur.fetchone() == ("array", "Speed", "motorhead")
    conn.close()


def test_postgres_unreachable_fails_fast_with_a_clear_message() -> None:
    started = time.monotonic()
    with pytest.raises(CatalogUnavailable) as closed_port:
        open_catalog("postgresql://postgres@127.0.0.1:1/x")
    assert time.monotonic() - started < 10
    message = str(closed_port.value)
    assert "\n" not in message and "127.0.0.1:1" in message and "refused" in message.lower()

    with pytest.raises(CatalogUnavailable, match="does not exist"):
        open_catalog(f"{PG_SERVER}/kyb_no_such_database_{secrets.token_hex(4)}")
    with pytest.raises(CatalogUnavailable, match="invalid dsn"):
        PostgresCatalog("this is = not a dsn =")


def test_postgres_closed_and_unmigrated() -> None:
    with scratch_database() as url:
        raw = PostgresCatalog(url)
        with pytest.raises(CatalogError, match="migrate"):
            raw.count_bands()
        raw.close()
        raw.close()
        with pytest.raises(CatalogError, match="closed"):
            raw.count_bands()


def test_postgres_reads_survive_a_dropped_connection(pg_url: str) -> None:
    with open_catalog(pg_url) as cat:
        assert isinstance(cat, PostgresCatalog)
        cat.truncate()
        cat.upsert_band(_band("k1", "Kreator"))
        with psycopg2.connect(pg_url, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'kyb-catalog' AND datname = current_database()"
            )
            assert cur.fetchone()[0] >= 1
        conn.close()
        band = cat.get_band("k1")  # the dead pooled connection is replaced, the read retried
        assert band is not None and band.name == "Kreator"
        cat.upsert_band(_band("k2", "Sodom"))
        assert cat.count_bands() == 2


def test_cli_catalog_import_into_postgres(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kyb.cli import main

    with open_catalog(pg_url) as cat:
        assert isinstance(cat, PostgresCatalog)
        cat.truncate()
    bands = _write(tmp_path / "bands.csv", "band_id,name,country\nc1,Mortuary,Argentina\nc2,Cynic,USA\n")
    argv = ["catalog", "import", str(bands), "--catalog", pg_url, "--index-dir", str(tmp_path / "index")]
    assert main(argv) == 0
    assert "2 bands" in capsys.readouterr().out
    with open_catalog(pg_url) as cat:
        assert [b.band_id for b in cat.find_bands("morturay")] == ["c1"]


# -- our JSON format ------------------------------------------------------------------------------------


def _json_catalog(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "logo.png").write_bytes(b"png")
    (tmp_path / "img" / "cover.jpg").write_bytes(b"jpg")
    doc = {
        "bands": [
            {"band_id": "b1", "name": "Motörhead", "formed_in": 1975, "themes": ["War"], "extra": "ignored"},
            {"band_id": "b2"},  # 2: missing name
            {"band_id": "b3", "name": "Ветеран", "formed_in": "1990"},  # 3: wrong type
            {"band_id": "b1", "name": "Motörhead (later)"},  # 4: duplicate id, wins
            "not an object",  # 5
        ],
        "albums": [
            {"album_id": "a1", "band_id": "b1", "title": "Overkill", "year": 1979},
            {"album_id": "a2", "band_id": "ghost", "title": "Orphan"},  # 2: unknown band (import)
            {"album_id": "a3", "band_id": "b1"},  # 3: missing title
        ],
        "references": [
            {"image": "img/logo.png", "kind": "logo", "band_id": "b1", "regions": [[0, 0, 10, 10]]},
            {"image": "img/logo.png", "kind": "poster", "band_id": "b1"},  # 2: bad kind
            {"image": "img/logo.png", "kind": "logo", "band_id": "b1", "regions": [[5, 5, 5, 9]]},  # 3
            {"image": "img/missing.png", "kind": "logo", "band_id": "b1"},  # 4: no file
            {"image": "img/cover.jpg", "kind": "logo", "band_id": "ghost"},  # 5: unknown band (import)
            {"image": str(tmp_path / "img" / "cover.jpg"), "kind": "album_cover", "album_id": "a1"},  # 6
        ],
    }
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def test_parse_json_reports_bad_rows_and_keeps_good_ones(tmp_path: Path) -> None:
    parsed = parse_catalog_file(_json_catalog(tmp_path))
    assert parsed.format == "kyb-json"
    assert [(b.band_id, b.name) for b in parsed.bands] == [("b1", "Motörhead (later)")]
    assert [a.album_id for a in parsed.albums] == ["a1", "a2"]
    errors = {(e.line, e.message.split(":")[0]) for e in parsed.errors}
    assert errors == {
        (2, "bands"),
        (3, "bands"),
        (4, "bands"),
        (5, "bands"),
        (3, "albums"),
        (2, "references"),
        (3, "references"),
        (4, "references"),
    }
    by_line = {(e.line, e.message.split(":")[0]): e.message for e in parsed.errors}
    assert "name" in by_line[(2, "bands")]
    assert "formed_in" in by_line[(3, "bands")]
    assert "duplicate band_id 'b1'" in by_line[(4, "bands")]
    assert "kind" in by_line[(2, "references")]
    assert "empty" in by_line[(3, "references")]
    assert "not found" in by_line[(4, "references")]
    logo = parsed.references[0]
    assert logo.image_path == str(tmp_path / "img" / "logo.png")
    assert logo.regions == ((0, 0, 10, 10),) and logo.line == 1


def test_import_json_checks_bands_against_file_and_catalog(catalog: Catalog, tmp_path: Path) -> None:
    report = import_catalog(catalog, _json_catalog(tmp_path))
    assert report.bands_upserted == 1 and report.albums_upserted == 1
    assert catalog.get_album("a1") is not None and catalog.get_album("a2") is None
    messages = {(e.line, e.message) for e in report.errors}
    assert (2, "album 'a2': unknown band_id 'ghost'") in messages
    assert (5, "reference: unknown band_id 'ghost'") in messages
    assert not report.ok
    assert [(r.line, r.band_id, r.kind) for r in report.references] == [
        (1, "b1", "logo"),
        (6, "b1", "album_cover"),
    ]

    # A second file may add albums to bands that only the catalog knows.
    more = tmp_path / "more.json"
    more.write_text(json.dumps({"albums": [{"album_id": "a9", "band_id": "b1", "title": "Bomber"}]}))
    assert import_catalog(catalog, more).albums_upserted == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "unknown JSON shape"),
        ('{"artists": []}', "unknown JSON shape"),
        ('{"bands": {"b1": {}}}', "must be a list"),
    ],
)
def test_unusable_json_raises(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog_file(_write(tmp_path / "bad.json", content))


def test_unusable_files_raise(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not found"):
        parse_catalog_file(tmp_path / "nope.csv")
    with pytest.raises(CatalogError, match="unknown CSV shape"):
        parse_catalog_file(_write(tmp_path / "x.csv", "foo,bar\n1,2\n"))
    with pytest.raises(CatalogError, match="empty"):
        parse_catalog_file(_write(tmp_path / "empty.csv", ""))
    (tmp_path / "pic.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(CatalogError):
        parse_catalog_file(tmp_path / "pic.csv")
    with pytest.raises(CatalogError):
        parse_catalog_file(tmp_path)  # a folder


# -- our CSV formats ------------------------------------------------------------------------------------


def test_our_csv_formats(catalog: Catalog, tmp_path: Path) -> None:
    bands = _write(
        tmp_path / "bands.csv",
        "band_id,name,country,formed_in,themes,members,unknown_column\n"
        'b1,"Motörhead",United Kingdom,1975,War| Speed,Lemmy|Phil,x\n'
        "b2,,Sweden,1990,,,\n"  # 3: missing name
        "b3,Opeth,Sweden,nineteen,,,\n"  # 4: bad year
        "b4,Ghost,Sweden,,,,\n",
    )
    parsed = parse_catalog_file(bands)
    assert parsed.format == "kyb-csv-bands"
    assert [(e.line, "name" in e.message or "formed_in" in e.message) for e in parsed.errors] == [
        (3, True),
        (4, True),
    ]
    first = parsed.bands[0]
    assert first.themes == ("War", "Speed") and first.members == ("Lemmy", "Phil") and first.formed_in == 1975
    assert parsed.bands[1].formed_in is None and parsed.bands[1].country == "Sweden"
    assert import_catalog(catalog, bands).bands_upserted == 2

    albums = _write(tmp_path / "albums.csv", "album_id,band_id,title,year\na1,b1,Overkill,1979\na2,b4,Opus,\n")
    assert import_catalog(catalog, albums).albums_upserted == 2
    assert catalog.get_album("a2") == Album("a2", "b4", "Opus", None)

    (tmp_path / "logo.png").write_bytes(b"png")
    refs = _write(
        tmp_path / "refs.csv",
        "image,kind,band_id,album_id,regions\n"
        "logo.png,logo,b1,,0 0 10 10;5 5 20 30\n"
        "logo.png,album_cover,,a1,\n"
        "logo.png,logo,b1,,0 0 0 10\n"  # 4: bad box
        "logo.png,logo,b1,,1 2 3\n",  # 5: 3 values
        newline="\r\n",
    )
    report = import_catalog(catalog, refs)
    assert [(r.kind, r.band_id, r.regions) for r in report.references] == [
        ("logo", "b1", ((0, 0, 10, 10), (5, 5, 20, 30))),
        ("album_cover", "b1", ()),  # band filled in from the album
    ]
    assert [e.line for e in report.errors] == [4, 5]


# -- the scraped Metal Archives tables ------------------------------------------------------------------

MA_BANDS = (
    "id,name,country,status,formed_in,genre,theme,active\n"
    "1,('M') Inc.,United States,Unknown,2009,Death Metal,N/A,2009-?\n"
    "2,6 Feet Under,Germany,Split-up,N/A,Death Metal,N/A,N/A\n"
    '3,"Sars ""The Attack!!""",Unknown,Active,N/A,Death Metal,Comedy| Gore,N/A\n'
    '4,Ветеран,Russia,Active,1995,"Experimental Rock| Death Metal (""Incarnation"")",'
    'War| Death,"2006-?| ?-2007 (as Splatter the Cadaver)"\n'
    "5,Broken,Chile,Active,in 1990,Death Metal,N/A,N/A\n"  # line 6: bad year
    "7,Mortuary,Argentina,Split-up,1989,Death Metal,N/A,1989-1995\n"
    "7,Mortuary,Chile,Active,1990,Death Metal,N/A,1990-present\n"  # line 8: duplicate id, later wins
    "6,Cynic,United States,Disputed,1987,Progressive Death Metal,Peace,1987-1994\n"
)
MA_ALBUMS = (
    "id,band,title,year\n"
    "1,1,Taste the Hate,2014\n"
    "2,4,Deception| Calculate What You Can't See,2005\n"
    "3,4,¡¡¡Viva Dios\u200b!\u200b!\u200b!,2010\n"
    "4,999,Orphan,2001\n"  # line 5: band not in the file nor the catalog
    "5,6,Focus,N/A\n"
    "6,6,Bad Year,199x\n"  # line 7
)


def test_metal_archives_bands_with_sibling_albums(catalog: Catalog, tmp_path: Path) -> None:
    bands_file = _write(tmp_path / "death_metal_bands.csv", MA_BANDS)
    _write(tmp_path / "death_metal_albums.csv", MA_ALBUMS)
    parsed = parse_catalog_file(bands_file)
    assert parsed.format == "metal-archives-bands"
    assert parsed.sources == ["death_metal_bands.csv", "death_metal_albums.csv"]
    bands = {b.band_id: b for b in parsed.bands}
    assert bands["ma-1"].name == "('M') Inc." and bands["ma-1"].years_active == "2009-?"
    na = bands["ma-2"]
    assert (na.formed_in, na.themes, na.years_active) == (None, (), None)
    sars = bands["ma-3"]
    assert sars.name == 'Sars "The Attack!!"' and sars.country == "Unknown" and sars.themes == ("Comedy", "Gore")
    veteran = bands["ma-4"]
    assert veteran.name == "Ветеран" and veteran.genre == 'Experimental Rock| Death Metal ("Incarnation")'
    assert veteran.years_active == "2006-?| ?-2007 (as Splatter the Cadaver)"
    assert bands["ma-7"].country == "Chile"  # later duplicate wins
    assert bands["ma-6"].status == "Disputed"
    assert "ma-5" not in bands

    albums = {a.album_id: a for a in parsed.albums}
    assert albums["ma-album-2"].title == "Deception| Calculate What You Can't See"  # not split on "|"
    assert albums["ma-album-3"].title == "¡¡¡Viva Dios!!!"  # zero-width spaces gone
    assert albums["ma-album-5"].year is None and albums["ma-album-5"].band_id == "ma-6"

    errors = [(e.source, e.line) for e in parsed.errors]
    assert errors == [
        ("death_metal_albums.csv", 7),
        ("death_metal_bands.csv", 6),
        ("death_metal_bands.csv", 8),
    ]

    report = catalog.import_parsed(parsed)
    assert report.bands_upserted == 6 and report.albums_upserted == 4
    assert ("death_metal_albums.csv", 5) in [(e.source, e.line) for e in report.errors]
    assert [b.band_id for b in catalog.find_bands("ветеран")] == ["ma-4"]
    assert [a.title for a in catalog.list_albums("ma-4")] == [
        "Deception| Calculate What You Can't See",
        "¡¡¡Viva Dios!!!",
    ]


def test_metal_archives_albums_file_alone(catalog: Catalog, tmp_path: Path) -> None:
    catalog.upsert_band(_band("ma-1", "('M') Inc."))
    albums = _write(tmp_path / "death_metal_albums.csv", MA_ALBUMS)
    report = import_catalog(catalog, albums)
    assert report.albums_upserted == 1
    assert {e.line for e in report.errors} == {3, 4, 5, 6, 7}  # bands 4/999/6 unknown, line 7 bad year
    assert catalog.list_albums("ma-1")[0].title == "Taste the Hate"


# -- the scraped metal_bands_2017 table -----------------------------------------------------------------

MB2017 = (
    ",band_name,fans,formed,origin,split,style\n"
    '0,Iron Maiden,4195,1975,United Kingdom,-,"New wave of british heavy,Heavy"\n'
    '1,Motörhead,2000,1975,"United Kingdom, USA",1975,Heavy\n'
    '2,Rustless,1,-,Italy,-,"Grunge ,Heavy"\n'
    "3,Enshine,5,2009,,-,Gothic doom\n"
    "4,Žrec,1,2004,Czech Republic,2018,Pagan folk\n"
    "5,Dead Band,3,1990,USA,1999,Thrash\n"
    "6,Bad Year,3,19xx,USA,-,Thrash\n"  # line 8: bad formed
    '7,Iron Maiden,4195,1975,United Kingdom,-,"New wave of british heavy,Heavy"\n'  # line 9: repeat
    '8,Motörhead,2000,1975,"United Kingdom, USA",1975,Heavy\n'  # line 10: repeat
)


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_metal_bands_2017(tmp_path: Path, encoding: str) -> None:
    path = _write(tmp_path / "metal_bands_2017.csv", MB2017, encoding=encoding, newline="\r\n")
    if encoding == "cp1252":
        raw = path.read_bytes()
        assert b"Mot\xf6rhead" in raw and b"\x8erec" in raw  # the original single-byte characters
    parsed = parse_catalog_file(path)
    assert parsed.format == "metal-bands-2017"
    bands = {b.band_id: b for b in parsed.bands}
    assert sorted(bands) == ["mb2017-0", "mb2017-1", "mb2017-2", "mb2017-3", "mb2017-4", "mb2017-5"]
    maiden = bands["mb2017-0"]
    assert (maiden.genre, maiden.status, maiden.years_active) == (
        "New wave of british heavy, Heavy",
        "Active",
        "1975-present",
    )
    motorhead = bands["mb2017-1"]
    assert motorhead.name == "Motörhead" and motorhead.country == "United Kingdom, USA"
    assert motorhead.status is None  # split == formed is a scrape bug, not a fact
    rustless = bands["mb2017-2"]
    assert rustless.formed_in is None and rustless.genre == "Grunge, Heavy"
    assert bands["mb2017-3"].country is None
    assert bands["mb2017-4"].name == "Žrec" and bands["mb2017-4"].status is None  # split 2018 > scrape year
    assert (bands["mb2017-5"].status, bands["mb2017-5"].years_active) == ("Split-up", "1990-1999")
    assert [(e.line, e.message.split(" ")[0]) for e in parsed.errors] == [
        (8, "formed"),
        (9, "duplicate"),
        (10, "duplicate"),
    ]
    assert "line 2" in parsed.errors[1].message and "line 3" in parsed.errors[2].message


def test_csv_row_with_wrong_field_count_and_blank_lines(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "metal_bands_2017.csv",
        ",band_name,fans,formed,origin,split,style\n\n0,Opeth,1,1990,Sweden,1990\n1,Ghost,1,2006,Sweden,-,Heavy\n",
    )
    parsed = parse_catalog_file(path)
    assert [e.line for e in parsed.errors] == [3]
    assert "expected 7 fields" in parsed.errors[0].message
    assert [b.name for b in parsed.bands] == ["Ghost"]


def test_import_parsed_accepts_hand_built_input(catalog: Catalog, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"x")
    parsed = ParsedCatalog(
        bands=[_band("b1")],
        albums=[Album("a1", "b1", "T")],
        references=[ReferenceEntry(str(image), "album_cover", "b2", "a1", (), 1, "hand")],
        sources=["hand"],
    )
    report = catalog.import_parsed(parsed)
    assert report.bands_upserted == 1 and report.albums_upserted == 1 and report.references == []
    assert report.errors == [RowError("hand", 1, "reference: album 'a1' belongs to band 'b1', not 'b2'")]
