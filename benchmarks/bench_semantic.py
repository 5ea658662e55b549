"""Band search by meaning vs the name and keyword searches: relevance, latency, import time, memory.

Usage::

    pip install -e '.[semantic,bench]'
    python benchmarks/bench_semantic.py ../shared/catalog/death_metal_bands.csv \\
        [--postgres postgresql://postgres@127.0.0.1:5432] [--million 1000000] [--text with-name|without-name]

The relevance benchmark is built from the catalog itself. Each query paraphrases catalog fields:
a lyrical theme by a near-synonym that no band's themes use ("armed conflict" for War, Warfare,
Battles), a genre by a description ("melodeath" for Melodic Death Metal), a country by its name in
German, French or Spanish ("Schweden"), alone or combined; and half-remembered names (one typo).
A band is relevant when it has every field the query paraphrases (its themes name one of the
concept's catalog words, its genre has the family's words, its country is that country; for a
name, the band has that name). Queries are dealt to a tune and a test part by a hash of what they
paraphrase (theme concept, genre family, country, or band), so the weights chosen on tune (name
and country, grid below) never saw a test concept. Three searches answer every query in the same
run: the catalog's name search (today's SearchBands), a BM25 keyword search over genre, themes,
country and name (rank-bm25), and the band search. precision@10 counts relevant bands among the
first min(10, relevant) and recall@50 among the first 50, out of min(50, relevant), so a query
with 3 relevant bands can score 1.0 on both.

Then: import time per 10k bands (upsert, embed, index), the search's latency p50/p95 at the
catalog's size and, with --million, at that many generated bands (names from syllables; genre,
themes and country copied from a real band; the vector that band's plus noise, since embedding a
million texts on two cores takes hours), and the band index's memory per band. Everything runs in a
scratch Postgres database (dropped afterwards) and a temporary folder.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg2
from tqdm import tqdm

from kyb.bandsearch import (
    BandSearch,
    SearchWeights,
    band_text,
    load_band_index,
    load_embedder,
    refresh_band_vectors,
    sync_band_index,
)
from kyb.bandsearch._vectors import pack_vector
from kyb.catalog import Band, BandVector, Catalog, normalize_name, open_catalog, parse_catalog_file

# Theme concepts: the catalog words that make a band relevant, and paraphrases no band's themes use.
THEMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "war": (("war", "wars", "warfare", "battle", "battles", "combat"), ("armed conflict", "soldiers fighting")),
    "gore": (("gore", "splatter", "mutilation", "guts"), ("bloody carnage", "graphic bloodshed")),
    "satanism": (("satanism", "satan", "satanic"), ("devil worship", "worshipping lucifer")),
    "anti-religion": (
        ("anti-christianity", "anti-religion", "anti-christian", "blasphemy"),
        ("hatred of the church", "rejecting god and faith"),
    ),
    "occult": (("occultism", "occult", "esoterism", "esotericism"), ("secret magic rituals", "arcane sorcery")),
    "darkness": (("darkness",), ("absence of light", "eternal night and shadows")),
    "hate": (("hate", "hatred", "misanthropy"), ("loathing of mankind", "contempt for humans")),
    "politics": (
        ("politics", "political", "society", "social issues", "social criticism"),
        ("government and the state", "critique of modern civilisation"),
    ),
    "horror": (("horror",), ("scary films", "frightening tales")),
    "murder": (("murder", "killing", "serial killers", "murders"), ("homicide", "people who kill people")),
    "sorrow": (
        ("depression", "sorrow", "sadness", "despair", "melancholy", "misery", "grief"),
        ("feeling blue and hopeless", "mourning and heartache"),
    ),
    "torture": (("torture", "pain", "suffering", "agony"), ("inflicted torment", "cruel punishment")),
    "apocalypse": (("apocalypse", "armageddon", "end of the world"), ("the end times", "doomsday")),
    "fantasy": (("fantasy", "tolkien", "dragons"), ("elves and wizards", "sword and sorcery")),
    "nature": (("nature", "forests", "forest", "wilderness"), ("woods and mountains", "the wild outdoors")),
    "mythology": (
        ("mythology", "paganism", "pagan", "vikings", "norse mythology"),
        ("old gods and legends", "ancient heathen beliefs"),
    ),
    "insanity": (("insanity", "madness", "mental illness", "psychosis"), ("losing one's mind", "lunacy")),
    "zombies": (("zombies", "zombie", "undead"), ("the walking dead", "reanimated corpses")),
    "space": (
        ("space", "sci-fi", "science fiction", "aliens", "cosmos"),
        ("outer space and galaxies", "extraterrestrials"),
    ),
    "drugs": (("drugs", "alcohol", "beer", "partying"), ("getting drunk and high", "booze and narcotics")),
    "suicide": (("suicide",), ("taking one's own life", "self-inflicted death")),
    "lovecraft": (("lovecraft", "cthulhu"), ("the great old ones", "eldritch cosmic dread")),
    "disease": (
        ("disease", "diseases", "sickness", "pathology", "illness"),
        ("plague and contagion", "medical infections"),
    ),
    "history": (("history",), ("events of past centuries", "historical events")),
}
# Genre families: the words a band's genre must contain, and descriptions that avoid them.
GENRES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "melodic death": (("melodic death",), ("melodeath", "death metal with harmonised guitar leads")),
    "brutal death": (("brutal death",), ("savage ultra heavy death metal", "slamming death metal")),
    "technical death": (("technical death",), ("virtuosic complex death metal", "tech-death")),
    "thrash": (("thrash",), ("death metal with fast bay area riffing", "old school speedy riffs")),
    "black": (("black", "blackened"), ("death metal with a grim norwegian edge", "second wave grim and frostbitten")),
    "grind": (("grind",), ("short blast beat noise songs", "extremely fast noisy blasting")),
    "doom": (("doom",), ("slow crushing funereal death metal", "dirge-like slow heaviness")),
    "core": (("core",), ("modern death metal with breakdowns", "breakdown heavy hardcore influenced")),
}
# Countries by their names in other languages (German, French, Spanish), as people type them.
COUNTRIES: dict[str, tuple[str, ...]] = {
    "Sweden": ("Schweden", "Suède", "Suecia"),
    "Germany": ("Deutschland", "Allemagne", "Alemania"),
    "United States": ("Vereinigte Staaten", "États-Unis", "Estados Unidos"),
    "Finland": ("Finnland", "Finlande", "Finlandia"),
    "Norway": ("Norwegen", "Norvège", "Noruega"),
    "Brazil": ("Brasilien", "Brésil", "Brasil"),
    "Poland": ("Polen", "Pologne", "Polonia"),
    "Italy": ("Italien", "Italie", "Italia"),
    "France": ("Frankreich", "Francia"),
    "Netherlands": ("Niederlande", "Pays-Bas", "Países Bajos"),
    "Mexico": ("Mexiko", "Mexique", "México"),
    "Russia": ("Russland", "Russie", "Rusia"),
    "Spain": ("Spanien", "Espagne", "España"),
    "Greece": ("Griechenland", "Grèce", "Grecia"),
    "United Kingdom": ("Vereinigtes Königreich", "Royaume-Uni", "Reino Unido"),
    "Canada": ("Kanada",),
    "Australia": ("Australien", "Australie"),
    "Czech Republic": ("Tschechien", "République tchèque", "República Checa"),
    "Colombia": ("Kolumbien", "Colombie"),
    "Indonesia": ("Indonesien", "Indonésie"),
    "Chile": ("Chili",),
    "Japan": ("Japon", "Japón"),
}
TEMPLATES = {
    "theme": ("{theme}", "bands about {theme}", "lyrics on {theme}"),
    "theme+country": ("{theme} bands from {country}", "{country}: songs about {theme}"),
    "genre+country": ("{genre} from {country}", "{genre} aus {country}"),
    "genre+theme": ("{genre} about {theme}", "{genre} with lyrics on {theme}"),
}
NAME_FAMILY = "name typo"
GRID_NAME = (0.0, 0.15, 0.3, 0.5, 1.0)
GRID_COUNTRY = (0.0, 0.05, 0.1, 0.2)
_WORDS = re.compile(r"[a-z0-9]+")


@dataclass
class Query:
    text: str
    family: str
    part: str  # "tune" or "test"
    relevant: set[str]


@dataclass
class Facets:
    """What the relevance judgements read of a band."""

    themes: dict[str, set[str]] = field(default_factory=dict)  # concept -> band ids
    genres: dict[str, set[str]] = field(default_factory=dict)  # family -> band ids
    countries: dict[str, set[str]] = field(default_factory=dict)  # country -> band ids
    names: dict[str, set[str]] = field(default_factory=dict)  # folded name -> band ids


def _part(key: str) -> str:
    return "tune" if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else "test"


def _facets(bands: list[Band]) -> Facets:
    facets = Facets()
    theme_patterns = {
        concept: re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
        for concept, (words, _) in THEMES.items()
    }
    for band in bands:
        themes = " | ".join(theme.lower() for theme in band.themes)
        for concept, pattern in theme_patterns.items():
            if pattern.search(themes):
                facets.themes.setdefault(concept, set()).add(band.band_id)
        genre = (band.genre or "").lower()
        for family, (words, _) in GENRES.items():
            if any(word in genre for word in words):
                facets.genres.setdefault(family, set()).add(band.band_id)
        if band.country in COUNTRIES:
            facets.countries.setdefault(band.country, set()).add(band.band_id)
        facets.names.setdefault(band.name_norm, set()).add(band.band_id)
    return facets


def _typo(name: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(name) - 2)
    return name[:i] + name[i + 1] + name[i] + name[i + 2 :] if rng.random() < 0.5 else name[:i] + name[i + 1 :]


def build_queries(bands: list[Band], per_family: int, seed: int = 11) -> list[Query]:
    """Queries of every family, each with its relevant bands and its part (tune or test)."""
    rng = random.Random(seed)
    facets = _facets(bands)
    queries: list[Query] = []
    seen: set[str] = set()

    def add(text: str, family: str, key: str, relevant: set[str]) -> None:
        if relevant and text not in seen:
            seen.add(text)
            queries.append(Query(text, family, _part(key), relevant))

    concepts = [c for c in THEMES if len(facets.themes.get(c, ())) >= 5]
    families = [g for g in GENRES if len(facets.genres.get(g, ())) >= 5]
    countries = [c for c in COUNTRIES if len(facets.countries.get(c, ())) >= 20]
    for family, templates in TEMPLATES.items():
        made, tries = 0, 0
        while made < per_family and tries < per_family * 50:
            tries += 1
            concept, genre, country = rng.choice(concepts), rng.choice(families), rng.choice(countries)
            relevant = set(facets.themes[concept]) if "theme" in family else set(facets.genres[genre])
            if "theme" in family and "genre" in family:
                relevant &= facets.genres[genre]
            if "country" in family:
                relevant &= facets.countries[country]
            if not relevant:
                continue
            text = rng.choice(templates).format(
                theme=rng.choice(THEMES[concept][1]),
                genre=rng.choice(GENRES[genre][1]),
                country=rng.choice(COUNTRIES[country]),
            )
            key = concept if "theme" in family else genre
            before = len(queries)
            add(text, family, key, relevant)
            made += len(queries) - before
    named = [band for band in bands if len(band.name) >= 7 and band.name.isascii()]
    for band in rng.sample(named, min(per_family, len(named))):
        add(_typo(band.name, rng), NAME_FAMILY, band.band_id, set(facets.names[band.name_norm]))
    return queries


# -------------------------------------------------------------------------------- searches
class KeywordSearch:
    """BM25 over each band's genre, themes, country and name (the keyword baseline)."""

    def __init__(self, bands: list[Band]) -> None:
        from rank_bm25 import BM25Okapi

        self.ids = [band.band_id for band in bands]
        self.bm25 = BM25Okapi([self.tokens(band_text(band)) for band in bands])

    @staticmethod
    def tokens(text: str) -> list[str]:
        return _WORDS.findall(normalize_name(text))

    def __call__(self, query: str, limit: int) -> list[str]:
        scores = self.bm25.get_scores(self.tokens(query))
        top = np.argpartition(-scores, limit)[:limit]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [self.ids[i] for i in top if scores[i] > 0]


def _scores(ranked: list[str], relevant: set[str]) -> tuple[float, float]:
    precision = len(set(ranked[:10]) & relevant) / min(10, len(relevant))
    recall = len(set(ranked[:50]) & relevant) / min(50, len(relevant))
    return precision, recall


def evaluate(queries: list[Query], search: Callable[[str], list[str]]) -> dict[tuple[str, str], tuple[float, float]]:
    """(part, family) -> mean (precision@10, recall@50); family "all" averages the families."""
    per: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for query in queries:
        per.setdefault((query.part, query.family), []).append(_scores(search(query.text), query.relevant))
    means = {key: (statistics.mean(p for p, _ in v), statistics.mean(r for _, r in v)) for key, v in per.items()}
    for part in ("tune", "test"):
        families = [value for (p, _), value in means.items() if p == part]
        if families:
            means[(part, "all")] = (
                statistics.mean(p for p, _ in families),
                statistics.mean(r for _, r in families),
            )
    return means


class CachedEmbedder:
    """The model with a memo of query vectors, so tuning re-ranks without re-embedding."""

    def __init__(self, embedder: object) -> None:
        self.inner = embedder
        self.model = embedder.model  # type: ignore[attr-defined]
        self.dim = embedder.dim  # type: ignore[attr-defined]
        self.memo: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self.memo]
        if missing:
            for text, vector in zip(missing, self.inner.embed(missing), strict=True):  # type: ignore[attr-defined]
                self.memo[text] = vector
        return np.stack([self.memo[t] for t in texts])


# -------------------------------------------------------------------------------- helpers
_RSS_SCRIPT = """
import sys
from kyb.bandsearch import load_band_index

def rss():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))

before = rss()
index = load_band_index(sys.argv[1])
print((rss() - before) / len(index))
"""


def rss_per_band(folder: Path) -> float:
    """Resident memory a fresh process gains by loading the band index, per band (bytes)."""
    done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(folder)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def _percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


@contextmanager
def scratch_postgres(server: str) -> Iterator[str]:
    name = f"kyb_bench_semantic_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(f"{server}/postgres", connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _timed_queries(search: BandSearch, texts: list[str]) -> tuple[float, float]:
    times = []
    for text in texts:
        started = time.perf_counter()
        search.search(text, limit=10)
        times.append((time.perf_counter() - started) * 1000)
    return _percentiles(times)


def text_without_name(band: Band) -> str:
    """band_text with the name left out (the --text without-name variant)."""
    return band_text(band).rsplit(" Name: ", 1)[0]


def import_catalog_bands(
    catalog: Catalog, bands: list[Band], embedder: object, folder: Path, text_of: Callable[[Band], str]
) -> dict[str, float]:
    """Upsert, embed and index ``bands``; seconds of each step."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    catalog.upsert_bands(bands)
    timings["upsert"] = time.perf_counter() - started
    started = time.perf_counter()
    with tqdm(total=len(bands), desc="embed bands", unit="band", file=sys.stderr) as bar:
        report = refresh_band_vectors(catalog, embedder, progress=bar.update, text_of=text_of)  # type: ignore[arg-type]
    timings["embed"] = time.perf_counter() - started
    assert report.embedded == len(bands), report
    started = time.perf_counter()
    sync_band_index(catalog, folder, embedder.model)  # type: ignore[attr-defined]
    timings["index"] = time.perf_counter() - started
    started = time.perf_counter()
    catalog.upsert_bands(bands)
    again = refresh_band_vectors(catalog, embedder, text_of=text_of)  # type: ignore[arg-type]
    _index, synced = sync_band_index(catalog, folder, embedder.model)  # type: ignore[attr-defined]
    timings["reimport"] = time.perf_counter() - started
    assert again.embedded == 0 and not synced.saved, (again, synced)
    return timings


SYLLABLES = ("mor", "tu", "ary", "dea", "th", "kro", "vok", "zul", "ath", "gor", "nek", "ra", "vel", "sku", "ll")


def generate_million(catalog: Catalog, base: list[Band], vectors: dict[str, np.ndarray], n: int, model: str) -> float:
    """``n`` generated bands (real facets, syllable names, noisy real vectors) into the catalog; seconds."""
    rng = np.random.default_rng(5)
    words = ["".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 5)))).capitalize() for _ in range(50_000)]
    started = time.perf_counter()
    batch = 20_000
    with tqdm(total=n, desc="generated bands", unit="band", file=sys.stderr) as bar:
        for start in range(0, n, batch):
            count = min(batch, n - start)
            picks = rng.integers(0, len(base), count)
            bands, rows = [], []
            noise = rng.normal(0, 0.02, (count, 384)).astype(np.float32)
            for j, pick in enumerate(picks):
                source = base[int(pick)]
                band = Band(
                    band_id=f"gen-{start + j}",
                    name=" ".join(words[int(k)] for k in rng.integers(0, len(words), int(rng.integers(1, 3)))),
                    country=source.country,
                    status=source.status,
                    formed_in=source.formed_in,
                    genre=source.genre,
                    themes=source.themes,
                )
                vector = vectors[source.band_id] + noise[j]
                vector /= np.linalg.norm(vector)
                bands.append(band)
                rows.append(
                    BandVector(
                        band.band_id, model, "generated", pack_vector(vector), band.country, band.status, band.formed_in
                    )
                )
            catalog.upsert_bands(bands)
            catalog.upsert_band_vectors(rows)
            bar.update(count)
    return time.perf_counter() - started


# -------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("catalog", help="a bands table, e.g. ../shared/catalog/death_metal_bands.csv")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432", help="server URL, no database")
    parser.add_argument("--per-family", type=int, default=80, help="queries per family (both parts)")
    parser.add_argument("--million", type=int, default=0, help="also measure at this many generated bands")
    parser.add_argument("--text", choices=("with-name", "without-name"), default="with-name")
    parser.add_argument(
        "--latency-only",
        metavar="NAME/COUNTRY",
        help="skip the relevance runs and the tuning; time the search with these weights (e.g. 0.5/0.2)",
    )
    args = parser.parse_args(argv)
    text_of = band_text if args.text == "with-name" else text_without_name

    bands = parse_catalog_file(args.catalog).bands
    queries = build_queries(bands, args.per_family)
    embedder, notice = load_embedder()
    if embedder is None:
        print(f"error: {notice}", file=sys.stderr)
        return 2
    load = os.getloadavg()
    print(f"{len(bands):,} bands from {args.catalog}; {len(queries)} queries "
          f"({sum(q.part == 'tune' for q in queries)} tune, {sum(q.part == 'test' for q in queries)} test); "
          f"model {embedder.model}; text {args.text}; load average {load[0]:.2f} at start")  # fmt: skip

    with tempfile.TemporaryDirectory() as work, scratch_postgres(args.postgres) as url, open_catalog(url) as catalog:
        folder = Path(work) / "bands"
        timings = import_catalog_bands(catalog, bands, embedder, folder, text_of)
        per_10k = {step: seconds * 10_000 / len(bands) for step, seconds in timings.items()}
        print("\nimport, seconds per 10k bands (Postgres): " + ", ".join(f"{k} {v:.1f}" for k, v in per_10k.items()))

        if args.latency_only:
            name_weight, country_weight = (float(v) for v in args.latency_only.split("/"))
            chosen = SearchWeights(name=name_weight, country=country_weight)
        else:
            chosen = relevance(catalog, folder, embedder, bands, queries)
        latency_and_memory(catalog, folder, embedder, bands, queries, chosen, args.million)
    return 0


def relevance(
    catalog: Catalog, folder: Path, embedder: object, bands: list[Band], queries: list[Query]
) -> SearchWeights:
    """Tune the weights on the tune part, print both parts for every search; return the chosen weights."""
    cached = CachedEmbedder(embedder)
    search = BandSearch.open(catalog, folder, embedder=cached)  # type: ignore[arg-type]
    keyword = KeywordSearch(bands)
    with tqdm(total=len(queries), desc="query vectors", unit="query", file=sys.stderr) as bar:
        for query in queries:
            cached.embed([search_text(query.text)])
            bar.update(1)

    def band_search(weights: SearchWeights) -> Callable[[str], list[str]]:
        search.weights = weights
        return lambda text: [hit.band.band_id for hit in search.search(text, limit=50).hits]

    # Tune the weights on the tune part only.
    best: tuple[float, SearchWeights] | None = None
    tune = [q for q in queries if q.part == "tune"]
    for name_weight in GRID_NAME:
        for country_weight in GRID_COUNTRY:
            weights = SearchWeights(name=name_weight, country=country_weight)
            result = evaluate(tune, band_search(weights))[("tune", "all")]
            objective = (result[0] + result[1]) / 2
            if best is None or objective > best[0] + 1e-9:
                best = (objective, weights)
    assert best is not None
    chosen = best[1]
    results = {
        "name search": evaluate(queries, lambda t: [b.band_id for b in catalog.find_bands(t, limit=50)]),
        "keyword (BM25)": evaluate(queries, lambda t: keyword(t, 50)),
        f"band search (default {SearchWeights().name}/{SearchWeights().country})": evaluate(
            queries, band_search(SearchWeights())
        ),
        f"band search (tuned {chosen.name}/{chosen.country})": evaluate(queries, band_search(chosen)),
    }
    print(f"\nweights chosen on tune (name/country, grid {GRID_NAME} x {GRID_COUNTRY}): "
          f"{chosen.name}/{chosen.country}")  # fmt: skip
    families = [*TEMPLATES, NAME_FAMILY, "all"]
    for part in ("tune", "test"):
        counts = {f: sum(q.part == part and q.family == f for q in queries) for f in families[:-1]}
        print(f"\n{part} part: precision@10 / recall@50 (queries per family: "
              + ", ".join(f"{f} {n}" for f, n in counts.items()) + ")")  # fmt: skip
        print("| search | " + " | ".join(families) + " |")
        print("|---|" + "---|" * len(families))
        for label, means in results.items():
            cells = [means.get((part, f), (float("nan"), float("nan"))) for f in families]
            print(f"| {label} | " + " | ".join(f"{p:.2f} / {r:.2f}" for p, r in cells) + " |")

    return chosen


def latency_and_memory(
    catalog: Catalog,
    folder: Path,
    embedder: object,
    bands: list[Band],
    queries: list[Query],
    chosen: SearchWeights,
    million: int,
) -> None:
    """Query latency at the catalog's size (and at ``million`` generated bands), memory per band."""
    # Latency as served: the model embeds every query again.
    search = BandSearch.open(catalog, folder, embedder=embedder, weights=chosen)
    texts = [q.text for q in queries if q.part == "test"]
    p50, p95 = _timed_queries(search, texts)
    vector = embedder.embed(["warm"])[0]
    index = search.index
    assert index is not None
    started = time.perf_counter()
    for _ in range(200):
        index.search(vector, 100)
    ann_ms = (time.perf_counter() - started) / 200 * 1000
    latency = [(f"{len(bands):,}", p50, p95, ann_ms)]
    memory = [(f"{len(bands):,}", index.nbytes / len(index), rss_per_band(folder))]
    print(f"\nload average {os.getloadavg()[0]:.2f} after the relevance runs")

    if million:
        vectors = {band_id: index.vector(band_id) for band_id in index.label_of}
        generated = generate_million(catalog, bands, vectors, million, embedder.model)  # type: ignore[arg-type]
        started = time.perf_counter()
        big, report = sync_band_index(catalog, folder, embedder.model)
        build = time.perf_counter() - started
        print(f"\n{million:,} generated bands written in {generated:.0f} s; index {report.line()} "
              f"in {build:.0f} s")  # fmt: skip
        del big, search, index
        loaded = load_band_index(folder)
        assert loaded is not None
        search = BandSearch(catalog, folder, embedder=embedder, index=loaded, weights=chosen)
        p50, p95 = _timed_queries(search, texts)
        started = time.perf_counter()
        for _ in range(200):
            loaded.search(vector, 100)
        ann_ms = (time.perf_counter() - started) / 200 * 1000
        latency.append((f"{len(loaded):,}", p50, p95, ann_ms))
        memory.append((f"{len(loaded):,}", loaded.nbytes / len(loaded), rss_per_band(folder)))
    print("\nquery latency (ms; the whole search: embed the query, name search, vector search, read the bands)")
    print("| bands | p50 | p95 | vector search alone, k=100 |")
    print("|---|---|---|---|")
    for size, p50, p95, ann_ms in latency:
        print(f"| {size} | {p50:.1f} | {p95:.1f} | {ann_ms:.2f} |")
    print("\nband index memory per band, bytes (graph with its vector, filter fields, id)")
    print("| bands | counted by BandIndex.nbytes | resident memory a process gains loading it |")
    print("|---|---|---|")
    for size, counted, resident in memory:
        print(f"| {size} | {counted:,.0f} | {resident:,.0f} |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


def search_text(text: str) -> str:
    """The text the band search embeds for a query (countries named in another language in English)."""
    from kyb.bandsearch import find_countries

    return find_countries(text)[0]


if __name__ == "__main__":
    sys.exit(main())
