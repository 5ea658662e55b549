"""The band catalog: bands, albums, reference images and the ingestion log, behind one interface.

Open one with :func:`open_catalog` (``sqlite:///path.db``, ``sqlite://:memory:``, a bare path, or
``postgresql://user@host:port/db``; every backend implements the same :class:`Catalog` interface).
Load catalog files with :func:`parse_catalog_file` / :func:`import_catalog`; their formats are described in
docs/catalog-format.md.
"""

import os
from urllib.parse import unquote

from ._base import Catalog
from ._import import import_catalog, parse_catalog_file
from ._model import (
    REFERENCE_KINDS,
    Album,
    Band,
    BandVector,
    Box,
    CatalogError,
    CatalogUnavailable,
    ImportReport,
    IngestionRecord,
    ParsedCatalog,
    ReferenceEntry,
    ReferenceImage,
    RowError,
    normalize_name,
    validate_box,
)
from ._postgres import PostgresCatalog
from ._sqlite import SQLiteCatalog

__all__ = [
    "REFERENCE_KINDS",
    "Album",
    "Band",
    "BandVector",
    "Box",
    "Catalog",
    "CatalogError",
    "CatalogUnavailable",
    "ImportReport",
    "IngestionRecord",
    "ParsedCatalog",
    "PostgresCatalog",
    "ReferenceEntry",
    "ReferenceImage",
    "RowError",
    "SQLiteCatalog",
    "import_catalog",
    "normalize_name",
    "open_catalog",
    "parse_catalog_file",
    "validate_box",
]


def open_catalog(url: str | os.PathLike[str], *, migrate: bool = True) -> Catalog:
    """Open the catalog a URL names, migrated to the latest schema unless ``migrate=False``.

    - ``sqlite:///abs/path.db`` (everything after ``sqlite://`` is the path, so ``sqlite://rel.db`` is
      relative), ``sqlite://:memory:`` (a private in-memory database), or a bare filesystem path -> SQLite;
    - ``postgresql://...`` / ``postgres://...`` -> Postgres (a libpq URI, passed to :class:`PostgresCatalog`
      as is; :class:`CatalogUnavailable` if the server cannot be reached).
    """
    text = os.fspath(url).strip()
    if not text:
        raise CatalogError("empty catalog URL")
    scheme, sep, rest = text.partition("://")
    backend = scheme.lower() if sep else ""
    catalog: Catalog
    if backend in ("postgresql", "postgres"):
        catalog = PostgresCatalog(text)
    elif backend in ("", "sqlite"):
        catalog = SQLiteCatalog((unquote(rest) or ":memory:") if sep else text)
    else:
        raise CatalogError(f"unsupported catalog URL scheme {scheme!r}; use sqlite://, postgresql:// or a file path")
    if migrate:
        try:
            catalog.migrate()
        except BaseException:
            catalog.close()
            raise
    return catalog
