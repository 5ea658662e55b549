"""The inverted-file vote: a photo's ballot, the compiled Hamming-embedding scatter over a segment's
postings, and its spreading over the process-wide search pool.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from kyb.config import SearchConfig
from kyb.index._store import _Segment


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
        self.cutoff: float | None = None  # the first round's vote_cutoff, kept by later rounds
        # id(segment) -> (segment, raw vote per row for each polarity); the segment is held so its id
        # is not reused.
        self.raw: dict[int, tuple[_Segment, list[np.ndarray]]] = {}


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
                n_hits += int(bits <= threshold)
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
    return [raw if raw is not None else np.zeros(0, dtype=np.float32) for raw in raws]


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
