"""The band catalog: bands, albums, reference images and the ingestion log, behind one interface.

Open one with :func:`open_catalog` (``sqlite:///path.db``, ``sqlite://:memory:``, a bare path, or
``postgresql://user@host:port/db``; every backend implements the same :class:`Catalog` interface).
Load catalog files with :func:`parse_catalog_file` / :func:`import_catalog`; their formats are described in
docs/catalog-format.md.
"""

from ._base import Catalog, open_catalog
from ._import import import_catalog, parse_catalog_file
from ._model import (
    REFERENCE_KINDS,
    Album,
    Band,
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
