"""Catalog data model: frozen records for bands, albums and reference images, plus the import results.

The records are backend-neutral and immutable, so they can be shared between threads and cached without
copies. List-like fields are tuples (hashable); ``to_dict()`` turns them into JSON-ready lists.
Constructors validate their input and raise ``ValueError`` with a one-line reason, so a bad record never
reaches a backend.
"""

from __future__ import annotations

import dataclasses
import re
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from kyb.errors import InvalidRequest, Unavailable

__all__ = [
    "REFERENCE_KINDS",
    "Album",
    "Band",
    "BandVector",
    "Box",
    "CatalogError",
    "CatalogUnavailable",
    "ImportReport",
    "IngestionRecord",
    "ParsedCatalog",
    "ReferenceEntry",
    "ReferenceImage",
    "RowError",
    "normalize_name",
    "validate_box",
]

#: The kinds of reference image the catalog knows.
REFERENCE_KINDS: tuple[str, ...] = ("logo", "album_cover")

#: A region box in image pixels: x1, y1, x2, y2 with x1 < x2 and y1 < y2 (x2/y2 exclusive).
Box = tuple[int, int, int, int]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Letters that NFKD does not decompose but that people type without the stroke/ligature.
_FOLD_EXTRA = str.maketrans(
    {"ø": "o", "đ": "d", "ð": "d", "ł": "l", "ħ": "h", "ı": "i", "æ": "ae", "œ": "oe", "þ": "th"}
)
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_SPACES_RE = re.compile(r"\s+")


class CatalogError(InvalidRequest):
    """Any catalog failure: bad input, an unreadable catalog file, a constraint a write would break."""


class CatalogUnavailable(Unavailable, CatalogError):
    """The catalog backend cannot be reached or opened (missing server, locked or unwritable database)."""


def normalize_name(name: str) -> str:
    """Fold a name for case- and accent-insensitive search: ``Motörhead`` and ``MOTORHEAD`` -> ``motorhead``.

    NFKD-decompose, drop combining marks, casefold, map a few stroked letters (ø, ł, æ...) that NFKD keeps,
    remove zero-width characters and collapse whitespace. Non-Latin scripts are kept (``Ветеран`` ->
    ``ветеран``). Stored next to the name so searches do not fold every row at query time.
    """
    decomposed = unicodedata.normalize("NFKD", name.translate(_ZERO_WIDTH))
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    folded = stripped.casefold().translate(_FOLD_EXTRA)
    # casefold can produce new decomposable characters; a second pass keeps the result stable.
    folded = "".join(ch for ch in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(ch))
    return _SPACES_RE.sub(" ", folded).strip()


def validate_box(box: Iterable[Any]) -> Box:
    """Return ``box`` as an ``(x1, y1, x2, y2)`` int tuple, or raise ``ValueError`` saying what is wrong.

    Coordinates must be non-negative integers with ``x2 > x1`` and ``y2 > y1`` (an empty box can match
    nothing, so it is always a data mistake).
    """
    try:
        values = tuple(box)
    except TypeError:
        raise ValueError(f"box must be a list of 4 integers, got {box!r}") from None
    if len(values) != 4:
        raise ValueError(f"box must have 4 values x1,y1,x2,y2, got {len(values)}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"box values must be integers, got {list(values)!r}")
    x1, y1, x2, y2 = values
    if x1 < 0 or y1 < 0:
        raise ValueError(f"box {list(values)} has a negative coordinate")
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {list(values)} is empty: need x2 > x1 and y2 > y1")
    return (x1, y1, x2, y2)


def _check_id(value: Any, name: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _check_optional_str(value: Any, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or null, got {type(value).__name__}")


def _check_optional_int(value: Any, name: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"{name} must be an integer or null, got {value!r}")


def _str_tuple(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a list of strings, got {type(value).__name__}")
    items = tuple(value)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{name} must contain only strings")
    return items


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    return value


class _Record:
    """Shared ``to_dict``/``from_dict`` for the frozen records below."""

    __slots__ = ()
    _REQUIRED: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: field name -> value, tuples as (nested) lists."""
        # _Record itself is no dataclass (its subclasses are), which mypy cannot see from here.
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build a record from a mapping such as ``to_dict()`` output; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # a dataclass subclass
        missing = [key for key in cls._REQUIRED if key not in data]
        if missing:
            raise ValueError(f"missing required field(s): {', '.join(missing)}")
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True, slots=True)
class Band(_Record):
    """A band. ``band_id`` is the stable key (e.g. ``ma-42``); ``name`` is not unique across bands."""

    _REQUIRED: ClassVar[tuple[str, ...]] = ("band_id", "name")
    _LIST_FIELDS: ClassVar[tuple[str, ...]] = ("themes", "members", "similar_artists", "links")

    band_id: str
    name: str
    country: str | None = None
    location: str | None = None
    status: str | None = None
    formed_in: int | None = None
    genre: str | None = None
    themes: tuple[str, ...] = ()
    label: str | None = None
    years_active: str | None = None
    members: tuple[str, ...] = ()
    similar_artists: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    logo_url: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.band_id, "band_id")
        _check_id(self.name, "name")
        for name in ("country", "location", "status", "genre", "label", "years_active", "logo_url"):
            _check_optional_str(getattr(self, name), name)
        _check_optional_int(self.formed_in, "formed_in")
        for name in self._LIST_FIELDS:
            object.__setattr__(self, name, _str_tuple(getattr(self, name), name))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The band fields in schema order (catalog files' columns and the database's)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def name_norm(self) -> str:
        """The folded name the catalog searches on (see :func:`normalize_name`)."""
        return normalize_name(self.name)


@dataclass(frozen=True, slots=True)
class Album(_Record):
    """An album (release) of one band."""

    _REQUIRED: ClassVar[tuple[str, ...]] = ("album_id", "band_id", "title")

    album_id: str
    band_id: str
    title: str
    year: int | None = None

    def __post_init__(self) -> None:
        _check_id(self.album_id, "album_id")
        _check_id(self.band_id, "band_id")
        _check_id(self.title, "title")
        _check_optional_int(self.year, "year")


@dataclass(frozen=True, slots=True)
class ReferenceImage(_Record):
    """One encoded reference image (a logo or an album cover) the index can match against.

    ``sha256`` is the hex digest of the original image bytes (stored lower-case) and lets the ingestion
    skip images it already has. ``regions`` are boxes in image pixels; empty means the whole image.
    """

    _REQUIRED: ClassVar[tuple[str, ...]] = (
        "reference_id",
        "sha256",
        "kind",
        "band_id",
        "album_id",
        "source",
        "width",
        "height",
        "size_bytes",
    )

    reference_id: str
    sha256: str
    kind: str
    band_id: str | None
    album_id: str | None
    source: str
    width: int
    height: int
    size_bytes: int
    regions: tuple[Box, ...] = ()
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _check_id(self.reference_id, "reference_id")
        if not isinstance(self.sha256, str) or not _SHA256_RE.match(self.sha256.lower()):
            raise ValueError(f"sha256 must be 64 hex digits, got {self.sha256!r}")
        object.__setattr__(self, "sha256", self.sha256.lower())
        if self.kind not in REFERENCE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(REFERENCE_KINDS)}, got {self.kind!r}")
        _check_optional_str(self.band_id, "band_id")
        _check_optional_str(self.album_id, "album_id")
        if self.band_id is None and self.album_id is None:
            raise ValueError("a reference needs a band_id or an album_id")
        if not isinstance(self.source, str):
            raise ValueError("source must be a string")
        for name in ("width", "height", "size_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        regions = tuple(validate_box(box) for box in self.regions)
        if self.width and self.height:
            for x1, y1, x2, y2 in regions:
                if x2 > self.width or y2 > self.height:
                    raise ValueError(f"box {[x1, y1, x2, y2]} lies outside the {self.width}x{self.height} image")
        object.__setattr__(self, "regions", regions)
        if not isinstance(self.created_at, int | float) or isinstance(self.created_at, bool):
            raise ValueError(f"created_at must be unix seconds, got {self.created_at!r}")
        object.__setattr__(self, "created_at", float(self.created_at))


@dataclass(frozen=True, slots=True)
class IngestionRecord(_Record):
    """One line of the ingestion log: what was ingested (or failed to be) and when."""

    id: int
    reference_id: str | None
    sha256: str | None
    status: str
    message: str
    created_at: float


@dataclass(frozen=True, slots=True)
class RowError:
    """A bad row in a catalog file; ``line`` is 1-based (the entry number for JSON arrays)."""

    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class ReferenceEntry:
    """A reference image a catalog file asks to ingest, before it is decoded and encoded.

    ``image_path`` is absolute (relative paths are resolved against the catalog file's folder).
    ``source``/``line`` say where the entry came from, for error messages.
    """

    image_path: str
    kind: str
    band_id: str | None
    album_id: str | None = None
    regions: tuple[Box, ...] = ()
    line: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in REFERENCE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(REFERENCE_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "regions", tuple(validate_box(box) for box in self.regions))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (regions as lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(slots=True)
class ParsedCatalog:
    """What a catalog file holds: the good rows, and one :class:`RowError` per bad row.

    ``album_origins`` maps album_id -> (source, line) so that later checks (an album whose band is unknown
    to the catalog) can still point at the right line.
    """

    bands: list[Band] = field(default_factory=list)
    albums: list[Album] = field(default_factory=list)
    references: list[ReferenceEntry] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    format: str = ""
    album_origins: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(slots=True)
class ImportReport:
    """Outcome of importing a parsed catalog.

    ``references`` are the valid reference entries left for the ingestion pipeline to encode (the catalog
    itself stores only encoded :class:`ReferenceImage` rows). ``errors`` holds the parser's and the
    importer's row errors, sorted by file and line.
    """

    bands_upserted: int = 0
    albums_upserted: int = 0
    references: list[ReferenceEntry] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no row was rejected."""
        return not self.errors


@dataclass(frozen=True, slots=True)
class BandVector:
    """A band's embedding under one model, with the filter fields it was made with.

    ``vector`` holds float16 values as bytes (the catalog never interprets them; :mod:`kyb.bandsearch`
    does). ``text_sha`` identifies the text the vector was computed from, so an unchanged band is not
    embedded again. ``updated_at`` is set by the catalog when the row is written.
    """

    band_id: str
    model: str
    text_sha: str
    vector: bytes
    country: str | None = None
    status: str | None = None
    formed_in: int | None = None
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        _check_id(self.band_id, "band_id")
        _check_id(self.model, "model")
        _check_id(self.text_sha, "text_sha")
        if not isinstance(self.vector, bytes) or not self.vector:
            raise ValueError("vector must be non-empty bytes")
        _check_optional_str(self.country, "country")
        _check_optional_str(self.status, "status")
        _check_optional_int(self.formed_in, "formed_in")

    @property
    def state(self) -> tuple[str, str | None, str | None, int | None]:
        """What decides whether the row is current for a band: its text digest and filter fields."""
        return (self.text_sha, self.country, self.status, self.formed_in)
