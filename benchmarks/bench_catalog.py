"""Catalog lookups at scale: SQLite (the embedded default, the baseline) vs Postgres; prints one table.

Usage::

    python benchmarks/bench_catalog.py [--bands 100000] [--queries 500]
        [--postgres postgresql://postgres@127.0.0.1:5432]

Generates ``--bands`` bands with names built from syllables (shared syllables make every search
match many rows: harder than real band names), upserts them into a temporary SQLite file and a
temporary Postgres database (dropped afterwards), then times ``get_band`` and ``find_bands`` (exact
name, 5-letter prefix, a word inside the name, a typo).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg2

from kyb.catalog import Band, Catalog, open_catalog

SYLLABLES = [
    "mor",
    "tu",
    "ary",
    "dea",
    "th",
    "kro",
    "vok",
    "zul",
    "ath",
    "gor",
    "grim",
    "nox",
    "ul",
    "thra",
    "vel",
    "dor",
    "kai",
    "rä",
    "ö",
    "bel",
    "ze",
    "bub",
    "cyn",
    "ic",
    "ob",
    "ita",
    "ry",
]


def make_bands(n: int, rng: random.Random) -> list[Band]:
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize() for _ in range(20_000)]
    return [
        Band(
            band_id=f"bench-{i}",
            name=" ".join(rng.choice(words) for _ in range(rng.randint(1, 3))),
            country=rng.choice(["Sweden", "Chile", "United States", "Norway"]),
            formed_in=rng.randint(1970, 2020),
            genre="Death Metal",
            themes=("War", "Death"),
            members=("A", "B", "C"),
        )
        for i in range(n)
    ]


def _typo(name: str, rng: random.Random) -> str:
    if len(name) < 4:
        return name
    i = rng.randrange(1, len(name) - 2)
    return name[:i] + name[i + 1] + name[i] + name[i + 2 :]


def measure(catalog: Catalog, bands: list[Band], queries: int, rng: random.Random) -> dict[str, float]:
    started = time.perf_counter()
    catalog.upsert_bands(bands)
    results = {"upsert s": time.perf_counter() - started}
    picks = [rng.choice(bands) for _ in range(queries)]

    def p95(fn: Callable[[Band], object]) -> float:
        times = []
        for band in picks:
            t = time.perf_counter()
            fn(band)
            times.append((time.perf_counter() - t) * 1000)
        return float(np.percentile(times, 95))

    results["get_band p95 ms"] = p95(lambda b: catalog.get_band(b.band_id))
    results["find exact p95 ms"] = p95(lambda b: catalog.find_bands(b.name, limit=10))
    results["find prefix p95 ms"] = p95(lambda b: catalog.find_bands(b.name[:5], limit=10))
    results["find word p95 ms"] = p95(lambda b: catalog.find_bands(b.name.split()[-1], limit=10))
    results["find typo p95 ms"] = p95(lambda b: catalog.find_bands(_typo(b.name, rng), limit=10))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bands", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432", help="server URL, no database")
    args = parser.parse_args(argv)
    bands = make_bands(args.bands, random.Random(7))
    columns: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder, open_catalog(Path(folder) / "bench.db") as catalog:
        columns["SQLite"] = measure(catalog, bands, args.queries, random.Random(1))
    database = f"kyb_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(f"{args.postgres}/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database}")
    try:
        with open_catalog(f"{args.postgres}/{database}") as catalog:
            columns["Postgres"] = measure(catalog, bands, args.queries, random.Random(1))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.close()
    print(f"{args.bands:,} bands, {args.queries} queries each\n")
    print("| measure | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for key in columns["SQLite"]:
        print(f"| {key} | " + " | ".join(f"{columns[c][key]:.2f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
