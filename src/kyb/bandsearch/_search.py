"""Band search: the meaning of the words, the catalog's name matching and structured filters, in one
ranking; and the bands nearest to a band.

A query's score for a band is the cosine similarity of their vectors, plus ``weights.name`` times how
closely the query spells the band's name (difflib's ratio of the folded strings, for the bands the
catalog's name search matched: exact, prefix, substring and, on Postgres, trigram), plus
``weights.country`` when the band is from a country the query names (in English or another language,
see :func:`~kyb.bandsearch._facets.find_countries`). A name typed exactly always ranks first. Without
the model (an optional extra) or without band vectors, the search is the catalog's name search with
the same filters, and the answer carries a one-line notice saying so.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kyb.catalog import Band, Catalog, normalize_name
from kyb.errors import InvalidRequest, KybError

from ._embedder import Embedder, load_embedder
from ._facets import NO_FILTERS, SearchFilters, find_countries
from ._index import CLOCK_SLACK_S, BandIndex, SyncReport, load_band_index, sync_band_index
from ._vectors import RefreshReport, refresh_band_vectors

__all__ = [
    "MAX_LIMIT",
    "MAX_QUERY",
    "BandHit",
    "BandSearch",
    "BandSearchRefresher",
    "SearchAnswer",
    "SearchWeights",
    "SimilarBand",
    "band_index_folder",
]

log = logging.getLogger(__name__)

#: Longest query and most bands one search returns.
MAX_QUERY, MAX_LIMIT = 200, 100
#: Bands asked from the name search and from the vectors before ranking (more than any page).
NAME_CANDIDATES, MEANING_CANDIDATES = 50, 100
#: What a service answers while its band search has not opened (or the catalog has no band vectors).
NOT_READY_NOTICE = (
    "band search by meaning is not ready (no band vectors in the catalog yet, or the model is still loading); "
    "searching names only"
)
#: A name the query does not contain counts only when spelled this closely: one or two typos in a
#: name of seven letters or more keep difflib's ratio above it, a phrase that shares a word does not.
FUZZY_NAME_MIN = 0.8
#: Queries of more words than this are not looked up as misspelt names (they are descriptions).
FUZZY_NAME_WORDS = 4
#: Added to an exact name's score: more than any other band can reach.
EXACT_NAME_BONUS = 10.0


@dataclass(frozen=True)
class SearchWeights:
    """How the parts of a score add up (chosen on the tune half of benchmarks/bench_semantic.py)."""

    #: Times the name similarity in [0, 1].
    name: float = 0.5
    #: Added when the band's country is one the query names.
    country: float = 0.2


@dataclass(frozen=True)
class BandHit:
    """One band a search found, with what its score is made of."""

    band: Band
    score: float
    #: Cosine similarity of the query's and the band's vectors (None when the search had no vectors).
    similarity: float | None
    #: How closely the query spells the name: 1.0 for the exact (folded) name.
    name_match: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.band.to_dict(),
            "score": round(self.score, 4),
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "name_match": round(self.name_match, 4),
        }


@dataclass
class SearchAnswer:
    """The bands found for one query, best first, and how they were found."""

    query: str
    filters: SearchFilters
    hits: list[BandHit]
    #: ``"meaning+name"`` or ``"name"`` (no model, or no band vectors yet).
    mode: Literal["meaning+name", "name"]
    #: One line for a person when the search could not use the meaning of the words; else "".
    notice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "filters": self.filters.to_dict(),
            "mode": self.mode,
            "notice": self.notice,
            "bands": [hit.to_dict() for hit in self.hits],
        }


@dataclass(frozen=True)
class SimilarBand:
    """A band near another one by genre, themes and country (cosine similarity of their vectors)."""

    band_id: str
    name: str
    genre: str | None
    country: str | None
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "band_id": self.band_id,
            "name": self.name,
            "genre": self.genre,
            "country": self.country,
            "similarity": round(self.similarity, 4),
        }


def name_similarity(folded_query: str, folded_name: str) -> float:
    """How closely a folded query spells a folded name, in [0, 1] (1 only when they are equal)."""
    if folded_query == folded_name:
        return 1.0
    return min(0.99, difflib.SequenceMatcher(None, folded_query, folded_name, autojunk=False).ratio())


def check_query(query: str, limit: int) -> str:
    """The stripped query; InvalidRequest for an empty or too long one, or a bad limit."""
    text = query.strip()
    if not 0 < len(text) <= MAX_QUERY:
        raise InvalidRequest(f"query must have 1..{MAX_QUERY} characters")
    if not 0 < limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be in 1..{MAX_LIMIT}")
    return text


class BandSearch:
    """Searches one catalog's bands; holds the model (when installed) and the loaded band index.

    Build it with :meth:`open`. Safe for concurrent searches; :meth:`refresh` builds the next index
    generation and swaps it in, so searches never see a half-updated one.
    """

    def __init__(
        self,
        catalog: Catalog,
        folder: Path | str,
        *,
        embedder: Embedder | None,
        index: BandIndex | None,
        notice: str = "",
        weights: SearchWeights = SearchWeights(),
    ) -> None:
        self.catalog = catalog
        self.folder = Path(folder)
        self.embedder = embedder
        self.weights = weights
        self._index = index
        self._model_notice = notice
        self._bands_stamp: float | None = None
        self._refresh_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        catalog: Catalog,
        folder: Path | str,
        *,
        embedder: Embedder | Literal["auto"] | None = "auto",
        sync: bool = True,
        weights: SearchWeights = SearchWeights(),
    ) -> BandSearch:
        """The search over ``catalog`` with its band index in ``folder``.

        ``embedder="auto"`` loads the model when it is installed (a few seconds); None searches names
        (and similar bands from vectors already stored). ``sync`` brings the index up to date with the
        catalog's vectors first (cheap when nothing changed).
        """
        notice = ""
        if embedder == "auto":
            embedder, notice = load_embedder()
        model = embedder.model if embedder is not None else _stored_model(catalog, Path(folder))
        index = None
        if model is not None:
            if sync:
                index, report = sync_band_index(catalog, folder, model)
                if report.saved:
                    log.info("%s", report.line())
            else:
                index = load_band_index(folder)
                if index is not None and index.model != model:
                    index = None
        return cls(catalog, folder, embedder=embedder, index=index, notice=notice, weights=weights)

    @property
    def index(self) -> BandIndex | None:
        return self._index

    @property
    def semantic(self) -> bool:
        """Whether searches use the meaning of the words (model loaded and band vectors present)."""
        return self.embedder is not None and self._index is not None

    def notice(self) -> str:
        """Why a search is by name only ("" when it is not)."""
        if self.embedder is None:
            return self._model_notice or "band search by meaning is off (no model); searching names only"
        if self._index is None:
            return "band search by meaning has no band vectors yet (run `kyb catalog embed`); searching names only"
        return ""

    # ------------------------------------------------------------------ searching
    def search(self, query: str, *, filters: SearchFilters = NO_FILTERS, limit: int = 20) -> SearchAnswer:
        """The best ``limit`` bands for ``query`` that pass ``filters``; InvalidRequest for bad input."""
        text = check_query(query, limit)
        folded = normalize_name(text)
        # Close spellings only for what could be a misspelt name: on Postgres a trigram search for a
        # sentence matches most names and took 0.6 s for 8 words over 37k bands.
        fuzzy = len(folded.split()) <= FUZZY_NAME_WORDS
        by_name = [
            band
            for band in self.catalog.find_bands(text, limit=max(NAME_CANDIDATES, 3 * limit), fuzzy=fuzzy)
            if filters.admits(band.country, band.status, band.formed_in)
        ]
        index, embedder = self._index, self.embedder
        if index is None or embedder is None:
            matches = [(band, name_similarity(folded, band.name_norm)) for band in by_name[:limit]]
            hits = [BandHit(band, match, None, match) for band, match in matches]
            return SearchAnswer(text, filters, hits, "name", self.notice())

        rewritten, countries = find_countries(text)
        vector = embedder.embed([rewritten])[0]
        depth = max(MEANING_CANDIDATES, 2 * limit)
        similarity = dict(index.search(vector, depth, filters))
        for code in countries[:2]:
            if filters.country in (None, code):
                narrowed = SearchFilters(country=code, status=filters.status, formed=filters.formed)
                similarity.update(index.search(vector, depth, narrowed))
        known = {band.band_id: band for band in by_name}
        # Only names the catalog's name search matched count as a name match: a ratio against every
        # band's name would reward names that merely share letters with a descriptive query.
        spelled = set(known)
        for band_id in known:
            if band_id not in similarity:
                band_vector = index.vector(band_id)
                similarity[band_id] = float(band_vector @ vector) if band_vector is not None else 0.0

        weights = self.weights
        scored: list[tuple[float, str, float]] = []
        for band_id, cosine in similarity.items():
            match = 0.0
            if band_id in spelled:
                name = known[band_id].name_norm
                match = name_similarity(folded, name)
                if match < FUZZY_NAME_MIN and folded not in name:
                    match = 0.0  # only trigram-alike: another phrase sharing words, not a misspelt name
            score = cosine + weights.name * match
            if countries and index.country_matches(band_id, countries):
                score += weights.country
            if match == 1.0:
                score += EXACT_NAME_BONUS
            scored.append((score, band_id, match))
        scored.sort(key=lambda item: (-item[0], item[1]))
        # Read only the bands that can make the page (a few spare for vectors whose band is gone:
        # the index catches up on its next sync).
        top = scored[: limit + 10]
        known.update(self.catalog.get_bands([band_id for _, band_id, _ in top if band_id not in known]))
        hits = [
            BandHit(known[band_id], score, similarity[band_id], match)
            for score, band_id, match in top
            if band_id in known
        ]
        return SearchAnswer(text, filters, hits[:limit], "meaning+name", "")

    def similar(self, band_id: str, limit: int = 5) -> list[SimilarBand]:
        """The ``limit`` bands nearest to ``band_id`` by its vector, never the band itself."""
        return self.similar_many([band_id], limit).get(band_id, [])

    def similar_many(self, band_ids: list[str], limit: int = 5) -> dict[str, list[SimilarBand]]:
        """:meth:`similar` for several bands with one catalog read; bands without a vector map to []."""
        index = self._index
        if index is None or limit <= 0:
            return {band_id: [] for band_id in band_ids}
        nearest = {band_id: index.similar(band_id, limit) for band_id in dict.fromkeys(band_ids)}
        bands = self.catalog.get_bands([other for pairs in nearest.values() for other, _ in pairs])
        return {
            band_id: [
                SimilarBand(other, bands[other].name, bands[other].genre, bands[other].country, cosine)
                for other, cosine in pairs
                if other in bands and other != band_id
            ]
            for band_id, pairs in nearest.items()
        }

    # ------------------------------------------------------------------ keeping up with the catalog
    def refresh(
        self, *, rebuild: bool = False, progress: Callable[[int], None] | None = None
    ) -> tuple[RefreshReport | None, SyncReport | None]:
        """Embed the bands written since the last refresh (all of them the first time, or with
        ``rebuild``), then sync the band index and swap it in. Without a model only the sync runs."""
        with self._refresh_lock:
            refreshed = None
            if self.embedder is not None:
                since = None if rebuild or self._bands_stamp is None else self._bands_stamp - CLOCK_SLACK_S
                refreshed = refresh_band_vectors(
                    self.catalog, self.embedder, updated_after=since, rebuild=rebuild, progress=progress
                )
                if refreshed.scanned:
                    self._bands_stamp = max(self._bands_stamp or 0.0, refreshed.bands_stamp)
            model = self.embedder.model if self.embedder is not None else _stored_model(self.catalog, self.folder)
            if model is None:
                return refreshed, None
            index, synced = sync_band_index(self.catalog, self.folder, model, current=self._index, rebuild=rebuild)
            self._index = index
            return refreshed, synced

    def missing_vectors(self) -> int:
        """Bands in the catalog that the loaded index has no vector for."""
        count, _ = self.catalog.band_stamp()
        return max(0, count - (len(self._index) if self._index is not None else 0))


def band_index_folder(config: Any) -> Path:
    """Where an :class:`~kyb.config.EngineConfig` keeps the band index."""
    if config.band_index_dir is not None:
        return Path(config.band_index_dir)
    return Path(config.index_dir).parent / "bands"


def _stored_model(catalog: Catalog, folder: Path) -> str | None:
    """The model of the vectors already there: the folder's index, else the catalog's newest."""
    try:
        saved = load_band_index(folder)
    except KybError as exc:
        log.warning("%s", exc)
        saved = None
    if saved is not None:
        return saved.model
    models = catalog.band_vector_models()
    return models[0] if models else None


class BandSearchRefresher:
    """A :class:`BandSearch` opened and kept current by a background thread (for long-running services).

    :meth:`current` answers by name until the first open has finished (``ready`` is set then, failed
    or not). The model is loaded only once the catalog holds band vectors, so a service whose catalog
    has none never pays for it. Every ``interval_s`` the thread embeds new or changed bands and swaps
    in the next index generation.
    """

    def __init__(
        self,
        catalog: Catalog,
        folder: Path | str,
        *,
        interval_s: float = 30.0,
        embedder: Embedder | Literal["auto"] | None = "auto",
    ) -> None:
        self.catalog = catalog
        self.folder = Path(folder)
        self.interval_s = interval_s
        self.embedder = embedder
        self.ready = threading.Event()
        self._search: BandSearch | None = None
        self._by_name = BandSearch(catalog, folder, embedder=None, index=None, notice=NOT_READY_NOTICE)
        self._stop = threading.Event()
        self._step_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> BandSearchRefresher:
        self._thread = threading.Thread(target=self._run, name="kyb-band-search", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def current(self) -> BandSearch:
        """The search to use now: the refreshed one, or a name-only one until it is ready."""
        return self._search if self._search is not None else self._by_name

    def refresh_now(self) -> BandSearch:
        """Run one refresh in the caller's thread (what the thread does every ``interval_s``)."""
        with self._step_lock:
            self._step()
        return self.current()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._step_lock:
                    self._step()
            except KybError as exc:
                log.warning("band search refresh failed: %s", exc)
            except Exception:  # a background thread must not die silently: log it and try again later
                log.exception("band search refresh failed")
            finally:
                self.ready.set()
            self._stop.wait(self.interval_s)

    def _step(self) -> None:
        if self._search is not None:
            self._search.refresh()
            return
        if not self.catalog.band_vector_models():
            return  # nothing to search by meaning yet: ask again next time
        search = BandSearch.open(self.catalog, self.folder, embedder=self.embedder)
        search.refresh()
        self._search = search
        log.info("band search ready: %s", search.notice() or f"{len(search.index or [])} bands by meaning")
