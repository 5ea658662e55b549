"""The ``gt.json`` format of a labelled set (``../shared/datasets``) and its fixed tune/test split.

``gt.json`` holds ``database`` (reference image paths), ``labels`` (path -> label or [labels]),
optional ``boxes`` (path -> [{label, box: [x1, y1, x2, y2]}]), ``queries`` ([{query, positives,
label?}]) and ``distractor_queries`` (photos with no reference in them). Paths are relative to the
set's folder. :mod:`kyb.evaluation` measures the engine on it; the detector's readers take its boxes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kyb.errors import InvalidRequest

__all__ = [
    "SPLITS",
    "GroundTruth",
    "label_of",
    "load_ground_truth",
    "parse_gt_boxes",
    "query_part",
    "split_ground_truth",
]


@dataclass(frozen=True)
class GroundTruth:
    root: Path
    name: str
    database: list[str]
    labels: dict[str, str]
    boxes: dict[str, list[tuple[float, float, float, float]]]
    queries: list[dict[str, Any]]
    distractors: list[str]
    raw: bytes


def label_of(value: Any) -> str:
    """A gt.json label entry (a label or a list of them, the first one counting) as one label."""
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return str(value)


def parse_gt_boxes(entries: dict[str, list[Any]]) -> dict[str, list[tuple[float, float, float, float]]]:
    """gt.json ``boxes`` (image -> ``[{"label", "box": [x1, y1, x2, y2]}]`` or bare ``[x1, y1, x2, y2]``)
    as image -> unique boxes in file order; a repeated box (the logos set lists some twice) counts once."""
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    for p, items in entries.items():
        unique: list[tuple[float, float, float, float]] = []
        for entry in items:
            box = tuple(float(v) for v in (entry["box"] if isinstance(entry, dict) else entry))
            if len(box) == 4 and box not in unique:
                unique.append(box)
        boxes[p] = unique
    return boxes


def load_ground_truth(dataset_dir: Path) -> GroundTruth:
    """Reads and checks ``dataset_dir/gt.json``; raises InvalidRequest with the reason."""
    path = Path(dataset_dir) / "gt.json"
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidRequest(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("database"), list):
        raise InvalidRequest(f"{path}: expected an object with a 'database' list")
    labels = {p: label_of(v) for p, v in (data.get("labels") or {}).items()}
    boxes = parse_gt_boxes(data.get("boxes") or {})
    queries = []
    for q in data.get("queries") or []:
        if "query" not in q:
            raise InvalidRequest(f"{path}: a query entry has no 'query' path")
        queries.append(q)
    return GroundTruth(
        root=Path(dataset_dir),
        name=str(data.get("name") or Path(dataset_dir).name),
        database=[str(p) for p in data["database"]],
        labels=labels,
        boxes=boxes,
        queries=queries,
        distractors=[str(p) for p in data.get("distractor_queries") or []],
        raw=raw,
    )


#: The parts of a set's queries: settings are chosen on "tune" and reported on "test".
SPLITS = ("tune", "test", "all")


def _split_order(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8")).hexdigest()


def query_part(gt: GroundTruth) -> dict[str, str]:
    """Query or distractor path -> "tune" or "test": a fixed split that depends on the paths alone.

    Queries are grouped by label (a brand's photos are split between both parts, so neither part
    lacks a brand the other has), ordered within a group by the sha256 of their path and dealt out
    alternately, each group starting with the part its label's hash picks (a brand with one photo
    goes to either); distractors are dealt out the same way. A photo added to a set moves only photos
    of its own label (or distractors), never the rest.
    """
    groups: dict[str, list[str]] = {}
    for q in gt.queries:
        label = label_of(q.get("label")) if q.get("label") else gt.labels.get((q.get("positives") or [""])[0], "")
        groups.setdefault(f"label:{label}", []).append(str(q["query"]))
    groups["distractors"] = list(gt.distractors)
    parts: dict[str, str] = {}
    for group, paths in groups.items():
        start = int(_split_order(group)[0], 16) % 2
        for i, path in enumerate(sorted(set(paths), key=_split_order)):
            parts[path] = SPLITS[(start + i) % 2]
    return parts


def split_ground_truth(gt: GroundTruth, part: str) -> GroundTruth:
    """``gt`` with only the queries and distractors of ``part`` ("tune", "test" or "all")."""
    if part not in SPLITS:
        raise InvalidRequest(f"split must be one of {', '.join(SPLITS)}, not {part!r}")
    if part == "all":
        return gt
    parts = query_part(gt)
    return replace(
        gt,
        queries=[q for q in gt.queries if parts[str(q["query"])] == part],
        distractors=[d for d in gt.distractors if parts[d] == part],
    )
