"""Band search by name and by meaning, with filters, and the bands similar to a band.

Each band gets a vector (all-MiniLM-L6-v2, an optional extra: ``pip install
'know-your-bands[semantic]'``) of its genre, lyrical themes, country and name, stored with the band
in the catalog and versioned by model; an hnswlib index over them is kept in a folder and switched
atomically like the reference index. :class:`BandSearch` ranks bands by the meaning of a query, the
catalog's name matching (an exact name first) and filters on country, status and year formed;
without the model it is the catalog's name search with the same filters. docs/band-search.md has the
design and its measurements.

::

    search = BandSearch.open(catalog, ".kyb/bands")
    answer = search.search("Swedish melodic death metal about war", filters=SearchFilters(status="active"))
    similar = search.similar(answer.hits[0].band.band_id)
"""

from ._embedder import INSTALL_HINT, MODEL_PACKAGE, Embedder, SentenceEmbedder, load_embedder
from ._facets import (
    STATUSES,
    SearchFilters,
    country_code,
    country_name,
    find_countries,
    parse_country,
    parse_formed,
    parse_status,
)
from ._index import BandIndex, SyncReport, load_band_index, sync_band_index
from ._search import (
    MAX_LIMIT,
    MAX_QUERY,
    BandHit,
    BandSearch,
    BandSearchRefresher,
    SearchAnswer,
    SearchWeights,
    SimilarBand,
    band_index_folder,
    check_query,
)
from ._vectors import RefreshReport, band_text, refresh_band_vectors

__all__ = [
    "INSTALL_HINT",
    "MAX_LIMIT",
    "MAX_QUERY",
    "MODEL_PACKAGE",
    "STATUSES",
    "BandHit",
    "BandIndex",
    "BandSearch",
    "BandSearchRefresher",
    "Embedder",
    "RefreshReport",
    "SearchAnswer",
    "SearchFilters",
    "SearchWeights",
    "SentenceEmbedder",
    "SimilarBand",
    "SyncReport",
    "band_index_folder",
    "band_text",
    "check_query",
    "country_code",
    "country_name",
    "find_countries",
    "load_band_index",
    "load_embedder",
    "parse_country",
    "parse_formed",
    "parse_status",
    "refresh_band_vectors",
    "sync_band_index",
]
