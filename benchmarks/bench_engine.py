"""Engine vs. the naive baseline on the real evaluation sets; prints one table.

Usage::

    python benchmarks/bench_engine.py ../shared/datasets [--sets covers logos landmarks]
        [--limit N] [--baseline-limit 10] [--json results.json]

For each set the engine's ``kyb eval`` figures are measured next to a naive baseline measured in the
same run: exhaustive RootSIFT (1,000 features) ratio-test (0.8) matching + RANSAC against every
reference, the best inlier count accepted at >= 15 inliers. The baseline takes seconds per query, so it
runs on the first ``--baseline-limit`` queries (and as many distractors); the engine runs on those
same queries too (the "same queries" columns) and on the whole set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kyb.config import ImageLimits, load_config
from kyb.evaluation import evaluate, index_dataset
from kyb.features import extract_rootsift
from kyb.groundtruth import GroundTruth, load_ground_truth
from kyb.imageio import decode_image

BASELINE_FEATURES = 1000
BASELINE_RATIO = 0.8
BASELINE_MIN_INLIERS = 15


def _gray(path: Path) -> np.ndarray:
    decoded = decode_image(path.read_bytes(), ImageLimits(), max_side=1024)
    return cv2.cvtColor(decoded.rgb, cv2.COLOR_RGB2GRAY)


class NaiveBaseline:
    """Exhaustive RootSIFT + ratio test + RANSAC against every reference (region, when boxed)."""

    def __init__(self, gt: GroundTruth) -> None:
        self.gt = gt
        self.refs: list[tuple[str, np.ndarray, np.ndarray]] = []
        for path in tqdm(gt.database, desc=f"baseline features {gt.name}", file=sys.stderr):
            gray = _gray(gt.root / path)
            boxes = gt.boxes.get(path) or [None]
            for box in boxes:
                crop = gray
                if box is not None:
                    x1, y1, x2, y2 = (round(v) for v in box)
                    crop = gray[max(0, y1) : y2, max(0, x1) : x2]
                    if crop.size == 0 or min(crop.shape) < 8:
                        continue
                f = extract_rootsift(crop, max_features=BASELINE_FEATURES)
                if len(f) >= 2:
                    self.refs.append((path, f.xy, f.descriptors))
        self.matcher = cv2.BFMatcher(cv2.NORM_L2)

    def query(self, path: Path) -> tuple[str | None, int, float]:
        started = time.perf_counter()
        f = extract_rootsift(_gray(path), max_features=BASELINE_FEATURES)
        best_ref, best_inliers = None, 0
        for ref_path, xy, desc in self.refs:
            if len(f) < 2:
                break
            pairs = self.matcher.knnMatch(f.descriptors, desc, k=2)
            good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < BASELINE_RATIO * n.distance]
            if len(good) < 4:
                continue
            src = np.float32([xy[m.trainIdx] for m in good])
            dst = np.float32([f.xy[m.queryIdx] for m in good])
            _, mask = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
            inliers = int(mask.sum()) if mask is not None else 0
            if inliers > best_inliers:
                best_ref, best_inliers = ref_path, inliers
        accepted = best_ref if best_inliers >= BASELINE_MIN_INLIERS else None
        return accepted, best_inliers, time.perf_counter() - started


def run_baseline(gt: GroundTruth, limit: int) -> dict:
    baseline = NaiveBaseline(gt)
    queries = gt.queries[:limit]
    distractors = gt.distractors[:limit]
    correct, times = 0, []
    for q in tqdm(queries, desc=f"baseline {gt.name}", file=sys.stderr):
        label = q.get("label")
        label = (label[0] if isinstance(label, list) else label) or gt.labels.get(q["positives"][0])
        found, _, seconds = baseline.query(gt.root / q["query"])
        times.append(seconds)
        correct += bool(found) and (found in q["positives"] or gt.labels.get(found) == label)
    false_accepts = 0
    for d in tqdm(distractors, desc=f"baseline {gt.name} distractors", file=sys.stderr):
        found, _, seconds = baseline.query(gt.root / d)
        times.append(seconds)
        false_accepts += found is not None
    return {
        "queries": len(queries),
        "top1": correct / max(1, len(queries)),
        "distractors": len(distractors),
        "false_accepts": false_accepts,
        "p50_s": float(np.median(times)) if times else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", help="folder holding covers/, logos/, landmarks/")
    parser.add_argument("--sets", nargs="+", default=["covers", "logos", "landmarks"])
    parser.add_argument("--limit", type=int, help="engine: first N queries (default all)")
    parser.add_argument("--baseline-limit", type=int, default=10, help="baseline (and same-query engine) queries")
    parser.add_argument("--cache", default=os.environ.get("KYB_EVAL_CACHE", str(Path.home() / ".cache/kyb/eval")))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    config = load_config(env=os.environ)
    rows = []
    for name in args.sets:
        gt = load_ground_truth(Path(args.datasets) / name)
        engine, mapping = index_dataset(gt, config, Path(args.cache))
        engine.identify((gt.root / gt.queries[0]["query"]).read_bytes())  # warm-up: load the index
        same = evaluate(engine, gt, mapping, limit=args.baseline_limit)
        full = evaluate(engine, gt, mapping, limit=args.limit)
        base = run_baseline(gt, args.baseline_limit) if args.baseline_limit else None
        rows.append({"set": name, "engine": full.to_dict(), "engine_same_queries": same.to_dict(), "baseline": base})
        print(f"[{name}] engine: {full.table()}".replace("\n", " | "), file=sys.stderr)
    header = (
        "| set | refs | queries | engine top-1 | R@1 | R@5 | R@10 | mAP | FA | engine p50 s | search p50 ms "
        "| bytes/ref | same-query engine top-1 / p50 s | baseline top-1 | baseline FA | baseline p50 s | speed-up |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        e, s, b = row["engine"], row["engine_same_queries"], row["baseline"] or {}
        speedup = (b.get("p50_s", 0) / s["p50_s"]) if s["p50_s"] and b else 0
        print(
            f"| {row['set']} | {e['references']} | {e['queries']} | {e['top1']:.3f} | {e['recall_at']['1']:.3f} "
            f"| {e['recall_at']['5']:.3f} | {e['recall_at']['10']:.3f} | {e['mean_ap']:.3f} "
            f"| {e['false_accepts']}/{e['distractors']} | {e['p50_s']:.3f} | {e['search_p50_s'] * 1000:.1f} "
            f"| {e['bytes_per_reference']:.0f} | {s['top1']:.3f} / {s['p50_s']:.3f} "
            f"| {b.get('top1', float('nan')):.3f} ({b.get('queries', 0)} q) "
            f"| {b.get('false_accepts', 0)}/{b.get('distractors', 0)} | {b.get('p50_s', float('nan')):.2f} "
            f"| {speedup:.1f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
