"""A photo's word assignment at several hnswlib depths (features.query_assign_ef); prints one table.

Usage::

    python benchmarks/bench_assign.py ../shared/datasets [--sets covers logos landmarks]
        [--queries 30] [--ef 32 16 8] [--rounds 3]

For each set, the set's cached index (built by ``kyb eval`` or here, keyed as ``kyb eval`` keys it)
gives the codebook; the first ``--queries`` photos are decoded and their features extracted once,
then assigned their words (two nearest, as a search does) at each depth in turn, photo by photo, the
order of the depths reversed every other round so machine load falls on all of them alike. The first
depth is the baseline: the table gives each depth's p50 milliseconds, its speed-up over the
baseline and how often the nearest word agrees with the baseline's. What the words change in the
answers is for ``KYB_FEATURES__QUERY_ASSIGN_EF=N kyb eval SET --json --per-query`` to show.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kyb.config import load_config
from kyb.evaluation import index_dataset
from kyb.groundtruth import load_ground_truth
from kyb.imageio import decode_image


def measure(dataset: Path, cache: Path, queries: int, depths: list[int], rounds: int) -> list[dict[str, float]]:
    config = load_config(env=os.environ)
    gt = load_ground_truth(dataset)
    engine, _ = index_dataset(gt, config, cache)
    encoder, codebook = engine.encoder, engine.index.codebook
    features = config.features
    projected = []
    for query in tqdm(gt.queries[:queries], desc=f"{gt.name}: features", unit="photo", file=sys.stderr):
        decoded = decode_image((gt.root / query["query"]).read_bytes(), config.limits)
        extracted, _ = encoder.extract(decoded, None, reference=False)
        projected.append(codebook.project(extracted.descriptors))
    seconds: dict[int, list[float]] = {ef: [] for ef in depths}
    agrees: dict[int, list[float]] = {ef: [] for ef in depths}
    for ef in depths:  # warm-up: each depth's graph is built (or copied) before timing
        codebook.assign(projected[0][:1], features.query_near_words, features.query_near_ratio, ef=ef)
    for round_ in range(rounds):
        order = depths if round_ % 2 == 0 else depths[::-1]
        for descriptors in projected:
            words = {}
            for ef in order:
                started = time.perf_counter()
                words[ef] = codebook.assign(descriptors, features.query_near_words, features.query_near_ratio, ef=ef)
                seconds[ef].append(time.perf_counter() - started)
            for ef in depths:
                agrees[ef].append(float((words[ef][:, 0] == words[depths[0]][:, 0]).mean()))
    p50 = {ef: float(np.median(seconds[ef])) for ef in depths}
    per_photo = float(np.mean([len(p) for p in projected]))
    return [
        {
            "ef": ef,
            "p50_ms": p50[ef] * 1000,
            "speedup": p50[depths[0]] / p50[ef],
            "agrees": float(np.mean(agrees[ef])),
            "features": per_photo,
        }
        for ef in depths
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", help="folder holding covers/, logos/, landmarks/")
    parser.add_argument("--sets", nargs="+", default=["covers", "logos", "landmarks"])
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 16, 8], help="depths; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", default=os.environ.get("KYB_EVAL_CACHE", str(Path.home() / ".cache/kyb/eval")))
    args = parser.parse_args(argv)
    if not (args.queries >= 1 and args.rounds >= 1 and all(4 <= ef <= 512 for ef in args.ef)):
        parser.error("--queries and --rounds must be >= 1 and every --ef in 4..512")
    print("| set | photos | features/photo | ef | assign p50 ms | speed-up | nearest word as at baseline |")
    print("|---|---|---|---|---|---|---|")
    for name in args.sets:
        rows = measure(Path(args.datasets) / name, Path(args.cache), args.queries, args.ef, args.rounds)
        for row in rows:
            print(
                f"| {name} | {args.queries} | {row['features']:.0f} | {row['ef']} | {row['p50_ms']:.1f} "
                f"| {row['speedup']:.2f}x | {row['agrees']:.4f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
