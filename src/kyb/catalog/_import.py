"""Catalog file parsers: our JSON and CSV formats, and the scraped metal tables, auto-detected.

Contract: :func:`parse_catalog_file` never raises on a bad row. Each bad row becomes one
:class:`RowError` (file name, 1-based line, one-line reason) and the good rows still come through, so one
typo in a 40,000-row file does not block the import. :class:`CatalogError` is raised only when the file
as a whole cannot be used (missing, not JSON/CSV, a shape we do not know). See docs/catalog-format.md.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._model import (
    REFERENCE_KINDS,
    Album,
    Band,
    Box,
    CatalogError,
    ImportReport,
    ParsedCatalog,
    ReferenceEntry,
    RowError,
    validate_box,
)

if TYPE_CHECKING:
    from ._base import Catalog

__all__ = ["import_catalog", "parse_catalog_file"]

# Format names reported in ParsedCatalog.format.
FORMAT_JSON = "kyb-json"
FORMAT_CSV_BANDS = "kyb-csv-bands"
FORMAT_CSV_ALBUMS = "kyb-csv-albums"
FORMAT_CSV_REFERENCES = "kyb-csv-references"
FORMAT_MA_BANDS = "metal-archives-bands"
FORMAT_MA_ALBUMS = "metal-archives-albums"
FORMAT_MB2017 = "metal-bands-2017"

_MA_BANDS_HEADER = ["id", "name", "country", "status", "formed_in", "genre", "theme", "active"]
_MA_ALBUMS_HEADER = ["id", "band", "title", "year"]
_MB2017_HEADER_TAIL = ["band_name", "fans", "formed", "origin", "split", "style"]
# Header cells a pandas index column may carry when the file was re-saved.
_INDEX_HEADERS = {"", "index", "unnamed: 0"}
# metal_bands_2017 was scraped in 2017: a split year after that is a scrape artefact, not a fact.
_MB2017_SCRAPE_YEAR = 2017

_BAND_FIELDS = Band.field_names()
_BAND_LIST_FIELDS = frozenset(Band._LIST_FIELDS)
_ALBUM_FIELDS = ("album_id", "band_id", "title", "year")
_REFERENCE_FIELDS = ("image", "kind", "band_id", "album_id", "regions")

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_UINT_RE = re.compile(r"[0-9]+")


class _BadRow(ValueError):
    """One row is unusable; the message becomes the RowError message."""


# -- entry points ----------------------------------------------------------------------------------------


def parse_catalog_file(path: str | os.PathLike[str]) -> ParsedCatalog:
    """Parse one catalog file (format auto-detected) into good rows plus one RowError per bad row.

    Raises :class:`CatalogError` only if the file is missing/unreadable, is neither JSON nor CSV, or has a
    shape none of the formats in docs/catalog-format.md matches.
    """
    file = Path(path).absolute()
    text = _read_text(file)
    stripped = text.lstrip()
    if file.suffix.lower() == ".json" or stripped[:1] in ("{", "["):
        return _parse_json(file, text)
    return _parse_csv_file(file, text)


def import_catalog(catalog: Catalog, path: str | os.PathLike[str]) -> ImportReport:
    """Parse ``path`` and import it into ``catalog`` (see :meth:`Catalog.import_parsed`).

    ``elapsed_s`` in the report includes the parsing time.
    """
    started = time.perf_counter()
    report = catalog.import_parsed(parse_catalog_file(path))
    report.elapsed_s = time.perf_counter() - started
    return report


# -- shared helpers --------------------------------------------------------------------------------------


def _read_text(file: Path) -> str:
    """Read a text file as UTF-8 (BOM allowed), falling back to Windows-1252, then Latin-1.

    The metalstorm table circulates in its original cp1252 bytes; Latin-1 never fails, so a file with
    bytes undefined in cp1252 still reads (a binary file then fails the shape check instead).
    """
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CatalogError(f"{file}: catalog file not found") from None
    except OSError as exc:
        raise CatalogError(f"{file}: cannot read catalog file: {exc.strerror or exc}") from None
    if b"\x00" in data[:4096]:
        raise CatalogError(f"{file.name}: binary data, not a JSON or CSV catalog")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _clean(value: str) -> str:
    """Drop zero-width characters and surrounding whitespace (scraped text is full of both)."""
    return value.translate(_ZERO_WIDTH).strip()


def _optional(value: str, *, missing: tuple[str, ...] = ()) -> str | None:
    """Cleaned text, or None when it is empty or one of the ``missing`` markers (e.g. ``N/A``)."""
    cleaned = _clean(value)
    return None if not cleaned or cleaned in missing else cleaned


def _optional_int(value: str, field: str, *, missing: tuple[str, ...] = ()) -> int | None:
    cleaned = _optional(value, missing=missing)
    if cleaned is None:
        return None
    if not _UINT_RE.fullmatch(cleaned):
        raise _BadRow(f"{field} must be a whole number, got {cleaned!r}")
    return int(cleaned)


def _split_list(value: str, separator: str, *, missing: tuple[str, ...] = ()) -> tuple[str, ...]:
    if _optional(value, missing=missing) is None:
        return ()
    return tuple(item for item in (_clean(part) for part in value.split(separator)) if item)


class _Collector:
    """Accumulates rows; a repeated id replaces the earlier row and is reported (later one wins)."""

    def __init__(self, parsed: ParsedCatalog) -> None:
        self.parsed = parsed
        self.bands: dict[str, tuple[Band, str, int]] = {}
        self.albums: dict[str, tuple[Album, str, int]] = {}
        self.references: dict[tuple[str, str, str | None, str | None], ReferenceEntry] = {}
        # Put in front of duplicate messages, e.g. "bands: " while a JSON section is read.
        self.prefix = ""

    def error(self, source: str, line: int, message: str) -> None:
        self.parsed.errors.append(RowError(source, line, message))

    def duplicate(self, source: str, line: int, message: str) -> None:
        self.error(source, line, self.prefix + message)

    def add_band(self, band: Band, source: str, line: int) -> None:
        previous = self.bands.get(band.band_id)
        if previous is not None:
            self.duplicate(
                source,
                line,
                f"duplicate band_id {band.band_id!r} (first at {previous[1]}:{previous[2]}); this later row wins",
            )
        self.bands[band.band_id] = (band, source, line)

    def add_album(self, album: Album, source: str, line: int) -> None:
        previous = self.albums.get(album.album_id)
        if previous is not None:
            self.duplicate(
                source,
                line,
                f"duplicate album_id {album.album_id!r} (first at {previous[1]}:{previous[2]}); this later row wins",
            )
        self.albums[album.album_id] = (album, source, line)

    def add_reference(self, entry: ReferenceEntry) -> None:
        key = (entry.image_path, entry.kind, entry.band_id, entry.album_id)
        previous = self.references.get(key)
        if previous is not None:
            self.duplicate(
                entry.source,
                entry.line,
                f"duplicate reference {Path(entry.image_path).name!r} "
                f"(first at {previous.source}:{previous.line}); this later row wins",
            )
        self.references[key] = entry

    def finish(self) -> ParsedCatalog:
        parsed = self.parsed
        parsed.bands = [band for band, _, _ in self.bands.values()]
        parsed.albums = [album for album, _, _ in self.albums.values()]
        parsed.album_origins = {album_id: (src, line) for album_id, (_, src, line) in self.albums.items()}
        parsed.references = list(self.references.values())
        parsed.errors.sort(key=lambda err: (err.source, err.line))
        return parsed


def _make_reference(
    base_dir: Path,
    source: str,
    line: int,
    image: Any,
    kind: Any,
    band_id: Any,
    album_id: Any,
    regions: tuple[Box, ...],
) -> ReferenceEntry:
    """Validate one reference row and resolve its image path against the catalog file's folder."""
    if not isinstance(image, str) or not image.strip():
        raise _BadRow("missing required field 'image'")
    if kind not in REFERENCE_KINDS:
        raise _BadRow(f"kind must be one of {', '.join(REFERENCE_KINDS)}, got {kind!r}")
    for name, value in (("band_id", band_id), ("album_id", album_id)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _BadRow(f"{name} must be a non-empty string, got {value!r}")
    if band_id is None and album_id is None:
        raise _BadRow("a reference needs a band_id (or an album_id)")
    if kind == "logo" and band_id is None:
        raise _BadRow("a logo reference needs a band_id")
    image_path = os.path.normpath(os.path.join(base_dir, image.strip()))
    if not os.path.isfile(image_path):
        raise _BadRow(f"image not found: {image_path}")
    return ReferenceEntry(image_path, kind, band_id, album_id, regions, line, source)


# -- JSON ------------------------------------------------------------------------------------------------


def _parse_json(file: Path, text: str) -> ParsedCatalog:
    """Our JSON format: ``{"bands": [...], "albums": [...], "references": [...]}``; line = entry index+1."""
    source = file.name
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    sections = ("bands", "albums", "references")
    if not isinstance(data, dict) or not any(key in data for key in sections):
        raise CatalogError(f"{source}: unknown JSON shape; expected an object with bands/albums/references")
    for key in sections:
        if not isinstance(data.get(key, []), list):
            raise CatalogError(f"{source}: {key!r} must be a list")

    collector = _Collector(ParsedCatalog(sources=[source], format=FORMAT_JSON))
    for section, handler in (("bands", _json_band), ("albums", _json_album), ("references", _json_reference)):
        collector.prefix = f"{section}: "
        for index, entry in enumerate(data.get(section, [])):
            line = index + 1
            try:
                if not isinstance(entry, dict):
                    raise _BadRow(f"entry must be an object, got {type(entry).__name__}")
                handler(collector, entry, file, line)
            except ValueError as exc:  # _BadRow, or a model constructor's check
                collector.error(source, line, f"{section}: {exc}")
    return collector.finish()


def _require(entry: Mapping[str, Any], names: tuple[str, ...]) -> None:
    missing = [name for name in names if entry.get(name) in (None, "")]
    if missing:
        raise _BadRow(f"missing required field(s): {', '.join(missing)}")


def _json_band(collector: _Collector, entry: Mapping[str, Any], file: Path, line: int) -> None:
    _require(entry, ("band_id", "name"))
    values = {name: entry[name] for name in _BAND_FIELDS if name in entry}
    for name in _BAND_LIST_FIELDS:
        if values.get(name) is None:
            values.pop(name, None)
        elif not isinstance(values[name], list):
            raise _BadRow(f"{name} must be a list of strings, got {type(values[name]).__name__}")
    collector.add_band(Band(**values), file.name, line)


def _json_album(collector: _Collector, entry: Mapping[str, Any], file: Path, line: int) -> None:
    _require(entry, ("album_id", "band_id", "title"))
    album = Album(**{name: entry[name] for name in _ALBUM_FIELDS if name in entry})
    collector.add_album(album, file.name, line)


def _json_reference(collector: _Collector, entry: Mapping[str, Any], file: Path, line: int) -> None:
    raw_regions = entry.get("regions") or []
    if not isinstance(raw_regions, list):
        raise _BadRow("regions must be a list of [x1, y1, x2, y2] boxes")
    regions = []
    for number, box in enumerate(raw_regions, start=1):
        if not isinstance(box, list):
            raise _BadRow(f"region {number}: box must be a list [x1, y1, x2, y2], got {box!r}")
        try:
            regions.append(validate_box(box))
        except ValueError as exc:
            raise _BadRow(f"region {number}: {exc}") from None
    reference = _make_reference(
        file.parent,
        file.name,
        line,
        entry.get("image"),
        entry.get("kind"),
        entry.get("band_id"),
        entry.get("album_id"),
        tuple(regions),
    )
    collector.add_reference(reference)


# -- CSV -------------------------------------------------------------------------------------------------


class _CsvTable:
    """A CSV file's header plus an iterator of ``(line, row)``; bad rows are reported, not yielded."""

    def __init__(self, file: Path, text: str, errors: list[RowError]) -> None:
        self.source = file.name
        self._errors = errors
        self._reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(self._reader)
        except StopIteration:
            raise CatalogError(f"{self.source}: empty file") from None
        except csv.Error as exc:
            raise CatalogError(f"{self.source}: not a CSV file ({exc})") from None
        self.header = [_clean(cell).lower() for cell in header]
        if len(self.header) < 2:
            raise CatalogError(f"{self.source}: not a catalog CSV (header has {len(self.header)} column)")

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """Yield (first line of the row, cells); skip blank lines; report rows with the wrong field count."""
        width = len(self.header)
        previous_end = self._reader.line_num
        while True:
            start = previous_end + 1
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self._errors.append(RowError(self.source, start, f"unreadable CSV row: {exc}"))
                if self._reader.line_num == previous_end:  # no progress: give up on the rest
                    return
                previous_end = self._reader.line_num
                continue
            previous_end = self._reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != width:
                self._errors.append(RowError(self.source, start, f"expected {width} fields, got {len(row)}"))
                continue
            yield start, row


def _parse_csv_file(file: Path, text: str) -> ParsedCatalog:
    collector = _Collector(ParsedCatalog(sources=[file.name]))
    table = _CsvTable(file, text, collector.parsed.errors)
    header = table.header
    if header == _MA_BANDS_HEADER:
        collector.parsed.format = FORMAT_MA_BANDS
        _parse_ma_bands(collector, table)
        sibling = _albums_sibling(file)
        if sibling is not None:
            _parse_ma_albums_file(collector, sibling)
    elif header == _MA_ALBUMS_HEADER:
        collector.parsed.format = FORMAT_MA_ALBUMS
        _parse_ma_albums(collector, table)
    elif header[1:] == _MB2017_HEADER_TAIL and header[0] in _INDEX_HEADERS:
        collector.parsed.format = FORMAT_MB2017
        _parse_mb2017(collector, table)
    elif {"image", "kind"} <= set(header):
        collector.parsed.format = FORMAT_CSV_REFERENCES
        _parse_csv_references(collector, table, file.parent)
    elif {"album_id", "band_id", "title"} <= set(header):
        collector.parsed.format = FORMAT_CSV_ALBUMS
        _parse_csv_albums(collector, table)
    elif {"band_id", "name"} <= set(header):
        collector.parsed.format = FORMAT_CSV_BANDS
        _parse_csv_bands(collector, table)
    else:
        raise CatalogError(f"{file.name}: unknown CSV shape (header {','.join(header)})")
    return collector.finish()


def _albums_sibling(bands_file: Path) -> Path | None:
    """``death_metal_bands.csv`` -> ``death_metal_albums.csv`` next to it, if that file exists."""
    stem = bands_file.stem
    if "bands" not in stem:
        return None
    head, _, tail = stem.rpartition("bands")
    candidate = bands_file.with_name(f"{head}albums{tail}{bands_file.suffix}")
    return candidate if candidate.is_file() else None


# Our CSV formats: empty cell = missing; list fields separated by "|".


def _parse_csv_bands(collector: _Collector, table: _CsvTable) -> None:
    columns = [(index, name) for index, name in enumerate(table.header) if name in _BAND_FIELDS]
    for line, row in table.rows():
        try:
            values: dict[str, Any] = {}
            for index, name in columns:
                cell = row[index]
                if name in _BAND_LIST_FIELDS:
                    values[name] = _split_list(cell, "|")
                elif name == "formed_in":
                    values[name] = _optional_int(cell, name)
                else:
                    values[name] = _optional(cell)
            _require(values, ("band_id", "name"))
            collector.add_band(Band(**values), table.source, line)
        except ValueError as exc:
            collector.error(table.source, line, str(exc))


def _parse_csv_albums(collector: _Collector, table: _CsvTable) -> None:
    columns = [(index, name) for index, name in enumerate(table.header) if name in _ALBUM_FIELDS]
    for line, row in table.rows():
        try:
            values: dict[str, Any] = {}
            for index, name in columns:
                values[name] = _optional_int(row[index], name) if name == "year" else _optional(row[index])
            _require(values, ("album_id", "band_id", "title"))
            collector.add_album(Album(**values), table.source, line)
        except ValueError as exc:
            collector.error(table.source, line, str(exc))


def _parse_regions(text: str) -> tuple[Box, ...]:
    """``"x1 y1 x2 y2;x1 y1 x2 y2"`` -> boxes (commas between numbers are accepted too)."""
    boxes: list[Box] = []
    for number, part in enumerate((p for p in text.split(";") if p.strip()), start=1):
        cells = part.replace(",", " ").split()
        if not all(_UINT_RE.fullmatch(cell) for cell in cells):
            raise _BadRow(f"region {number}: box values must be non-negative integers, got {part.strip()!r}")
        try:
            boxes.append(validate_box(int(cell) for cell in cells))
        except ValueError as exc:
            raise _BadRow(f"region {number}: {exc}") from None
    return tuple(boxes)


def _parse_csv_references(collector: _Collector, table: _CsvTable, base_dir: Path) -> None:
    index = {name: table.header.index(name) for name in _REFERENCE_FIELDS if name in table.header}

    def cell(row: list[str], name: str) -> str | None:
        return _optional(row[index[name]]) if name in index else None

    for line, row in table.rows():
        try:
            reference = _make_reference(
                base_dir,
                table.source,
                line,
                cell(row, "image"),
                cell(row, "kind"),
                cell(row, "band_id"),
                cell(row, "album_id"),
                _parse_regions(cell(row, "regions") or ""),
            )
            collector.add_reference(reference)
        except ValueError as exc:
            collector.error(table.source, line, str(exc))


# The scraped Metal Archives tables (death_metal_bands.csv / death_metal_albums.csv).

_NA = ("N/A",)


def _parse_ma_bands(collector: _Collector, table: _CsvTable) -> None:
    for line, row in table.rows():
        try:
            raw_id, name, country, status, formed_in, genre, theme, active = row
            if not _UINT_RE.fullmatch(raw_id.strip()):
                raise _BadRow(f"id must be a whole number, got {raw_id!r}")
            if not _clean(name):
                raise _BadRow("missing band name")
            band = Band(
                band_id=f"ma-{int(raw_id)}",
                name=_clean(name),
                country=_optional(country, missing=_NA),
                status=_optional(status, missing=_NA),
                formed_in=_optional_int(formed_in, "formed_in", missing=_NA),
                genre=_optional(genre, missing=_NA),
                themes=_split_list(theme, "|", missing=_NA),
                years_active=_optional(active, missing=_NA),
            )
            collector.add_band(band, table.source, line)
        except ValueError as exc:
            collector.error(table.source, line, str(exc))


def _parse_ma_albums_file(collector: _Collector, file: Path) -> None:
    """Parse the albums table that sits next to a bands table, into the same result."""
    try:
        table = _CsvTable(file, _read_text(file), collector.parsed.errors)
    except CatalogError as exc:
        collector.error(file.name, 1, f"albums file ignored: {exc}")
        return
    if table.header != _MA_ALBUMS_HEADER:
        collector.error(file.name, 1, f"albums file ignored: header is not {','.join(_MA_ALBUMS_HEADER)}")
        return
    collector.parsed.sources.append(file.name)
    _parse_ma_albums(collector, table)


def _parse_ma_albums(collector: _Collector, table: _CsvTable) -> None:
    # Titles are not split on "|": the scrape replaced commas with "| ", so "War| Hate" is one title.
    for line, row in table.rows():
        try:
            raw_id, raw_band, title, year = row
            if not _UINT_RE.fullmatch(raw_id.strip()):
                raise _BadRow(f"id must be a whole number, got {raw_id!r}")
            if not _UINT_RE.fullmatch(raw_band.strip()):
                raise _BadRow(f"band must be a band id (whole number), got {raw_band!r}")
            if not _clean(title):
                raise _BadRow("missing album title")
            album = Album(
                album_id=f"ma-album-{int(raw_id)}",
                band_id=f"ma-{int(raw_band)}",
                title=_clean(title),
                year=_optional_int(year, "year", missing=_NA),
            )
            collector.add_album(album, table.source, line)
        except ValueError as exc:
            collector.error(table.source, line, str(exc))


# The metalstorm "metal bands by nation" table (metal_bands_2017.csv).


def _parse_mb2017(collector: _Collector, table: _CsvTable) -> None:
    seen: dict[tuple[str, ...], int] = {}
    for line, row in table.rows():
        try:
            raw_index, name, _fans, formed, origin, split, style = row
            content = tuple(_clean(cell) for cell in row[1:])
            if content in seen:
                raise _BadRow(f"duplicate of line {seen[content]} (same band, every column equal); skipped")
            if not _UINT_RE.fullmatch(raw_index.strip()):
                raise _BadRow(f"index must be a whole number, got {raw_index!r}")
            if not _clean(name):
                raise _BadRow("missing band_name")
            formed_in = _optional_int(formed, "formed", missing=("-",))
            status, years_active = _mb2017_status(formed_in, _clean(split))
            countries = _split_list(origin, ",")
            styles = _split_list(style, ",")
            band = Band(
                band_id=f"mb2017-{int(raw_index)}",
                name=_clean(name),
                country=", ".join(countries) or None,
                status=status,
                formed_in=formed_in,
                genre=", ".join(styles) or None,
                years_active=years_active,
            )
            seen[content] = line
            collector.add_band(band, table.source, line)
        except ValueError as exc:
            collector.error(table.source, line, str(exc))


def _mb2017_status(formed_in: int | None, split: str) -> tuple[str | None, str | None]:
    """(status, years_active) from the ``split`` column: ``-`` = still active, else the split-up year.

    The scrape often copied ``formed`` into ``split`` and has split years after 2017; those say nothing
    reliable, so they give (None, None) rather than invented facts.
    """
    if not split:
        return None, None
    if split == "-":
        return "Active", f"{formed_in}-present" if formed_in is not None else None
    if not _UINT_RE.fullmatch(split):
        raise _BadRow(f"split must be a year or '-', got {split!r}")
    year = int(split)
    if formed_in is not None and formed_in < year <= _MB2017_SCRAPE_YEAR:
        return "Split-up", f"{formed_in}-{year}"
    return None, None
