"""Capacity plan: measures the inputs on this machine and prints pods and memory per deployment size.

Usage::

    python benchmarks/bench_scale.py --sizes 1k,10k,50k --json scale.json      # index inputs (slow part)
    python benchmarks/bench_capacity.py --scale-json scale.json --json plan.json
    python benchmarks/bench_capacity.py --scale-sizes 1k,5k                     # runs the scale part itself

Inputs, all measured here in this run (or in the bench_scale run it reads):

* per shard, from ``bench_scale``: search time (mean over query photos, single thread) and process RSS
  at several index sizes, fitted as ``search_ms(n) = a + b*n`` and ``rss(n) = base + r*n``; index bytes
  per reference (``ReferenceIndex.stats``);
* encoder: seconds of one core per encode of a search-size photo (decode + RootSIFT + codebook);
* gateway: seconds of one core to decode a 12-megapixel phone JPEG to search size (it decodes once);
* detector: seconds of one core per 1024x768 photo for the detector service's network
  (``kyb.detection.build_detector``, random weights: inference time does not depend on their values),
  and torchvision's stock MobileNetV3-Large FPN for comparison. GPU throughput needs the device machine.

The plan (``plan``): an identification of a photo with R detector regions runs 1 + R encodes and
1 + R searches (the whole photo and each region). A search costs every shard its shortlist,
``shortlist_ms(n) = a + b*n`` for its n references, plus its share of one verification ``V / S``
(the gateway verifies the merged shortlist once, each shard its own keys). Shards S: the fewest that
fit ``rss(n)`` in ``--matcher-memory-gib`` x 0.8 and keep ``shortlist_ms(N/S) + V/S`` within
``--latency-ms``. Each shard needs ceil(rate x (1+R) x (shortlist_ms(N/S) + V/S) / (cores x
utilisation)) replicas. The baseline in the same table is one unsharded index, ``a + b*N + V``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SIZES = (1_000_000, 10_000_000, 100_000_000)
RATES = (100, 1_000)
_GIB = 1024**3


def _bench_scale() -> Any:
    """benchmarks/bench_scale.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_scale", HERE / "bench_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module
    spec.loader.exec_module(module)
    return module


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- fits
def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b*x`` (intercept kept >= 0: a negative fixed cost is noise)."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return max(float(a), 0.0), float(b)


@dataclass(frozen=True)
class ShardModel:
    """Search cost split the way the sharded search splits it (kyb.search.run_search in the gateway):
    every shard computes its shortlist sources (``Matcher.Shortlist``, growing with its size), and the
    merged shortlist is verified once, each shard verifying only its own keys (``Matcher.Verify``)."""

    shortlist_a_ms: float  # fixed part of one shard's shortlist work per search (all rounds)
    shortlist_b_ms_per_ref: float  # growth per reference (inverted-file votes, graph)
    verify_ms: float  # verification per search, whatever the index size; split over the shards
    rss_base_mb: float
    rss_bytes_per_ref: float
    index_bytes_per_ref: float

    def shortlist_ms(self, n: float) -> float:
        return self.shortlist_a_ms + self.shortlist_b_ms_per_ref * n

    def search_ms(self, n_total: float, shards: int = 1) -> float:
        """Wall time of one search over ``shards`` shards in parallel (network not included)."""
        return self.shortlist_ms(n_total / shards) + self.verify_ms / shards

    def shard_cpu_ms(self, n_total: float, shards: int) -> float:
        """CPU one shard spends per search: its shortlist and its share of the verification."""
        return self.search_ms(n_total, shards)

    def rss_bytes(self, n: float) -> float:
        return self.rss_base_mb * 1e6 + self.rss_bytes_per_ref * n


def shard_model(results: Sequence[dict[str, Any]]) -> ShardModel:
    ns = [r["n"] for r in results]
    a, b = fit_line(ns, [r["in_search_shortlist_mean_ms"] for r in results])
    verify = float(np.mean([r["verification_mean_ms"] for r in results]))
    base, slope = fit_line(ns, [r["rss_mb"] for r in results])
    return ShardModel(a, b, verify, base, slope * 1e6, float(np.mean([r["bytes_per_reference"] for r in results])))


# ---------------------------------------------------------------------------------------------- timings
def single_threaded() -> None:
    """One core per measurement: per-core figures are what pod sizing multiplies."""
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    threadpool_limits(1)


def per_call_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (first-call allocations, lazy imports)
    started = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - started) / repeats  # CPU time: robust to other jobs on shared cores


def time_encoder_and_gateway(photos: int, covers: int, seed: int) -> dict[str, float]:
    """CPU seconds per encode (search-size photo) and per gateway decode of a 12 MP JPEG."""
    import cv2

    from kyb import synth
    from kyb.config import FeatureConfig, ImageLimits
    from kyb.encoder import Encoder
    from kyb.imageio import decode_image

    scale = _bench_scale()
    limits, features = ImageLimits(), FeatureConfig()
    bands = synth.make_bands(covers, seed=seed, albums_per_band=(1, 1))
    drawn = scale.draw_covers(bands, seed, 1, "vocab", limits=limits, features=features, keep_pixels=True,
                              workers=1, show=False)  # fmt: skip
    codebook = scale.train(drawn, features.pca_dims, False)
    encoder = Encoder(codebook, features)
    rng = np.random.default_rng(seed)
    jpegs = []
    for i in range(photos):
        scene, _ = synth.compose_scene([drawn[i % len(drawn)].image, drawn[(i + 1) % len(drawn)].image], rng)
        jpegs.append(scale.jpeg_bytes(scene, 90))
    decoded = [decode_image(j, limits, max_side=limits.search_max_side) for j in jpegs]
    counter = iter(range(10**9))
    encode_s = per_call_s(lambda: encoder.encode(decoded[next(counter) % photos]), photos)
    scene, _ = synth.compose_scene([drawn[0].image], rng)
    phone = scale.jpeg_bytes(cv2.resize(scene, (4032, 3024)), 90)  # a phone camera's 12 MP
    decode_s = per_call_s(lambda: decode_image(phone, limits, max_side=limits.search_max_side), 5)
    return {
        "encode_s": encode_s,
        "gateway_decode_s": decode_s,
        "codebook_words": float(codebook.n_words),
        "photo_keypoints": float(np.mean([len(encoder.encode(d)) for d in decoded[:3]])),
    }


def time_detector(repeats: int) -> dict[str, float]:
    """CPU seconds per 1024x768 photo, batch 1: the detector service's network
    (:func:`kyb.detection.build_detector`, default :class:`~kyb.detection.DetectorArch`) and, for
    comparison, torchvision's stock ``fasterrcnn_mobilenet_v3_large_fpn`` (800-px input, 1024-wide head).
    Random weights: inference time does not depend on their values."""
    import torch
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    from kyb.detection import DetectorArch, build_detector

    torch.set_num_threads(1)
    torch.manual_seed(0)
    image = torch.rand(3, 768, 1024)
    service = build_detector().eval()
    stock = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3).eval()
    with torch.inference_mode():
        service_s = per_call_s(lambda: service([image]), repeats)
        stock_s = per_call_s(lambda: stock([image]), max(1, repeats // 2))
    arch = DetectorArch()
    return {
        "detect_s": service_s,
        "detect_torchvision_default_s": stock_s,
        "detector_min_size": float(arch.min_size),
        "parameters": float(sum(p.numel() for p in service.parameters())),
    }


# ---------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class PlanRow:
    references: int
    rate: int
    unsharded_search_ms: float
    shard_cap: int
    shards: int
    refs_per_shard: int
    search_ms: float
    replicas_per_shard: int
    matcher_pods: int
    matcher_gib: float
    encoder_pods: int
    gateway_pods: int
    detector_cpu_pods: int
    total_pods: int
    total_gib: float


def plan(
    model: ShardModel,
    timing: dict[str, float],
    *,
    regions: int,
    matcher_memory_gib: float,
    latency_ms: float,
    cores: int,
    utilisation: float,
    service_gib: dict[str, float],
) -> list[PlanRow]:
    usable = matcher_memory_gib * 0.8 * _GIB
    memory_cap = max(1, int((usable - model.rss_base_mb * 1e6) / model.rss_bytes_per_ref))
    per_id = 1 + regions  # the whole photo and each region: encoded, and searched on every shard
    capacity = cores * utilisation  # busy core-seconds one pod gives per second
    rows = []
    for n_total in SIZES:
        # Fewest shards that fit in memory and keep one search within the budget.
        shards = math.ceil(n_total / memory_cap)
        while model.search_ms(n_total, shards) > latency_ms and shards < n_total:
            shards = math.ceil(shards * 1.1)
        per_shard = math.ceil(n_total / shards)
        shard_s = model.shard_cpu_ms(n_total, shards) / 1000
        for rate in RATES:
            replicas = math.ceil(rate * per_id * shard_s / capacity)
            matchers = shards * replicas
            matcher_gib = matchers * model.rss_bytes(per_shard) / _GIB
            encoders = math.ceil(rate * per_id * timing["encode_s"] / capacity)
            gateways = math.ceil(rate * timing["gateway_decode_s"] / capacity)
            detectors = math.ceil(rate * timing["detect_s"] / capacity)
            others = (
                encoders * service_gib["encoder"]
                + gateways * service_gib["gateway"]
                + detectors * service_gib["detector"]
            )
            rows.append(
                PlanRow(
                    references=n_total,
                    rate=rate,
                    unsharded_search_ms=model.search_ms(n_total),
                    shard_cap=memory_cap,
                    shards=shards,
                    refs_per_shard=per_shard,
                    search_ms=model.search_ms(n_total, shards),
                    replicas_per_shard=replicas,
                    matcher_pods=matchers,
                    matcher_gib=matcher_gib,
                    encoder_pods=encoders,
                    gateway_pods=gateways,
                    detector_cpu_pods=detectors,
                    total_pods=matchers + encoders + gateways + detectors,
                    total_gib=matcher_gib + others,
                )
            )
    return rows


def plan_table(rows: Sequence[PlanRow]) -> str:
    header = (
        "| references | id/s | unsharded search ms (baseline) | shards x refs | sharded search ms | replicas/shard "
        "| matcher pods | matcher GiB | encoder pods | gateway pods | detector pods (CPU) | pods | GiB |"
    )
    lines = [header, "|" + "---:|" * 13]
    for r in rows:
        lines.append(
            f"| {r.references:,} | {r.rate:,} | {r.unsharded_search_ms:,.0f} | {r.shards:,} x {r.refs_per_shard:,} "
            f"| {r.search_ms:,.0f} | {r.replicas_per_shard:,} | {r.matcher_pods:,} | {r.matcher_gib:,.0f} "
            f"| {r.encoder_pods:,} | {r.gateway_pods:,} | {r.detector_cpu_pods:,} | {r.total_pods:,} "
            f"| {r.total_gib:,.0f} |"
        )
    return "\n".join(lines)


def inputs_table(model: ShardModel, timing: dict[str, float], scale: Sequence[dict[str, Any]]) -> str:
    lines = ["| shard size | search p50 ms | search p95 ms | shortlist in search ms | verification ms | RSS MB "
             "| index bytes/ref |", "|" + "---:|" * 7]  # fmt: skip
    for r in scale:
        lines.append(
            f"| {r['n']:,} | {r['search_p50_ms']:.1f} | {r['search_p95_ms']:.1f} | "
            f"{r['in_search_shortlist_mean_ms']:.1f} | {r['verification_mean_ms']:.1f} | {r['rss_mb']:,.0f} "
            f"| {r['bytes_per_reference']:,.0f} |"
        )
    lines += [
        "",
        f"shortlist_ms(n) = {model.shortlist_a_ms:.1f} + {model.shortlist_b_ms_per_ref * 1e3:.3f} x n/1000; "
        f"verification {model.verify_ms:.1f} ms per search (split over the shards); "
        f"rss(n) = {model.rss_base_mb:.0f} MB + {model.rss_bytes_per_ref:,.0f} B x n; "
        f"index {model.index_bytes_per_ref:,.0f} B/ref",
        f"encoder {timing['encode_s'] * 1000:.0f} ms CPU per photo ({1 / timing['encode_s']:.1f}/s per core; "
        f"{timing['photo_keypoints']:.0f} keypoints, {timing['codebook_words']:.0f}-word codebook); "
        f"gateway decode of a 12 MP JPEG {timing['gateway_decode_s'] * 1000:.0f} ms; "
        f"detector (the service's Faster R-CNN MobileNetV3-Large FPN, {timing['detector_min_size']:.0f}-px input, "
        f"{timing['parameters'] / 1e6:.1f} M parameters; 1024x768 photo, CPU) {timing['detect_s'] * 1000:.0f} ms "
        f"({1 / timing['detect_s']:.1f}/s per core; torchvision's stock model at 800 px: "
        f"{timing['detect_torchvision_default_s'] * 1000:.0f} ms)",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale-json", type=Path, help="a bench_scale.py --json result (else it is run here)")
    parser.add_argument("--scale-sizes", default="1k,5k", help="sizes for the bench_scale run (no --scale-json)")
    parser.add_argument("--regions", type=int, default=2, help="detector regions per photo R (default 2)")
    parser.add_argument("--matcher-memory-gib", type=float, default=16.0, help="memory limit of a matcher pod")
    parser.add_argument("--latency-ms", type=float, default=250.0, help="budget for one search over all shards")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores per pod (the manifests' limits)")
    parser.add_argument("--utilisation", type=float, default=0.6, help="target busy fraction (HPA target)")
    parser.add_argument("--photos", type=int, default=12, help="photos timed through the encoder")
    parser.add_argument("--covers", type=int, default=120, help="drawn covers for the encoder's codebook")
    parser.add_argument("--detector-repeats", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write inputs and plan here")
    parser.add_argument("--timing-from", type=Path, help="reuse the encoder/gateway/detector timings of a --json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scale_json is None:
        args.scale_json = Path(os.environ.get("TMPDIR", "/tmp")) / "kyb-bench-scale.json"
        _bench_scale().main(["--sizes", args.scale_sizes, "--json", str(args.scale_json), "--no-progress"])
    scale = json.loads(args.scale_json.read_text())["results"]
    model = shard_model(scale)
    if args.timing_from is not None:  # the encoder/gateway/detector figures of an earlier --json run
        timing = json.loads(args.timing_from.read_text())["timing"]
    else:
        single_threaded()
        log("timing the encoder and the gateway decode")
        timing = time_encoder_and_gateway(args.photos, args.covers, seed=0)
        log("timing the detector")
        timing |= time_detector(args.detector_repeats)
    service_gib = {"encoder": 1.0, "gateway": 0.5, "detector": 1.0}  # the manifests' memory requests
    rows = plan(model, timing, regions=args.regions, matcher_memory_gib=args.matcher_memory_gib,
                latency_ms=args.latency_ms, cores=args.cores, utilisation=args.utilisation,
                service_gib=service_gib)  # fmt: skip
    print(f"Inputs (this machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; CPU time per call):")
    print()
    print(inputs_table(model, timing, scale))
    print()
    print(
        f"Plan: R = {args.regions} regions per photo -> {1 + args.regions} encodes and {1 + args.regions} searches "
        f"per shard per identification; matcher pods {args.matcher_memory_gib:g} GiB (80% usable), search budget "
        f"{args.latency_ms:g} ms; {args.cores} cores per pod at {args.utilisation:.0%}; memory cap "
        f"{rows[0].shard_cap:,} references per shard"
    )
    print()
    print(plan_table(rows))
    if args.json is not None:
        payload = {"model": asdict(model), "timing": timing, "args": {k: str(v) for k, v in vars(args).items()},
                   "plan": [asdict(r) for r in rows]}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
