"""Detector speed: latency per 1024-px photo, and what dynamic batching gives under concurrent callers.

    python benchmarks/bench_detector.py WEIGHTS [--photos DIR] [--n 24] [--threads 1] [--device auto]

Prints one table: single-photo latency (p50/p95, batch 1) and photos/s for C concurrent callers
through the :class:`~kyb.detection.DynamicBatcher` at max_batch 1 (the baseline, measured in the
same run) and max_batch 4/8. Photos are the given folder's images (decoded and shrunk to 1024 px
as the gateway does) or drawn scenes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np


def _photos(folder: Path | None, n: int) -> list[np.ndarray]:
    from kyb import synth

    out = []
    if folder is not None:
        for p in sorted(folder.rglob("*.jpg"))[:n]:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                continue
            s = min(1.0, 1024 / max(img.shape[:2]))
            out.append(cv2.cvtColor(cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    while len(out) < n:
        rng = np.random.default_rng(len(out))
        out.append(cv2.cvtColor(synth.draw_background(rng, (1024, 768)), cv2.COLOR_BGR2RGB))
    return out


def _concurrent(detector, photos: list[np.ndarray], callers: int, max_batch: int, wait_ms: float) -> float:
    from kyb.detection import DynamicBatcher

    batcher = DynamicBatcher(detector.detect, max_batch=max_batch, max_wait_ms=wait_ms)
    queue = list(range(len(photos)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                i = queue.pop()
            batcher(photos[i], timeout=600)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    batcher.close()
    return len(photos) / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", type=Path)
    p.add_argument("--photos", type=Path, default=None)
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--callers", type=int, default=8)
    p.add_argument("--wait-ms", type=float, default=10.0)
    args = p.parse_args()

    from kyb.detection import Detector

    detector = Detector.from_file(args.weights, device=args.device, threads=args.threads)
    detector.warm_up()
    photos = _photos(args.photos, args.n)
    times = []
    for img in photos:
        t = time.perf_counter()
        detector.detect([img])
        times.append(time.perf_counter() - t)
    p50 = statistics.median(times) * 1000
    p95 = float(np.percentile(times, 95)) * 1000
    print(f"detector {detector.version} on {detector.device}, torch threads {args.threads}, "
          f"input {detector.arch.min_size}-{detector.arch.max_size} px, {len(photos)} photos of <=1024 px")  # fmt: skip
    print(f"{'mode':<34} {'photos/s':>9} {'vs batch 1':>10}")
    print(f"{'single photo latency':<34} p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    base = _concurrent(detector, photos, args.callers, 1, 0.0)
    print(f"{f'{args.callers} callers, max_batch 1':<34} {base:>9.2f} {1.0:>9.2f}x")
    for b in (4, 8):
        rate = _concurrent(detector, photos, args.callers, b, args.wait_ms)
        print(f"{f'{args.callers} callers, max_batch {b}, {args.wait_ms:g} ms':<34} {rate:>9.2f} {rate / base:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
