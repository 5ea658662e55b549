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

Per reference, the index keeps up to ``features.reference_features`` keypoints, each as 4 bytes of
fixed-point position, a posting in the inverted file (4 bytes of reference row, 8 of Hamming
signature, 4 back to it) and its descriptor as residual codes (``search.residual_bits`` bits a PCA
dimension, 8 bytes at 1 bit and 64 dimensions; :mod:`kyb.index._residuals`): 28 bytes a keypoint,
plus its global vector in the graph (~1.2 KB). ``residual_bits`` -1 keeps int8 descriptors (64 bytes).
``residuals.npz`` in a generation holds the quantizer, trained on the first references the index got;
an index made to hold another's references (a shard copy, a seeded shard, a merge target) takes
that index's instead (:meth:`ReferenceIndex.empty_like`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from kyb.codebook import Codebook
from kyb.config import SearchConfig
from kyb.encoder import Encoding
from kyb.errors import IndexCorrupt, InvalidRequest
from kyb.generations import writer_lock
from kyb.index._compaction import compact
from kyb.index._fusion import RankedLists, _depths, fuse_ranked, merge_ranked
from kyb.index._residuals import ResidualQuantizer
from kyb.index._store import (
    FORMAT,
    ReferenceFeatures,
    _Segment,
    alive_vectors,
    current_generation,
    has_index,
    load_codebook,
    load_quantizer,
    read_generation,
    write_generation,
)
from kyb.index._vote import (
    PhotoVote,
    VoteMemo,
    _similarity_table,
    _vote_change,
    _vote_segments,
    search_pool,
)

__all__ = [
    "FORMAT",
    "Candidate",
    "PhotoVote",
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
    "search_pool",
    "writer_lock",
]

log = logging.getLogger(__name__)


def base_reference_id(key: str) -> str:
    """The reference id of an index key (``"abc#1"``, the 2nd region of ``abc`` -> ``"abc"``)."""
    return key.split("#", 1)[0]


@dataclass(frozen=True)
class Candidate:
    """A shortlisted reference with the evidence that put it there."""

    reference_id: str
    ordinal: int
    global_similarity: float  # inner product of unit global vectors, 0 when not from the graph
    word_score: float  # idf-weighted shared visual words, 0 when not from the inverted file
    fused: float


#: A real vote is at least the smallest weight kept ((ln 4)^2 / sqrt(2,500) for a word repeated over
#: a whole photo) times exp(-24^2/16^2) ~ 0.004; the vote sums in float64, so anything below this
#: after a subtraction is rounding of a vote that was taken back.
_VOTE_FLOOR = 1e-6


def _same_quantizer(a: ResidualQuantizer | None, b: ResidualQuantizer | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.bits == b.bits and np.array_equal(a.edges, b.edges) and np.array_equal(a.levels, b.levels)


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
        # Trained on the first references added (or loaded without one) when search.residual_bits >= 0.
        self._quantizer: ResidualQuantizer | None = None

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
        return None if found is None else found[0].sha256_at(found[1])

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
        features = segment.features(row)
        return Encoding(
            xy=features.xy,
            descriptors=features.descriptors,
            words=features.words.astype(np.int32),
            global_vector=self._graph.get_items([int(segment.ordinals[row])], return_type="numpy")[0],
            region_size=features.region_size,
            codebook_version=self.codebook.version,
        )

    def stats(self) -> dict[str, float | int | str]:
        segments = self._segments
        alive = sum(int(s.alive.sum()) for s in segments)
        graph_bytes = alive * (self.codebook.global_dims * 4 + self.search_config.hnsw_m * 2 * 4 + 16)
        feature_bytes = sum(s.nbytes for s in segments)
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
            "residual_bits": -1 if self._quantizer is None else self._quantizer.bits,
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
                outcome = self._claim_locked(reference_id, sha)
                outcomes.append(outcome)
                if outcome != "unchanged":
                    fresh.append((reference_id, sha, encoding))
            if fresh:
                self.fit_residuals([e for _, _, e in fresh])
                ordinals = list(range(self._next_ordinal, self._next_ordinal + len(fresh)))
                self._next_ordinal += len(fresh)
                segment = _Segment.build(f"seg-{ordinals[0]:09d}.npz", ordinals, fresh, self.codebook, self._quantizer)
                self._attach(segment)
                assert segment.global_vectors is not None
                self._add_to_graph_locked(segment.global_vectors, segment.ordinals)
                segment.global_vectors = None  # the graph holds them
        return outcomes

    def _claim_locked(self, reference_id: str, sha: str) -> str:
        """What adding ``reference_id`` with content ``sha`` does: ``"unchanged"`` when the index holds
        that content already; else an older content is deleted (``"replaced"``) or none was (``"added"``)."""
        current = self.sha256_of(reference_id)
        if current == sha:
            return "unchanged"
        if current is None:
            return "added"
        self._delete_locked(reference_id)
        return "replaced"

    def _add_to_graph_locked(self, vectors: np.ndarray, ordinals: np.ndarray) -> None:
        """Adds a new segment's global vectors to the graph, growing it (doubling) when full."""
        needed = self._graph.get_current_count() + len(ordinals)
        if needed > self._graph.get_max_elements():
            self._graph.resize_index(max(needed, 2 * self._graph.get_max_elements()))
        self._graph.add_items(vectors, ordinals)
        self._dirty = True

    def fit_residuals(self, encodings: Sequence[Encoding]) -> bool:
        """Trains the residual quantizer on ``encodings`` when the index has none yet, holds no
        references and stores residual codes (``search.residual_bits`` >= 0); True when it did. The
        first add does this with what it adds; an ingest calls it first with a larger sample."""
        with self._lock:
            if self._quantizer is not None or self._segments or self.search_config.residual_bits < 0 or not encodings:
                return False
            self._quantizer = ResidualQuantizer.train(
                self.codebook,
                np.concatenate([e.descriptors for e in encodings]),
                np.concatenate([e.words for e in encodings]),
                self.search_config.residual_bits,
            )
            return True

    @classmethod
    def empty_like(
        cls, source: ReferenceIndex | Path, search: SearchConfig, path: Path | None = None
    ) -> ReferenceIndex:
        """An empty index with ``source``'s codebook and residual quantizer (``source`` an index or an
        index folder, whose segments are not read).

        The one rule for every index made to hold another index's references (shard copies, a
        seeded matcher shard, the target of a merge): it starts with the source's bins, so the
        references copied into it (:meth:`merge`) keep their stored codes, and an answer from the
        copy is the source's answer. An index training bins of its own on its first references
        would restore every descriptor slightly differently. A new codebook needs new bins: a
        retrain starts from a plain ``ReferenceIndex``.
        """
        if isinstance(source, ReferenceIndex):
            codebook, quantizer = source.codebook, source._quantizer
        else:
            codebook, quantizer = load_codebook(Path(source)), load_quantizer(Path(source), search.residual_bits)
        index = cls(codebook, search, path)
        index._quantizer = quantizer
        return index

    def merge(self, other: ReferenceIndex, keep: Callable[[str], bool] | None = None) -> list[str]:
        """Adds every reference of ``other`` (an index over the same codebook: a slice of a catalog
        built apart) whose key ``keep`` accepts (default all) as :meth:`add` would, returning each
        one's outcome in ``other``'s order.

        When both indexes share one residual quantizer (slices started from one seed index, or this
        index still empty: it then takes ``other``'s, as :meth:`empty_like`) the stored arrays are
        copied as they are, so the merged index holds exactly what one build of all the slices holds;
        otherwise the references go through their encodings and this index's quantizer.
        """
        if other.codebook.version != self.codebook.version:
            raise InvalidRequest(
                f"cannot merge an index over codebook {other.codebook.version} into one over {self.codebook.version}"
            )
        with self._lock:
            if self._quantizer is None and not self._segments:
                self._quantizer = other._quantizer
            if not _same_quantizer(self._quantizer, other._quantizer):
                keys = [key for key in other.reference_ids() if keep is None or keep(key)]
                return self.add((key, other.sha256_of(key) or "", other.encoding(key)) for key in keys)
            outcomes: list[str] = []
            for segment in other._segments:
                rows = []
                for row in np.flatnonzero(segment.alive):
                    if keep is not None and not keep(str(segment.ref_ids[row])):
                        continue
                    outcome = self._claim_locked(str(segment.ref_ids[row]), segment.sha256_at(int(row)))
                    outcomes.append(outcome)
                    if outcome != "unchanged":
                        rows.append(row)
                if not rows:
                    continue
                part = segment.part(np.asarray(rows, dtype=np.int64))
                vectors = other._graph.get_items(part["ordinals"], return_type="numpy")
                part["ordinals"] = np.arange(self._next_ordinal, self._next_ordinal + len(rows), dtype=np.int64)
                self._next_ordinal += len(rows)
                copy = _Segment.join(
                    f"seg-{self._next_ordinal - len(rows):09d}.npz", [part], self.codebook, self._quantizer
                )
                self._attach(copy)
                self._add_to_graph_locked(vectors, copy.ordinals)
            return outcomes

    def _attach(self, segment: _Segment) -> None:
        self._segments = [*self._segments, segment]
        for row in range(len(segment)):
            if not segment.alive[row]:
                continue
            reference_id = str(segment.ref_ids[row])
            self._where[reference_id] = (segment, row)
            self._ordinal_ref[int(segment.ordinals[row])] = reference_id
        self._df += segment.word_counts()

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
        self._df[np.unique(segment.words_of(int(segment.offsets[row]), int(segment.offsets[row + 1])))] -= 1
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

    def photo_votes(self, query: Encoding, max_df: float | None = None) -> tuple[PhotoVote, ...]:
        """The photo's vote, or with inverted twins (:attr:`Encoding.inverted`) one vote of the rows as
        photographed and one of the twins: a print is in one polarity, so a reference scores the
        better of the two, and the other polarity's chance votes do not add to it."""
        if query.inverted is None:
            return (self.photo_vote(query, max_df=max_df),)
        twins = np.asarray(query.inverted, dtype=bool)
        return tuple(self.photo_vote(query, np.flatnonzero(side), max_df) for side in (~twins, twins))

    def vote_cutoff(self, query: Encoding) -> float:
        """The most references a word of ``query`` may be in and still vote.

        A quarter of the references (idf weighting already discounts common words; those in over a
        quarter vote for nearly everything and cost the most), lowered until the photo's voting
        features together name at most ``search.vote_budget`` references (each feature its word's
        document frequency): the vote walks the postings of the photo's rarest words, the ones with
        the largest weights, and its cost stops growing with the index once the budget binds.
        """
        n = max(1, len(self._where))
        cutoff = max(2.0, 0.25 * n)
        budget = self.search_config.vote_budget
        if budget <= 0:
            return cutoff
        df = np.sort(self._df[np.asarray(query.words, dtype=np.int64)])
        df = df[(df > 0) & (df <= cutoff)]
        if df.size == 0 or int(df.sum()) <= budget:
            return cutoff
        within = int(np.searchsorted(np.cumsum(df), budget, side="right"))
        # Whole words only: the last df level that fits entirely (ties share one word's fate).
        return float(df[within] - 1) if within < df.size else cutoff

    def photo_vote(self, query: Encoding, rows: np.ndarray | None = None, max_df: float | None = None) -> PhotoVote:
        """The photo's vote (:class:`PhotoVote`) over this index's current word statistics, with its
        features ``rows`` only when given, and of its words in at most ``max_df`` references
        (default :meth:`vote_cutoff`)."""
        words = np.asarray(query.words, dtype=np.int64)
        descriptors = np.asarray(query.descriptors)
        n = max(1, len(self._where))
        if max_df is None:
            max_df = self.vote_cutoff(query)
        if rows is not None:
            words, descriptors = words[rows], descriptors[rows]
        df = self._df[words]
        keep = np.flatnonzero((df > 0) & (df <= max_df))
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
        # A later round keeps the first round's cutoff, so its words stay a subset of that round's.
        reuse = memo is not None and memo.photo is not None and memo.references == n and memo.cutoff is not None
        cutoff = memo.cutoff if reuse and memo is not None else self.vote_cutoff(query)
        photos = self.photo_votes(query, cutoff)
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
            memo.photo, memo.references, memo.raw, memo.cutoff = photos, n, fresh, cutoff
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
            generation, final = write_generation(
                root,
                self.codebook,
                self._segments,
                self._graph,
                self._quantizer,
                after=self._generation,
                next_ordinal=self._next_ordinal,
                references=len(self._where),
            )
            self._generation = generation
            self._dirty = False
            self.path = root
            return final

    @property
    def dirty(self) -> bool:
        return self._dirty

    def _maybe_compact(self) -> None:
        """Merges the segments :func:`~kyb.index._compaction.compact` groups, keeping every reference's
        ordinal and the segments' insertion order."""
        compacted = compact(self._segments, self.codebook, self._quantizer)
        if compacted is None:
            return
        segments, rebuild_graph = compacted
        if rebuild_graph:
            for segment in segments:
                segment.global_vectors = alive_vectors(self._graph, segment)
        self._segments = []
        self._where = {}
        self._ordinal_ref = {}
        self._df[:] = 0
        for segment in segments:
            self._attach(segment)
        if rebuild_graph:
            # Rebuild the graph without the deleted labels so it does not carry dead nodes forever.
            self._graph = self._build_graph(self._segments)

    def _build_graph(self, segments: Sequence[_Segment]) -> hnswlib.Index:
        """A graph of the alive rows of ``segments`` from the global vectors they hold (then dropped)."""
        alive = sum(int(s.alive.sum()) for s in segments)
        graph = self._new_graph(max(1024, int(alive * 1.25)))
        for segment in segments:
            rows = np.flatnonzero(segment.alive)
            if rows.size:
                assert segment.global_vectors is not None
                graph.add_items(segment.global_vectors[rows], segment.ordinals[rows])
            segment.global_vectors = None
        return graph

    @classmethod
    def load(cls, path: Path, search: SearchConfig) -> ReferenceIndex:
        """Loads the current generation of an index folder (raises NotReady when there is none)."""
        root = Path(path)
        folder, manifest, codebook, quantizer, segments = read_generation(root, search.residual_bits)
        index = cls(codebook, search, root)
        index._quantizer = quantizer
        for segment in segments:
            index._attach(segment)
        index._next_ordinal = int(manifest["next_ordinal"])
        graph = hnswlib.Index(space="ip", dim=codebook.global_dims)
        try:
            graph.load_index(str(folder / "ann.hnsw"), max_elements=int(manifest["graph_capacity"]))
        except RuntimeError as exc:
            log.warning("index %s: graph unreadable (%s); rebuilding it from the segments", folder, exc)
            graph = index._build_graph(segments)
        for segment in segments:
            segment.global_vectors = None  # the graph holds them
        graph.set_ef(search.hnsw_ef)
        graph.set_num_threads(1)
        index._graph = graph
        index._generation = int(manifest["generation"])
        if len(index) != manifest["references"]:
            raise IndexCorrupt(f"index {folder}: {len(index)} references, manifest says {manifest['references']}")
        return index
