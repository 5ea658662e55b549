"""Identify latency through the web front's HTTP API, for comparing deployments of the same stack.

Usage::

    python benchmarks/bench_http.py NAME=URL [NAME=URL ...] [--photos .kyb/demo/photos] [--runs 5]
    python benchmarks/bench_http.py containers=http://127.0.0.1:32777 loopback=http://127.0.0.1:8181

Each run sends every photo to every front in turn (so a load change on the machine hits all of
them alike), timing ``POST /api/v1/identify`` from the first byte sent to the last byte read. A
run's photos carry a few trailing bytes of their own (ignored by the decoders), so no front answers
from its descriptor cache: every call encodes again. Run 0 warms connections and is not counted.
``--ingest GATEWAY`` first stores the demo catalog next to ``--photos`` through that gateway.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

from kyb.catalog import Album, Band, import_catalog, open_catalog
from kyb.client import GatewayClient
from kyb.ingest import IngestItem


def _ingest(gateway: str, demo: Path, scratch: Path) -> None:
    with open_catalog(str(scratch)) as catalog:
        report = import_catalog(catalog, demo / "catalog.json")
    records = json.loads((demo / "catalog.json").read_text())
    items = [IngestItem(e.image_path, e.kind, e.band_id, e.album_id, tuple(e.regions)) for e in report.references]
    with GatewayClient(gateway, timeout=300) as client:
        results = client.ingest(items, bands=[Band.from_dict(b) for b in records["bands"]],
                                albums=[Album.from_dict(a) for a in records["albums"]])  # fmt: skip
    print(f"ingested through {gateway}: {sorted({r['status'] for r in results})}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fronts", nargs="+", help="NAME=URL of a web front")
    parser.add_argument("--photos", default=".kyb/demo/photos")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ingest", action="append", default=[], help="gateway HOST:PORT to ingest the demo into")
    args = parser.parse_args(argv)
    fronts = dict(text.split("=", 1) for text in args.fronts)
    folder = Path(args.photos)
    for gateway in args.ingest:
        _ingest(gateway, folder.parent, Path(f"/tmp/kyb-bench-http-{time.time_ns()}.db"))
    photos = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    timings: dict[str, list[float]] = {name: [] for name in fronts}
    with httpx.Client(timeout=120) as http:
        for run in range(args.runs + 1):
            for i, photo in enumerate(photos):
                data = photo + f"run-{run}-{i}".encode()
                for name, url in fronts.items():
                    started = time.perf_counter()
                    reply = http.post(f"{url}/api/v1/identify", content=data)
                    elapsed = (time.perf_counter() - started) * 1000
                    reply.raise_for_status()
                    if run:
                        timings[name].append(elapsed)
    baseline = statistics.median(next(iter(timings.values())))
    print(f"{'front':<14} {'calls':>5} {'median ms':>10} {'p90 ms':>8} {'vs first':>9}")
    for name, values in timings.items():
        median = statistics.median(values)
        p90 = sorted(values)[max(0, round(0.9 * len(values)) - 1)]
        print(f"{name:<14} {len(values):>5} {median:>10.1f} {p90:>8.1f} {median / baseline:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
