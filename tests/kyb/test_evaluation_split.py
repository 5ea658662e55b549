"""The fixed tune/test split of a set's queries: deterministic, disjoint, covering, label-balanced."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kyb.errors import InvalidRequest
from kyb.groundtruth import load_ground_truth, query_part, split_ground_truth


def _write_set(folder: Path, queries: list[dict[str, object]], distractors: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    labels = {f"reference/{b}.jpg": b for b in ("acme", "bolt", "crux", "dyne")}
    gt = {"database": list(labels), "labels": labels, "queries": queries, "distractor_queries": distractors}
    (folder / "gt.json").write_text(json.dumps(gt))
    return folder


def _queries() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for brand, count in (("acme", 9), ("bolt", 4), ("crux", 1), ("dyne", 2)):
        out += [{"query": f"query/{brand}_{i}.jpg", "positives": [f"reference/{brand}.jpg"]} for i in range(count)]
    return out


def test_the_split_is_deterministic_disjoint_and_covers_every_query(tmp_path: Path) -> None:
    distractors = [f"query/nologo_{i}.jpg" for i in range(7)]
    gt = load_ground_truth(_write_set(tmp_path / "a", _queries(), distractors))
    tune, test = split_ground_truth(gt, "tune"), split_ground_truth(gt, "test")
    tune_q = {q["query"] for q in tune.queries}
    test_q = {q["query"] for q in test.queries}
    assert not tune_q & test_q and tune_q | test_q == {q["query"] for q in gt.queries}
    assert not set(tune.distractors) & set(test.distractors)
    assert sorted(tune.distractors + test.distractors) == sorted(distractors)
    assert abs(len(tune.distractors) - len(test.distractors)) <= 1
    for brand, count in (("acme", 9), ("bolt", 4), ("dyne", 2)):  # each brand in both halves, dealt evenly
        in_tune = sum(q.startswith(f"query/{brand}_") for q in tune_q)
        assert abs(in_tune - (count - in_tune)) <= 1
    assert split_ground_truth(gt, "all") is gt

    # The same photos in another order, in another folder: the same split.
    shuffled = _queries()
    random.Random(4).shuffle(shuffled)
    again = load_ground_truth(_write_set(tmp_path / "b", shuffled, list(reversed(distractors))))
    assert query_part(again) == query_part(gt)
    # One more photo moves only photos of its own brand.
    extra = {"query": "query/acme_9.jpg", "positives": ["reference/acme.jpg"]}
    grown = load_ground_truth(_write_set(tmp_path / "c", [*_queries(), extra], distractors))
    before, after = query_part(gt), query_part(grown)
    moved = [p for p in before if before[p] != after[p]]
    assert all(p.startswith("query/acme_") for p in moved)


def test_an_unknown_split_is_refused(tmp_path: Path) -> None:
    gt = load_ground_truth(_write_set(tmp_path, _queries(), []))
    with pytest.raises(InvalidRequest, match="split must be one of"):
        split_ground_truth(gt, "train")
