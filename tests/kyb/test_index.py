"""Index persistence: atomic saves survive a kill at any point; compact storage."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kyb.encoder import Encoding
from kyb.engine import Engine
from kyb.index import PhotoVote, ReferenceIndex, VoteMemo
from tests.conftest import Library, make_config

CHILD = textwrap.dedent(
    """
    import os, sys
    from kyb.engine import Engine
    from kyb.index import _store
    from kyb.config import load_config
    from tests.conftest import Library

    root, when = sys.argv[1], sys.argv[2]
    config = load_config(overrides={{"index_dir": root + "/index", "catalog_url": root + "/catalog.db"}})
    engine = Engine(config)
    index = engine.index
    real_rename, real_replace = os.rename, os.replace

    def die(*args, **kwargs):
        os._exit(9)

    if when == "before-generation":
        _store.os.rename = die
    elif when == "before-current":
        _store.os.replace = lambda src, dst: die() if str(dst).endswith("CURRENT") else real_replace(src, dst)
    victim = index.reference_ids()[0]
    index.delete(victim)
    index.save()
    """
)


@pytest.mark.parametrize("when", ["before-generation", "before-current"])
def test_kill_mid_save_leaves_previous_state_loadable(library: Library, tmp_path: Path, when: str) -> None:
    config = make_config(tmp_path)
    engine = Engine(config)
    library.seed_catalog(engine)
    engine.ingest(library.items())
    before = sorted(engine.index.reference_ids())
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(), str(tmp_path), when],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 9, child.stderr
    reloaded = ReferenceIndex.load(config.index_dir, config.search)
    assert sorted(reloaded.reference_ids()) == before
    # ... and the next save works on top of whatever the kill left behind.
    reloaded.delete(before[0])
    reloaded.save()
    assert len(ReferenceIndex.load(config.index_dir, config.search)) == len(before) - 1


def test_bytes_per_reference_are_compact(library: Library) -> None:
    engine = Engine(library.config)
    stats = engine.index.stats()
    assert stats["references"] == len(library.covers) + len(library.logos)
    assert 0 < stats["bytes_per_reference"] <= 40_000


def test_compaction_keeps_the_survivors(library: Library, tmp_path: Path) -> None:
    engine = Engine(make_config(tmp_path))
    library.seed_catalog(engine)
    items = library.items()
    engine.ingest(items[:2])  # the first ingest trains the codebook: it needs two images
    for item in items[2:]:  # one segment per ingest call: many small segments
        engine.ingest([item])
    index = engine.index
    ids = index.reference_ids()
    for reference_id in ids[: len(ids) // 2]:
        index.delete(reference_id)
    index.save()
    reloaded = ReferenceIndex.load(engine.config.index_dir, engine.config.search)
    assert sorted(reloaded.reference_ids()) == sorted(ids[len(ids) // 2 :])
    stats = reloaded.stats()
    assert stats["deleted"] == 0  # deleted rows are dropped from disk, not just masked
    assert stats["segments"] <= 9  # small segments are merged once there are more than 8


def _tiny_tier_index(
    library: Library, tmp_path: Path, monkeypatch, *, small_below: int, fanout: int
) -> tuple[ReferenceIndex, ReferenceIndex, Callable[[list[str]], None]]:
    """An empty index over the library's codebook with tiny compaction tiers (segments of fewer than
    ``small_below`` references are small, ``fanout`` make a tier), the library's index to copy
    references from, and ``add(ids)``, which copies them over as one segment."""
    from kyb.index import _compaction

    monkeypatch.setattr(_compaction, "_SMALL_SEGMENT", small_below)
    monkeypatch.setattr(_compaction, "_TIER_FANOUT", fanout)
    source = Engine(library.config).index
    index = ReferenceIndex(source.codebook, source.search_config, tmp_path / "index")

    def add(ids: list[str]) -> None:
        index.add([(r, source.sha256_of(r) or "", source.encoding(r)) for r in ids])

    return source, index, add


def test_tiered_compaction_merges_a_whole_tier_ten_at_a_time(library: Library, tmp_path: Path, monkeypatch) -> None:
    """Large segments merge a tier's worth at a time (here with tiny tiers: 1 reference is 'large'
    and 3 make a tier), the remainder joining the last group, keeping insertion order and every
    answer."""
    source, index, add = _tiny_tier_index(library, tmp_path, monkeypatch, small_below=1, fanout=3)
    order = source.reference_ids()[:12]
    add(order[:2])
    for r in order[2:11]:  # then one segment per reference: 10 segments
        add([r])
    assert index.stats()["segments"] == 10
    index.save()  # one tier of 10 segments: groups of 3, 3 and 4 (the remainder joins the last) -> 3
    assert index.stats()["segments"] == 3
    add(order[11:])
    query = index.encoding(order[4])
    before = [(c.reference_id, round(c.word_score, 4)) for c in index.shortlist(query)]
    index.save()  # segments of 4, 3, 4 and 1 references, all in the first tier: one group -> 1
    reloaded = ReferenceIndex.load(tmp_path / "index", source.search_config)
    assert reloaded.stats()["segments"] == 1
    assert reloaded.reference_ids() == order
    assert [(c.reference_id, round(c.word_score, 4)) for c in reloaded.shortlist(query)] == before


def test_small_segments_ride_along_with_a_tier_merge(library: Library, tmp_path: Path, monkeypatch) -> None:
    """Small segments (here: 1 reference) stay as they are until a tier merges; then they join it."""
    source, index, add = _tiny_tier_index(library, tmp_path, monkeypatch, small_below=2, fanout=3)
    order = source.reference_ids()[:8]
    add(order[:1])
    add(order[1:2])
    add(order[2:4])
    index.save()  # two small segments and one large one: nothing to merge
    assert index.stats()["segments"] == 3
    add(order[4:6])
    add(order[6:8])
    query = index.encoding(order[5])
    before = [(c.reference_id, round(c.word_score, 4)) for c in index.shortlist(query)]
    index.save()  # three large segments merge, and the two small ones with them
    reloaded = ReferenceIndex.load(tmp_path / "index", source.search_config)
    assert reloaded.stats()["segments"] == 1
    assert reloaded.reference_ids() == order
    assert [(c.reference_id, round(c.word_score, 4)) for c in reloaded.shortlist(query)] == before


def test_later_round_vote_from_the_memo_equals_a_fresh_vote(library: Library, monkeypatch) -> None:
    """A search's later rounds update the first round's word vote (or vote afresh when that touches
    fewer postings); either way the shortlist must not change."""
    from kyb.index import _vote

    engine = Engine(library.config)
    index = engine.index
    # A photo holding two references: one's features, then the other's (as a found object removes them).
    first, second = (index.encoding(r) for r in index.reference_ids()[:2])

    def photo(*parts: Encoding, drop: int = 0) -> Encoding:
        stop = sum(len(p) for p in parts) - drop
        return Encoding(
            xy=np.concatenate([p.xy for p in parts])[:stop],
            descriptors=np.concatenate([p.descriptors for p in parts])[:stop],
            words=np.concatenate([p.words for p in parts])[:stop],
            global_vector=first.global_vector,
            region_size=first.region_size,
            codebook_version=first.codebook_version,
        )

    voted: list[int] = []
    real_vote = _vote._vote

    def counted_vote(segment: object, photo: PhotoVote, table: np.ndarray, threshold: int) -> np.ndarray:
        voted.append(photo.words.size)
        return real_vote(segment, photo, table, threshold)

    monkeypatch.setattr(_vote, "_vote", counted_vote)
    # Few features gone (the update is cheaper), then one reference's features gone (either may be).
    for later, update_expected in ((photo(second, first, drop=10), True), (photo(second), None)):
        memo = VoteMemo()
        index.shortlist(photo(first, second), memo=memo)
        voted.clear()
        updated = index.shortlist(later, memo=memo)
        if update_expected:
            assert max(voted) < len(later.words) / 4  # only the changed words' features were voted
        fresh = index.shortlist(later)
        # Same candidates with the same vote (float rounding may swap two exactly tied ones).
        assert {c.reference_id: c.word_score for c in updated} == pytest.approx(
            {c.reference_id: c.word_score for c in fresh}, rel=1e-4
        )
    assert max(updated, key=lambda c: c.word_score).reference_id == index.reference_ids()[1]


@pytest.mark.parametrize(("threads", "min_piece"), [(1, None), (2, None), (2, 1)])
def test_word_vote_is_the_hamming_embedding_vote_in_every_segment(
    library: Library, threads: int, min_piece: int | None, monkeypatch
) -> None:
    """The compiled vote against the formula it implements, computed here from the encodings alone:
    for each of the photo's features whose word is kept (df <= a quarter of the references), a
    reference holding the word gets the word's idf^2 / sqrt(the word's features in the photo) times
    exp(-d^2 / sigma^2), d the fewest differing residual signs (of the first 64 PCA dimensions) among
    its features of that word, when d <= the threshold; the sum over sqrt(reference features).
    References spread over three segments voted by ``threads`` threads; with ``min_piece`` 1 each
    segment's vote is also cut into pieces by photo feature (as a large index's are) and added up."""
    import dataclasses

    from kyb.index import _vote

    if min_piece is not None:
        monkeypatch.setattr(_vote, "_MIN_VOTE_PIECE", min_piece)

    source = Engine(library.config).index
    config = dataclasses.replace(source.search_config, vote_threads=threads)
    codebook = source.codebook
    index = ReferenceIndex(codebook, config)
    ids = source.reference_ids()
    encodings = {r: source.encoding(r) for r in ids}
    for part in (ids[0::3], ids[1::3], ids[2::3]):  # one segment per add
        index.add([(r, source.sha256_of(r) or "", encodings[r]) for r in part])

    def signs(encoding: Encoding) -> np.ndarray:  # (N, 64) bool, unpacked: checks the packing too
        residual = codebook.dequantize(encoding.descriptors) - codebook.words[encoding.words.astype(np.int64)]
        return residual[:, :64] > 0

    photo = encodings[ids[0]]
    n = len(ids)
    df: dict[int, int] = {}
    for encoding in encodings.values():
        for word in np.unique(encoding.words):
            df[int(word)] = df.get(int(word), 0) + 1
    kept = [k for k, w in enumerate(photo.words) if df[int(w)] <= max(2, 0.25 * n)]
    in_photo = {int(w): int(np.sum(photo.words[kept] == w)) for w in photo.words[kept]}
    photo_signs = signs(photo)
    expected = {}
    for reference_id, encoding in encodings.items():
        reference_signs = signs(encoding)
        vote = 0.0
        for k in kept:
            word = int(photo.words[k])
            same_word = np.flatnonzero(encoding.words == word)
            if same_word.size == 0:
                continue
            bits = int((reference_signs[same_word] != photo_signs[k]).sum(axis=1).min())
            if bits <= config.hamming_threshold:
                weight = np.log(n / df[word]) ** 2 / np.sqrt(in_photo[word])
                vote += weight * np.exp(-(bits**2) / config.hamming_sigma**2)
        if vote > 0:
            expected[reference_id] = vote / np.sqrt(len(encoding))
    limit = len(expected)
    got = {c.reference_id: c.word_score for c in index.shortlist(photo, limit=limit * config.verify_top)}
    got = {r: s for r, s in got.items() if s > 0}
    assert got == pytest.approx(expected, rel=1e-4)
    assert max(got, key=got.__getitem__) == ids[0]


def test_hamming_embedding_ranks_the_resembling_reference_above_one_sharing_only_words(library: Library) -> None:
    """Two references with exactly the same visual words, one with the photo's descriptors and one
    with descriptors mirrored through their words' centroids (same cells, opposite residuals): a
    bag of words ties them; the Hamming-embedded vote puts the resembling one first and gives the
    other far less."""
    source = Engine(library.config).index
    codebook = source.codebook
    real = source.encoding(source.reference_ids()[0])
    centroids = codebook.words[real.words.astype(np.int64)]
    mirrored = codebook.quantize(2 * centroids - codebook.dequantize(real.descriptors))
    impostor = Encoding(
        xy=real.xy,
        descriptors=mirrored,
        words=real.words,
        global_vector=real.global_vector,
        region_size=real.region_size,
        codebook_version=real.codebook_version,
    )
    index = ReferenceIndex(codebook, source.search_config)
    # Fillers so that the pair's words are not in over a quarter of the references.
    fillers = [r for r in source.reference_ids()[1:]]
    index.add([(r, "f" + r, source.encoding(r)) for r in fillers])
    index.add([("real", "a", real), ("impostor", "b", impostor)])
    scores = {c.reference_id: c.word_score for c in index.shortlist(real, limit=len(index) * 40)}
    assert max(scores, key=scores.__getitem__) == "real"
    # A bag of words gives both the same score; int8 rounding and clipping leave a few residual
    # signs unmirrored, so the impostor keeps a little.
    assert scores.get("impostor", 0.0) < 0.5 * scores["real"]


def test_threaded_vote_works_in_a_forked_child(library: Library) -> None:
    """A child forked after a threaded vote (a pre-forking server) inherits the pool object but not
    its threads; its own vote must get fresh workers, not wait forever."""
    import dataclasses
    import os
    import signal

    source = Engine(library.config).index
    index = ReferenceIndex(source.codebook, dataclasses.replace(source.search_config, vote_threads=2))
    ids = source.reference_ids()
    for part in (ids[0::2], ids[1::2]):
        index.add([(r, source.sha256_of(r) or "", source.encoding(r)) for r in part])
    photo = source.encoding(ids[0])
    expected = [c.reference_id for c in index.shortlist(photo)]  # the pool's threads start here
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        signal.alarm(20)  # a hang ends the child with SIGALRM
        try:
            os._exit(0 if [c.reference_id for c in index.shortlist(photo)] == expected else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status:#x}"


def test_the_word_graph_is_a_function_of_the_centroids() -> None:
    """kyb.codebook._graph: built from the same centroids twice (as two processes would), the hnswlib
    graph is byte for byte the same, so a photo's words never depend on which process assigned them."""
    import pickle

    from kyb.codebook import _graph

    centroids = np.random.default_rng(3).standard_normal((3000, 16)).astype(np.float32)
    first, second = _graph(centroids), _graph(centroids)
    assert pickle.dumps(first) == pickle.dumps(second)
    probes = np.random.default_rng(4).standard_normal((500, 16)).astype(np.float32)
    assert np.array_equal(first.knn_query(probes, k=2)[0], second.knn_query(probes, k=2)[0])


def test_vote_kernel_takes_each_rows_closest_feature_across_blocks(monkeypatch) -> None:
    """The compiled vote on postings built here: long word runs (several blocks, a row's features
    straddling a block edge), rows repeating a word, photo features sharing a word, signatures at
    and around the threshold. Checked against the formula, and the pure-Python kernel with a
    3-posting block must agree with the compiled one with its real block."""
    from kyb.config import SearchConfig
    from kyb.index import _vote

    rng = np.random.default_rng(7)
    n_rows, n_words = 600, 5
    posting_words = np.sort(rng.integers(0, n_words, 3000))  # ~600 postings a word
    posting_rows = np.empty(posting_words.size, dtype=np.int32)
    for word in range(n_words):  # ascending rows within a word, some rows several times
        run = posting_words == word
        posting_rows[run] = np.sort(rng.integers(0, n_rows, int(run.sum())))
    photo_words = np.array([0, 0, 1, 3, 3, 3, 4], dtype=np.int64)
    photo_signatures = rng.integers(0, 2**63, photo_words.size, dtype=np.uint64)
    # Each posting: a photo signature of its word with a few bits flipped (near) or a random one.
    flips = rng.integers(0, 40, posting_words.size)
    signatures = rng.integers(0, 2**63, posting_words.size, dtype=np.uint64)
    for p, word in enumerate(posting_words):
        owners = np.flatnonzero(photo_words == word)
        if owners.size and flips[p] < 30:
            bits = rng.choice(64, size=int(flips[p]), replace=False)
            signatures[p] = photo_signatures[rng.choice(owners)] ^ np.uint64(sum(1 << int(b) for b in bits))
    starts = np.searchsorted(posting_words, np.arange(n_words + 1)).astype(np.int64)
    weights = rng.uniform(0.5, 2.0, photo_words.size)
    config = SearchConfig()
    table = _vote._similarity_table(config)

    expected = np.zeros(n_rows)
    for k, word in enumerate(photo_words):
        for row in range(n_rows):
            mine = np.flatnonzero((posting_words == word) & (posting_rows == row))
            if mine.size:
                bits = min(bin(int(photo_signatures[k] ^ signatures[p])).count("1") for p in mine)
                expected[row] += weights[k] * table[bits]
    assert 0 < np.count_nonzero(expected) < n_rows

    def run(kernel, block: int) -> np.ndarray:
        out = np.zeros(n_rows)
        kernel(
            starts,
            posting_rows,
            signatures,
            photo_words,
            photo_signatures,
            weights,
            table,
            config.hamming_threshold,
            np.empty(block, dtype=np.int64),
            out,
        )
        return out

    compiled = run(_vote._compiled_scatter(), _vote._VOTE_BLOCK)
    np.testing.assert_allclose(compiled, expected, rtol=1e-12)
    monkeypatch.setattr(_vote, "_VOTE_BLOCK", 3)
    with np.errstate(over="ignore"):  # the popcount's multiply wraps modulo 2^64 by design
        interpreted = run(_vote._hamming_scatter, 3)
    np.testing.assert_allclose(interpreted, expected, rtol=1e-12)


def test_vote_pieces_cover_every_feature_once_and_balance_uneven_segments() -> None:
    """Segments of 1, 1 and 2 parts of the work (as compaction leaves 25k, 25k and 50k references):
    each segment's photo features are covered once by contiguous pieces, the pieces go out largest
    first, and two threads taking them in that order finish within a few percent of half the work
    (one thread a segment in insertion order took 3/4 of it on one thread)."""
    from types import SimpleNamespace

    from kyb.index._vote import _vote_pieces

    rng = np.random.default_rng(0)
    n_words = 500
    segments, ballots = [], []
    for scale in (1, 1, 2):
        postings = rng.integers(0, 400 * scale, size=n_words)
        segments.append(SimpleNamespace(word_starts=np.concatenate([[0], np.cumsum(postings)])))
        words = np.sort(rng.choice(n_words, size=300, replace=False))
        ballots.append(PhotoVote(words, np.zeros(300, dtype=np.uint64), np.ones(300)))

    def cost(position: int, first: int, end: int) -> int:
        starts, words = segments[position].word_starts, ballots[position].words[first:end]
        return int((starts[words + 1] - starts[words]).sum())

    pieces = _vote_pieces(segments, ballots, threads=2)
    for position in range(3):
        spans = sorted((first, end) for p, first, end in pieces if p == position)
        assert spans[0][0] == 0 and spans[-1][1] == 300
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    costs = [cost(*piece) for piece in pieces]
    assert costs == sorted(costs, reverse=True)
    loads = [0, 0]
    for piece_cost in costs:  # each piece goes to the thread that frees up first
        loads[loads.index(min(loads))] += piece_cost
    total = sum(costs)
    assert max(loads) <= 0.56 * total
    assert sum(cost(p, 0, 300) for p in range(3)) == total
    # One thread, or work under one piece's minimum: one piece a segment, nothing cut.
    assert sorted(p for p, _, _ in _vote_pieces(segments, ballots, threads=1)) == [0, 1, 2]
    # A ballot with no words still gets its (empty) piece: its segment's vote is zeros, not missing.
    empty = PhotoVote(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0))
    with_empty = _vote_pieces(segments, [ballots[0], empty, ballots[2]], threads=2)
    assert [piece for piece in with_empty if piece[0] == 1] == [(1, 0, 0)]


def test_vote_budget_keeps_the_rarest_words_within_it(library: Library) -> None:
    import dataclasses

    source = Engine(library.config).index
    ids = source.reference_ids()
    photo = source.encoding(ids[0])
    unbounded = source.vote_cutoff(photo)
    df = source._df[photo.words.astype(np.int64)]
    voting = df[(df > 0) & (df <= unbounded)]
    budget = int(voting.sum()) // 3
    index = ReferenceIndex(source.codebook, dataclasses.replace(source.search_config, vote_budget=budget))
    index.add([(r, source.sha256_of(r) or "", source.encoding(r)) for r in ids])
    cutoff = index.vote_cutoff(photo)
    assert cutoff < unbounded
    kept = df[(df > 0) & (df <= cutoff)]
    assert 0 < int(kept.sum()) <= budget < int(df[(df > 0) & (df <= cutoff + 1)].sum())  # whole words, greedy
    (vote,) = index.photo_votes(photo, cutoff)
    assert set(vote.words.tolist()) == set(photo.words[(df > 0) & (df <= cutoff)].tolist())
    assert index.shortlist(photo)[0].reference_id == ids[0]  # the rarest words still find it
    memo = VoteMemo()
    first = index.shortlist(photo, memo=memo)
    assert memo.cutoff == cutoff and [c.reference_id for c in index.shortlist(photo, memo=memo)] == [
        c.reference_id for c in first
    ]
    assert source.search_config.vote_budget == 0 and unbounded == max(2.0, 0.25 * len(source))  # 0: no budget
