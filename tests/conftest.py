"""Shared fixtures: a small engine over drawn references, built once per test session."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import psycopg2
import psycopg2.sql
import pytest

from kyb import synth
from kyb.config import EngineConfig, load_config
from kyb.engine import Engine, IngestItem

#: The Postgres server the tests use (``/<dbname>`` is appended); the project's setup script starts it.
PG_SERVER = os.environ.get("KYB_TEST_PG_SERVER", "postgresql://postgres@127.0.0.1:5432").rstrip("/")


@contextmanager
def scratch_database(prefix: str = "kyb_test") -> Iterator[str]:
    """Create an empty database ``<prefix>_<pid>_<random>``, yield its URL, drop it afterwards (FORCE).

    Fails (never skips) when the server cannot be reached: the Postgres paths must be tested.
    """
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        admin = psycopg2.connect(f"{PG_SERVER}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"Postgres not reachable at {PG_SERVER} (start it, or set KYB_TEST_PG_SERVER): {exc}")
    admin.autocommit = True
    identifier = psycopg2.sql.Identifier(name)
    try:
        with admin.cursor() as cur:
            cur.execute(psycopg2.sql.SQL("CREATE DATABASE {}").format(identifier))
        yield f"{PG_SERVER}/{name}"
    finally:
        admin.close()
        drop_database(f"{PG_SERVER}/{name}")


def drop_database(url: str) -> None:
    """Drop the database named by ``url`` now, closing its clients' connections (FORCE): a catalog
    that goes away for real, or a scratch database's clean-up."""
    server, name = url.rsplit("/", 1)
    admin = psycopg2.connect(f"{server}/postgres", connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg2.sql.Identifier(name))
            )
    finally:
        admin.close()


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


@dataclass
class Library:
    """Drawn references (BGR arrays) with their catalog ids, and the folder they are indexed in."""

    root: Path
    config: EngineConfig
    covers: dict[str, np.ndarray]  # reference source name -> image
    logos: dict[str, np.ndarray]
    band_of: dict[str, str]  # source name -> band id
    album_of: dict[str, str | None]
    bands: list[synth.SampleBand]

    def seed_catalog(self, engine: Engine) -> None:
        """Bands and albums of the library into ``engine``'s catalog (references need their band)."""
        from kyb.catalog import Album, Band

        engine.catalog.upsert_bands(Band.from_dict(b.to_band_dict()) for b in self.bands)
        engine.catalog.upsert_albums(
            Album(album_id=a.album_id, band_id=b.band_id, title=a.title, year=a.year)
            for b in self.bands
            for a in b.albums
        )

    def items(self) -> list[IngestItem]:
        out = []
        for name, image in {**self.covers, **self.logos}.items():
            kind = "logo" if name in self.logos else "album_cover"
            out.append(IngestItem(name, kind, self.band_of[name], self.album_of[name], data=encode_jpeg(image, 95)))
        return out


def make_config(root: Path, **overrides: object) -> EngineConfig:
    values = {"index_dir": str(root / "index"), "catalog_url": str(root / "catalog.db")}
    values.update({k: v for k, v in overrides.items()})
    return load_config(overrides=values)


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    root = tmp_path_factory.mktemp("library")
    rng = np.random.default_rng(1234)
    bands = synth.make_bands(6, seed=7, albums_per_band=(1, 2))
    covers, logos, band_of, album_of = {}, {}, {}, {}
    for band in bands:
        name = f"{band.band_id}-logo.jpg"
        logos[name] = synth.draw_logo(band.name, rng)
        band_of[name], album_of[name] = band.band_id, None
        for album in band.albums:
            name = f"{album.album_id}.jpg"
            covers[name] = synth.draw_album_cover(album.title, band.name, rng)
            band_of[name], album_of[name] = band.band_id, album.album_id
    lib = Library(root, make_config(root), covers, logos, band_of, album_of, bands)
    engine = Engine(lib.config)
    lib.seed_catalog(engine)
    outcomes = engine.ingest(lib.items())
    assert all(o.status == "added" for o in outcomes), outcomes
    engine.close()
    return lib


@pytest.fixture
def library_copy(library: Library, tmp_path: Path) -> EngineConfig:
    """The config of a private copy of the library's index folder and SQLite catalog."""
    shutil.copytree(library.config.index_dir, tmp_path / "index")
    shutil.copy2(library.config.catalog_url, tmp_path / "catalog.db")
    return make_config(tmp_path)


@pytest.fixture()
def engine(library: Library) -> Iterator[Engine]:
    eng = Engine(library.config)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def embedder() -> object:
    """The band search's sentence model (the [semantic] extra, which the test set-up installs)."""
    from kyb.bandsearch import load_embedder

    model, notice = load_embedder()
    if model is None:
        pytest.fail(f"the band search model is missing ({notice}); scripts/setup.sh installs it")
    return model
