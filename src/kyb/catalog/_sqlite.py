"""SQLite catalog backend (stdlib ``sqlite3``): one file, WAL mode, foreign keys on.

One connection shared by all threads (``check_same_thread=False``) and serialised by a re-entrant lock:
the catalog sees a few writes and cheap indexed reads, so a lock is simpler and safer than a connection
per thread. Transactions are explicit (``BEGIN IMMEDIATE`` ... ``COMMIT``, autocommit otherwise), so a
batch is all or nothing and a writer takes the write lock up front instead of failing half-way.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from ._base import Catalog, album_params, reference_from_row, reference_params
from ._model import (
    Album,
    Band,
    BandVector,
    CatalogError,
    CatalogUnavailable,
    IngestionRecord,
    ReferenceImage,
    normalize_name,
)

__all__ = ["SQLiteCatalog", "load_migrations"]

_MIGRATIONS_PACKAGE = __name__.rpartition(".")[0] + ".migrations"
_MIGRATION_NAME_RE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")

_BAND_COLUMNS = Band.field_names()
_BAND_LIST_COLUMNS = frozenset(Band._LIST_FIELDS)
_BAND_SELECT = ", ".join(_BAND_COLUMNS)
_BAND_WRITE_COLUMNS = (*_BAND_COLUMNS, "name_norm", "updated_at")
_UPSERT_BAND_SQL = (
    f"INSERT INTO bands ({', '.join(_BAND_WRITE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _BAND_WRITE_COLUMNS)}) "
    "ON CONFLICT (band_id) DO UPDATE SET "
    + ", ".join(f"{col} = excluded.{col}" for col in _BAND_WRITE_COLUMNS if col != "band_id")
)

_ALBUM_SELECT = "album_id, band_id, title, year"
_UPSERT_ALBUM_SQL = (
    "INSERT INTO albums (album_id, band_id, title, year, updated_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (album_id) DO UPDATE SET band_id = excluded.band_id, title = excluded.title, "
    "year = excluded.year, updated_at = excluded.updated_at"
)

_REF_SELECT = "reference_id, sha256, kind, band_id, album_id, source, width, height, size_bytes, regions, created_at"
_INSERT_REF_SQL = (
    f"INSERT INTO reference_images ({_REF_SELECT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (reference_id) DO NOTHING"
)

_VECTOR_COLUMNS = "band_id, model, text_sha, vector, country, status, formed_in, updated_at"
_UPSERT_VECTOR_SQL = (
    f"INSERT INTO band_vectors ({_VECTOR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (model, band_id) DO UPDATE SET text_sha = excluded.text_sha, vector = excluded.vector, "
    "country = excluded.country, status = excluded.status, formed_in = excluded.formed_in, "
    "updated_at = excluded.updated_at"
)
# SQLite's default limit on bound parameters is 999 in old builds: look ids up in chunks below it.
_IN_CHUNK = 500

# OperationalError messages that mean "the database cannot be used right now", not "your request is bad".
_UNAVAILABLE_MARKERS = ("locked", "busy", "unable to open", "disk i/o", "readonly", "not a database")


def load_migrations(backend: str = "sqlite") -> list[tuple[int, str, str]]:
    """Return ``(version, name, sql)`` for every migration file of a backend, in version order.

    Files live in package data (``kyb/catalog/migrations/<backend>/NNNN_name.sql``) and are read through
    ``importlib.resources`` so they also work from a wheel or a zip. Versions must be 1, 2, 3...
    """
    folder = resources.files(_MIGRATIONS_PACKAGE).joinpath(backend)
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME_RE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [version for version, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise CatalogError(f"{backend} migrations must be numbered 0001, 0002... without gaps, got {versions}")
    return found


def split_sql(script: str) -> list[str]:
    """Split a SQL script into single statements, using SQLite's own notion of a complete statement.

    Needed because ``executescript`` commits any open transaction, which would make a migration
    non-atomic; executing statement by statement keeps it inside our ``BEGIN ... COMMIT``.
    """
    statements: list[str] = []
    start = 0
    for pos, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : pos + 1]):
            statement = script[start : pos + 1].strip()
            if _strip_comments(statement).strip(" \t\r\n;"):
                statements.append(statement)
            start = pos + 1
    if _strip_comments(script[start:]).strip():
        raise CatalogError("migration ends with an incomplete SQL statement")
    return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def _translate(exc: sqlite3.Error) -> CatalogError:
    """Map a driver error onto the catalog's exceptions (callers never see ``sqlite3`` types)."""
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, sqlite3.IntegrityError):
        return CatalogError(f"catalog constraint failed: {text}")
    if isinstance(exc, sqlite3.OperationalError):
        if "no such table" in lowered:
            return CatalogError(f"catalog schema missing ({text}); call migrate() first")
        if any(marker in lowered for marker in _UNAVAILABLE_MARKERS):
            return CatalogUnavailable(f"sqlite catalog unavailable: {text}")
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in lowered:
        return CatalogUnavailable(f"sqlite catalog unavailable: {text}")
    return CatalogError(f"sqlite error: {text}")


def _dump_list(values: Iterable[Any]) -> str:
    return json.dumps([list(v) if isinstance(v, tuple) else v for v in values], ensure_ascii=False)


def _band_params(band: Band, now: float) -> tuple[Any, ...]:
    if not isinstance(band, Band):
        raise TypeError(f"expected a Band, got {type(band).__name__}")
    values = [
        _dump_list(getattr(band, col)) if col in _BAND_LIST_COLUMNS else getattr(band, col) for col in _BAND_COLUMNS
    ]
    return (*values, band.name_norm, now)


def _band_from_row(row: tuple[Any, ...]) -> Band:
    data: dict[str, Any] = {
        col: tuple(json.loads(value)) if col in _BAND_LIST_COLUMNS else value
        for col, value in zip(_BAND_COLUMNS, row, strict=True)
    }
    return Band(**data)


class SQLiteCatalog(Catalog):
    """The catalog in one SQLite file (or ``":memory:"``, private to this object).

    Opening does not create the schema; call :meth:`migrate` (``open_catalog`` does it for you).
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *, timeout_s: float = 30.0) -> None:
        self._path = os.fspath(path)
        self._lock = threading.RLock()
        memory = self._path == ":memory:" or self._path.startswith("file::memory:")
        try:
            if not memory:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise CatalogUnavailable(f"cannot open sqlite catalog {self._path!r}: {exc}") from exc
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            if not memory:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise CatalogUnavailable(f"cannot open sqlite catalog {self._path!r}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn

    def __repr__(self) -> str:
        return f"SQLiteCatalog({self._path!r})"

    @property
    def path(self) -> str:
        """The database file path (``":memory:"`` for an in-memory catalog)."""
        return self._path

    # -- connection plumbing -------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and the open connection; turn driver errors into catalog errors."""
        with self._lock:
            if self._conn is None:
                raise CatalogError("catalog is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise _translate(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: commit on success, roll back on any exception."""
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- schema --------------------------------------------------------------------------------------
    def migrate(self) -> int:
        migrations = load_migrations("sqlite")
        latest = migrations[-1][0] if migrations else 0
        with self._locked() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            for version, name, sql in migrations:
                # Re-read the version inside the write lock: another process may have migrated meanwhile.
                with self._transaction() as tx:
                    current = self._schema_version(tx, latest)
                    if version <= current:
                        continue
                    for statement in split_sql(sql):
                        tx.execute(statement)
                    tx.execute(
                        "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, name, time.time()),
                    )
            return self._schema_version(conn, latest)

    @staticmethod
    def _schema_version(conn: sqlite3.Connection, latest: int) -> int:
        (current,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        if current > latest:
            raise CatalogError(
                f"catalog schema version {current} is newer than this code supports ({latest}); upgrade kyb"
            )
        return int(current)

    # -- bands ---------------------------------------------------------------------------------------
    def upsert_band(self, band: Band) -> None:
        self.upsert_bands([band])

    def upsert_bands(self, bands: Iterable[Band]) -> int:
        now = time.time()
        params = [_band_params(band, now) for band in bands]
        if not params:
            return 0
        with self._transaction() as conn:
            conn.executemany(_UPSERT_BAND_SQL, params)
        return len(params)

    def get_band(self, band_id: str) -> Band | None:
        with self._locked() as conn:
            row = conn.execute(f"SELECT {_BAND_SELECT} FROM bands WHERE band_id = ?", (band_id,)).fetchone()
        return _band_from_row(row) if row else None

    def find_bands(self, name: str, limit: int = 20, *, fuzzy: bool = True) -> list[Band]:
        self._check_page(limit)
        query = normalize_name(name)
        if not query or limit == 0:
            return []
        sql = (
            f"SELECT {_BAND_SELECT} FROM bands WHERE instr(name_norm, :q) > 0 "
            "ORDER BY CASE WHEN name_norm = :q THEN 0 WHEN instr(name_norm, :q) = 1 THEN 1 ELSE 2 END, "
            "length(name_norm), name_norm, band_id LIMIT :limit"
        )
        with self._locked() as conn:
            rows = conn.execute(sql, {"q": query, "limit": limit}).fetchall()
        return [_band_from_row(row) for row in rows]

    def count_bands(self) -> int:
        with self._locked() as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM bands").fetchone()
        return int(count)

    # -- albums --------------------------------------------------------------------------------------
    def upsert_album(self, album: Album) -> None:
        self.upsert_albums([album])

    def upsert_albums(self, albums: Iterable[Album]) -> int:
        now = time.time()
        params = [album_params(album, now) for album in albums]
        if not params:
            return 0
        try:
            with self._transaction() as conn:
                conn.executemany(_UPSERT_ALBUM_SQL, params)
        except CatalogError as exc:
            missing = self._missing_bands({row[1] for row in params})
            if missing:
                names = ", ".join(repr(band_id) for band_id in sorted(missing)[:5])
                raise CatalogError(f"albums name unknown band_id(s): {names}") from exc
            raise
        return len(params)

    def _missing_bands(self, band_ids: set[str]) -> set[str]:
        with self._locked() as conn:
            return {
                band_id
                for band_id in band_ids
                if conn.execute("SELECT 1 FROM bands WHERE band_id = ?", (band_id,)).fetchone() is None
            }

    def get_album(self, album_id: str) -> Album | None:
        with self._locked() as conn:
            row = conn.execute(f"SELECT {_ALBUM_SELECT} FROM albums WHERE album_id = ?", (album_id,)).fetchone()
        return Album(*row) if row else None

    def list_albums(self, band_id: str) -> list[Album]:
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_ALBUM_SELECT} FROM albums WHERE band_id = ? ORDER BY year IS NULL, year, title, album_id",
                (band_id,),
            ).fetchall()
        return [Album(*row) for row in rows]

    # -- reference images ----------------------------------------------------------------------------
    def add_reference(self, ref: ReferenceImage) -> bool:
        params = reference_params(ref, _dump_list)
        with self._transaction() as conn:
            if ref.band_id is not None and not self._exists(conn, "bands", "band_id", ref.band_id):
                raise CatalogError(f"reference {ref.reference_id!r}: unknown band_id {ref.band_id!r}")
            if ref.album_id is not None and not self._exists(conn, "albums", "album_id", ref.album_id):
                raise CatalogError(f"reference {ref.reference_id!r}: unknown album_id {ref.album_id!r}")
            cursor = conn.execute(_INSERT_REF_SQL, params)
            return cursor.rowcount == 1

    @staticmethod
    def _exists(conn: sqlite3.Connection, table: str, column: str, value: str) -> bool:
        # table/column come from the fixed call sites above, never from callers.
        return conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ?", (value,)).fetchone() is not None

    def get_reference(self, reference_id: str) -> ReferenceImage | None:
        with self._locked() as conn:
            row = conn.execute(
                f"SELECT {_REF_SELECT} FROM reference_images WHERE reference_id = ?", (reference_id,)
            ).fetchone()
        return reference_from_row(row, json.loads) if row else None

    def get_reference_by_sha256(self, sha256: str) -> ReferenceImage | None:
        with self._locked() as conn:
            row = conn.execute(
                f"SELECT {_REF_SELECT} FROM reference_images WHERE sha256 = ? "
                "ORDER BY created_at, reference_id LIMIT 1",
                (sha256.lower(),),
            ).fetchone()
        return reference_from_row(row, json.loads) if row else None

    def delete_reference(self, reference_id: str) -> bool:
        with self._transaction() as conn:
            cursor = conn.execute("DELETE FROM reference_images WHERE reference_id = ?", (reference_id,))
            return cursor.rowcount > 0

    def list_references(
        self,
        *,
        band_id: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[ReferenceImage]:
        self._check_kind(kind)
        self._check_page(limit, offset)
        where, params = self._reference_filter(band_id, kind, "?")
        sql = f"SELECT {_REF_SELECT} FROM reference_images {where}ORDER BY created_at, reference_id LIMIT ? OFFSET ?"
        with self._locked() as conn:
            rows = conn.execute(sql, (*params, limit, offset)).fetchall()
        return [reference_from_row(row, json.loads) for row in rows]

    def count_references(self) -> int:
        with self._locked() as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM reference_images").fetchone()
        return int(count)

    # -- ingestion log -------------------------------------------------------------------------------
    def record_ingestion(self, reference_id: str | None, sha256: str | None, status: str, message: str = "") -> None:
        if not isinstance(status, str) or not status.strip():
            raise CatalogError("ingestion status must be a non-empty string")
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO ingestions (reference_id, sha256, status, message, created_at) VALUES (?, ?, ?, ?, ?)",
                (reference_id, sha256.lower() if sha256 else sha256, status, message, time.time()),
            )

    def list_ingestions(self, limit: int = 100) -> list[IngestionRecord]:
        self._check_page(limit)
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT id, reference_id, sha256, status, message, created_at FROM ingestions ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [IngestionRecord(*row) for row in rows]

    # -- band search ---------------------------------------------------------------------------------
    def get_bands(self, band_ids: Sequence[str]) -> dict[str, Band]:
        found: dict[str, Band] = {}
        unique = list(dict.fromkeys(band_ids))
        with self._locked() as conn:
            for start in range(0, len(unique), _IN_CHUNK):
                chunk = unique[start : start + _IN_CHUNK]
                marks = ", ".join("?" for _ in chunk)
                for row in conn.execute(f"SELECT {_BAND_SELECT} FROM bands WHERE band_id IN ({marks})", chunk):
                    band = _band_from_row(row)
                    found[band.band_id] = band
        return found

    def scan_bands(
        self, *, updated_after: float | None = None, after_band_id: str = "", limit: int = 1000
    ) -> list[tuple[Band, float]]:
        self._check_page(limit)
        sql = (
            f"SELECT {_BAND_SELECT}, updated_at FROM bands WHERE band_id > ? AND updated_at > ? "
            "ORDER BY band_id LIMIT ?"
        )
        since = float("-inf") if updated_after is None else updated_after
        with self._locked() as conn:
            rows = conn.execute(sql, (after_band_id, since, limit)).fetchall()
        return [(_band_from_row(row[:-1]), float(row[-1])) for row in rows]

    def band_stamp(self) -> tuple[int, float]:
        with self._locked() as conn:
            count, latest = conn.execute("SELECT COUNT(*), COALESCE(MAX(updated_at), 0) FROM bands").fetchone()
        return int(count), float(latest)

    def upsert_band_vectors(self, vectors: Iterable[BandVector]) -> int:
        now = time.time()
        params = [(v.band_id, v.model, v.text_sha, v.vector, v.country, v.status, v.formed_in, now) for v in vectors]
        if not params:
            return 0
        with self._transaction() as conn:
            conn.executemany(_UPSERT_VECTOR_SQL, params)
        return len(params)

    def band_vector_states(self, model: str, band_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        states: dict[str, tuple[Any, ...]] = {}
        unique = list(dict.fromkeys(band_ids))
        with self._locked() as conn:
            for start in range(0, len(unique), _IN_CHUNK):
                chunk = unique[start : start + _IN_CHUNK]
                marks = ", ".join("?" for _ in chunk)
                rows = conn.execute(
                    "SELECT band_id, text_sha, country, status, formed_in FROM band_vectors "
                    f"WHERE model = ? AND band_id IN ({marks})",
                    (model, *chunk),
                )
                states.update((row[0], tuple(row[1:])) for row in rows)
        return states

    def list_band_vectors(
        self, model: str, *, updated_after: float | None = None, after_band_id: str = "", limit: int = 1000
    ) -> list[BandVector]:
        self._check_page(limit)
        since = float("-inf") if updated_after is None else updated_after
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_VECTOR_COLUMNS} FROM band_vectors WHERE model = ? AND band_id > ? AND updated_at > ? "
                "ORDER BY band_id LIMIT ?",
                (model, after_band_id, since, limit),
            ).fetchall()
        return [BandVector(*row) for row in rows]

    def band_vector_stamp(self, model: str) -> tuple[int, float]:
        with self._locked() as conn:
            count, latest = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(updated_at), 0) FROM band_vectors WHERE model = ?", (model,)
            ).fetchone()
        return int(count), float(latest)

    def band_vector_ids(self, model: str) -> list[str]:
        with self._locked() as conn:
            rows = conn.execute("SELECT band_id FROM band_vectors WHERE model = ?", (model,)).fetchall()
        return [row[0] for row in rows]

    def band_vector_models(self) -> list[str]:
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT model FROM band_vectors GROUP BY model ORDER BY MAX(updated_at) DESC, model"
            ).fetchall()
        return [row[0] for row in rows]

    def delete_band_vectors(self, model: str) -> int:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM band_vectors WHERE model = ?", (model,)).rowcount
