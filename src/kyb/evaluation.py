"""Accuracy and speed on a labelled set in the ``gt.json`` format (:mod:`kyb.groundtruth`).

The database is indexed once into a cache folder keyed by its content and the
indexing settings, so re-running an evaluation only pays for the queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kyb import __version__
from kyb.catalog import Band
from kyb.config import CacheConfig, EngineConfig
from kyb.duplicates import find_duplicates
from kyb.engine import Engine, IngestItem, IngestOutcome
from kyb.errors import KybError
from kyb.groundtruth import GroundTruth, label_of
from kyb.index import base_reference_id, current_generation

__all__ = [
    "EvalReport",
    "evaluate",
    "index_dataset",
    "lookalike_references",
]

log = logging.getLogger(__name__)

#: Bump when indexing changes in a way the cache key would not see.
CACHE_FORMAT = 6


def cache_key(gt: GroundTruth, config: EngineConfig) -> str:
    """Changes with the set's database, the indexing settings and the code version."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"db": gt.database, "boxes": gt.boxes, "labels": gt.labels}, sort_keys=True).encode())
    # Only what changes the indexed references: query-side settings (query_features, query_min_side)
    # and search settings are evaluated against the same cached index.
    features = asdict(config.features)
    query_only = ("query_features", "query_min_side", "query_near_words", "query_near_ratio", "query_assign_ef",
                  "query_assign_threads", "query_inverted_features", "query_region_side",
                  "query_region_upscale")  # fmt: skip
    for name in query_only:
        features.pop(name)
    settings = {
        "features": features,
        "codebook": asdict(config.codebook),
        "reference_max_side": config.limits.reference_max_side,
        "hnsw": [config.search.hnsw_m, config.search.hnsw_ef_construction],
        "version": __version__,
        "format": CACHE_FORMAT,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return f"{gt.name}-{digest.hexdigest()[:16]}"


def index_dataset(
    gt: GroundTruth,
    config: EngineConfig,
    cache_root: Path,
    *,
    progress: Callable[[IngestOutcome], None] | None = None,
) -> tuple[Engine, dict[str, str]]:
    """An engine over the set's database (built once, then reused); returns it and id -> path."""
    folder = Path(cache_root) / cache_key(gt, config)
    # No descriptor cache: every query is timed as a first sighting, however often it is asked.
    config = config.replace(
        index_dir=folder / "index", catalog_url=str(folder / "catalog.db"), cache=CacheConfig(url="none")
    )
    mapping_file = folder / "references.json"
    engine = Engine(config)
    if engine.has_index() and mapping_file.exists():
        return engine, json.loads(mapping_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    kind = "logo" if gt.boxes else "album_cover"
    bands = {label: Band(band_id=label, name=label) for label in set(gt.labels.values()) if label}
    engine.catalog.upsert_bands(bands.values())
    items = [
        IngestItem(
            source=str(gt.root / p),
            kind=kind,
            band_id=gt.labels.get(p) or p,
            regions=tuple(gt.boxes.get(p, ())),
        )
        for p in gt.database
    ]
    missing = {p for p in gt.database if not gt.labels.get(p)}
    if missing:
        engine.catalog.upsert_bands(Band(band_id=p, name=p) for p in missing)
    outcomes = engine.ingest(items, progress=progress)
    mapping = {o.reference_id: str(Path(o.source).relative_to(gt.root)) for o in outcomes if o.reference_id}
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        log.warning("%d of %d references could not be indexed (first: %s: %s)", len(failed), len(items),
                    failed[0].source, failed[0].message)  # fmt: skip
    mapping_file.write_text(json.dumps(mapping))
    return engine, mapping


def lookalike_references(
    engine: Engine, mapping: dict[str, str], *, progress: Callable[[int], None] | None = None
) -> dict[str, set[str]]:
    """Database path -> the paths of the references that are one picture with it
    (:func:`kyb.duplicates.find_duplicates`), cached beside the index for its generation.

    Found from the references alone, never from the labels: a set that stores one artwork under two
    labels (a padded scan and its crop) names either for a photo of it, and the report says how often.
    """
    index_dir = Path(engine.config.index_dir)
    cache_file = index_dir.parent / "lookalikes.json"
    generation = current_generation(index_dir)
    pairs: list[list[str]] | None = None
    if cache_file.exists():
        try:
            cached = json.loads(cache_file.read_text())
            if cached.get("generation") == generation:
                pairs = cached["pairs"]
        except (OSError, ValueError, KeyError):
            pairs = None
    if pairs is None:
        found = find_duplicates(engine.index, engine.config.search, progress=progress)
        pairs = [[p.first, p.second] for p in found]
        cache_file.write_text(json.dumps({"generation": generation, "pairs": pairs}))
    lookalikes: dict[str, set[str]] = {}
    for first, second in pairs:
        a, b = mapping.get(base_reference_id(first)), mapping.get(base_reference_id(second))
        if a and b and a != b:
            lookalikes.setdefault(a, set()).add(b)
            lookalikes.setdefault(b, set()).add(a)
    return lookalikes


@dataclass
class EvalReport:
    """The numbers ``kyb eval`` prints; rates are fractions in [0, 1], times in seconds."""

    dataset: str
    references: int
    queries: int
    top1: float
    recall_at: dict[int, float]
    mean_ap: float
    distractors: int
    false_accepts: int
    false_accept_rate: float
    p50_s: float
    p95_s: float
    search_p50_s: float
    bytes_per_reference: float
    failures: int = 0
    #: Which queries were asked: "tune", "test" (:func:`split_ground_truth`) or "all".
    split: str = "all"
    #: With look-alikes known (:func:`lookalike_references`): the pairs of references that are one
    #: picture, and top-1 counting an answer that is one picture with a positive as right.
    lookalike_pairs: int | None = None
    top1_up_to_lookalikes: float | None = None
    per_query: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, *, with_queries: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["recall_at"] = {str(k): v for k, v in self.recall_at.items()}
        if not with_queries:
            data.pop("per_query")
        return data

    def table(self) -> str:
        rows = [
            ("dataset", self.dataset),
            ("split", self.split),
            ("references", str(self.references)),
            ("queries", str(self.queries)),
            ("top-1", f"{self.top1:.3f}"),
            *((f"recall@{k}", f"{v:.3f}") for k, v in self.recall_at.items()),
            ("mAP", f"{self.mean_ap:.3f}"),
            ("false accepts", f"{self.false_accepts}/{self.distractors} ({self.false_accept_rate:.3f})"),
            ("p50 s/query", f"{self.p50_s:.3f}"),
            ("p95 s/query", f"{self.p95_s:.3f}"),
            ("search p50 s", f"{self.search_p50_s:.4f}"),
            ("index bytes/ref", f"{self.bytes_per_reference:.0f}"),
            ("failed queries", str(self.failures)),
        ]
        if self.top1_up_to_lookalikes is not None:
            rows.insert(4, ("top-1, look-alikes", f"{self.top1_up_to_lookalikes:.3f} ({self.lookalike_pairs} pairs)"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _average_precision(ranked: list[bool], positives: int) -> float:
    if positives == 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, relevant in enumerate(ranked, start=1):
        if relevant:
            hits += 1
            total += hits / rank
    return total / positives


def evaluate(
    engine: Engine,
    gt: GroundTruth,
    mapping: dict[str, str],
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    lookalikes: dict[str, set[str]] | None = None,
) -> EvalReport:
    """Runs the queries (and distractors) of ``gt`` through ``engine.identify``.

    The ranking a query is scored on is its verified matches (by object order, then alternatives),
    followed by the unverified shortlist: top-1 reads the first verified match only, so a query with
    nothing verified counts as wrong. With ``lookalikes`` (:func:`lookalike_references`) the report
    also gives top-1 counting a look-alike of a positive as right; top-1 itself is unchanged.
    """
    queries = gt.queries[:limit] if limit else gt.queries
    distractors = gt.distractors[:limit] if limit else gt.distractors
    ks = (1, 5, 10)
    hits_top1 = 0
    lookalike_hits = 0
    recall_hits = dict.fromkeys(ks, 0)
    aps: list[float] = []
    times: list[float] = []
    search_times: list[float] = []
    failures = 0
    per_query = []
    for q in queries:
        label = label_of(q.get("label")) if q.get("label") else gt.labels.get(q["positives"][0], "")
        positives = set(q.get("positives") or [])

        def relevant(reference_path: str | None, positives: set[str] = positives, label: str = label) -> bool:
            return reference_path in positives or (bool(label) and gt.labels.get(reference_path or "") == label)

        try:
            result = engine.identify((gt.root / q["query"]).read_bytes())
        except (OSError, KybError) as exc:
            failures += 1
            per_query.append({"query": q["query"], "error": str(exc)})
            aps.append(0.0)
            if progress:
                progress(1)
            continue
        times.append(result.timings_ms["total"] / 1000)
        search_times.append(result.timings_ms["search"] / 1000)
        verified = [m.reference_id for o in result.objects for m in o.matches]
        ranked_ids = verified + [base_reference_id(c) for c in result.candidates]
        ranked_paths = list(dict.fromkeys(mapping.get(r) for r in ranked_ids))
        flags = [relevant(p) for p in ranked_paths]
        top = mapping.get(verified[0]) if verified else None
        correct = relevant(top) if top else False
        hits_top1 += correct
        as_lookalike = (
            lookalikes is not None and not correct and any(relevant(p) for p in lookalikes.get(top or "", ()))
        )
        lookalike_hits += as_lookalike
        for k in ks:
            recall_hits[k] += any(flags[:k])
        n_pos = len(positives) if positives else 1
        aps.append(_average_precision(flags, n_pos))
        per_query.append(
            {
                "query": q["query"],
                "correct": correct,
                "top": top,
                "objects": len(result.objects),
                "inliers": result.objects[0].best.inliers if result.objects else 0,
                "seconds": round(result.timings_ms["total"] / 1000, 3),
                **({"lookalike_of_positive": True} if as_lookalike else {}),
            }
        )
        if progress:
            progress(1)
    false_accepts = 0
    for d in distractors:
        try:
            result = engine.identify((gt.root / d).read_bytes())
        except (OSError, KybError):
            failures += 1
            continue
        times.append(result.timings_ms["total"] / 1000)
        search_times.append(result.timings_ms["search"] / 1000)
        if result.objects:
            false_accepts += 1
            per_query.append({"query": d, "false_accept": mapping.get(result.objects[0].best.reference_id)})
        if progress:
            progress(1)
    n = max(1, len(queries))
    stats = engine.index.stats()
    return EvalReport(
        dataset=gt.name,
        references=int(stats["references"]),
        queries=len(queries),
        top1=hits_top1 / n,
        recall_at={k: v / n for k, v in recall_hits.items()},
        mean_ap=float(np.mean(aps)) if aps else 0.0,
        distractors=len(distractors),
        false_accepts=false_accepts,
        false_accept_rate=false_accepts / max(1, len(distractors)),
        p50_s=float(np.percentile(times, 50)) if times else 0.0,
        p95_s=float(np.percentile(times, 95)) if times else 0.0,
        search_p50_s=float(np.percentile(search_times, 50)) if search_times else 0.0,
        bytes_per_reference=float(stats["bytes_per_reference"]),
        failures=failures,
        lookalike_pairs=None if lookalikes is None else sum(len(v) for v in lookalikes.values()) // 2,
        top1_up_to_lookalikes=None if lookalikes is None else (hits_top1 + lookalike_hits) / n,
        per_query=per_query,
    )
