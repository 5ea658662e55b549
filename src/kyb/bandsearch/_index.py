"""The band index: an hnswlib graph over the catalog's band vectors, with each band's filter fields.

Layout of the folder (rebuildable from the catalog's ``band_vectors`` table alone)::

    CURRENT              name of the live generation, replaced atomically
    gen-000007/
        manifest.json    model, dimensions, counts, the catalog stamp it is current to
        graph.hnsw       hnswlib graph (inner product over unit vectors = cosine)
        bands.npz        per label: band id, country, status, year formed, row digest, alive

A sync loads the current generation into a new :class:`BandIndex`, applies the vectors the catalog
wrote since (incremental: only rows whose digest changed), writes a new generation beside the old one
(temp folder, fsync, rename) and swaps ``CURRENT`` (temp file, fsync, rename), so a process killed at
any point leaves the previous generation loadable, as the reference index does. A loaded
:class:`BandIndex` is never changed: readers keep the one they have while a sync builds the next.

Graph parameters (hnswlib's ALGO_PARAMS): ``M = 16`` links per node (about 8·M bytes per band on top
of its 1,536-byte vector), ``ef_construction = 100`` and ``ef = 256`` at query time; with a filter
that leaves fewer than :data:`EXACT_SEARCH_MAX` bands the allowed vectors are compared exactly instead,
since a graph walk with a narrow filter visits most of the graph.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from kyb.catalog import BandVector, Catalog
from kyb.errors import IndexCorrupt
from kyb.generations import publish_generation, stage_generation, writer_lock

from ._facets import NO_FILTERS, STATUSES, SearchFilters, country_code, status_slug
from ._vectors import unpack_vectors

__all__ = ["EXACT_SEARCH_MAX", "EXACT_SEARCH_SHARE", "BandIndex", "SyncReport", "load_band_index", "sync_band_index"]

log = logging.getLogger(__name__)

FORMAT = 1
M = 16
EF_CONSTRUCTION = 100
EF_SEARCH = 256
#: A filter that leaves at most this many bands is answered by comparing their vectors exactly.
EXACT_SEARCH_MAX = 20_000
#: ... and so is one that leaves less than this share of the index: hnswlib's filtered walk keeps
#: ``ef`` candidates, and with 3 % of 1M bands allowed it ended with fewer than k (found by
#: benchmarks/bench_semantic.py at 1M bands).
EXACT_SEARCH_SHARE = 0.05
#: Rows written this many seconds before the last sync are read again: a writer whose transaction
#: took its timestamp before the sync but committed after it is still seen (re-reading is harmless).
CLOCK_SLACK_S = 120.0
#: Deleted labels stay in the graph until they are this share of it; then a sync rebuilds it.
REBUILD_DELETED_SHARE = 0.2
_PAGE = 2000


def _code_number(code: str) -> int:
    """An alpha-2 code as a small number (its two letters in base 27; 0 is left for "none")."""
    return (ord(code[0]) - 64) * 27 + (ord(code[1]) - 64)


def _country_number(text: str | None) -> int:
    code = country_code(text)
    return _code_number(code) if code and len(code) == 2 and code.isalpha() else 0


def _status_number(text: str | None) -> int:
    slug = status_slug(text)
    return STATUSES.index(slug) + 1 if slug in STATUSES else 0


def _row_digest(row: BandVector) -> int:
    """What decides that a label must be rewritten: its vector bytes and filter fields."""
    text = f"{row.country}\x00{row.status}\x00{row.formed_in}\x00".encode()
    return int.from_bytes(hashlib.blake2b(text + row.vector, digest_size=8).digest(), "little")


@dataclass
class SyncReport:
    """What one :func:`sync_band_index` did."""

    model: str
    bands: int = 0
    added: int = 0
    updated: int = 0
    deleted: int = 0
    rebuilt: bool = False
    saved: bool = False
    generation: int = 0
    elapsed_s: float = 0.0

    def line(self) -> str:
        what = "rebuilt" if self.rebuilt else "updated"
        where = f"generation {self.generation}" if self.saved else "already current"
        return (
            f"band index ({self.model}): {self.bands} bands, {what}: {self.added} added, {self.updated} changed, "
            f"{self.deleted} removed; {where} ({self.elapsed_s:.1f} s)"
        )


@dataclass
class BandIndex:
    """One generation of the band index in memory: never modified once a sync has returned it."""

    model: str
    dim: int
    graph: hnswlib.Index
    band_ids: list[str]
    country: np.ndarray  # (n,) uint16, 0 = unknown
    status: np.ndarray  # (n,) uint8, 0 = unknown
    formed: np.ndarray  # (n,) int16, 0 = unknown
    digest: np.ndarray  # (n,) uint64
    alive: np.ndarray  # (n,) bool
    stamp: float = 0.0
    generation: int = 0
    label_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.label_of:
            self.label_of = {band_id: label for label, band_id in enumerate(self.band_ids) if self.alive[label]}

    def __len__(self) -> int:
        return len(self.label_of)

    @property
    def nbytes(self) -> int:
        """Memory the index holds: the graph (vectors and links) plus the per-band arrays and ids."""
        count = len(self.band_ids)
        graph = self.graph.get_max_elements() * (self.dim * 4 + 8 * M + 24)
        arrays = sum(a.nbytes for a in (self.country, self.status, self.formed, self.digest, self.alive))
        return int(graph + arrays + count * 110)  # ~110 bytes per id: the str and its dict entry

    def vector(self, band_id: str) -> np.ndarray | None:
        """The band's unit vector, or None when it has none."""
        label = self.label_of.get(band_id)
        if label is None:
            return None
        return np.asarray(self.graph.get_items([label], return_type="numpy"), dtype=np.float32)[0]

    def allowed(self, filters: SearchFilters) -> np.ndarray | None:
        """The labels' mask for ``filters`` (None when nothing is filtered)."""
        if not filters:
            return None
        mask = self.alive.copy()
        if filters.country is not None:
            mask &= self.country == _code_number(filters.country)
        if filters.status is not None:
            mask &= self.status == STATUSES.index(filters.status) + 1
        if filters.formed is not None:
            first, last = filters.formed
            mask &= (self.formed >= first) & (self.formed <= last)
        return mask

    def search(
        self,
        vector: np.ndarray,
        k: int,
        filters: SearchFilters = NO_FILTERS,
        *,
        exclude: str | None = None,
        exact_max: int = EXACT_SEARCH_MAX,
    ) -> list[tuple[str, float]]:
        """Up to ``k`` ``(band_id, cosine similarity)`` nearest to ``vector``, best first, every one
        passing ``filters`` (and not ``exclude``). A filter that leaves at most ``exact_max`` bands, or
        less than :data:`EXACT_SEARCH_SHARE` of them, compares the allowed vectors exactly."""
        mask = self.allowed(filters)
        if exclude is not None and exclude in self.label_of:
            mask = self.alive.copy() if mask is None else mask.copy()
            mask[self.label_of[exclude]] = False
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        allowed = len(self) if mask is None else int(mask.sum())
        k = min(k, allowed)
        if k <= 0:
            return []
        if mask is not None and (allowed <= exact_max or allowed < EXACT_SEARCH_SHARE * len(self)):
            return self._exact(query[0], mask, k)
        passes: Callable[[int], bool] | None = None
        if mask is not None:
            allowed_mask = mask

            def passes(label: int) -> bool:
                return bool(allowed_mask[label])

        try:
            labels, distances = self.graph.knn_query(query, k=k, filter=passes)
        except RuntimeError:
            # The walk found fewer than k allowed bands within ef (a filter that is narrow where the
            # query lands): compare the allowed ones exactly rather than answer short.
            if mask is None:
                mask = self.alive
            return self._exact(query[0], mask, k)
        pairs = zip(labels[0], distances[0], strict=True)
        return [(self.band_ids[int(label)], 1.0 - float(distance)) for label, distance in pairs]

    def _exact(self, query: np.ndarray, mask: np.ndarray, k: int) -> list[tuple[str, float]]:
        labels = np.flatnonzero(mask)
        vectors = np.asarray(self.graph.get_items(labels, return_type="numpy"), dtype=np.float32)
        similarity = vectors @ query
        top = np.argpartition(-similarity, k - 1)[:k] if k < len(labels) else np.arange(len(labels))
        top = top[np.argsort(-similarity[top], kind="stable")]
        return [(self.band_ids[int(labels[i])], float(similarity[i])) for i in top]

    def similar(self, band_id: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` bands nearest to ``band_id``'s vector, the band itself left out ([] without a vector)."""
        vector = self.vector(band_id)
        if vector is None:
            return []
        return self.search(vector, k, exclude=band_id)

    def country_matches(self, band_id: str, codes: list[str]) -> bool:
        """Whether the band's country is one of ``codes`` (alpha-2)."""
        label = self.label_of.get(band_id)
        return label is not None and int(self.country[label]) in {_code_number(code) for code in codes}


# -------------------------------------------------------------------------------- storage
def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _current(folder: Path) -> Path | None:
    try:
        name = (folder / "CURRENT").read_text().strip()
    except FileNotFoundError:
        return None
    path = folder / name
    if not name.startswith("gen-") or not path.is_dir():
        raise IndexCorrupt(f"band index {folder}: CURRENT names {name!r}, which is not a generation folder")
    return path


def load_band_index(folder: Path | str) -> BandIndex | None:
    """The current generation of ``folder`` (None when there is none yet)."""
    path = _current(Path(folder))
    if path is None:
        return None
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("format") != FORMAT:
            raise IndexCorrupt(f"band index {path}: format {manifest.get('format')}, expected {FORMAT}")
        with np.load(path / "bands.npz") as arrays:
            columns = {name: arrays[name] for name in arrays.files}
        graph = hnswlib.Index(space="ip", dim=int(manifest["dim"]))
        graph.load_index(str(path / "graph.hnsw"), max_elements=int(manifest["capacity"]))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise IndexCorrupt(f"band index {path}: unreadable: {exc}") from None
    graph.set_ef(EF_SEARCH)
    band_ids = columns["band_ids"].tolist()
    if len(band_ids) != graph.get_current_count():
        raise IndexCorrupt(f"band index {path}: {len(band_ids)} ids for {graph.get_current_count()} graph rows")
    return BandIndex(
        model=str(manifest["model"]),
        dim=int(manifest["dim"]),
        graph=graph,
        band_ids=band_ids,
        country=columns["country"],
        status=columns["status"],
        formed=columns["formed"],
        digest=columns["digest"],
        alive=columns["alive"].astype(bool),
        stamp=float(manifest["stamp"]),
        generation=int(manifest["generation"]),
    )


def _save(folder: Path, index: BandIndex) -> int:
    """Write ``index`` as the next generation of ``folder`` and make it current; return its number."""
    previous = _current(folder)
    generation, staging, final = stage_generation(folder, index.generation)
    index.graph.save_index(str(staging / "graph.hnsw"))
    _fsync_file(staging / "graph.hnsw")
    width = max((len(band_id) for band_id in index.band_ids), default=1)
    with open(staging / "bands.npz", "wb") as handle:
        np.savez(
            handle,
            band_ids=np.array(index.band_ids, dtype=f"<U{width}"),
            country=index.country,
            status=index.status,
            formed=index.formed,
            digest=index.digest,
            alive=index.alive,
        )
        handle.flush()
        os.fsync(handle.fileno())
    manifest = {
        "format": FORMAT,
        "generation": generation,
        "created": time.time(),
        "model": index.model,
        "dim": index.dim,
        "bands": len(index),
        "labels": len(index.band_ids),
        "capacity": index.graph.get_max_elements(),
        "stamp": index.stamp,
        "M": M,
        "ef_construction": EF_CONSTRUCTION,
    }
    publish_generation(folder, staging, final, manifest, keep=previous)
    index.generation = generation
    return generation


# -------------------------------------------------------------------------------- sync
class _Builder:
    """The next generation while a sync fills it (the graph is a private copy)."""

    def __init__(self, model: str, dim: int, base: BandIndex | None, capacity: int) -> None:
        self.model, self.dim = model, dim
        self.graph = hnswlib.Index(space="ip", dim=dim)
        if base is None:
            self.graph.init_index(max_elements=max(capacity, 1024), M=M, ef_construction=EF_CONSTRUCTION)
            self.band_ids: list[str] = []
            self.columns: dict[str, list[Any]] = {name: [] for name in ("country", "status", "formed", "digest")}
            self.alive: list[bool] = []
            self.generation = 0
        else:
            self.band_ids = list(base.band_ids)
            self.columns = {
                "country": base.country.tolist(),
                "status": base.status.tolist(),
                "formed": base.formed.tolist(),
                "digest": base.digest.tolist(),
            }
            self.alive = base.alive.tolist()
            self.generation = base.generation
        self.label_of = {band_id: label for label, band_id in enumerate(self.band_ids) if self.alive[label]}

    def load_graph(self, path: Path, capacity: int) -> None:
        self.graph.load_index(str(path), max_elements=capacity)

    def apply(self, rows: list[BandVector], report: SyncReport) -> None:
        """Add or rewrite the rows whose digest differs from the label's."""
        changed: list[tuple[int, BandVector]] = []
        for row in rows:
            digest = _row_digest(row)
            label = self.label_of.get(row.band_id)
            if label is not None and self.columns["digest"][label] == digest:
                continue
            if label is None:
                label = len(self.band_ids)
                self.band_ids.append(row.band_id)
                self.alive.append(True)
                for column in self.columns.values():
                    column.append(0)
                self.label_of[row.band_id] = label
                report.added += 1
            else:
                report.updated += 1
            self.columns["country"][label] = _country_number(row.country)
            self.columns["status"][label] = _status_number(row.status)
            self.columns["formed"][label] = row.formed_in if row.formed_in and 0 < row.formed_in < 32767 else 0
            self.columns["digest"][label] = digest
            changed.append((label, row))
        if not changed:
            return
        vectors = unpack_vectors([row.vector for _, row in changed])
        if vectors.shape[1] != self.dim:
            raise IndexCorrupt(f"band vectors of {self.model} have {vectors.shape[1]} dimensions, not {self.dim}")
        needed = len(self.band_ids)
        if needed > self.graph.get_max_elements():
            self.graph.resize_index(max(needed, int(self.graph.get_max_elements() * 1.5)))
        self.graph.add_items(vectors, np.array([label for label, _ in changed], dtype=np.int64))

    def delete_missing(self, present: set[str], report: SyncReport) -> None:
        for band_id, label in list(self.label_of.items()):
            if band_id not in present:
                self.graph.mark_deleted(label)
                self.alive[label] = False
                del self.label_of[band_id]
                report.deleted += 1

    def finish(self, stamp: float) -> BandIndex:
        self.graph.set_ef(EF_SEARCH)
        return BandIndex(
            model=self.model,
            dim=self.dim,
            graph=self.graph,
            band_ids=self.band_ids,
            country=np.array(self.columns["country"], dtype=np.uint16),
            status=np.array(self.columns["status"], dtype=np.uint8),
            formed=np.array(self.columns["formed"], dtype=np.int16),
            digest=np.array(self.columns["digest"], dtype=np.uint64),
            alive=np.array(self.alive, dtype=bool),
            stamp=stamp,
            generation=self.generation,
            label_of=dict(self.label_of),
        )


def _pages(catalog: Catalog, model: str, updated_after: float | None) -> Iterator[list[BandVector]]:
    after = ""
    while True:
        page = catalog.list_band_vectors(model, updated_after=updated_after, after_band_id=after, limit=_PAGE)
        if not page:
            return
        after = page[-1].band_id
        yield page


def sync_band_index(
    catalog: Catalog,
    folder: Path | str,
    model: str,
    *,
    current: BandIndex | None = None,
    rebuild: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[BandIndex | None, SyncReport]:
    """Bring ``folder``'s band index up to date with the catalog's vectors of ``model`` and return it.

    ``current`` is the caller's loaded generation, when it has one (returned as is when nothing changed).
    Incremental unless ``rebuild``, the model changed, or deleted labels pass
    :data:`REBUILD_DELETED_SHARE`. Returns ``(None, report)`` when the catalog has no vectors of ``model``.
    ``progress(n)`` counts vectors read.
    """
    started = time.perf_counter()
    folder = Path(folder)
    report = SyncReport(model)
    with writer_lock(folder):
        count, latest = catalog.band_vector_stamp(model)
        on_disk = _current(folder)
        saved = load_band_index(folder) if on_disk is not None else None
        base = saved if saved is not None and saved.model == model else None
        if current is not None and base is not None and current.generation != base.generation:
            current = None  # another writer saved since the caller loaded: start from the newer one
        if base is not None and not rebuild and base.stamp == latest and len(base) == count:
            report.bands, report.generation = len(base), base.generation
            report.elapsed_s = time.perf_counter() - started
            return (current if current is not None else base), report
        if count == 0:
            report.elapsed_s = time.perf_counter() - started
            return None, report
        deleted_share = 0.0 if base is None else 1.0 - len(base) / max(1, len(base.band_ids))
        if rebuild or base is None or deleted_share > REBUILD_DELETED_SHARE:
            report.rebuilt = True
            first = catalog.list_band_vectors(model, limit=1)
            dim = len(first[0].vector) // 2
            builder = _Builder(model, dim, None, capacity=count)
            updated_after = None
        else:
            builder = _Builder(model, base.dim, base, capacity=0)
            assert on_disk is not None
            builder.load_graph(on_disk / "graph.hnsw", capacity=max(base.graph.get_max_elements(), count))
            updated_after = base.stamp - CLOCK_SLACK_S
        stamp = latest
        for page in _pages(catalog, model, updated_after):
            builder.apply(page, report)
            stamp = max(stamp, max(row.updated_at for row in page))
            if progress:
                progress(len(page))
        if len(builder.label_of) != count:
            builder.delete_missing(set(catalog.band_vector_ids(model)), report)
        index = builder.finish(stamp)
        report.generation = _save(folder, index)
        report.saved = True
        report.bands = len(index)
    report.elapsed_s = time.perf_counter() - started
    return index, report
