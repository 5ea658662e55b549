"""Postgres catalog backend (``psycopg2``): a thread-safe connection pool, JSONB lists, trigram search.

Connections come from a :class:`psycopg2.pool.ThreadedConnectionPool`; a semaphore in front of it makes a
thread wait for a free connection instead of failing when all ``maxconn`` are busy. Connections run in
autocommit mode, so a read is one round trip; every write is an explicit ``BEGIN`` ... ``COMMIT``
(rolled back on any error), so a batch is all or nothing. Batches of rows go in with ``execute_values``.

Band search uses the stored folded name (``name_norm``): substring matches first (exact, then prefix,
then the rest, shorter names first), then names that are only *similar* (pg_trgm ``%`` operator, ranked
by similarity), so a typo such as ``morturay`` still finds ``Mortuary``.
"""

from __future__ import annotations

import functools
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

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
from ._sqlite import load_migrations

__all__ = ["PostgresCatalog"]

#: Key of the transaction-level advisory lock that serialises concurrent ``migrate()`` calls.
MIGRATION_LOCK_KEY = zlib.crc32(b"kyb.catalog.migrate")

_BAND_COLUMNS = Band.field_names()
_BAND_LIST_COLUMNS = frozenset(Band._LIST_FIELDS)
_BAND_SELECT = ", ".join(_BAND_COLUMNS)
_BAND_WRITE_COLUMNS = (*_BAND_COLUMNS, "name_norm", "updated_at")
_UPSERT_BANDS_SQL = (
    f"INSERT INTO bands ({', '.join(_BAND_WRITE_COLUMNS)}) VALUES %s "
    "ON CONFLICT (band_id) DO UPDATE SET "
    + ", ".join(f"{col} = excluded.{col}" for col in _BAND_WRITE_COLUMNS if col != "band_id")
)
# Two queries, each able to use the trigram index (an OR of both would scan the table): substring hits
# ranked exact, prefix, elsewhere; then, only if those do not fill the page, names that merely look alike.
_FIND_SUBSTRING_SQL = (
    f"SELECT {_BAND_SELECT} FROM bands WHERE name_norm LIKE %(infix)s "
    "ORDER BY CASE WHEN name_norm = %(q)s THEN 0 WHEN name_norm LIKE %(prefix)s THEN 1 ELSE 2 END, "
    "length(name_norm), name_norm, band_id LIMIT %(limit)s"
)
_FIND_SIMILAR_SQL = (
    f"SELECT {_BAND_SELECT} FROM bands WHERE name_norm %% %(q)s AND name_norm NOT LIKE %(infix)s "
    "ORDER BY similarity(name_norm, %(q)s) DESC, length(name_norm), name_norm, band_id LIMIT %(limit)s"
)

_ALBUM_SELECT = "album_id, band_id, title, year"
_UPSERT_ALBUMS_SQL = (
    "INSERT INTO albums (album_id, band_id, title, year, updated_at) VALUES %s "
    "ON CONFLICT (album_id) DO UPDATE SET band_id = excluded.band_id, title = excluded.title, "
    "year = excluded.year, updated_at = excluded.updated_at"
)

_REF_SELECT = "reference_id, sha256, kind, band_id, album_id, source, width, height, size_bytes, regions, created_at"
_INSERT_REF_SQL = (
    f"INSERT INTO reference_images ({_REF_SELECT}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (reference_id) DO NOTHING"
)

_VECTOR_COLUMNS = "band_id, model, text_sha, vector, country, status, formed_in, updated_at"
_UPSERT_VECTORS_SQL = (
    f"INSERT INTO band_vectors ({_VECTOR_COLUMNS}) VALUES %s "
    "ON CONFLICT (model, band_id) DO UPDATE SET text_sha = excluded.text_sha, vector = excluded.vector, "
    "country = excluded.country, status = excluded.status, formed_in = excluded.formed_in, "
    "updated_at = excluded.updated_at"
)

_TABLES = ("band_vectors", "bands", "albums", "reference_images", "ingestions")
_PAGE_SIZE = 1000


def _one_line(text: str) -> str:
    """Collapse libpq's multi-line messages (``...failed: X\\n\\tIs the server running...``) into one line."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "unknown error"


def describe_dsn(dsn: str) -> str:
    """Return ``user@host:port/dbname`` for messages, never the password; the raw text if it does not parse."""
    try:
        parts = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        return "<unparsable DSN>"
    user = parts.get("user", "")
    host = parts.get("host", "localhost")
    port = parts.get("port", "5432")
    dbname = parts.get("dbname", user)
    return f"{user + '@' if user else ''}{host}:{port}/{dbname}"


def _translate(exc: psycopg2.Error, where: str) -> CatalogError:
    """Map a driver error onto the catalog's exceptions (callers never see ``psycopg2`` types)."""
    text = _one_line(exc.pgerror or str(exc))
    if isinstance(exc, psycopg2.errors.UndefinedTable):
        return CatalogError(f"catalog schema missing ({text}); call migrate() first")
    if isinstance(exc, psycopg2.IntegrityError):
        return CatalogError(f"catalog constraint failed: {text}")
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return CatalogUnavailable(f"postgres catalog {where} unavailable: {text}")
    return CatalogError(f"postgres error: {text}")


def _aggregate(cur: Any) -> tuple[Any, ...]:
    """The one row an aggregate query (COUNT, MAX) always returns."""
    row = cur.fetchone()
    if row is None:
        raise CatalogError("an aggregate query returned no row")
    return tuple(row)


class _BrokenConnection(CatalogUnavailable):
    """A pooled connection died (server restart, idle timeout); it has been dropped from the pool."""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _retry_read(
    method: Callable[Concatenate[PostgresCatalog, _P], _T],
) -> Callable[Concatenate[PostgresCatalog, _P], _T]:
    """Run a read-only method once more on a fresh connection when its pooled connection turned out dead.

    Reads are idempotent, so after a server restart callers see no error as long as the server is back.
    """

    @functools.wraps(method)
    def wrapper(self: PostgresCatalog, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except _BrokenConnection:
            return method(self, *args, **kwargs)

    return wrapper


def _band_params(band: Band, now: float) -> tuple[Any, ...]:
    if not isinstance(band, Band):
        raise TypeError(f"expected a Band, got {type(band).__name__}")
    values = [
        psycopg2.extras.Json(list(getattr(band, col))) if col in _BAND_LIST_COLUMNS else getattr(band, col)
        for col in _BAND_COLUMNS
    ]
    return (*values, band.name_norm, now)


def _band_from_row(row: tuple[Any, ...]) -> Band:
    return Band(**dict(zip(_BAND_COLUMNS, row, strict=True)))


def _escape_like(text: str) -> str:
    """Escape LIKE's wildcards (``%``, ``_``) and its escape character, so user text matches literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class PostgresCatalog(Catalog):
    """The catalog in a Postgres database, reached through a libpq DSN (``postgresql://user@host/db``).

    Opening connects at once (``minconn`` connections) and raises :class:`CatalogUnavailable` if the server
    cannot be reached within ``connect_timeout_s``. It does not create the schema; call :meth:`migrate`
    (``open_catalog`` does it for you).
    """

    def __init__(self, dsn: str, *, minconn: int = 1, maxconn: int = 8, connect_timeout_s: int = 5) -> None:
        if maxconn < 1 or not 0 <= minconn <= maxconn:
            raise CatalogError(f"need 0 <= minconn <= maxconn and maxconn >= 1, got {minconn}, {maxconn}")
        self._dsn = dsn
        self._where = describe_dsn(dsn)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(maxconn)
        try:
            self._pool: psycopg2.pool.ThreadedConnectionPool | None = psycopg2.pool.ThreadedConnectionPool(
                minconn,
                maxconn,
                dsn,
                connect_timeout=max(1, int(connect_timeout_s)),
                application_name="kyb-catalog",
            )
        except psycopg2.Error as exc:
            reason = _one_line(str(exc))
            raise CatalogUnavailable(f"cannot connect to postgres catalog {self._where}: {reason}") from exc

    def __repr__(self) -> str:
        return f"PostgresCatalog({self._where!r})"

    @property
    def where(self) -> str:
        """``user@host:port/dbname`` of the catalog (no password)."""
        return self._where

    # -- connection plumbing -------------------------------------------------------------------------
    @contextmanager
    def _cursor(self, *, transaction: bool = False) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor on a pooled connection; with ``transaction`` a BEGIN/COMMIT around the block.

        Driver errors become catalog errors; a connection that broke is dropped from the pool.
        """
        with self._slots:
            with self._lock:
                pool = self._pool
                if pool is None:
                    raise CatalogError("catalog is closed")
                try:
                    conn = pool.getconn()
                except (psycopg2.Error, psycopg2.pool.PoolError) as exc:
                    raise CatalogUnavailable(
                        f"cannot connect to postgres catalog {self._where}: {_one_line(str(exc))}"
                    ) from exc
            broken = False
            try:
                if not conn.autocommit:
                    conn.autocommit = True
                with conn.cursor() as cur:
                    if transaction:
                        cur.execute("BEGIN")
                    try:
                        yield cur
                    except BaseException:
                        if transaction and not conn.closed:
                            with suppress(psycopg2.Error):
                                cur.execute("ROLLBACK")
                        raise
                    if transaction:
                        cur.execute("COMMIT")
            except psycopg2.Error as exc:
                broken = bool(conn.closed) or isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)
                if conn.closed:
                    raise _BrokenConnection(
                        f"postgres catalog {self._where} unavailable: {_one_line(str(exc))}"
                    ) from exc
                raise _translate(exc, self._where) from exc
            finally:
                with self._lock:
                    if self._pool is not None:
                        self._pool.putconn(conn, close=broken or bool(conn.closed))
                    else:
                        with suppress(psycopg2.Error):
                            conn.close()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            with suppress(psycopg2.Error, psycopg2.pool.PoolError):
                pool.closeall()

    # -- schema --------------------------------------------------------------------------------------
    def migrate(self) -> int:
        migrations = load_migrations("postgres")
        latest = migrations[-1][0] if migrations else 0
        with self._cursor(transaction=True) as cur:
            # Serialise concurrent migrators (threads or processes); released at COMMIT/ROLLBACK.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = self._schema_version(cur, latest)
            for version, name, sql in migrations:
                if version <= current:
                    continue
                cur.execute(sql)
                cur.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (%s, %s, %s)",
                    (version, name, time.time()),
                )
            return self._schema_version(cur, latest)

    @staticmethod
    def _schema_version(cur: psycopg2.extensions.cursor, latest: int) -> int:
        cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        (current,) = _aggregate(cur)
        if current > latest:
            raise CatalogError(
                f"catalog schema version {current} is newer than this code supports ({latest}); upgrade kyb"
            )
        return int(current)

    def truncate(self) -> None:
        """Delete every band, album, reference and log line (keeps the schema); for tests and resets."""
        with self._cursor(transaction=True) as cur:
            cur.execute(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY")

    # -- bands ---------------------------------------------------------------------------------------
    def upsert_band(self, band: Band) -> None:
        self.upsert_bands([band])

    def upsert_bands(self, bands: Iterable[Band]) -> int:
        now = time.time()
        params = [_band_params(band, now) for band in bands]
        if not params:
            return 0
        # One statement may not update a row twice: keep the last row per id (as row-by-row upserts
        # would), and write in key order so that concurrent batches cannot deadlock.
        unique = dict(zip((row[0] for row in params), params, strict=True))
        rows = [unique[key] for key in sorted(unique)]
        with self._cursor(transaction=True) as cur:
            psycopg2.extras.execute_values(cur, _UPSERT_BANDS_SQL, rows, page_size=_PAGE_SIZE)
        return len(params)

    @_retry_read
    def get_band(self, band_id: str) -> Band | None:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_BAND_SELECT} FROM bands WHERE band_id = %s", (band_id,))
            row = cur.fetchone()
        return _band_from_row(row) if row else None

    @_retry_read
    def find_bands(self, name: str, limit: int = 20, *, fuzzy: bool = True) -> list[Band]:
        self._check_page(limit)
        query = normalize_name(name)
        if not query or limit == 0:
            return []
        escaped = _escape_like(query)
        params = {"q": query, "prefix": escaped + "%", "infix": "%" + escaped + "%", "limit": limit}
        with self._cursor() as cur:
            cur.execute(_FIND_SUBSTRING_SQL, params)
            rows = cur.fetchall()
            if fuzzy and len(rows) < limit:
                cur.execute(_FIND_SIMILAR_SQL, {**params, "limit": limit - len(rows)})
                rows.extend(cur.fetchall())
        return [_band_from_row(row) for row in rows]

    @_retry_read
    def count_bands(self) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM bands")
            (count,) = _aggregate(cur)
        return int(count)

    # -- albums --------------------------------------------------------------------------------------
    def upsert_album(self, album: Album) -> None:
        self.upsert_albums([album])

    def upsert_albums(self, albums: Iterable[Album]) -> int:
        now = time.time()
        params = [album_params(album, now) for album in albums]
        if not params:
            return 0
        unique = dict(zip((row[0] for row in params), params, strict=True))
        rows = [unique[key] for key in sorted(unique)]
        try:
            with self._cursor(transaction=True) as cur:
                psycopg2.extras.execute_values(cur, _UPSERT_ALBUMS_SQL, rows, page_size=_PAGE_SIZE)
        except CatalogError as exc:
            if isinstance(exc, CatalogUnavailable):
                raise
            missing = self._missing_bands({row[1] for row in params})
            if missing:
                names = ", ".join(repr(band_id) for band_id in sorted(missing)[:5])
                raise CatalogError(f"albums name unknown band_id(s): {names}") from exc
            raise
        return len(params)

    @_retry_read
    def _missing_bands(self, band_ids: set[str]) -> set[str]:
        with self._cursor() as cur:
            cur.execute("SELECT band_id FROM bands WHERE band_id = ANY(%s)", (sorted(band_ids),))
            found = {row[0] for row in cur.fetchall()}
        return band_ids - found

    @_retry_read
    def get_album(self, album_id: str) -> Album | None:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_ALBUM_SELECT} FROM albums WHERE album_id = %s", (album_id,))
            row = cur.fetchone()
        return Album(*row) if row else None

    @_retry_read
    def list_albums(self, band_id: str) -> list[Album]:
        with self._cursor() as cur:
            cur.execute(
                f"SELECT {_ALBUM_SELECT} FROM albums WHERE band_id = %s ORDER BY year IS NULL, year, title, album_id",
                (band_id,),
            )
            rows = cur.fetchall()
        return [Album(*row) for row in rows]

    # -- reference images ----------------------------------------------------------------------------
    def add_reference(self, ref: ReferenceImage) -> bool:
        params = reference_params(ref, lambda regions: psycopg2.extras.Json([list(box) for box in regions]))
        with self._cursor(transaction=True) as cur:
            if ref.band_id is not None:
                cur.execute("SELECT 1 FROM bands WHERE band_id = %s", (ref.band_id,))
                if cur.fetchone() is None:
                    raise CatalogError(f"reference {ref.reference_id!r}: unknown band_id {ref.band_id!r}")
            if ref.album_id is not None:
                cur.execute("SELECT 1 FROM albums WHERE album_id = %s", (ref.album_id,))
                if cur.fetchone() is None:
                    raise CatalogError(f"reference {ref.reference_id!r}: unknown album_id {ref.album_id!r}")
            cur.execute(_INSERT_REF_SQL, params)
            return cur.rowcount == 1

    @_retry_read
    def get_reference(self, reference_id: str) -> ReferenceImage | None:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_REF_SELECT} FROM reference_images WHERE reference_id = %s", (reference_id,))
            row = cur.fetchone()
        return reference_from_row(row, list) if row else None

    @_retry_read
    def get_reference_by_sha256(self, sha256: str) -> ReferenceImage | None:
        with self._cursor() as cur:
            cur.execute(
                f"SELECT {_REF_SELECT} FROM reference_images WHERE sha256 = %s "
                "ORDER BY created_at, reference_id LIMIT 1",
                (sha256.lower(),),
            )
            row = cur.fetchone()
        return reference_from_row(row, list) if row else None

    def delete_reference(self, reference_id: str) -> bool:
        with self._cursor(transaction=True) as cur:
            cur.execute("DELETE FROM reference_images WHERE reference_id = %s", (reference_id,))
            return cur.rowcount > 0

    @_retry_read
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
        where, params = self._reference_filter(band_id, kind, "%s")
        sql = f"SELECT {_REF_SELECT} FROM reference_images {where}ORDER BY created_at, reference_id LIMIT %s OFFSET %s"
        with self._cursor() as cur:
            cur.execute(sql, (*params, limit, offset))
            rows = cur.fetchall()
        return [reference_from_row(row, list) for row in rows]

    @_retry_read
    def count_references(self) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM reference_images")
            (count,) = _aggregate(cur)
        return int(count)

    # -- ingestion log -------------------------------------------------------------------------------
    def record_ingestion(self, reference_id: str | None, sha256: str | None, status: str, message: str = "") -> None:
        if not isinstance(status, str) or not status.strip():
            raise CatalogError("ingestion status must be a non-empty string")
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO ingestions (reference_id, sha256, status, message, created_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                (reference_id, sha256.lower() if sha256 else sha256, status, message, time.time()),
            )

    @_retry_read
    def list_ingestions(self, limit: int = 100) -> list[IngestionRecord]:
        self._check_page(limit)
        with self._cursor() as cur:
            cur.execute(
                "SELECT id, reference_id, sha256, status, message, created_at FROM ingestions "
                "ORDER BY id DESC LIMIT %s",
                (limit,),
            )
            rows = cur.fetchall()
        return [IngestionRecord(*row) for row in rows]

    # -- band search ---------------------------------------------------------------------------------
    @_retry_read
    def get_bands(self, band_ids: Sequence[str]) -> dict[str, Band]:
        unique = sorted(set(band_ids))
        if not unique:
            return {}
        with self._cursor() as cur:
            cur.execute(f"SELECT {_BAND_SELECT} FROM bands WHERE band_id = ANY(%s)", (unique,))
            rows = cur.fetchall()
        bands = (_band_from_row(row) for row in rows)
        return {band.band_id: band for band in bands}

    @_retry_read
    def scan_bands(
        self, *, updated_after: float | None = None, after_band_id: str = "", limit: int = 1000
    ) -> list[tuple[Band, float]]:
        self._check_page(limit)
        since = float("-inf") if updated_after is None else updated_after
        with self._cursor() as cur:
            cur.execute(
                f"SELECT {_BAND_SELECT}, updated_at FROM bands WHERE band_id > %s AND updated_at > %s "
                "ORDER BY band_id LIMIT %s",
                (after_band_id, since, limit),
            )
            rows = cur.fetchall()
        return [(_band_from_row(row[:-1]), float(row[-1])) for row in rows]

    @_retry_read
    def band_stamp(self) -> tuple[int, float]:
        with self._cursor() as cur:
            cur.execute("SELECT COUNT(*), COALESCE(MAX(updated_at), 0) FROM bands")
            count, latest = _aggregate(cur)
        return int(count), float(latest)

    def upsert_band_vectors(self, vectors: Iterable[BandVector]) -> int:
        now = time.time()
        params = {
            (v.model, v.band_id): (
                v.band_id, v.model, v.text_sha, psycopg2.Binary(v.vector), v.country, v.status, v.formed_in, now
            )
            for v in vectors
        }  # fmt: skip
        if not params:
            return 0
        # One statement may not update a row twice, and key order keeps concurrent writers deadlock-free.
        rows = [params[key] for key in sorted(params)]
        with self._cursor(transaction=True) as cur:
            psycopg2.extras.execute_values(cur, _UPSERT_VECTORS_SQL, rows, page_size=_PAGE_SIZE)
        return len(rows)

    @_retry_read
    def band_vector_states(self, model: str, band_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        unique = sorted(set(band_ids))
        if not unique:
            return {}
        with self._cursor() as cur:
            cur.execute(
                "SELECT band_id, text_sha, country, status, formed_in FROM band_vectors "
                "WHERE model = %s AND band_id = ANY(%s)",
                (model, unique),
            )
            rows = cur.fetchall()
        return {row[0]: tuple(row[1:]) for row in rows}

    @_retry_read
    def list_band_vectors(
        self, model: str, *, updated_after: float | None = None, after_band_id: str = "", limit: int = 1000
    ) -> list[BandVector]:
        self._check_page(limit)
        since = float("-inf") if updated_after is None else updated_after
        with self._cursor() as cur:
            cur.execute(
                f"SELECT {_VECTOR_COLUMNS} FROM band_vectors "
                "WHERE model = %s AND band_id > %s AND updated_at > %s ORDER BY band_id LIMIT %s",
                (model, after_band_id, since, limit),
            )
            rows = cur.fetchall()
        return [BandVector(row[0], row[1], row[2], bytes(row[3]), *row[4:]) for row in rows]

    @_retry_read
    def band_vector_stamp(self, model: str) -> tuple[int, float]:
        with self._cursor() as cur:
            cur.execute("SELECT COUNT(*), COALESCE(MAX(updated_at), 0) FROM band_vectors WHERE model = %s", (model,))
            count, latest = _aggregate(cur)
        return int(count), float(latest)

    @_retry_read
    def band_vector_ids(self, model: str) -> list[str]:
        with self._cursor() as cur:
            cur.execute("SELECT band_id FROM band_vectors WHERE model = %s", (model,))
            rows = cur.fetchall()
        return [row[0] for row in rows]

    @_retry_read
    def band_vector_models(self) -> list[str]:
        with self._cursor() as cur:
            cur.execute("SELECT model FROM band_vectors GROUP BY model ORDER BY MAX(updated_at) DESC, model")
            rows = cur.fetchall()
        return [row[0] for row in rows]

    def delete_band_vectors(self, model: str) -> int:
        with self._cursor(transaction=True) as cur:
            cur.execute("DELETE FROM band_vectors WHERE model = %s", (model,))
            return int(cur.rowcount)
