"""Ingest throughput: embedded (SQLite, the baseline) vs embedded over Postgres vs the split services
(``kyb serve stack``: Gateway.Ingest -> encoder -> Postgres catalog + matcher shards); one table.

Usage::

    python benchmarks/bench_ingest.py [--references 240] [--shards 2] [--batch 24] [--streams 1 2]
        [--postgres postgresql://postgres@127.0.0.1:5432] [--json out.json]

Nothing is read from ../shared: the references are drawn album covers and logos of fictional bands
(:mod:`kyb.synth`), JPEG-encoded once. A codebook is trained first on *other* drawn covers
(:meth:`kyb.engine.Engine.retrain_codebook` into an empty index), so every mode starts from the same
empty index with the same codebook and measures ingest alone (no codebook training inside):

1. ``embedded, SQLite``: :meth:`Engine.ingest` in this process, encoding on threads; then with
   ``--workers N`` encoding processes each (``kyb ingest --workers N``, the CLI's default the cores);
2. ``embedded, Postgres``: the same into a fresh Postgres database;
3. ``stack, Postgres, S streams``: ``kyb serve stack --shards N`` over a fresh Postgres database, fed
   by S concurrent Gateway.Ingest client streams of ``--batch`` references each.

After each run the catalog's reference rows and the index entries (summed over the shards for the
stack) are counted: both must equal the references sent (a run that lost or duplicated one fails).
Every database created here is dropped at the end; every process started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stack helpers of bench_services
from bench_services import CALL_TIMEOUT_S, Children, sigterm_as_interrupt, start_stack

from kyb import synth
from kyb.catalog import Album, Band, open_catalog
from kyb.client import GatewayClient
from kyb.config import load_config
from kyb.engine import Engine, IngestItem
from kyb.index import ReferenceIndex
from kyb.rpc import load_service_config

#: Drawn covers the codebook is trained on (never ingested): enough for a representative vocabulary.
CODEBOOK_COVERS = 120


@dataclass
class Result:
    mode: str
    references: int
    seconds: float
    catalog_rows: int
    index_entries: int

    @property
    def per_s(self) -> float:
        return self.references / self.seconds


def _jpeg(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError("could not encode a drawn reference")
    return buffer.tobytes()


def draw_references(count: int, seed: int) -> tuple[list[IngestItem], list[Band], list[Album]]:
    """``count`` references (one logo per band, the rest covers) with their bands and albums."""
    rng = np.random.default_rng(seed)
    items: list[IngestItem] = []
    bands: list[Band] = []
    albums: list[Album] = []
    for band in synth.make_bands(max(1, count // 3), seed=seed, albums_per_band=(2, 2)):
        bands.append(Band.from_dict(band.to_band_dict()))
        items.append(
            IngestItem(f"{band.band_id}/logo.jpg", "logo", band.band_id, data=_jpeg(synth.draw_logo(band.name, rng)))
        )
        for album in band.albums:
            albums.append(Album(album_id=album.album_id, band_id=band.band_id, title=album.title, year=album.year))
            cover = synth.draw_album_cover(album.title, band.name, rng)
            items.append(
                IngestItem(
                    f"{band.band_id}/{album.album_id}.jpg",
                    "album_cover",
                    band.band_id,
                    album.album_id,
                    data=_jpeg(cover),
                )
            )
    return items[:count], bands, albums


def train_empty_index(folder: Path, catalog: Path) -> None:
    """An empty index holding a codebook trained on drawn covers that are never ingested."""
    training, _, _ = draw_references(CODEBOOK_COVERS, seed=99)
    with Engine(load_config(overrides={"index_dir": str(folder), "catalog_url": str(catalog)})) as engine:
        engine.retrain_codebook(training)


@contextlib.contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A fresh database on ``server`` (dropped afterwards, connections forced out)."""
    name = f"kyb_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(f"{server}/postgres", connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield f"{server}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def count_catalog(url: str) -> int:
    with open_catalog(url) as catalog:
        return catalog.count_references()


def count_index(folders: Sequence[Path]) -> int:
    search = load_config().search
    return sum(int(ReferenceIndex.load(folder, search).stats()["references"]) for folder in folders)


def run_embedded(
    mode: str,
    items: list[IngestItem],
    bands: list[Band],
    albums: list[Album],
    index: Path,
    url: str,
    processes: int = 0,
) -> Result:
    with Engine(load_config(overrides={"index_dir": str(index), "catalog_url": url})) as engine:
        engine.upsert_metadata(bands, albums)
        started = time.perf_counter()
        outcomes = engine.ingest(items, processes=processes)
        seconds = time.perf_counter() - started
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise RuntimeError(f"{mode}: {len(failed)} references failed, first: {failed[0].message}")
    return Result(mode, len(items), seconds, count_catalog(url), count_index([index]))


def run_stack(
    items: list[IngestItem],
    bands: list[Band],
    albums: list[Album],
    index: Path,
    url: str,
    *,
    shards: int,
    streams: int,
    batch: int,
    logs: Path,
) -> Result:
    config = load_service_config(overrides={"index_dir": str(index), "catalog_url": url, "rpc.grace_s": 2.0})
    children = Children(logs)
    try:
        stack = start_stack(children, config, shards, timeout_s=300.0)
        batches = [items[i : i + batch] for i in range(0, len(items), batch)]
        with GatewayClient(stack["gateway"], config.rpc.outgoing_token or None, timeout=CALL_TIMEOUT_S) as client:

            def send(chunk: list[IngestItem]) -> list[dict[str, Any]]:
                return client.ingest(chunk, bands=bands, albums=albums)

            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=streams) as pool:
                results = [r for answer in pool.map(send, batches) for r in answer]
            seconds = time.perf_counter() - started
    finally:
        children.stop()
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        raise RuntimeError(f"stack: {len(failed)} references failed, first: {failed[0]['message']}")
    folders = [config.matcher.shard_folder(config.engine.index_dir, k, shards) for k in range(shards)]
    mode = f"stack, Postgres, {shards} shards, {streams} stream(s)"
    return Result(mode, len(items), seconds, count_catalog(url), count_index(folders))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--references", type=int, default=240, help="references ingested per mode (default 240)")
    parser.add_argument("--shards", type=int, default=2, help="matcher shards of the stack (default 2)")
    parser.add_argument("--batch", type=int, default=24, help="references per Gateway.Ingest stream (default 24)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2], help="concurrent Ingest streams")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("KYB_TEST_PG_SERVER", "postgresql://postgres@127.0.0.1:5432"),
        help="server URL without a database; a fresh database is made per mode and dropped after",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[1, 2],
        help="also ingest embedded (SQLite) with this many encoding processes each, as `kyb ingest --workers N`",
    )
    parser.add_argument(
        "--embedded-only", action="store_true", help="only the embedded SQLite modes (no Postgres, no stack)"
    )
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    if args.references < 3 or args.shards < 1 or args.batch < 1 or min(args.streams) < 1:
        parser.error("--references >= 3 and --shards, --batch, --streams >= 1")
    server = args.postgres.rstrip("/")

    items, bands, albums = draw_references(args.references, seed=7)
    print(f"{len(items)} drawn references; training the shared codebook", file=sys.stderr, flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="kyb-bench-ingest-") as tmp, sigterm_as_interrupt():
        root = Path(tmp)
        train_empty_index(root / "empty", root / "codebook.db")

        def fresh_index(name: str) -> Path:
            shutil.copytree(root / "empty", root / name, symlinks=True)
            return root / name

        print("embedded, SQLite", file=sys.stderr, flush=True)
        results.append(
            run_embedded("embedded, SQLite", items, bands, albums, fresh_index("sqlite"), str(root / "c.db"))
        )
        for workers in args.workers:
            mode = f"embedded, SQLite, {workers} encoding process(es)"
            print(mode, file=sys.stderr, flush=True)
            folder = fresh_index(f"workers-{workers}")
            results.append(run_embedded(mode, items, bands, albums, folder, str(root / f"w{workers}.db"), workers))
        if not args.embedded_only:
            print("embedded, Postgres", file=sys.stderr, flush=True)
            with postgres_database(server) as url:
                results.append(run_embedded("embedded, Postgres", items, bands, albums, fresh_index("pg"), url))
        for streams in [] if args.embedded_only else sorted(set(args.streams)):
            print(f"stack: {args.shards} shards, {streams} stream(s)", file=sys.stderr, flush=True)
            (root / f"logs-{streams}").mkdir()
            with postgres_database(server) as url:
                index = fresh_index(f"stack-{streams}")
                results.append(
                    run_stack(
                        items,
                        bands,
                        albums,
                        index,
                        url,
                        shards=args.shards,
                        streams=streams,
                        batch=args.batch,
                        logs=root / f"logs-{streams}",
                    )
                )

    baseline = results[0].per_s
    print(f"\nIngest throughput, {len(items)} drawn references per mode (same codebook, empty index at start)\n")
    print("| mode | seconds | references/s | vs embedded SQLite | catalog rows | index entries |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = r.per_s / baseline
        print(f"| {r.mode} | {r.seconds:.1f} | {r.per_s:.1f} | {ratio:.2f}x | {r.catalog_rows} | {r.index_entries} |")
    lost = [r.mode for r in results if r.catalog_rows != r.references or r.index_entries != r.references]
    if lost:
        print(f"\nMISMATCH: catalog rows or index entries differ from the references sent in: {', '.join(lost)}")
    if args.json:
        args.json.write_text(json.dumps([{**vars(r), "per_s": r.per_s} for r in results], indent=2))
    return 1 if lost else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted (every service started was stopped)", file=sys.stderr)
        sys.exit(130)
