"""The reference index: compact per-reference features, an hnswlib graph and an inverted file.

Layout of an index folder (everything a matcher shard needs; rebuildable from the catalog + images)::

    CURRENT                  name of the live generation, replaced atomically
    gen-000042/
        manifest.json        counts, codebook version, segment list, deleted ordinals
        codebook.npz         the codebook every encoding in this generation was made with
        seg-000003.npz ...   immutable segments of references (hard-linked between generations)
        ann.hnsw             hnswlib graph over the global vectors

A save writes a new generation beside the old one (temp folder, fsync, rename) and then swaps
``CURRENT`` (temp file, fsync, rename): a process killed at any point leaves the previous generation
loadable. Unchanged segments are hard links, so a save costs the new segments plus the graph.

Per reference, the index keeps up to ``features.reference_features`` keypoints as 4 bytes of fixed-point
position, ``pca_dims`` bytes of int8 descriptor and 2 bytes of visual word (about 70 bytes each),
plus its global vector in the graph.
"""

from __future__ import annotations

import fcntl
import functools
import itertools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from kyb.codebook import Codebook
from kyb.config import SearchConfig
from kyb.encoder import Encoding
from kyb.errors import IndexCorrupt, InvalidRequest, NotReady

__all__ = [
    "Candidate",
    "RankedLists",
    "ReferenceFeatures",
    "ReferenceIndex",
    "VoteMemo",
    "base_reference_id",
    "current_generation",
    "fuse_ranked",
    "has_index",
    "load_codebook",
    "merge_ranked",
    "writer_lock",
]

log = logging.getLogger(__name__)

FORMAT = 1
#: Fixed-point factor for stored keypoint positions: 1/16 px steps, up to 4095 px.
XY_SCALE = 16.0
XY_MAX = 65535 / XY_SCALE


def base_reference_id(key: str) -> str:
    """The reference id of an index key (``"abc#1"``, the 2nd region of ``abc`` -> ``"abc"``)."""
    return key.split("#", 1)[0]


@dataclass(frozen=True)
class ReferenceFeatures:
    """One reference as the verifier needs it: positions, descriptors and its region's size."""

    reference_id: str
    xy: np.ndarray  # (N, 2) float32, region frame
    descriptors: np.ndarray  # (N, pca_dims) int8
    words: np.ndarray  # (N,) visual words
    region_size: tuple[float, float]


@dataclass(frozen=True)
class Candidate:
    """A shortlisted reference with the evidence that put it there."""

    reference_id: str
    ordinal: int
    global_similarity: float  # inner product of unit global vectors, 0 when not from the graph
    word_score: float  # idf-weighted shared visual words, 0 when not from the inverted file
    fused: float


class _Segment:
    """An immutable batch of references; only its ``alive`` mask changes (deletions)."""

    def __init__(
        self,
        name: str,
        ordinals: np.ndarray,
        ref_ids: np.ndarray,
        sha256: np.ndarray,
        offsets: np.ndarray,
        xy: np.ndarray,
        descriptors: np.ndarray,
        words: np.ndarray,
        region: np.ndarray,
        global_vectors: np.ndarray,
        signatures: np.ndarray,
        n_words: int,
    ) -> None:
        self.name = name
        self.ordinals = ordinals
        self.ref_ids = ref_ids
        self.sha256 = sha256
        self.offsets = offsets
        self.xy = xy
        self.descriptors = descriptors
        self.words = words
        self.region = region
        self.global_vectors = global_vectors
        self.alive = np.ones(len(ordinals), dtype=bool)
        self.saved = False
        counts = np.diff(offsets)
        self.inv_sqrt_count = 1.0 / np.sqrt(np.maximum(counts, 1)).astype(np.float32)
        # Inverted file with one posting per feature, in word order: each word's postings are one
        # contiguous run (word_starts[w]:word_starts[w + 1]) of the feature's reference row and its
        # Hamming-embedding signature, which the vote (:func:`_vote`) walks for the photo's words
        # only. Held in word order only; save() puts the signatures back in feature order.
        feature_row = np.repeat(np.arange(len(ordinals), dtype=np.int32), counts)
        order = np.argsort(words, kind="stable")
        self.word_starts = np.searchsorted(words[order], np.arange(n_words + 1)).astype(np.int64)
        self.posting_rows = feature_row[order]
        self.posting_signatures = np.ascontiguousarray(signatures[order], dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.ordinals)

    @property
    def nbytes(self) -> int:
        return int(
            self.xy.nbytes
            + self.descriptors.nbytes
            + self.words.nbytes
            + self.offsets.nbytes
            + self.region.nbytes
            + self.global_vectors.nbytes
            + self.ordinals.nbytes
            + self.posting_signatures.nbytes
        )

    def features(self, row: int) -> ReferenceFeatures:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return ReferenceFeatures(
            reference_id=str(self.ref_ids[row]),
            xy=self.xy[start:end].astype(np.float32) / XY_SCALE,
            descriptors=self.descriptors[start:end],
            words=self.words[start:end],
            region_size=(float(self.region[row, 0]), float(self.region[row, 1])),
        )

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(
                handle,
                ordinals=self.ordinals,
                ref_ids=self.ref_ids,
                sha256=self.sha256,
                offsets=self.offsets,
                xy=self.xy,
                descriptors=self.descriptors,
                words=self.words,
                region=self.region,
                global_vectors=self.global_vectors,
                signatures=self.signatures(),
            )
            handle.flush()
            os.fsync(handle.fileno())

    def signatures(self) -> np.ndarray:
        """The features' signatures in feature order (as stored)."""
        signatures = np.empty_like(self.posting_signatures)
        # The order __init__ sorted them in (a stable sort of the same words), not kept in memory.
        signatures[np.argsort(self.words, kind="stable")] = self.posting_signatures
        return signatures

    @classmethod
    def load(cls, path: Path, codebook: Codebook) -> _Segment:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        if "signatures" not in arrays:  # written before signatures were stored: derived once here
            arrays["signatures"] = codebook.signatures(arrays["descriptors"], arrays["words"])
        segment = cls(name=path.name, n_words=codebook.n_words, **arrays)
        segment.saved = True
        return segment

    @classmethod
    def build(cls, name: str, ordinals: Sequence[int], items: Sequence[tuple[str, str, Encoding]], codebook: Codebook):
        counts = [len(e) for _, _, e in items]
        word_dtype = np.uint16 if codebook.n_words <= 65536 else np.uint32
        descriptors = np.concatenate([e.descriptors for _, _, e in items]).astype(np.int8)
        words = np.concatenate([e.words for _, _, e in items]).astype(word_dtype)
        return cls(
            name=name,
            ordinals=np.asarray(ordinals, dtype=np.int64),
            ref_ids=np.asarray([r for r, _, _ in items], dtype=str),
            sha256=np.asarray([s for _, s, _ in items], dtype=str),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            xy=np.concatenate([np.rint(np.clip(e.xy, 0, XY_MAX) * XY_SCALE) for _, _, e in items]).astype(np.uint16),
            descriptors=descriptors,
            words=words,
            region=np.asarray([e.region_size for _, _, e in items], dtype=np.float32),
            global_vectors=np.stack([e.global_vector for _, _, e in items]).astype(np.float32),
            signatures=codebook.signatures(descriptors, words),
            n_words=codebook.n_words,
        )


#: Weight of the global-vector list in the rank fusion (the word list weighs 1): measured on photos of
#: covers, the inverted file ranks the right reference higher than VLAD does (recall@10 0.99 vs 0.95),
#: so VLAD mostly adds candidates the word vote missed rather than reordering the top.
_GLOBAL_WEIGHT = 0.5


@dataclass(frozen=True)
class RankedLists:
    """A shortlist before fusion: (reference id, score) pairs, best first, of each source.

    ``global_list``: hnswlib neighbours of the global vector with their inner product;
    ``words``: inverted-file votes with their idf-weighted score.
    """

    global_list: list[tuple[str, float]]
    words: list[tuple[str, float]]


def _depths(config: SearchConfig, limit: int) -> tuple[int, int]:
    """How deep each list goes for a shortlist of ``limit``: more than verify_top deepens both."""
    depth = max(1.0, limit / config.verify_top)
    return round(config.shortlist_global * depth), round(config.shortlist_words * depth)


def merge_ranked(lists: Sequence[RankedLists], config: SearchConfig, limit: int) -> RankedLists:
    """The lists of several indexes (matcher shards) as one index would rank them: by score, cut at
    the depth a shortlist of ``limit`` uses. Global similarities compare exactly across shards; word
    scores use each shard's own idf, which agrees with the whole index's as far as the shards' word
    statistics agree (references are spread over shards by a hash, so they do, up to sampling)."""
    depth_global, depth_words = _depths(config, limit)
    # sorted() is stable: equal scores keep shard order, as equal scores keep segment order in one index.
    merged_global = sorted((item for part in lists for item in part.global_list), key=lambda item: -item[1])
    merged_words = sorted((item for part in lists for item in part.words), key=lambda item: -item[1])
    return RankedLists(merged_global[:depth_global], merged_words[:depth_words])


def fuse_ranked(lists: RankedLists, config: SearchConfig, limit: int) -> list[tuple[str, float, float, float]]:
    """Weighted reciprocal-rank fusion of both lists: (reference id, global similarity, word score,
    fused score), best first, at most ``limit``."""
    by_ref: dict[str, list[float]] = {}
    for rank, (reference_id, similarity) in enumerate(lists.global_list):
        by_ref[reference_id] = [similarity, 0.0, _GLOBAL_WEIGHT / (20 + rank)]
    for rank, (reference_id, score) in enumerate(lists.words):
        entry = by_ref.setdefault(reference_id, [0.0, 0.0, 0.0])
        entry[1] = score
        entry[2] += 1.0 / (20 + rank)
    ranked = sorted(by_ref.items(), key=lambda item: -item[1][2])[:limit]
    return [(reference_id, values[0], values[1], values[2]) for reference_id, values in ranked]


@dataclass(frozen=True)
class PhotoVote:
    """What a photo votes with: its features whose word the inverted file uses, in word order.

    ``words`` (N,) int64, ``signatures`` (N,) uint64 (Codebook.signatures) and ``weights`` (N,)
    float64: the word's idf^2 over the square root of how many of the photo's features have that
    word (a repeated pattern in the photo votes like a few features, not like dozens).
    """

    words: np.ndarray
    signatures: np.ndarray
    weights: np.ndarray

    def take(self, rows: np.ndarray, sign: float = 1.0) -> PhotoVote:
        return PhotoVote(self.words[rows], self.signatures[rows], sign * self.weights[rows])

    def part(self, start: int, end: int) -> PhotoVote:
        """Features ``start:end`` (views, no copy)."""
        return PhotoVote(self.words[start:end], self.signatures[start:end], self.weights[start:end])

    @staticmethod
    def join(*parts: PhotoVote) -> PhotoVote:
        return PhotoVote(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("words", "signatures", "weights")))


class VoteMemo:
    """The inverted-file vote of one photo, kept between the rounds of one search.

    A later round votes with the features no found object explained, a subset of the previous
    round's: taking back the votes of the words whose features changed touches far fewer postings
    than voting again with every feature that stayed. Pass one fresh memo per photo.
    """

    def __init__(self) -> None:
        self.photo: tuple[PhotoVote, ...] | None = None  # one vote per polarity searched
        self.references = -1
        # id(segment) -> (segment, raw vote per row for each polarity); the segment is held so its id
        # is not reused.
        self.raw: dict[int, tuple[_Segment, list[np.ndarray]]] = {}


#: A real vote is at least the smallest weight kept ((ln 4)^2 / sqrt(2,500) for a word repeated over
#: a whole photo) times exp(-24^2/16^2) ~ 0.004; the vote sums in float64, so anything below this
#: after a subtraction is rounding of a vote that was taken back.
_VOTE_FLOOR = 1e-6


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReferenceIndex:
    """Add, replace, delete and shortlist references; save and load a folder atomically.

    Thread safety: searches run concurrently with each other; mutations and saves take a lock and
    swap in new segment lists, so a search sees either the state before or after a change.

    hnswlib parameters: ``M`` (``search.hnsw_m``, default 16) is the graph degree: recall rises and
    memory grows by about ``M * 8`` bytes per reference; ``ef`` (``search.hnsw_ef``, default 128 and
    at least the shortlist length) is the search breadth: recall rises and latency grows linearly.
    """

    def __init__(self, codebook: Codebook, search: SearchConfig, path: Path | None = None) -> None:
        self.codebook = codebook
        self.search_config = search
        self.path = Path(path) if path is not None else None
        self._lock = threading.RLock()
        self._segments: list[_Segment] = []
        self._where: dict[str, tuple[_Segment, int]] = {}
        self._ordinal_ref: dict[int, str] = {}
        self._next_ordinal = 0
        self._df = np.zeros(codebook.n_words, dtype=np.int64)
        self._generation = 0
        self._dirty = False
        self._graph = self._new_graph(1024)

    # ------------------------------------------------------------------ basics
    def _new_graph(self, capacity: int) -> hnswlib.Index:
        graph = hnswlib.Index(space="ip", dim=self.codebook.global_dims)
        graph.init_index(
            max_elements=capacity,
            ef_construction=self.search_config.hnsw_ef_construction,
            M=self.search_config.hnsw_m,
            random_seed=7,
        )
        graph.set_ef(self.search_config.hnsw_ef)
        graph.set_num_threads(1)
        return graph

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, reference_id: str) -> bool:
        return reference_id in self._where

    @property
    def generation(self) -> int:
        return self._generation

    def reference_ids(self) -> list[str]:
        return list(self._where)

    def sha256_of(self, reference_id: str) -> str | None:
        found = self._where.get(reference_id)
        return None if found is None else str(found[0].sha256[found[1]])

    def features(self, reference_id: str) -> ReferenceFeatures:
        found = self._where.get(reference_id)
        if found is None:
            raise KeyError(reference_id)
        return found[0].features(found[1])

    def encoding(self, reference_id: str) -> Encoding:
        """The stored encoding of a reference, exactly as indexed (for copying between shards)."""
        found = self._where.get(reference_id)
        if found is None:
            raise KeyError(reference_id)
        segment, row = found
        start, end = int(segment.offsets[row]), int(segment.offsets[row + 1])
        return Encoding(
            xy=segment.xy[start:end].astype(np.float32) / XY_SCALE,
            descriptors=segment.descriptors[start:end],
            words=segment.words[start:end].astype(np.int32),
            global_vector=segment.global_vectors[row],
            region_size=(float(segment.region[row, 0]), float(segment.region[row, 1])),
            codebook_version=self.codebook.version,
        )

    def stats(self) -> dict[str, float | int | str]:
        segments = self._segments
        alive = sum(int(s.alive.sum()) for s in segments)
        graph_bytes = alive * (self.codebook.global_dims * 4 + self.search_config.hnsw_m * 2 * 4 + 16)
        feature_bytes = sum(s.nbytes - s.global_vectors.nbytes for s in segments)
        total = feature_bytes + graph_bytes
        return {
            "references": alive,
            "deleted": sum(len(s) - int(s.alive.sum()) for s in segments),
            "segments": len(segments),
            "features": sum(int(s.offsets[-1]) for s in segments),
            "bytes": int(total),
            "bytes_per_reference": round(total / alive, 1) if alive else 0.0,
            "codebook_version": self.codebook.version,
            "generation": self._generation,
        }

    # ------------------------------------------------------------------ mutation
    def add(self, items: Iterable[tuple[str, str, Encoding]]) -> list[str]:
        """Adds (reference_id, sha256, encoding) items; returns what happened to each.

        Idempotent: an id already present with the same sha256 is ``"unchanged"``; with another
        sha256 it is replaced (``"replaced"``); otherwise ``"added"``. Items must be encoded with
        this index's codebook.
        """
        items = list(items)
        outcomes: list[str] = []
        fresh: list[tuple[str, str, Encoding]] = []
        with self._lock:
            seen: set[str] = set()
            for reference_id, sha, encoding in items:
                if encoding.codebook_version != self.codebook.version:
                    raise InvalidRequest(
                        f"reference {reference_id} was encoded with codebook {encoding.codebook_version}, "
                        f"the index uses {self.codebook.version}"
                    )
                if len(encoding) == 0:
                    raise InvalidRequest(f"reference {reference_id} has no features")
                if reference_id in seen:
                    outcomes.append("unchanged")
                    continue
                seen.add(reference_id)
                current = self.sha256_of(reference_id)
                if current == sha:
                    outcomes.append("unchanged")
                    continue
                if current is not None:
                    self._delete_locked(reference_id)
                    outcomes.append("replaced")
                else:
                    outcomes.append("added")
                fresh.append((reference_id, sha, encoding))
            if fresh:
                ordinals = list(range(self._next_ordinal, self._next_ordinal + len(fresh)))
                self._next_ordinal += len(fresh)
                segment = _Segment.build(f"seg-{ordinals[0]:09d}.npz", ordinals, fresh, self.codebook)
                self._attach(segment)
                needed = self._graph.get_current_count() + len(fresh)
                if needed > self._graph.get_max_elements():
                    self._graph.resize_index(max(needed, 2 * self._graph.get_max_elements()))
                self._graph.add_items(segment.global_vectors, segment.ordinals)
                self._dirty = True
        return outcomes

    def _attach(self, segment: _Segment) -> None:
        self._segments = [*self._segments, segment]
        for row in range(len(segment)):
            if not segment.alive[row]:
                continue
            reference_id = str(segment.ref_ids[row])
            self._where[reference_id] = (segment, row)
            self._ordinal_ref[int(segment.ordinals[row])] = reference_id
            start, end = segment.offsets[row], segment.offsets[row + 1]
            self._df[np.unique(segment.words[start:end])] += 1

    def delete(self, reference_id: str) -> bool:
        """Removes a reference; False when it was not there."""
        with self._lock:
            if reference_id not in self._where:
                return False
            self._delete_locked(reference_id)
            self._dirty = True
            return True

    def _delete_locked(self, reference_id: str) -> None:
        segment, row = self._where.pop(reference_id)
        segment.alive[row] = False
        ordinal = int(segment.ordinals[row])
        self._ordinal_ref.pop(ordinal, None)
        start, end = segment.offsets[row], segment.offsets[row + 1]
        self._df[np.unique(segment.words[start:end])] -= 1
        self._graph.mark_deleted(ordinal)

    # ------------------------------------------------------------------ search
    def shortlist(
        self,
        query: Encoding,
        *,
        exclude: set[str] | frozenset[str] = frozenset(),
        limit: int | None = None,
        memo: VoteMemo | None = None,
    ) -> list[Candidate]:
        """References most likely to appear in ``query``, best first (not yet verified).

        Two lists are fused by reciprocal rank (:func:`fuse_ranked`): the hnswlib neighbours of the
        global vector (strong when the object fills the photo) and the inverted-file vote of
        idf-weighted shared visual words (strong for a small logo in clutter, where the global vector
        is mostly clutter). ``memo`` (optional, one per photo) lets a later round of the same photo
        update the previous round's vote instead of voting again; the candidates are the same.
        """
        limit = limit or self.search_config.verify_top
        fused = fuse_ranked(self.ranked(query, exclude=exclude, limit=limit, memo=memo), self.search_config, limit)
        candidates = []
        for reference_id, similarity, word_score, score in fused:
            where = self._where.get(reference_id)
            if where is not None:
                ordinal = int(where[0].ordinals[where[1]])
                candidates.append(Candidate(reference_id, ordinal, similarity, word_score, score))
        return candidates

    def ranked(
        self,
        query: Encoding,
        *,
        exclude: set[str] | frozenset[str] = frozenset(),
        limit: int | None = None,
        memo: VoteMemo | None = None,
    ) -> RankedLists:
        """The two lists :meth:`shortlist` fuses, each as deep as a shortlist of ``limit`` needs.

        A matcher shard answers with these (cheap: no verification), so the gateway can merge every
        shard's lists into the global ones and fuse them exactly as one index would.
        """
        config = self.search_config
        depth_global, depth_words = _depths(config, limit or config.verify_top)
        alive = len(self._where)
        if alive == 0 or len(query) == 0:
            return RankedLists([], [])
        global_list: list[tuple[str, float]] = []
        if depth_global and float(np.abs(query.global_vector).sum()) > 0:
            k = min(depth_global + len(exclude), alive)
            try:
                labels, distances = self._graph.knn_query(query.global_vector[None, :], k=k)
            except RuntimeError:  # hnswlib cannot fill k with too many deletions: ask for fewer
                labels, distances = self._graph.knn_query(query.global_vector[None, :], k=max(1, k // 2))
            for label, distance in zip(labels[0], distances[0], strict=True):
                reference_id = self._ordinal_ref.get(int(label))
                if reference_id is None or reference_id in exclude:
                    continue
                global_list.append((reference_id, 1.0 - float(distance)))
                if len(global_list) >= depth_global:
                    break
        words = self._word_votes(query, self._segments, exclude, depth_words, memo)[:depth_words] if depth_words else []
        return RankedLists(global_list, words)

    def photo_votes(self, query: Encoding) -> tuple[PhotoVote, ...]:
        """The photo's vote, or with inverted twins (:attr:`Encoding.inverted`) one vote of the rows as
        photographed and one of the twins: a print is in one polarity, so a reference scores the
        better of the two, and the other polarity's chance votes do not add to it."""
        if query.inverted is None:
            return (self.photo_vote(query),)
        twins = np.asarray(query.inverted, dtype=bool)
        return tuple(self.photo_vote(query, np.flatnonzero(side)) for side in (~twins, twins))

    def photo_vote(self, query: Encoding, rows: np.ndarray | None = None) -> PhotoVote:
        """The photo's vote (:class:`PhotoVote`) over this index's current word statistics, with its
        features ``rows`` only when given."""
        n = max(1, len(self._where))
        words = np.asarray(query.words, dtype=np.int64)
        descriptors = np.asarray(query.descriptors)
        if rows is not None:
            words, descriptors = words[rows], descriptors[rows]
        # idf weighting already discounts common words; only words in over a quarter of the
        # references are dropped outright (they vote for nearly everything and cost the most).
        df = self._df[words]
        keep = np.flatnonzero((df > 0) & (df <= max(2, 0.25 * n)))
        keep = keep[np.argsort(words[keep], kind="stable")]
        words, df = words[keep], df[keep]
        repeats = np.unique(words, return_counts=True)[1]
        burst = np.repeat(repeats, repeats)  # words are sorted: each run is one word
        weights = np.log(n / df) ** 2 / np.sqrt(burst)
        signatures = self.codebook.signatures(descriptors[keep], words)
        return PhotoVote(words, signatures, weights)

    def _word_votes(
        self,
        query: Encoding,
        segments: Sequence[_Segment],
        exclude: set[str] | frozenset[str],
        depth: int,
        memo: VoteMemo | None = None,
    ) -> list[tuple[str, float]]:
        n = max(1, len(self._where))
        photos = self.photo_votes(query)
        if memo is not None and (memo.photo is None or memo.references != n or len(memo.photo) != len(photos)):
            memo.raw = {}  # first round, or the collection changed (idf moved): vote afresh
        changes: list[PhotoVote] | None = None
        if memo is not None and memo.raw and memo.photo is not None:
            found = [_vote_change(before, after) for before, after in zip(memo.photo, photos, strict=True)]
            # The update touches the postings of the words whose features changed, voting afresh
            # those of every word kept (df counts postings): take whichever is fewer. After a large
            # cover is found, what is left of the photo can be the smaller side.
            if all(c is not None for c in found):
                changes = [c for c in found if c is not None]
                cost = sum(int(self._df[c.words].sum()) for c in changes)
                if cost > sum(int(self._df[p.words].sum()) for p in photos):
                    changes = None
            if changes is None:
                memo.raw = {}
        table = _similarity_table(self.search_config)
        threshold = self.search_config.hamming_threshold
        # Each segment votes with each polarity's whole photo, or adds the change to its previous
        # round's vote; one (segment, ballot) pair per polarity, all voted in one pass of the pool.
        previous = [memo.raw.get(id(s)) if memo is not None and changes is not None else None for s in segments]
        pairs = [
            (segment, changes[side] if before is not None and changes is not None else photo)
            for side, photo in enumerate(photos)
            for segment, before in zip(segments, previous, strict=True)
        ]
        flat = _vote_segments([s for s, _ in pairs], [b for _, b in pairs], table, threshold,
                              self.search_config.vote_threads)  # fmt: skip
        votes = []
        for i, (segment, before) in enumerate(zip(segments, previous, strict=True)):
            raw_sides = [flat[side * len(segments) + i] for side in range(len(photos))]
            if before is not None:
                for raw, earlier in zip(raw_sides, before[1], strict=True):
                    raw += earlier
                    raw[raw < _VOTE_FLOOR] = 0.0
            raw = raw_sides[0] if len(raw_sides) == 1 else np.maximum.reduce(raw_sides)
            scores = (raw * segment.inv_sqrt_count).astype(np.float32)
            scores[~segment.alive] = 0.0
            want = min(depth + len(exclude), len(scores))
            # Partial selection, then order only the winners: a full argsort of a 100k-reference
            # segment costs more than the vote itself.
            top = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            top = top[scores[top] > 0]
            votes.append((raw_sides, top, scores[top]))
        fresh = {id(segment): (segment, vote[0]) for segment, vote in zip(segments, votes, strict=True)}
        results = [(top, scores, seg) for seg, (_, top, scores) in zip(segments, votes, strict=True) if top.size]
        if memo is not None:
            memo.photo, memo.references, memo.raw = photos, n, fresh
        if not results:
            return []
        # Merge the segments' winners as arrays and name only the best `depth` (naming every
        # segment's winners cost more than the vote itself at 40 segments); stable, like one sort.
        scores = np.concatenate([top_scores for _, top_scores, _ in results])
        owner = np.concatenate([np.full(len(rows), i) for i, (rows, _, _) in enumerate(results)])
        rows = np.concatenate([rows for rows, _, _ in results])
        merged: list[tuple[str, float]] = []
        for position in np.argsort(-scores, kind="stable"):
            reference_id = str(results[owner[position]][2].ref_ids[rows[position]])
            if reference_id not in exclude:
                merged.append((reference_id, float(scores[position])))
                if len(merged) >= depth:
                    break
        return merged

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path | None = None) -> Path:
        """Writes a new generation atomically and makes it current; returns its folder."""
        with self._lock:
            root = Path(path) if path is not None else self.path
            if root is None:
                raise InvalidRequest("this index has no folder to save to")
            root.mkdir(parents=True, exist_ok=True)
            self._maybe_compact()
            previous = _current_generation(root)
            # A kill between the generation rename and the CURRENT swap leaves a newer, unused
            # generation folder behind: number past every folder there, never reuse one.
            existing = [int(p.name[4:]) for p in root.glob("gen-*") if p.name[4:].isdigit()]
            generation = max([self._generation, previous[0] if previous else 0, *existing]) + 1
            final = root / f"gen-{generation:06d}"
            staging = root / f".gen-{generation:06d}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            self.codebook.save(staging / "codebook.npz")
            segment_entries = []
            for segment in self._segments:
                target = staging / segment.name
                source = previous[1] / segment.name if previous else None
                if segment.saved and source is not None and source.exists():
                    os.link(source, target)
                else:
                    segment.save(target)
                segment_entries.append({"file": segment.name, "references": len(segment)})
            self._graph.save_index(str(staging / "ann.hnsw"))
            with open(staging / "ann.hnsw", "rb+") as handle:
                os.fsync(handle.fileno())
            deleted = [int(s.ordinals[i]) for s in self._segments for i in np.flatnonzero(~s.alive)]
            manifest = {
                "format": FORMAT,
                "generation": generation,
                "created": time.time(),
                "codebook_version": self.codebook.version,
                "global_dims": self.codebook.global_dims,
                "n_words": self.codebook.n_words,
                "next_ordinal": self._next_ordinal,
                "references": len(self._where),
                "segments": segment_entries,
                "deleted": deleted,
                "graph_capacity": self._graph.get_max_elements(),
            }
            with open(staging / "manifest.json", "w") as handle:
                json.dump(manifest, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            _fsync_dir(staging)
            os.rename(staging, final)
            _fsync_dir(root)
            pointer = root / ".CURRENT.tmp"
            with open(pointer, "w") as handle:
                handle.write(final.name + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(pointer, root / "CURRENT")
            _fsync_dir(root)
            for segment in self._segments:
                segment.saved = True
            self._generation = generation
            self._dirty = False
            self.path = root
            # Keep the previous generation (a reader may still be loading it); drop older ones.
            for old in sorted(root.glob("gen-*")):
                if old.name not in {final.name, previous[1].name if previous else ""}:
                    shutil.rmtree(old, ignore_errors=True)
            return final

    @property
    def dirty(self) -> bool:
        return self._dirty

    def _compaction_groups(self) -> list[list[_Segment]]:
        """Which segments to merge, each group into one segment (tiered, as log-structured stores do).

        * every segment whose deleted rows are 20% of it or more, with the small ones once there are
          more than 8 small ones (< 2,048 references): one group;
        * of the larger segments, once ten or more share a size tier (2,048-20,479, 20,480-204,799,
          ... references) they all merge, oldest first, ten at a time into the next tier, and the last
          group takes the tier's remainder (up to nineteen): a search visits every segment (the word
          vote is one pass over the postings per segment), so 100k references in 2,500-reference ingests
          are 4 segments instead of 40, while each reference is rewritten only about once per tier.
        * the small ones left (up to 8) join the first group of the lowest tier that merges.
        """
        segments = sorted(self._segments, key=_insertion_order)
        wasteful = [s for s in segments if (~s.alive).sum() >= max(1, 0.2 * len(s))]
        small = [s for s in segments if len(s) < _SMALL_SEGMENT and s not in wasteful]
        first = wasteful + (small if len(small) > 8 else [])
        groups = [first] if first else []
        taken = {id(s) for s in first}
        tiers: dict[int, list[_Segment]] = {}
        for segment in segments:
            if id(segment) not in taken and len(segment) >= _SMALL_SEGMENT:
                tier = int(np.log10(len(segment) / _SMALL_SEGMENT))
                tiers.setdefault(tier, []).append(segment)
        tier_groups: list[list[_Segment]] = []
        for tier in sorted(tiers):
            members = tiers[tier]
            full = len(members) // _TIER_FANOUT
            for k in range(full):
                # The tier's remainder joins its last group instead of waiting as up to nine small
                # segments, each of which the vote visits (many small segments cost it the most).
                end = len(members) if k == full - 1 else (k + 1) * _TIER_FANOUT
                tier_groups.append(members[k * _TIER_FANOUT : end])
        waiting = [s for s in small if id(s) not in taken]
        if tier_groups and waiting:
            # Small segments ride along with a merge that happens anyway (into the lowest tier's
            # first group): rewriting them costs little, and each costs every vote a pass of its own.
            tier_groups[0] = sorted(waiting + tier_groups[0], key=_insertion_order)
        return groups + tier_groups

    def _maybe_compact(self) -> None:
        """Merges the groups of :meth:`_compaction_groups` (dropping deleted rows), keeping every
        reference's ordinal, and keeps segments in insertion order."""
        groups = self._compaction_groups()
        if not groups:
            return
        merging = {id(s) for group in groups for s in group}
        rebuild_graph = any((~s.alive).any() for group in groups for s in group)
        merged: list[_Segment] = []
        for group in groups:
            items: list[tuple[str, str, Encoding]] = []
            ordinals: list[int] = []
            for segment in group:
                for row in np.flatnonzero(segment.alive):
                    reference_id = str(segment.ref_ids[row])
                    items.append((reference_id, str(segment.sha256[row]), self.encoding(reference_id)))
                    ordinals.append(int(segment.ordinals[row]))
            if items:
                name = f"seg-{min(ordinals):09d}-m{len(items)}.npz"
                merged.append(_Segment.build(name, ordinals, items, self.codebook))
        keep = [s for s in self._segments if id(s) not in merging]
        self._segments = []
        self._where = {}
        self._ordinal_ref = {}
        self._df[:] = 0
        for segment in sorted(keep + merged, key=_insertion_order):
            self._attach(segment)
        if rebuild_graph:
            # Rebuild the graph without the deleted labels so it does not carry dead nodes forever.
            self._graph = self._build_graph(self._segments)

    def _build_graph(self, segments: Sequence[_Segment]) -> hnswlib.Index:
        alive = sum(int(s.alive.sum()) for s in segments)
        graph = self._new_graph(max(1024, int(alive * 1.25)))
        for segment in segments:
            rows = np.flatnonzero(segment.alive)
            if rows.size:
                graph.add_items(segment.global_vectors[rows], segment.ordinals[rows])
        return graph

    @classmethod
    def load(cls, path: Path, search: SearchConfig) -> ReferenceIndex:
        """Loads the current generation of an index folder (raises NotReady when there is none)."""
        root = Path(path)
        current = _current_generation(root)
        if current is None:
            raise NotReady(f"no index at {root}: ingest references first (`kyb ingest`)")
        folder = current[1]
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"index {folder}: manifest unreadable: {exc}") from None
        if manifest.get("format") != FORMAT:
            raise IndexCorrupt(f"index {folder}: format {manifest.get('format')}, expected {FORMAT}")
        codebook = Codebook.load(folder / "codebook.npz")
        if codebook.version != manifest["codebook_version"]:
            raise IndexCorrupt(f"index {folder}: codebook version does not match the manifest")
        index = cls(codebook, search, root)
        deleted = set(manifest["deleted"])
        segments = []
        try:
            for entry in manifest["segments"]:
                segment = _Segment.load(folder / entry["file"], codebook)
                if len(segment) != entry["references"]:
                    raise IndexCorrupt(f"index {folder}: segment {entry['file']} has the wrong size")
                if deleted:
                    segment.alive &= ~np.isin(segment.ordinals, list(deleted))
                segments.append(segment)
        except (OSError, ValueError, KeyError) as exc:
            raise IndexCorrupt(f"index {folder}: segment unreadable: {exc}") from None
        for segment in segments:
            index._attach(segment)
        index._next_ordinal = int(manifest["next_ordinal"])
        graph = hnswlib.Index(space="ip", dim=codebook.global_dims)
        try:
            graph.load_index(str(folder / "ann.hnsw"), max_elements=int(manifest["graph_capacity"]))
        except RuntimeError as exc:
            log.warning("index %s: graph unreadable (%s); rebuilding it from the segments", folder, exc)
            graph = index._build_graph(segments)
        graph.set_ef(search.hnsw_ef)
        graph.set_num_threads(1)
        index._graph = graph
        index._generation = int(manifest["generation"])
        if len(index) != manifest["references"]:
            raise IndexCorrupt(f"index {folder}: {len(index)} references, manifest says {manifest['references']}")
        return index


#: Segments under this many references are small: merged together once there are more than 8.
_SMALL_SEGMENT = 2048
#: Larger segments merge this many of one size tier into one of the next (see _compaction_groups).
_TIER_FANOUT = 10


def _insertion_order(segment: _Segment) -> int:
    """Sort key keeping segments in the order their references were added (first ordinal)."""
    return int(segment.ordinals.min()) if len(segment) else 0


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools() -> None:
    # A forked child inherits the pools but not their threads: work submitted there would never run.
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def search_pool(threads: int) -> ThreadPoolExecutor:
    """The process-wide pool of ``threads`` workers that every search's vote (``search.vote_threads``)
    and look-ahead verification (``search.verify_threads``) share, so concurrent searches share the
    cores rather than multiply threads; its tasks never wait on each other."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kyb-search")
        return pool


def _vote_change(before: PhotoVote, after: PhotoVote) -> PhotoVote | None:
    """The votes that turn ``before``'s scores into ``after``'s: for each word whose features changed,
    its old features with negated weights and its new ones (a word's weights depend on how many
    features it has, so a word that lost some is re-voted whole). None when ``after`` is not a
    subset of ``before`` word by word (then voting afresh is the only way)."""
    old_words, old_counts = np.unique(before.words, return_counts=True)
    new_words, new_counts = np.unique(after.words, return_counts=True)
    position = np.searchsorted(old_words, new_words)
    if new_words.size and (
        position.max() >= old_words.size
        or np.any(old_words[position] != new_words)
        or np.any(old_counts[position] < new_counts)
    ):
        return None
    kept = np.zeros(old_words.size, dtype=np.int64)
    kept[position] = new_counts
    changed = old_words[kept != old_counts]
    return PhotoVote.join(
        before.take(np.flatnonzero(np.isin(before.words, changed)), sign=-1.0),
        after.take(np.flatnonzero(np.isin(after.words, changed))),
    )


def _similarity_table(config: SearchConfig) -> np.ndarray:
    """Vote weight of a shared word by the Hamming distance of the two signatures (0..64 bits)."""
    bits = np.arange(65, dtype=np.float64)
    table = np.exp(-(bits**2) / config.hamming_sigma**2)
    table[bits > config.hamming_threshold] = 0.0
    return table


_M1, _M2, _M4, _H01 = (
    np.uint64(v) for v in (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101)
)
_SHIFTS = tuple(np.uint64(v) for v in (1, 2, 4, 56))


#: Postings a vote compares in one block before it looks at the hits (8 KB of signatures, in L1).
_VOTE_BLOCK = 1024


def _hamming_scatter(
    starts: np.ndarray,
    rows: np.ndarray,
    signatures: np.ndarray,
    words: np.ndarray,
    photo_signatures: np.ndarray,
    weights: np.ndarray,
    table: np.ndarray,
    threshold: int,
    hits: np.ndarray,
    out: np.ndarray,
) -> None:
    """For each photo feature k, ``out[row] += weights[k] * table[bits]`` for every reference row
    holding its word, with ``bits`` the Hamming distance to the closest of that row's features of the
    word (one photo feature counts once per reference, however often the word repeats there).

    A word's postings ascend by row (the segment sorts them stably), so a row's features of the word
    are adjacent and the closest is a running maximum. Only ~6% of postings are within
    ``threshold``: each block is first compared branch-free, every posting written to ``hits``
    (``_VOTE_BLOCK`` int64 scratch) with its distance and only the close ones kept, then the hits are
    added up. A branch per posting mispredicted often enough to cost a third of the vote.
    """
    one, two, four, top = _SHIFTS
    for k in range(words.size):
        signature = photo_signatures[k]
        weight = weights[k]
        start, end = starts[words[k]], starts[words[k] + 1]
        previous, best = -1, 0.0
        for block in range(start, end, _VOTE_BLOCK):
            n_hits = 0
            for p in range(block, min(end, block + _VOTE_BLOCK)):
                x = signature ^ signatures[p]
                x = x - ((x >> one) & _M1)  # popcount (SWAR; LLVM emits popcnt where the CPU has it)
                x = (x & _M2) + ((x >> two) & _M2)
                x = (x + (x >> four)) & _M4
                bits = np.int64((x * _H01) >> top)
                hits[n_hits] = (p << 7) | bits  # position and distance (0..64) in one store
                n_hits += bits <= threshold
            for i in range(n_hits):
                row = rows[hits[i] >> 7]
                similarity = table[hits[i] & 127]
                if row != previous:
                    if previous >= 0:
                        out[previous] += weight * best
                    previous, best = row, similarity
                elif similarity > best:
                    best = similarity
        if previous >= 0:
            out[previous] += weight * best


@functools.cache
def _compiled_scatter() -> Callable[..., None]:
    """:func:`_hamming_scatter` compiled by numba on the first vote (processes that never search do
    not import it), its machine code cached beside this module where that folder is writable; in a
    read-only install it is compiled once per process (~0.5 s)."""
    import numba

    try:
        return numba.njit(nogil=True, cache=True)(_hamming_scatter)
    except RuntimeError:  # numba found no writable cache folder
        return numba.njit(nogil=True)(_hamming_scatter)


#: A vote is not cut into pieces smaller than this many postings (~0.1 ms of the compiled loop):
#: below it, handing a piece to another thread costs about what it saves.
_MIN_VOTE_PIECE = 50_000


def _vote_pieces(
    segments: Sequence[_Segment], ballots: Sequence[PhotoVote], threads: int
) -> list[tuple[int, int, int]]:
    """How to spread the votes of ``segments`` over ``threads``: (segment position, first feature,
    end feature) pieces, the largest first.

    The cost of a piece is the postings it walks (its words' runs in that segment). Segments differ
    in size (compaction leaves e.g. 25k, 25k and 50k references), and one thread a segment in
    insertion order let the last, largest one run alone while the other thread idled (the 100k
    vote 14-15 ms where even segments took 11-12). A segment worth more than a thread's share is cut
    by photo feature into equal pieces -- a photo feature's vote is a sum term of its own, so pieces
    add up to the whole -- and the pieces go out largest first (longest-processing-time order).
    """
    # reach[j]: postings walked by the ballot's first j features (reach[0] = 0).
    reaches = []
    for segment, ballot in zip(segments, ballots, strict=True):
        starts = segment.word_starts
        reaches.append(np.concatenate([[0], np.cumsum(starts[ballot.words + 1] - starts[ballot.words])]))
    share = max(sum(int(reach[-1]) for reach in reaches) / max(1, threads), _MIN_VOTE_PIECE)
    pieces: list[tuple[int, int, int, int]] = []
    for position, reach in enumerate(reaches):
        size, n = int(reach[-1]), len(reach) - 1
        count = max(1, int(np.ceil(size / share - 1e-9)))
        cuts = {int(c) for c in np.searchsorted(reach, size * np.arange(1, count) / count)} - {0, n}
        # At least one piece a segment, empty for a ballot with no words (its vote is zeros).
        bounds = [0, *sorted(cuts), n]
        for first, end in itertools.pairwise(bounds):
            pieces.append((int(reach[end] - reach[first]), position, first, end))
    pieces.sort(key=lambda piece: -piece[0])
    return [(position, first, end) for _, position, first, end in pieces]


def _vote_segments(
    segments: Sequence[_Segment], ballots: Sequence[PhotoVote], table: np.ndarray, threshold: int, threads: int
) -> list[np.ndarray]:
    """Raw vote of ``ballots[i]`` in ``segments[i]`` for each i, its pieces (:func:`_vote_pieces`)
    run on the shared search pool; the pieces of a segment are added in feature order whichever
    thread ran them, so the result does not depend on timing."""
    pieces = _vote_pieces(segments, ballots, threads)

    def run(piece: tuple[int, int, int]) -> np.ndarray:
        position, first, end = piece
        return _vote(segments[position], ballots[position].part(first, end), table, threshold)

    if threads > 1 and len(pieces) > 1:
        outputs = list(search_pool(threads).map(run, pieces))
    else:
        outputs = [run(piece) for piece in pieces]
    raws: list[np.ndarray | None] = [None] * len(segments)
    for (position, _, _), output in sorted(zip(pieces, outputs, strict=True), key=lambda item: item[0]):
        before = raws[position]
        raws[position] = output if before is None else before + output
    return raws  # type: ignore[return-value]


def _vote(segment: _Segment, photo: PhotoVote, table: np.ndarray, threshold: int) -> np.ndarray:
    """Raw inverted-file vote of ``photo`` for every row of ``segment`` (float64).

    One compiled pass over the postings of the photo's words, comparing signatures and adding in
    place. It releases the GIL, so segments (and concurrent searches) vote in parallel.
    """
    out = np.zeros(len(segment), dtype=np.float64)
    if photo.words.size:
        _compiled_scatter()(
            segment.word_starts,
            segment.posting_rows,
            segment.posting_signatures,
            photo.words,
            photo.signatures,
            photo.weights,
            table,
            threshold,
            np.empty(_VOTE_BLOCK, dtype=np.int64),
            out,
        )
    return out


def _current_generation(root: Path) -> tuple[int, Path] | None:
    pointer = root / "CURRENT"
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    folder = root / name
    if not name.startswith("gen-") or not folder.is_dir():
        raise IndexCorrupt(f"index {root}: CURRENT names {name!r}, which is not a generation folder")
    return int(name[4:]), folder


def has_index(path: Path) -> bool:
    """True when ``path`` holds a saved index."""
    return (Path(path) / "CURRENT").exists()


def load_codebook(path: Path) -> Codebook:
    """The codebook of the current generation of the index folder ``path`` (NotReady when none)."""
    current = _current_generation(Path(path))
    if current is None:
        raise NotReady(f"no index at {path}: ingest references first (`kyb ingest`)")
    return Codebook.load(current[1] / "codebook.npz")


def current_generation(path: Path) -> int | None:
    """Number of the generation ``CURRENT`` names in the index folder ``path`` (None: no index)."""
    found = _current_generation(Path(path))
    return None if found is None else found[0]


@contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Holds the index folder's writer lock: one writing process (or thread) at a time.

    Two processes saving the same folder at once would pick the same next generation and delete
    each other's staging folder, so every writer (ingest, delete, reindex, codebook training) takes
    this ``flock`` first and waits for the other to finish. The kernel drops the lock when a process
    dies, so a crash never leaves the folder locked. Readers never take it.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".writer.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another writer of %s", root)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
