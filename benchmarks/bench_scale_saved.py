"""bench_scale on a saved index: build the 100k scale index once, then measure any code against it.

Usage::

    python benchmarks/bench_scale_saved.py build DIR [--size 100000]     # ~1 h on a busy 2-core machine
    python benchmarks/bench_scale_saved.py measure DIR --size 1000        # first N references of it
    PYTHONPATH=/other/checkout/src python benchmarks/bench_scale_saved.py measure DIR --size 100000
    python benchmarks/bench_scale.py --keep DIR                           # DIR holding bench_scale's own index

``build`` runs bench_scale's own steps (700 drawn vocabulary covers -> codebook, 50 real covers and 30
query photos of them, generated fillers) with its defaults and saves the index and the query encodings
in DIR. ``measure`` loads them, keeps the first ``--size`` references (real covers first, then fillers,
in 2,500-reference segments as bench_scale adds them) and prints bench_scale's measurements: search
p50/p95, the shortlist and its inverted-file vote, verification, shortlist calls, top-1, bytes per reference.
Because the index and the queries are the same bytes for every run, two checkouts measured one after
the other compare code, not data -- the point on a machine whose load changes by the minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import pickle
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale as bs  # the sibling benchmark: one generator, one set of measurements

from kyb import synth
from kyb.codebook import Codebook
from kyb.config import FeatureConfig, ImageLimits, SearchConfig, load_config
from kyb.encoder import Encoder, Encoding
from kyb.heap import retain_freed_heap


def build(folder: Path, size: int, real: int = 50, vocabulary: int = 700, queries: int = 30) -> None:
    limits, features, config = ImageLimits(), FeatureConfig(), SearchConfig()
    started = time.perf_counter()
    bands = synth.make_bands(real + vocabulary, seed=0, albums_per_band=(1, 1))
    common = {"limits": limits, "features": features, "workers": 2, "show": True}
    vocab = bs.draw_covers(bands[real:], 0, 1, "vocab", keep_pixels=False, **common)
    codebook = bs.train(vocab, features.pca_dims, True)
    bs.log(f"codebook {codebook.n_words} words after {time.perf_counter() - started:.0f} s")
    encoder = Encoder(codebook, features)
    covers = bs.draw_covers(bands[:real], 0, 2, "real", keep_pixels=True, **common)
    real_items = [(c.reference_id, c.decoded.sha256, encoder.encode(c.decoded, reference=True)) for c in covers]
    photos = bs.make_queries(covers, queries, encoder, limits, 0, True)
    pool = [encoder.encode_features(c.features, c.region) for c in vocab]
    lengths = np.asarray([len(e) for _, _, e in real_items])
    factory = bs.FillerFactory(codebook, pool, lengths, seed=0, noise=2.0)
    index = bs.TimedIndex(codebook, config)
    stream = bs.ItemStream(real_items, factory)
    with bs.progress_bar(True, total=size, desc="index", unit="ref") as bar:
        while len(index) < size:
            items = stream.take(min(2500, size - len(index)))
            index.add(items)
            bar.update(len(items))
    folder.mkdir(parents=True, exist_ok=True)
    index.save(folder / "index")
    # Our own file, read back only by `measure`: pickle keeps the Query dataclasses as they are.
    with open(folder / "queries.pkl", "wb") as handle:
        pickle.dump(photos, handle)
    bs.log(f"built and saved {len(index):,} references in {time.perf_counter() - started:.0f} s")


def _with_near_words(encoding: Encoding, codebook: Codebook, features: FeatureConfig) -> Encoding:
    projected = codebook.dequantize(encoding.descriptors)
    near = codebook.assign(projected, features.query_near_words, features.query_near_ratio)
    return dataclasses.replace(encoding, near_words=near)


class _QueryUnpickler(pickle.Unpickler):
    """Reads the query photos of ``build`` above and of ``bench_scale.py --keep``, which, run as a
    script, pickled its classes as ``__main__``'s."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class("bench_scale" if module == "__main__" else module, name)


def measure(folder: Path, size: int, profile: bool, prefilter_inliers: int | None = None) -> None:
    with open(folder / "queries.pkl", "rb") as handle:
        queries: list[bs.Query] = _QueryUnpickler(handle).load()  # our own file (build, bench_scale --keep)
    settings = load_config(env=os.environ)  # KYB_SEARCH__* / KYB_FEATURES__* variables apply
    config, features = settings.search, settings.features
    if prefilter_inliers is not None:
        config = dataclasses.replace(config, prefilter_inliers=prefilter_inliers)
    index = bs.TimedIndex.load(folder / "index", config)
    if size < len(index):
        ids = index.reference_ids()[:size]  # insertion order: the real covers, then the fillers
        small = bs.TimedIndex(index.codebook, config)
        for start in range(0, size, 2500):
            small.add([(r, index.sha256_of(r) or "", index.encoding(r)) for r in ids[start : start + 2500]])
        del index
        gc.collect()
        index = small
    if features.query_near_words > 1 and getattr(queries[0].encoding, "near_words", None) is None:
        # Photos saved by an older build lack near words: derive them as the encoder would (from the
        # stored int8 descriptors rather than the float ones; the same word for all but a few).
        codebook = index.codebook
        queries = [dataclasses.replace(q, encoding=_with_near_words(q.encoding, codebook, features)) for q in queries]
    rss, _ = bs.memory_mb()
    for query in queries:  # warm-up
        bs.run_search(index, query, config)
    runs = [bs.run_search(index, q, config) for q in queries]
    shortlists = [bs.run_shortlist(index, q) for q in queries]
    stats = index.stats()

    def pct(values: Sequence[float], q: float = 50) -> float:
        return float(np.percentile(values, q))

    print(
        f"| {len(index):,} | {pct([r.search_ms for r in runs]):.1f} | {pct([r.search_ms for r in runs], 95):.1f} "
        f"| {pct([r.shortlist_ms for r in shortlists]):.1f} | {pct([r.words_ms for r in shortlists]):.1f} "
        f"| {np.mean([r.words_ms for r in runs]):.1f} | {np.mean([r.search_ms - r.shortlist_ms for r in runs]):.1f} "
        f"| {np.mean([r.rounds for r in runs]):.2f} | {sum(r.top1 for r in runs)}/{len(runs)} "
        f"| {stats['bytes_per_reference']:,.0f} | {rss:,.0f} |"
    )
    print(
        "columns: references | search p50 ms | search p95 ms | shortlist p50 ms | its vote p50 ms "
        "| votes in a search (mean ms) | verification in a search (mean ms) | shortlists | top-1 | bytes/ref | RSS MB"
    )
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        for query in queries:
            bs.run_search(index, query, config)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("action", choices=["build", "measure"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=bs.parse_size, default=100_000, help="references (default 100k)")
    parser.add_argument("--profile", action="store_true", help="measure: also cProfile one pass of searches")
    parser.add_argument(
        "--prefilter-inliers", type=int, help="measure with this search.prefilter_inliers (0 = no first look)"
    )
    args = parser.parse_args(argv)
    # As a process serving the index does (Engine, ServiceServer: kyb.heap); KYB_HEAP_RETAIN_MB=0 measures without.
    retain_freed_heap(load_config(env=os.environ).heap_retain_mb)
    if args.action == "build":
        build(args.folder, args.size)
    else:
        measure(args.folder, args.size, args.profile, args.prefilter_inliers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
