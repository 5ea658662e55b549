"""Synthetic scale benchmark: search time and memory as the reference index grows (1k -> 10k -> 100k).

Usage::

    .venv/bin/python benchmarks/bench_scale.py --quick                  # 1k, 5k: a couple of minutes
    .venv/bin/python benchmarks/bench_scale.py --json scale.json        # 1k, 10k, 100k: ~10-15 minutes
    .venv/bin/python benchmarks/bench_scale.py --sizes 1k,20k,50k
    .venv/bin/python benchmarks/bench_scale.py --keep DIR   # and keep the 100k index for bench_scale_saved.py

The claim under test: search time grows sub-linearly with the number of references (the shortlist
is an ANN graph plus an inverted file, and geometric verification costs the same per candidate
whatever the index size) while memory grows linearly (every reference keeps its compact features).

What it builds
--------------
1. A real codebook (:func:`kyb.codebook.train_codebook` with the default :class:`CodebookConfig`) on the
   RootSIFT of drawn album covers ("vocabulary covers"), extracted the way ingest does it (JPEG bytes ->
   ``decode_image`` -> ``extract_region(reference=True)``). ``train_codebook`` shrinks its sizes to the
   sample (fine words to a fraction of the descriptors, global dims to images - 1); 700 covers (315k
   descriptors) fill the default 300k-descriptor sample, so the codebook gets the sizes a large catalog
   gets. The ~40 covers of a demo would give a far smaller vocabulary and < 40-d global vectors, which
   makes the inverted file and the graph unrepresentative of a 100k index.
2. Real references: other drawn covers, encoded with ``Encoder.encode(reference=True)``; one photo of
   each of the first ``--queries`` of them (``synth.compose_scene``, default style: perspective, blur,
   occlusion, glare, JPEG) is a query, encoded with ``Encoder.encode`` (query settings).
3. Filler references up to N, generated without drawing anything: each filler mixes 2-4 random pieces
   of vocabulary-cover encodings (positions, descriptors and the burstiness of one cover stay
   together), adds Gaussian noise to every int8 descriptor, re-decides each word for the noisy
   descriptor between the source descriptor's two nearest words (noise this small only moves a
   descriptor to a neighbouring word; the agreement with ``Codebook.assign`` is checked and printed),
   and computes its global vector from the noisy descriptors exactly as ``Codebook.global_vector``
   does, batched. Fillers never use the real covers, so they are distractors, not copies of answers.

Per size, the index grows in ``--batch`` references per ``ReferenceIndex.add`` call (one segment each),
is saved to a fresh folder and loaded back (both timed; the save compacts the segments as every save
does: a size tier's segments merge ten or more at a time, so 100k is a few segments as a served
index is, not 40), and the saved index is measured: shortlist and full ``search`` latency (p50/p95
over the queries after a warm-up pass), whether the query's cover is still the first verified
object, its segments, index bytes (``stats()``) and process RSS. ``--no-save`` measures the index as
the adds left it.
Timings are single-process wall clock on whatever cores the machine has (numpy's BLAS may use several).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import pickle
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import cv2
import hnswlib
import numpy as np
from tqdm import tqdm

from kyb import synth
from kyb.codebook import Codebook, train_codebook
from kyb.config import CodebookConfig, FeatureConfig, ImageLimits, SearchConfig, load_config
from kyb.encoder import Box, Encoder, Encoding, extract_region
from kyb.features import LocalFeatures
from kyb.heap import retain_freed_heap
from kyb.imageio import DecodedImage, decode_image
from kyb.index import ReferenceIndex
from kyb.search import search

Item = tuple[str, str, Encoding]

FULL_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 5_000)
#: Segments smaller than this are merged by ``ReferenceIndex.save`` (see ``_maybe_compact``).
COMPACT_BELOW = 2048


# ---------------------------------------------------------------------------------------------- helpers
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress_bar(enabled: bool, **kwargs: Any) -> tqdm:
    return tqdm(file=sys.stderr, disable=not enabled, mininterval=1.0, dynamic_ncols=True, **kwargs)


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    factor = 1
    if text.endswith("k"):
        factor, text = 1_000, text[:-1]
    elif text.endswith("m"):
        factor, text = 1_000_000, text[:-1]
    value = round(float(text) * factor)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0, got {text!r}")
    return value


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({parse_size(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read sizes {text!r}: use e.g. 1000,10000 or 1k,10k") from None
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def jpeg_bytes(image_bgr: np.ndarray, quality: int = 95) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buffer.tobytes()


def memory_mb() -> tuple[float, float]:
    """Current and peak resident set size of this process, in MB.

    Freed heap memory is handed back to the OS first (glibc ``malloc_trim``), so the current RSS
    follows what is alive rather than what earlier temporaries left in the allocator.
    """
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    values: dict[str, float] = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    peak = values.get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return values.get("VmRSS", peak), peak


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------- covers
@dataclass(frozen=True)
class DrawnCover:
    """A drawn cover after the ingest path; pixels are kept only when photos of it are needed."""

    reference_id: str
    features: LocalFeatures
    region: Box
    image: np.ndarray | None = None
    decoded: DecodedImage | None = None


def draw_cover(
    band: synth.SampleBand,
    key: tuple[int, ...],
    reference_id: str,
    limits: ImageLimits,
    features: FeatureConfig,
    *,
    keep_pixels: bool,
) -> DrawnCover:
    image = synth.draw_album_cover(band.albums[0].title, band.name, np.random.default_rng(list(key)))
    decoded = decode_image(jpeg_bytes(image), limits, max_side=limits.reference_max_side)
    extracted, region = extract_region(decoded, None, features, reference=True)
    if keep_pixels:
        return DrawnCover(reference_id, extracted, region, image, decoded)
    return DrawnCover(reference_id, extracted, region)


def draw_covers(
    bands: Sequence[synth.SampleBand],
    seed: int,
    stream: int,
    prefix: str,
    limits: ImageLimits,
    features: FeatureConfig,
    *,
    keep_pixels: bool,
    workers: int,
    show: bool,
) -> list[DrawnCover]:
    """Draws one cover per band (OpenCV and numpy release the GIL, so threads overlap)."""

    def one(index: int) -> DrawnCover:
        return draw_cover(
            bands[index],
            (seed, stream, index),
            f"{prefix}-{index:04d}",
            limits,
            features,
            keep_pixels=keep_pixels,
        )

    covers: list[DrawnCover] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(show, total=len(bands), desc=prefix) as bar:
        for cover in pool.map(one, range(len(bands))):
            if len(cover.features) >= 8:  # the ingest rule: fewer keypoints is a featureless image
                covers.append(cover)
            bar.update(1)
    return covers


def train(covers: Sequence[DrawnCover], pca_dims: int, show: bool) -> Codebook:
    bars: dict[str, tqdm] = {}

    def report(stage: str, step: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = progress_bar(show, total=total, desc=f"codebook {stage}")
        bar.update(step - bar.n)

    try:
        return train_codebook(
            [c.features.descriptors for c in covers], CodebookConfig(), pca_dims=pca_dims, progress=report
        )
    finally:
        for bar in bars.values():
            bar.close()


@dataclass(frozen=True)
class Query:
    reference_id: str
    encoding: Encoding
    image_size: tuple[int, int]
    visible_fraction: float


def make_queries(
    covers: Sequence[DrawnCover], count: int, encoder: Encoder, limits: ImageLimits, seed: int, show: bool
) -> list[Query]:
    """One photo per cover (the first ``count`` covers), encoded as a search photo."""
    queries: list[Query] = []
    for index, cover in enumerate(progress_bar(show, iterable=covers[:count], desc="query photos")):
        assert cover.image is not None
        for attempt in range(5):
            rng = np.random.default_rng([seed, 3, index, attempt])
            photo, placements = synth.compose_scene([cover.image], rng)
            if placements:
                break
        else:
            raise RuntimeError(f"could not place {cover.reference_id} in a photo")
        decoded = decode_image(jpeg_bytes(photo, 90), limits, max_side=limits.search_max_side)
        queries.append(
            Query(
                reference_id=cover.reference_id,
                encoding=encoder.encode(decoded),
                image_size=(decoded.width, decoded.height),
                visible_fraction=placements[0].visible_fraction,
            )
        )
    return queries


# ---------------------------------------------------------------------------------------------- fillers
def batch_global_vectors(codebook: Codebook, projected: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``Codebook.global_vector`` for many references at once.

    ``projected`` is (B, F, d) float32; reference b uses its first ``lengths[b]`` rows. Same steps as
    ``raw_vlad`` + ``global_vector``: residuals to the nearest VLAD word, intra-normalisation, signed
    square root, L2, whitening, L2.
    """
    batch, width, dims = projected.shape
    centroids = codebook.vlad_words
    k = centroids.shape[0]
    scores = projected.reshape(-1, dims) @ centroids.T
    scores *= -2.0
    scores += (centroids * centroids).sum(1)[None, :]
    labels = np.argmin(scores, axis=1)
    valid = (np.arange(width)[None, :] < lengths[:, None]).reshape(-1)
    bins = (np.repeat(np.arange(batch), width) * k + labels)[valid]
    # Sum of residuals per (reference, VLAD word) = sum of descriptors - count * centroid.
    vlad = np.zeros((batch * k, dims), dtype=np.float32)
    np.add.at(vlad, bins, projected.reshape(-1, dims)[valid])
    vlad -= np.bincount(bins, minlength=batch * k).astype(np.float32)[:, None] * np.tile(centroids, (batch, 1))
    vlad = vlad.reshape(batch, k, dims)
    vlad /= np.maximum(np.linalg.norm(vlad, axis=2, keepdims=True), 1e-12)
    raw = vlad.reshape(batch, k * dims)
    raw = np.sign(raw) * np.sqrt(np.abs(raw))
    raw /= np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    vectors = (raw - codebook.whiten_mean) @ codebook.whiten.T
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors.astype(np.float32)


class FillerFactory:
    """Filler references that look like real ones, made in vectorised chunks (no drawing, no SIFT)."""

    def __init__(
        self,
        codebook: Codebook,
        sources: Sequence[Encoding],
        lengths: np.ndarray,
        *,
        seed: int,
        pieces: tuple[int, int] = (2, 4),
        noise: float = 2.0,
        jitter: float = 1.0,
    ) -> None:
        width = max(len(e) for e in sources)
        full = [e for e in sources if len(e) == width]  # equal lengths make the pool one array
        self.codebook = codebook
        self.width = width
        self.xy = np.stack([e.xy for e in full]).astype(np.float32)
        self.descriptors = np.stack([e.descriptors for e in full])
        self.region = np.asarray([e.region_size for e in full], dtype=np.float32)
        self.lengths = np.minimum(np.asarray(lengths, dtype=np.int64), width)
        self.seed = seed
        self.pieces = pieces
        self.noise = noise
        self.jitter = jitter
        # Noise by table look-up of random bytes: 256 equal-probability quantiles of N(0, noise), rounded.
        normal = NormalDist(0.0, max(noise, 1e-9))
        self.noise_table = np.asarray([round(normal.inv_cdf((i + 0.5) / 256)) for i in range(256)], dtype=np.int16)
        # The two nearest fine words of every pool descriptor (a graph built like Codebook.assign's). For a
        # noisy copy x0 + e, word 2 wins when |x - w2|^2 < |x - w1|^2, i.e. margin - 2 e.(w2 - w1) < 0, with
        # margin = |w2|^2 - |w1|^2 - 2 x0.(w2 - w1) computed here once per pool descriptor.
        dims = self.descriptors.shape[2]
        graph = hnswlib.Index(space="l2", dim=codebook.words.shape[1])
        graph.init_index(max_elements=codebook.n_words, ef_construction=100, M=16, random_seed=1)
        graph.add_items(codebook.words, np.arange(codebook.n_words))
        graph.set_ef(64)
        original = codebook.dequantize(self.descriptors.reshape(-1, dims))
        labels, _ = graph.knn_query(original, k=2)
        first, second = codebook.words[labels[:, 0]], codebook.words[labels[:, 1]]
        delta = second - first
        margin = (second * second).sum(1) - (first * first).sum(1) - 2.0 * (original * delta).sum(1)
        shape = self.descriptors.shape
        self.near = labels.astype(np.int32).reshape(shape[0], shape[1], 2)
        self.delta = (delta * np.float32(1.0 / codebook.int8_scale)).astype(np.float32).reshape(shape)
        self.margin = margin.astype(np.float32).reshape(shape[:2])

    @property
    def pool_size(self) -> int:
        return int(self.descriptors.shape[0])

    def make(self, start: int, count: int) -> list[Item]:
        """Fillers ``start`` .. ``start + count - 1``; the same numbers always give the same fillers."""
        rng = np.random.default_rng([self.seed, 7, start, count])
        batch, width = count, self.width
        low, high = self.pieces
        lengths = rng.choice(self.lengths, size=batch)
        n_pieces = rng.integers(low, high + 1, size=batch)
        sources = rng.integers(self.pool_size, size=(batch, high))
        # Piece p of filler b is slots [cut p-1, cut p); unused cuts sit at the end (empty pieces).
        cuts = rng.integers(0, width + 1, size=(batch, high - 1))
        cuts = np.sort(np.where(np.arange(high - 1)[None, :] < (n_pieces - 1)[:, None], cuts, width), axis=1)
        piece = (np.arange(width)[None, None, :] >= cuts[:, :, None]).sum(axis=1)
        # Rows of a piece come from one random permutation of its cover: no keypoint twice.
        permutations = np.argsort(rng.random((batch, high, width), dtype=np.float32), axis=2)
        b_index = np.arange(batch)[:, None]
        rows = permutations[b_index, piece, np.arange(width)[None, :]]
        src = sources[b_index, piece]
        original = self.descriptors[src, rows].astype(np.int16)
        noise = self.noise_table[np.frombuffer(rng.bytes(original.size), dtype=np.uint8).reshape(original.shape)]
        noisy = np.clip(original + noise, -127, 127)
        descriptors = noisy.astype(np.int8)
        projected = noisy.astype(np.float32) * np.float32(1.0 / self.codebook.int8_scale)  # == dequantize()
        shift = np.einsum("bfd,bfd->bf", (noisy - original).astype(np.float32), self.delta[src, rows])
        candidates = self.near[src, rows]
        words = np.where(self.margin[src, rows] - 2.0 * shift < 0, candidates[:, :, 1], candidates[:, :, 0])
        region = self.region[sources[:, 0]]
        xy = self.xy[src, rows] + rng.normal(0.0, self.jitter, (batch, width, 2)).astype(np.float32)
        xy = np.clip(xy, 0.0, region[:, None, :] - 0.01)
        vectors = batch_global_vectors(self.codebook, projected, lengths)
        version = self.codebook.version
        items: list[Item] = []
        for b in range(batch):
            n = int(lengths[b])
            number = start + b
            encoding = Encoding(
                xy=xy[b, :n],
                descriptors=descriptors[b, :n],
                words=words[b, :n],
                global_vector=vectors[b],
                region_size=(float(region[b, 0]), float(region[b, 1])),
                codebook_version=version,
            )
            items.append((f"filler-{number:07d}", f"{number:064x}", encoding))
        return items


class ItemStream:
    """The real references first, then fillers, handed out in any batch sizes."""

    def __init__(self, real: Sequence[Item], factory: FillerFactory, chunk: int = 250) -> None:
        self.buffer: list[Item] = list(real)
        self.factory = factory
        self.chunk = chunk
        self.made = 0
        self.generate_s = 0.0

    def take(self, count: int) -> list[Item]:
        while len(self.buffer) < count:
            started = time.perf_counter()
            self.buffer.extend(self.factory.make(self.made, self.chunk))
            self.generate_s += time.perf_counter() - started
            self.made += self.chunk
        head, self.buffer = self.buffer[:count], self.buffer[count:]
        return head


def realism(codebook: Codebook, real: Sequence[Encoding], fillers: Sequence[Encoding]) -> dict[str, Any]:
    """Side-by-side statistics of real and filler encodings, and checks of the shortcuts fillers take."""

    def describe(encodings: Sequence[Encoding]) -> dict[str, float]:
        vectors = np.stack([e.global_vector for e in encodings])
        similarity = vectors @ vectors.T
        off_diagonal = similarity[~np.eye(len(encodings), dtype=bool)]
        return {
            "features": float(np.mean([len(e) for e in encodings])),
            "distinct_words_per_feature": float(np.mean([np.unique(e.words).size / len(e) for e in encodings])),
            "mean_abs_int8": float(np.mean([np.abs(e.descriptors.astype(np.float32)).mean() for e in encodings])),
            "global_cosine_mean": float(off_diagonal.mean()),
            "global_cosine_p99": float(np.percentile(off_diagonal, 99)),
        }

    sample = list(fillers[:100])
    agreement = []
    cosine = []
    for encoding in sample:
        projected = codebook.dequantize(encoding.descriptors)
        agreement.append(float(np.mean(codebook.assign(projected) == encoding.words)))
        cosine.append(float(codebook.global_vector(projected) @ encoding.global_vector))
    return {
        "real": describe(real),
        "filler": describe(list(fillers)),
        "filler_words_equal_assign": float(np.mean(agreement)),
        "filler_global_vs_codebook_cosine_min": float(np.min(cosine)),
    }


# ---------------------------------------------------------------------------------------------- index
class TimedIndex(ReferenceIndex):
    """A ReferenceIndex that adds up the time spent shortlisting, and in the inverted-file vote."""

    def __init__(self, codebook: Codebook, search: SearchConfig, path: Path | None = None) -> None:
        super().__init__(codebook, search, path)
        self.reset_timers()

    def reset_timers(self) -> None:
        self.shortlist_s = 0.0
        self.word_vote_s = 0.0
        self.shortlist_calls = 0

    def shortlist(self, query: Encoding, **kwargs: Any) -> list[Any]:
        started = time.perf_counter()
        try:
            return super().shortlist(query, **kwargs)
        finally:
            self.shortlist_s += time.perf_counter() - started
            self.shortlist_calls += 1

    def _word_votes(self, *args: Any, **kwargs: Any) -> list[tuple[str, float]]:
        # Private and still changing: pass everything through untouched.
        started = time.perf_counter()
        try:
            return super()._word_votes(*args, **kwargs)
        finally:
            self.word_vote_s += time.perf_counter() - started


@dataclass
class SearchRun:
    search_ms: float
    shortlist_ms: float  # inside the search (every round)
    words_ms: float  # of which the inverted-file vote
    rounds: int
    top1: bool


@dataclass
class ShortlistRun:
    shortlist_ms: float
    words_ms: float
    hit: bool  # the query's reference is in the (first-round) shortlist


def run_search(index: TimedIndex, query: Query, config: SearchConfig) -> SearchRun:
    index.reset_timers()
    started = time.perf_counter()
    found, _order = search(query.encoding, query.image_size, index, config)
    elapsed = time.perf_counter() - started
    return SearchRun(
        search_ms=elapsed * 1000,
        shortlist_ms=index.shortlist_s * 1000,
        words_ms=index.word_vote_s * 1000,
        rounds=index.shortlist_calls,
        top1=bool(found) and found[0].verification.reference_id == query.reference_id,
    )


def run_shortlist(index: TimedIndex, query: Query) -> ShortlistRun:
    index.reset_timers()
    started = time.perf_counter()
    candidates = index.shortlist(query.encoding)
    elapsed = time.perf_counter() - started
    return ShortlistRun(
        shortlist_ms=elapsed * 1000,
        words_ms=index.word_vote_s * 1000,
        hit=any(c.reference_id == query.reference_id for c in candidates),
    )


@dataclass
class SizeResult:
    n: int
    add_s: float
    generate_s: float
    segments: int
    features: int
    shortlist_p50_ms: float
    shortlist_p95_ms: float
    search_p50_ms: float
    search_p95_ms: float
    search_mean_ms: float
    shortlist_graph_mean_ms: float
    shortlist_words_mean_ms: float
    in_search_shortlist_mean_ms: float
    in_search_words_mean_ms: float
    verification_mean_ms: float
    rounds_mean: float
    top1: int
    in_shortlist: int
    queries: int
    index_bytes: int
    bytes_per_reference: float
    rss_mb: float
    rss_peak_mb: float
    rss_above_baseline_mb: float
    load_average: float
    save_s: float | None = None
    load_s: float | None = None
    disk_mb: float | None = None
    reload_ok: bool | None = None
    misses: list[str] = field(default_factory=list)


def measure(
    index: TimedIndex,
    queries: Sequence[Query],
    config: SearchConfig,
    *,
    n: int,
    add_s: float,
    generate_s: float,
    baseline_rss: float,
    repeats: int,
    save_dir: Path | None,
    show: bool,
) -> SizeResult:
    # Saved first: a save compacts the segments (docs/engine.md section 4), and a served index is one
    # that was saved and loaded. Searching the live index instead measures whatever segments the
    # adds left (40 of 2,500 references at 100k), a state no server searches for long.
    saved: dict[str, Any] = {}
    if save_dir is not None:
        target = Path(tempfile.mkdtemp(prefix=f"kyb-scale-{n}-", dir=save_dir))
        try:
            log(f"saving {n:,} references to {target}")
            started = time.perf_counter()
            generation = index.save(target)
            saved["save_s"] = time.perf_counter() - started
            saved["disk_mb"] = folder_bytes(generation) / 1e6
            started = time.perf_counter()
            loaded = TimedIndex.load(target, config)
            saved["load_s"] = time.perf_counter() - started
            probe = queries[0]
            same_shortlist = [c.reference_id for c in loaded.shortlist(probe.encoding)] == [
                c.reference_id for c in index.shortlist(probe.encoding)
            ]
            same_answer = run_search(loaded, probe, config).top1 == run_search(index, probe, config).top1
            saved["reload_ok"] = len(loaded) == len(index) and same_shortlist and same_answer
            del loaded
        finally:
            shutil.rmtree(target, ignore_errors=True)
    gc.collect()
    rss, peak = memory_mb()
    stats = index.stats()
    load_before = os.getloadavg()[0]
    for query in progress_bar(show, iterable=queries, desc=f"warm-up {n:,}"):
        run_search(index, query, config)
    # Searches and standalone shortlists in separate passes: every call follows another query's,
    # as in service, rather than re-running the query whose postings are still in the CPU caches.
    searches: list[SearchRun] = []
    shortlists: list[ShortlistRun] = []
    for _ in range(repeats):
        for query in progress_bar(show, iterable=queries, desc=f"search {n:,}"):
            searches.append(run_search(index, query, config))
        for query in progress_bar(show, iterable=queries, desc=f"shortlist {n:,}"):
            shortlists.append(run_shortlist(index, query))
    last = searches[-len(queries) :]
    result = SizeResult(
        n=n,
        add_s=add_s,
        generate_s=generate_s,
        segments=int(stats["segments"]),
        features=int(stats["features"]),
        shortlist_p50_ms=percentile([r.shortlist_ms for r in shortlists], 50),
        shortlist_p95_ms=percentile([r.shortlist_ms for r in shortlists], 95),
        search_p50_ms=percentile([r.search_ms for r in searches], 50),
        search_p95_ms=percentile([r.search_ms for r in searches], 95),
        search_mean_ms=float(np.mean([r.search_ms for r in searches])),
        shortlist_graph_mean_ms=float(np.mean([r.shortlist_ms - r.words_ms for r in shortlists])),
        shortlist_words_mean_ms=float(np.mean([r.words_ms for r in shortlists])),
        in_search_shortlist_mean_ms=float(np.mean([r.shortlist_ms for r in searches])),
        in_search_words_mean_ms=float(np.mean([r.words_ms for r in searches])),
        verification_mean_ms=float(np.mean([r.search_ms - r.shortlist_ms for r in searches])),
        rounds_mean=float(np.mean([r.rounds for r in searches])),
        top1=sum(r.top1 for r in last),
        in_shortlist=sum(r.hit for r in shortlists[-len(queries) :]),
        queries=len(queries),
        index_bytes=int(stats["bytes"]),
        bytes_per_reference=float(stats["bytes_per_reference"]),
        rss_mb=rss,
        rss_peak_mb=peak,
        rss_above_baseline_mb=rss - baseline_rss,
        load_average=(load_before + os.getloadavg()[0]) / 2,
        misses=[q.reference_id for q, r in zip(queries, last, strict=True) if not r.top1],
        **saved,
    )
    return result


# ---------------------------------------------------------------------------------------------- report
def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def table(results: Sequence[SizeResult]) -> str:
    header = (
        "| N | segments | add s | shortlist p50 ms | search p50 ms | search p95 ms | top-1 | index MB | bytes/ref "
        "| RSS MB | save s | load s |"
    )
    lines = [header, "|" + "---:|" * 12]
    for r in results:
        lines.append(
            f"| {r.n:,} | {r.segments} | {fmt(r.add_s)} | {fmt(r.shortlist_p50_ms)} | {fmt(r.search_p50_ms)} "
            f"| {fmt(r.search_p95_ms)} | {r.top1}/{r.queries} | {fmt(r.index_bytes / 1e6)} "
            f"| {r.bytes_per_reference:,.0f} | {fmt(r.rss_mb, 0)} | {fmt(r.save_s)} | {fmt(r.load_s)} |"
        )
    return "\n".join(lines)


def breakdown(results: Sequence[SizeResult]) -> str:
    header = (
        "| N | search mean ms | shortlist in search ms | of which word votes ms | verification ms "
        "| shortlists | standalone shortlist: graph+fusion / word votes ms | in shortlist | RSS above baseline MB "
        "| filler gen s | load avg |"
    )
    lines = [header, "|" + "---:|" * 11]
    for r in results:
        lines.append(
            f"| {r.n:,} | {fmt(r.search_mean_ms)} | {fmt(r.in_search_shortlist_mean_ms)} "
            f"| {fmt(r.in_search_words_mean_ms)} | {fmt(r.verification_mean_ms)} | {r.rounds_mean:.1f} "
            f"| {fmt(r.shortlist_graph_mean_ms)} / {fmt(r.shortlist_words_mean_ms)} | {r.in_shortlist}/{r.queries} "
            f"| {fmt(r.rss_above_baseline_mb, 0)} | {fmt(r.generate_s)} | {r.load_average:.1f} |"
        )
    return "\n".join(lines)


def growth(results: Sequence[SizeResult]) -> dict[str, float | str]:
    """Ratios from the smallest to the largest size, and the RSS cost of each reference added last."""
    first, last, before = results[0], results[-1], results[-2]
    n_ratio = last.n / first.n
    search_ratio = last.search_p50_ms / first.search_p50_ms
    bytes_ratio = last.index_bytes / first.index_bytes
    rss_first = first.rss_above_baseline_mb
    rss_ratio = last.rss_above_baseline_mb / rss_first if rss_first > 0 else math.nan
    rss_per_reference = (last.rss_mb - before.rss_mb) * 1024 * 1024 / (last.n - before.n)
    if search_ratio < 0.5 * n_ratio:
        time_verdict = "sub-linear"
    elif search_ratio <= 1.5 * n_ratio:
        time_verdict = "about linear"
    else:
        time_verdict = "super-linear"
    # Linear memory: a fixed cost per reference, so the RSS each added reference costs stays close to
    # the index's own bytes per reference (plus the inverted file and bookkeeping the stats leave out).
    per_reference = last.bytes_per_reference
    linear = 0.8 * n_ratio <= bytes_ratio <= 1.25 * n_ratio and 0.8 * per_reference <= rss_per_reference
    return {
        "from": first.n,
        "to": last.n,
        "n_ratio": n_ratio,
        "search_p50_ratio": search_ratio,
        "shortlist_p50_ratio": last.shortlist_p50_ms / first.shortlist_p50_ms,
        "verification_mean_ratio": last.verification_mean_ms / first.verification_mean_ms,
        "index_bytes_ratio": bytes_ratio,
        "rss_above_baseline_ratio": rss_ratio,
        "rss_bytes_per_added_reference": rss_per_reference,
        "rss_slope_from": before.n,
        "index_bytes_per_reference": per_reference,
        "search_time": time_verdict,
        "memory": "linear" if linear else "not linear",
    }


def growth_line(g: dict[str, Any]) -> str:
    return (
        f"growth {g['from']:,} -> {g['to']:,} references (x{g['n_ratio']:.0f}): "
        f"search p50 x{g['search_p50_ratio']:.2f} vs x{g['n_ratio']:.0f} -> {g['search_time']} "
        f"(shortlist p50 x{g['shortlist_p50_ratio']:.1f}, verification mean x{g['verification_mean_ratio']:.2f}); "
        f"memory: index bytes x{g['index_bytes_ratio']:.1f}, RSS above baseline x{g['rss_above_baseline_ratio']:.1f}, "
        f"RSS per reference added {g['rss_slope_from']:,}->{g['to']:,}: {g['rss_bytes_per_added_reference']:,.0f} B "
        f"(index {g['index_bytes_per_reference']:,.0f} B/ref) -> {g['memory']}"
    )


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=None,
        help="index sizes, e.g. 1000,10000,100000 or 1k,10k,100k (default 1k,10k,100k)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="sizes 1k,5k, 150 vocabulary covers, 12 queries: a smoke run of a few minutes",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--codebook-covers",
        type=int,
        default=None,
        help="covers drawn to train the codebook and seed the fillers (default 700; quick 150)",
    )
    parser.add_argument("--real", type=int, default=50, help="real references: drawn covers (default 50)")
    parser.add_argument(
        "--queries", type=int, default=None, help="photos searched per size, one per real cover (default 30; quick 12)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="measured passes over the queries (default 1)")
    parser.add_argument(
        "--batch",
        type=int,
        default=2500,
        help=f"references per ReferenceIndex.add call, i.e. per segment (default 2500; "
        f"keep >= {COMPACT_BELOW} or save() merges the segments)",
    )
    parser.add_argument("--noise", type=float, default=2.0, help="filler descriptor noise, int8 levels (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="threads drawing covers (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="skip the save/load measurements")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where saves go (default: the system temp dir)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="also save the largest index and the query photos in this folder, as bench_scale_saved.py build "
        "does (then `bench_scale_saved.py measure DIR` measures any code on this very index)",
    )
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if args.codebook_covers is None:
        args.codebook_covers = 150 if args.quick else 700
    if args.queries is None:
        args.queries = 12 if args.quick else 30
    if args.queries > args.real:
        parser.error(f"--queries ({args.queries}) cannot exceed --real ({args.real}): one photo per real cover")
    if args.sizes[0] < args.real:
        parser.error(f"the smallest size ({args.sizes[0]}) must hold the {args.real} real references")
    if args.codebook_covers < 10 or args.real < 1 or args.queries < 1 or args.repeats < 1 or args.batch < 1:
        parser.error("--codebook-covers >= 10, --real, --queries, --repeats and --batch >= 1")
    if args.batch < COMPACT_BELOW:
        log(f"warning: --batch {args.batch} < {COMPACT_BELOW}: save() will merge the segments it finds small")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # As a process serving the index does (Engine, ServiceServer: kyb.heap); KYB_HEAP_RETAIN_MB=0 measures without.
    engine_config = load_config(env=os.environ)
    retain_freed_heap(engine_config.heap_retain_mb)
    show = not args.no_progress
    # Search settings as a served engine reads them (KYB_SEARCH__RESIDUAL_BITS=-1 measures int8
    # descriptors, KYB_SEARCH__VOTE_BUDGET a bounded vote); extraction keeps its defaults.
    limits, features, search_config = ImageLimits(), FeatureConfig(), engine_config.search
    timings: dict[str, float] = {}

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - started
        log(f"{name}: {timings[name]:.1f} s")

    bands = synth.make_bands(args.real + args.codebook_covers, seed=args.seed, albums_per_band=(1, 1))
    real_bands, vocab_bands = bands[: args.real], bands[args.real :]
    common = {"limits": limits, "features": features, "workers": args.workers, "show": show}
    with stage("draw+extract vocabulary covers"):
        vocab = draw_covers(vocab_bands, args.seed, 1, "vocab", keep_pixels=False, **common)
    with stage("train codebook"):
        codebook = train(vocab, features.pca_dims, show)
    log(
        f"codebook {codebook.version}: {codebook.n_words} words, {codebook.vlad_words.shape[0]} VLAD words, "
        f"{codebook.global_dims}-d global vectors, {codebook.params.get('descriptors')} training descriptors"
    )
    encoder = Encoder(codebook, features)
    with stage("draw+encode real references"):
        real = draw_covers(real_bands, args.seed, 2, "real", keep_pixels=True, **common)
        real_items: list[Item] = []
        for cover in real:
            assert cover.decoded is not None
            encoding = encoder.encode(cover.decoded, reference=True)
            real_items.append((cover.reference_id, cover.decoded.sha256, encoding))
    with stage("compose+encode query photos"):
        queries = make_queries(real, args.queries, encoder, limits, args.seed, show)
    del real  # the pixels are not needed any more
    with stage("filler pool"):
        pool = [encoder.encode_features(c.features, c.region) for c in vocab]
        lengths = np.asarray([len(e) for _, _, e in real_items])
        factory = FillerFactory(codebook, pool, lengths, seed=args.seed, noise=args.noise)
        del vocab, pool
    sample = factory.make(10**9, 250)  # numbers the index never uses
    checks = realism(codebook, [e for _, _, e in real_items], [e for _, _, e in sample])
    log("real vs filler: " + json.dumps(checks))
    with stage("filler generation, 2,500"):
        for chunk in range(10):
            factory.make(10**9 + 250 * (chunk + 1), 250)
    del sample
    log(f"fillers: pool of {factory.pool_size} covers, ~{timings['filler generation, 2,500'] * 40:.0f} s per 100k")

    gc.collect()
    baseline_rss, _ = memory_mb()
    index = TimedIndex(codebook, search_config)
    stream = ItemStream(real_items, factory)
    save_dir = None if args.no_save else (args.tmp_dir or Path(tempfile.gettempdir()))
    results: list[SizeResult] = []
    add_s = 0.0
    for n in args.sizes:
        with progress_bar(show, total=n, initial=len(index), desc=f"index {n:,}", unit="ref") as bar:
            while len(index) < n:
                items = stream.take(min(args.batch, n - len(index)))
                started = time.perf_counter()
                index.add(items)
                add_s += time.perf_counter() - started
                bar.update(len(items))
                del items
        log(f"{n:,} references: add {add_s:.1f} s, filler generation {stream.generate_s:.1f} s; measuring")
        result = measure(
            index,
            queries,
            search_config,
            n=n,
            add_s=add_s,
            generate_s=stream.generate_s,
            baseline_rss=baseline_rss,
            repeats=args.repeats,
            save_dir=save_dir,
            show=show,
        )
        results.append(result)
        log(
            f"{n:,}: search p50 {result.search_p50_ms:.0f} ms, top-1 {result.top1}/{result.queries}, "
            f"RSS {result.rss_mb:.0f} MB"
        )

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        index.save(args.keep / "index")
        # Read back only by bench_scale_saved.py measure: pickle keeps the Query dataclasses as they are.
        with open(args.keep / "queries.pkl", "wb") as handle:
            pickle.dump(queries, handle)
        log(f"kept the {len(index):,}-reference index and the query photos in {args.keep}")

    print()
    print(
        f"Scale benchmark: {len(queries)} query photos over {args.real} real covers + generated fillers; "
        f"codebook {codebook.n_words} words / {codebook.global_dims}-d; {os.cpu_count()} CPUs; "
        f"baseline RSS {baseline_rss:.0f} MB"
    )
    print()
    print(table(results))
    print()
    print("Where search time goes (means over the queries; verification = search - shortlists in it):")
    print()
    print(breakdown(results))
    print()
    summary = growth(results) if len(results) > 1 else {}
    if summary:
        print(growth_line(summary))
    misses = {r.n: r.misses for r in results if r.misses}
    if misses:
        print("top-1 misses: " + "; ".join(f"{n:,}: {', '.join(ids)}" for n, ids in misses.items()))
    if args.json is not None:
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "numpy": np.__version__,
                "opencv": cv2.__version__,
            },
            "codebook": {"version": codebook.version, **codebook.params},
            "setup_s": timings,
            "baseline_rss_mb": baseline_rss,
            "realism": checks,
            "results": [vars(r) for r in results],
            "growth": summary,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
