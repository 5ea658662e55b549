"""Typed configuration of the engine and the services: one frozen dataclass per section, one loader.

Every field can be set in a TOML file (``[section] field = value``; the engine's top-level fields
such as ``index_dir`` at the top), in an environment variable ``KYB_<SECTION>__<FIELD>`` (e.g.
``KYB_SEARCH__MIN_INLIERS=15``, ``KYB_GATEWAY__PORT``, ``KYB_INDEX_DIR``) or a flag; the environment
wins over the file, flags over both. The same names serve the CLI, a service process and a
Kubernetes manifest.

* The engine (:class:`EngineConfig`): ``index_dir``, ``catalog_url``, ``workers``, ``heap_retain_mb``
  and the sections ``[limits]``, ``[features]``, ``[codebook]``, ``[search]``, ``[cache]`` and
  ``[detector]`` (detector-first identification runs embedded as well as served).
* The services (:class:`ServiceConfig`, which holds an :class:`EngineConfig`): ``[rpc]`` (plumbing
  every server and client shares), ``[gateway]``, ``[encoder]``, ``[matcher]`` and ``[web]``.

Lists are comma-separated in variables (``KYB_RPC__TOKENS=a,b``). A bad value, an unknown field or an
unknown section of a file raises :class:`~kyb.errors.ConfigError` naming it. Nothing here reads the
environment at import.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kyb.errors import ConfigError

__all__ = [
    "CacheConfig",
    "CodebookConfig",
    "DetectorConfig",
    "EncoderConfig",
    "EngineConfig",
    "FeatureConfig",
    "GatewayConfig",
    "ImageLimits",
    "MatcherConfig",
    "RpcConfig",
    "SearchConfig",
    "ServiceConfig",
    "WebConfig",
    "environment",
    "from_environ",
    "load_config",
    "load_service_config",
    "parse_shard",
]

_MIB = 1024 * 1024


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field {name}: {message}")


def _check_port(port: int, name: str) -> None:
    _check(0 <= port <= 65535, name, "must be a TCP port in 0..65535 (0 = any free port)")


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what the decoder accepts; checked on the header before pixels are decoded."""

    max_bytes: int = 30 * 1024 * 1024
    #: Decompression-bomb guard: a 40-Mpx photo is already more than any phone makes.
    max_pixels: int = 60_000_000
    #: Images with a shorter side than this carry too little to identify anything.
    min_side: int = 16
    #: Photos are searched at this longest side: SIFT at 1024 px keeps cover/logo detail and runs in ~0.2 s.
    search_max_side: int = 1024
    #: References are stored at this longest side (their features, not their pixels).
    reference_max_side: int = 1024

    def __post_init__(self) -> None:
        _check(self.max_bytes > 0, "limits.max_bytes", "must be > 0")
        _check(self.max_pixels > 0, "limits.max_pixels", "must be > 0")
        _check(1 <= self.min_side <= 512, "limits.min_side", "must be in 1..512")
        _check(self.search_max_side >= 256, "limits.search_max_side", "must be >= 256")
        _check(self.reference_max_side >= 256, "limits.reference_max_side", "must be >= 256")


@dataclass(frozen=True)
class FeatureConfig:
    """RootSIFT extraction and the compact per-reference storage."""

    #: Features kept for a photo: more finds small logos in clutter, costs matching time.
    query_features: int = 2500
    #: Features kept per reference: bounds index bytes (about 72 bytes each).
    reference_features: int = 450
    #: Which keypoints a whole-image reference keeps: the reference_features best by detector
    #: response x keypoint size ** this. 0 keeps the strongest responses, which are mostly the finest
    #: scale (~2 px): a phone photo of a cover smaller in the frame than the scan, or blurred, has lost
    #: exactly those. 1 keeps larger, more repeatable keypoints too. Boxed regions (a logo in a merch
    #: photo, already photographed) keep the strongest (docs/engine.md section 2).
    reference_scale_weight: float = 1.0
    #: SIFT contrast threshold; OpenCV's 0.04 drops too much on low-contrast phone photos.
    contrast_threshold: float = 0.025
    #: Small reference regions (logo boxes) are upscaled to this shorter side before extraction.
    min_region_side: int = 360
    #: Photos with a longer side below this are enlarged (up to 2x) before extraction.
    query_min_side: int = 1000
    #: A region of a photo (a detector box, or the whole photo searched a second time when nothing was
    #: found in it, search.second_look) is enlarged to this longer side, up to query_region_upscale:
    #: a logo filling a small part of a 500-px web photo has too few pixels for SIFT at 2x.
    query_region_side: int = 1500
    query_region_upscale: float = 3.0
    #: Descriptor dimensions kept after PCA (RootSIFT 128 -> this), stored as int8.
    pca_dims: int = 64
    #: A photo's features also keep their next-nearest visual words (up to this many words in all)
    #: for verification's first look: a descriptor near a word boundary is quantised differently in
    #: photo and reference, and the nearest word alone kept only a sixth of some logos' true matches
    #: (docs/engine.md, "First look with near words"). 1 = the nearest word only.
    query_near_words: int = 2
    #: ... a further word is kept only within this factor of the nearest word's distance.
    query_near_ratio: float = 1.05
    #: hnswlib search depth when a photo's features are assigned their words (a reference's: 32);
    #: 16 assigns ~1.65x faster, ~1% of features to another word (docs/engine.md).
    query_assign_ef: int = 32
    #: hnswlib threads assigning one photo's words (~35 ms -> ~19 ms at 2,500 features on 2 cores,
    #: the same words): the photo's SIFT already uses every core, and this is the other step of a
    #: photo's encoding that waits on one. References keep one each, ingest encodes them side by side.
    query_assign_threads: int = 2
    #: A photo is searched in both polarities: this many of its strongest features also get an inverted
    #: twin (the descriptor the same keypoint has in the luminance-inverted photo, a permutation of it:
    #: no second extraction), so a black-on-white reference logo printed white on a black shirt is
    #: found (docs/engine.md section 2). Each twin is a row more to assign, vote and verify; 0 searches
    #: the photo as photographed only.
    query_inverted_features: int = 2500
    #: A boxed reference region (a logo cut out of a photo) also keeps up to this many keypoints of
    #: small renderings of itself (views, :func:`kyb.encoder.extract_views`): a print 50-150 px wide in
    #: a photo has lost the fine detail the region's strongest keypoints are, and its coarse keypoints'
    #: descriptors differ from the sharp region's. A whole image keeps larger keypoints already
    #: (reference_scale_weight). Added to reference_features (about 100 index bytes each); 0 = none.
    reference_view_features: int = 55
    #: The smallest view's longer side in pixels; the others are 1.5x and 2.25x it. A view no smaller
    #: than 3/4 of the reference region is skipped.
    reference_view_side: int = 48

    def __post_init__(self) -> None:
        _check(50 <= self.query_features <= 20000, "features.query_features", "must be in 50..20000")
        _check(20 <= self.reference_features <= 5000, "features.reference_features", "must be in 20..5000")
        _check(0 <= self.reference_scale_weight <= 4, "features.reference_scale_weight", "must be in 0..4")
        _check(0 < self.contrast_threshold < 0.5, "features.contrast_threshold", "must be in (0, 0.5)")
        _check(32 <= self.min_region_side <= 2048, "features.min_region_side", "must be in 32..2048")
        _check(64 <= self.query_min_side <= 4096, "features.query_min_side", "must be in 64..4096")
        _check(64 <= self.query_region_side <= 4096, "features.query_region_side", "must be in 64..4096")
        _check(1.0 <= self.query_region_upscale <= 8.0, "features.query_region_upscale", "must be in 1..8")
        _check(8 <= self.pca_dims <= 128, "features.pca_dims", "must be in 8..128")
        _check(1 <= self.query_near_words <= 8, "features.query_near_words", "must be in 1..8")
        _check(self.query_near_ratio >= 1.0, "features.query_near_ratio", "must be >= 1")
        _check(4 <= self.query_assign_ef <= 512, "features.query_assign_ef", "must be in 4..512")
        _check(1 <= self.query_assign_threads <= 256, "features.query_assign_threads", "must be in 1..256")
        _check(0 <= self.query_inverted_features <= 20000, "features.query_inverted_features", "must be in 0..20000")
        _check(0 <= self.reference_view_features <= 5000, "features.reference_view_features", "must be in 0..5000")
        _check(16 <= self.reference_view_side <= 1024, "features.reference_view_side", "must be in 16..1024")


@dataclass(frozen=True)
class CodebookConfig:
    """The visual vocabulary trained by ``kyb codebook train`` from a sample of reference descriptors."""

    #: Fine vocabulary for the inverted file, at most; a small collection gets sample/descriptors_per_word.
    words: int = 16384
    #: Sampled descriptors per fine word in a small collection: the word vote and the first look of a
    #: candidate discriminate by word, and a coarse vocabulary makes every stranger share words with
    #: much of the photo (landmarks, 101 references: 12 -> 3,436 words, top-1 0.396, mAP 0.631; 3 ->
    #: 13,747 words, 0.446 and 0.703; docs/engine.md "A finer vocabulary for small collections").
    descriptors_per_word: int = 3
    #: Coarse vocabulary for the VLAD global vector (words x pca_dims dimensions before whitening).
    vlad_words: int = 64
    #: Dimensions of the whitened global vector stored in the hnswlib index.
    global_dims: int = 256
    #: Descriptors sampled from the references to train on.
    sample_size: int = 300_000
    kmeans_iterations: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        _check(16 <= self.words <= 1 << 20, "codebook.words", "must be in 16..1048576")
        _check(1 <= self.descriptors_per_word <= 1000, "codebook.descriptors_per_word", "must be in 1..1000")
        _check(4 <= self.vlad_words <= 1024, "codebook.vlad_words", "must be in 4..1024")
        _check(8 <= self.global_dims <= 4096, "codebook.global_dims", "must be in 8..4096")
        _check(self.sample_size >= 1000, "codebook.sample_size", "must be >= 1000")
        _check(1 <= self.kmeans_iterations <= 100, "codebook.kmeans_iterations", "must be in 1..100")


@dataclass(frozen=True)
class SearchConfig:
    """Shortlist and geometric verification; see docs/engine.md for how each was chosen."""

    #: Candidates taken from the hnswlib index over global vectors.
    shortlist_global: int = 30
    #: Candidates taken from the inverted file (visual-word votes): finds small objects in clutter.
    shortlist_words: int = 30
    #: Hamming embedding in the inverted file: a photo feature votes for a reference's feature of
    #: the same word only when their 64-bit signatures differ in at most this many bits, weighted
    #: exp(-bits^2 / sigma^2) (Jégou et al.'s values, 24 and 16). 64 lets every shared word vote
    #: (weighted), as a plain bag of words would; docs/engine.md section 5 has what it buys.
    hamming_threshold: int = 24
    hamming_sigma: float = 16.0
    #: Candidates verified per round (the fused shortlist is cut to this).
    verify_top: int = 40
    #: When none of the first verify_top candidates verifies, keep going down the shortlist to this many.
    #: Cheap since the first look rejects most strangers: a blurred or steeply tilted cover can rank
    #: past 100 in both lists (docs/engine.md, "Deeper reserve"). Chosen on the tune halves (kyb eval
    #: --split tune): the deepest accepted match ranked 165th (logos), 25th (landmarks), 15th (covers),
    #: and 200 instead of 400 lost none there; photos where nothing verifies (most no-logo photos) walk
    #: the whole depth, which paid for searching both polarities (docs/journal.md, 2026-12-07).
    verify_max: int = 200
    #: After a verified match, stop round 1's verification after this many misses in a row (later
    #: rounds verify their short list of max(8, verify_top // 4) whole).
    patience: int = 6
    #: hnswlib graph degree and search breadth: memory ~ M * 8 bytes per reference; ef >= shortlist.
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef: int = 128
    #: A reference keypoint's descriptor is stored as its word's centroid plus this many bits a PCA
    #: dimension of residual magnitude (the residual's sign is its Hamming signature): 1 keeps 8 bytes
    #: of the int8 descriptor's 64 (docs/engine.md, "Compact references"): covers keep their top-1,
    #: but logos lose the matches that pass min_inliers by one or two (top-1 0.728 -> 0.704, 2 of 81),
    #: so -1 (int8 descriptors) stays the default until that is won back; 1 is for catalogs where
    #: memory matters more (14 KB instead of 39 KB a cover reference). Fixed for an index when it gets
    #: its first references; shard copies and seeded shards take the source index's bins
    #: (``ReferenceIndex.empty_like``).
    residual_bits: int = -1
    #: Lowe's ratio test on descriptor distances.
    ratio: float = 0.85
    #: RANSAC reprojection threshold in pixels of the photo at search size (1024 px).
    ransac_threshold: float = 8.0
    #: RANSAC iteration cap. A true match converges in far fewer (adaptive stopping); a candidate
    #: that is not in the photo always runs to the cap, so the cap is most of its cost.
    ransac_iterations: int = 2000
    #: A match needs this many one-to-one, spatially distinct inliers. With the plausibility checks
    #: in verify.py, chance matches on photos without any reference stayed at 9 or fewer (a few
    #: reached 8-9); 10 is the lowest count above that, and each step down to it found more logos.
    min_inliers: int = 10
    #: ... spread over at least this fraction of the reference region (rejects clustered chance matches).
    min_inlier_spread: float = 0.04
    #: A first, cheap look at each candidate (verify.worth_verifying): only the photo's features that
    #: share a visual word with it are matched, and unless they agree on a homography with this many
    #: distinct inliers the candidate is rejected without the full descriptor product. Chance
    #: agreement is 4-5 (4 points always fit a homography); 0 turns the first look off.
    prefilter_inliers: int = 6
    #: Lowe's ratio for the first look's matches (full verification keeps ``ratio``). Stricter is
    #: faster where most photos hold nothing known (a stranger keeps fewer chance matches to run
    #: RANSAC on) but loses faint logos: 0.8 took logos p50 0.43 -> 0.33 s and lost 1 of 81 logos
    #: (docs/engine.md, "Lazy reserve").
    prefilter_ratio: float = 0.85
    #: Threads a search's inverted-file vote uses: a large index's segments vote side by side (one
    #: process-wide pool of this size, so concurrent searches share it rather than multiply it); 1
    #: votes in the caller's thread.
    vote_threads: int = 2
    #: The word vote names at most about this many references: each of the photo's features counts
    #: the references holding its word, and the most common words stop voting until the sum fits
    #: (kyb.index.ReferenceIndex.vote_cutoff). Bounds the vote's cost as the index grows; 0 = no bound.
    vote_budget: int = 0
    #: Threads that verify ahead of the caller once a walk down a shortlist is past its first
    #: kyb.search.SERIAL_LOOKS candidates (a photo where nothing verifies looks at up to verify_max):
    #: the same pool as the vote, a few candidates a task. The answers do not change, only when they
    #: are ready; 1 verifies in the caller's thread (a server whose cores are all busy loses nothing).
    verify_threads: int = 2
    #: A photo in which nothing was found (the whole photo and every detector region) is searched once
    #: more as a region of itself, which the encoder enlarges further (features.query_region_side):
    #: small logos in web-sized photos (docs/engine.md section 8a). Costs a second encode and search
    #: on exactly the photos that hold nothing known.
    second_look: bool = True
    #: Candidates the second look verifies at most (never more than verify_max) when none of them
    #: verifies: the first look walked the photo's shortlist verify_max deep already, and the second
    #: look is a retry at a finer scale, where a small logo that SIFT now sees ranks among the first
    #: candidates. A photo where nothing is known pays it in full, so it is most of that photo's cost.
    second_look_depth: int = 40
    #: Objects returned per photo at most.
    max_objects: int = 12
    #: Also-matched references kept per object (other references of the same object, for explanation).
    alternatives: int = 4
    #: Guided matching (verify.py, docs/engine.md section 6): a plausible fit that falls short of
    #: min_inliers but has prefilter_inliers is matched again under its homography, pairing a photo
    #: feature with a reference feature among its this many nearest descriptors that projects within
    #: ransac_threshold of it, and refitted. A folded print keeps its geometry but its shading moves
    #: descriptors, so the ratio test drops true matches the homography can still vouch for.
    #: 0 turns it off.
    guided_neighbours: int = 2
    #: ... a guided fit needs this many distinct inliers (never fewer than min_inliers) ...
    guided_min_inliers: int = 10
    #: ... and this many times the pairs the same matching finds under the homography shifted four
    #: radii aside (chance pairs): a photo dense with features alike (foliage, text) gives dozens of
    #: chance pairs, so a count alone is not enough (figures: docs/journal.md).
    guided_null_factor: float = 4.0

    def __post_init__(self) -> None:
        _check(self.shortlist_global >= 0, "search.shortlist_global", "must be >= 0")
        _check(self.shortlist_words >= 0, "search.shortlist_words", "must be >= 0")
        _check(self.shortlist_global + self.shortlist_words > 0, "search.shortlist_*", "one must be > 0")
        _check(0 <= self.hamming_threshold <= 64, "search.hamming_threshold", "must be in 0..64")
        _check(1.0 <= self.hamming_sigma <= 1000.0, "search.hamming_sigma", "must be in 1..1000")
        _check(self.verify_top >= 1, "search.verify_top", "must be >= 1")
        _check(self.verify_max >= self.verify_top, "search.verify_max", "must be >= search.verify_top")
        _check(1 <= self.patience <= 1000, "search.patience", "must be in 1..1000")
        _check(2 <= self.hnsw_m <= 100, "search.hnsw_m", "must be in 2..100")
        _check(-1 <= self.residual_bits <= 4, "search.residual_bits", "must be in -1..4")
        _check(self.hnsw_ef >= self.shortlist_global, "search.hnsw_ef", "must be >= shortlist_global")
        _check(0.5 <= self.ratio <= 1.0, "search.ratio", "must be in 0.5..1.0")
        _check(0.5 <= self.ransac_threshold <= 50, "search.ransac_threshold", "must be in 0.5..50")
        _check(50 <= self.ransac_iterations <= 100000, "search.ransac_iterations", "must be in 50..100000")
        _check(4 <= self.min_inliers <= 1000, "search.min_inliers", "must be in 4..1000")
        _check(0 <= self.min_inlier_spread < 1, "search.min_inlier_spread", "must be in 0..1")
        _check(
            self.prefilter_inliers == 0 or 5 <= self.prefilter_inliers <= self.min_inliers,
            "search.prefilter_inliers",
            "must be 0 (off) or in 5..search.min_inliers",
        )
        _check(0.5 <= self.prefilter_ratio <= 1.0, "search.prefilter_ratio", "must be in 0.5..1.0")
        _check(1 <= self.vote_threads <= 64, "search.vote_threads", "must be in 1..64")
        _check(self.vote_budget >= 0, "search.vote_budget", "must be >= 0")
        _check(1 <= self.verify_threads <= 64, "search.verify_threads", "must be in 1..64")
        _check(self.second_look_depth >= 1, "search.second_look_depth", "must be >= 1")
        _check(1 <= self.max_objects <= 100, "search.max_objects", "must be in 1..100")
        _check(0 <= self.guided_neighbours <= 16, "search.guided_neighbours", "must be in 0..16")
        _check(0 <= self.guided_null_factor <= 100, "search.guided_null_factor", "must be in 0..100")
        _check(4 <= self.guided_min_inliers <= 1000, "search.guided_min_inliers", "must be in 4..1000")


@dataclass(frozen=True)
class CacheConfig:
    """Descriptor cache (kyb.cache): identifying the same photo again skips encoding."""

    #: ``""``/``"none"`` (off), ``memory://`` (in-process LRU) or ``redis://host:port/db`` (shared).
    url: str = "memory://"
    #: Seconds a Redis entry lives (URL ``?ttl=`` wins).
    ttl_s: int = 86400
    #: Bound of the in-process cache in MiB (URL ``?max_mb=`` wins).
    max_mb: float = 64.0

    def __post_init__(self) -> None:
        _check(self.ttl_s > 0, "cache.ttl_s", "must be > 0")
        _check(self.max_mb > 0, "cache.max_mb", "must be > 0")


@dataclass(frozen=True)
class DetectorConfig:
    """The detector: trained weights (docs/detector.md), thresholds, dynamic batching, and how many of
    its regions a photo's search takes. The detector service and the embedded engine both read it.

    With no ``weights`` there is no model: no boxes, and the whole photo is searched as one region
    (the documented fallback, not an error).
    """

    #: The detector service's port.
    port: int = 50054
    #: Trained detector weights (``detector.pt`` with its ``detector.json`` manifest); empty = no model.
    weights: Path | None = None
    #: Expected sha256 of ``weights`` (hex); empty = the manifest's own is checked.
    sha256: str = ""
    #: Boxes below this score are dropped (a request may ask for a higher one).
    min_score: float = 0.3
    #: Boxes returned per photo at most.
    max_boxes: int = 16
    #: Boxes overlapping a better one by more IoU than this are dropped (across classes).
    nms_iou: float = 0.5
    #: Dynamic batching: at most this many photos per forward pass...
    batch_size: int = 8
    #: ...and a photo waits at most this long for others to join its batch.
    batch_wait_ms: float = 5.0
    #: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
    device: str = "auto"
    #: torch CPU threads (0 = torch's default); 1 is fastest where other processes share the cores.
    threads: int = 0
    #: The network's input (shorter side, px) at inference; 0 = the size it was trained at. Training
    #: varies the scale by 0.8-1.2x, so up to 1.2x the trained size is within what it has seen.
    input_size: int = 0
    #: Detected regions searched per photo at most (the best-scoring ones), besides the whole photo.
    max_regions: int = 8

    def __post_init__(self) -> None:
        _check_port(self.port, "detector.port")
        _check(self.input_size == 0 or 64 <= self.input_size <= 2048, "detector.input_size", "must be 0 or 64..2048")
        _check(0 <= self.min_score <= 1, "detector.min_score", "must be in 0..1")
        _check(1 <= self.max_boxes <= 256, "detector.max_boxes", "must be in 1..256")
        _check(0 < self.nms_iou <= 1, "detector.nms_iou", "must be in (0, 1]")
        _check(1 <= self.batch_size <= 256, "detector.batch_size", "must be in 1..256")
        _check(0 <= self.batch_wait_ms <= 1000, "detector.batch_wait_ms", "must be in 0..1000")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "detector.device",
               "must be auto, cpu or cuda[:N]")  # fmt: skip
        _check(0 <= self.threads <= 256, "detector.threads", "must be in 0..256")
        _check(1 <= self.max_regions <= 64, "detector.max_regions", "must be in 1..64")
        _check(all(c in "0123456789abcdefABCDEF" for c in self.sha256) and len(self.sha256) in (0, 64),
               "detector.sha256", "must be 64 hex digits")  # fmt: skip


@dataclass(frozen=True)
class EngineConfig:
    """Everything the embedded engine needs; :class:`ServiceConfig` adds the services' sections."""

    #: Folder holding the index (codebook, segments, ANN graph).
    index_dir: Path = Path(".kyb/index")
    #: Catalog location: a SQLite path / ``sqlite:///path`` (default) or ``postgresql://...``.
    catalog_url: str = ".kyb/catalog.db"
    #: Folder of the band search index (kyb.bandsearch); None = ``bands`` beside ``index_dir``.
    band_index_dir: Path | None = None
    #: Worker threads for ingest/eval encoding (OpenCV releases the GIL while extracting).
    workers: int = 2
    #: Freed C-heap memory (MiB) a process keeps for the next photo instead of returning it to the
    #: kernel: a photo's SIFT frees ~150 MB, and taking it back page by page made SIFT 1.7-1.9x
    #: slower (kyb.heap; docs/engine.md "The heap kept between photos"). 0 = glibc's own policy.
    heap_retain_mb: int = 256
    limits: ImageLimits = field(default_factory=ImageLimits)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def __post_init__(self) -> None:
        _check(1 <= self.workers <= 64, "engine.workers", "must be in 1..64")
        _check(0 <= self.heap_retain_mb <= 2047, "engine.heap_retain_mb", "must be in 0..2047")

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with top-level fields changed (sections as whole dataclasses)."""
        return dataclasses.replace(self, **changes)


def parse_shard(text: str, *, name: str = "matcher.shard", hostname: str | None = None) -> tuple[int, int]:
    """Reads ``"K/N"`` (shard K of N, 0 <= K < N) into ``(K, N)``.

    ``"auto/N"`` takes K from the trailing ``-<ordinal>`` of the host name, which is how a
    Kubernetes StatefulSet names its pods (``matcher-2`` -> shard 2), so one manifest serves all.
    """
    match = re.fullmatch(r"\s*(\d+|auto)\s*/\s*(\d+)\s*", text or "")
    _check(match is not None, name, f"expected K/N such as 0/4 or auto/4, got {text!r}")
    assert match is not None
    count = int(match.group(2))
    if match.group(1) == "auto":
        host = hostname if hostname is not None else socket.gethostname()
        ordinal = re.search(r"-(\d+)$", host)
        _check(ordinal is not None, name, f"auto needs a host name ending in -<ordinal>, got {host!r}")
        assert ordinal is not None
        index = int(ordinal.group(1))
    else:
        index = int(match.group(1))
    _check(count >= 1, name, "N must be >= 1")
    _check(index < count, name, f"K must be in 0..{count - 1}, got {index}")
    return index, count


@dataclass(frozen=True)
class RpcConfig:
    """Server and client plumbing shared by every service."""

    #: Address servers bind to; ``[::]`` listens on every interface (IPv4 too).
    host: str = "[::]"
    #: Largest message in either direction. A photo may be 30 MiB (limits.max_bytes); decoded
    #: search-size pixels are at most 1024x1024x3 = 3 MiB; 64 MiB leaves room for both.
    max_message_bytes: int = 64 * _MIB
    #: Threads serving calls per server; calls beyond this queue in gRPC.
    workers: int = 16
    #: On SIGTERM, in-flight calls get this long to finish (Kubernetes waits 30 s by default).
    grace_s: float = 10.0
    #: HTTP/2 keepalive pings: find dead peers behind load balancers that drop idle connections.
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    #: Prometheus /metrics HTTP port; -1 = no metrics endpoint, 0 = any free port.
    metrics_port: int = -1
    #: Accepted bearer tokens (``authorization: Bearer <token>``); empty = open (logged loudly).
    tokens: tuple[str, ...] = ()
    #: Token the gateway sends to the services it calls; empty = the first of ``tokens``.
    client_token: str = ""
    #: Server certificate chain and key (PEM): both set = TLS, neither = plaintext.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA bundle (PEM) that clients use to verify servers; set it to call TLS servers.
    tls_ca: Path | None = None
    #: Servers close each client connection after this many seconds (0 = never), after letting its
    #: calls finish: clients then re-resolve the name and spread over replicas added since (an
    #: autoscaled encoder behind a headless Service), which one long-lived HTTP/2 connection never does.
    max_connection_age_s: float = 0.0
    #: Deadline applied to calls that arrive without one, in seconds.
    deadline_s: float = 30.0
    #: Extra attempts on UNAVAILABLE for idempotent downstream calls, with exponential backoff
    #: (base ``retry_backoff_s``, capped at ``retry_max_backoff_s``) and full jitter.
    retries: int = 2
    retry_backoff_s: float = 0.05
    retry_max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        _check(bool(self.host.strip()), "rpc.host", "must not be empty")
        _check(_MIB <= self.max_message_bytes <= 2047 * _MIB, "rpc.max_message_bytes", "must be 1..2047 MiB")
        _check(1 <= self.workers <= 1024, "rpc.workers", "must be in 1..1024")
        _check(0 <= self.grace_s <= 600, "rpc.grace_s", "must be in 0..600")
        _check(self.keepalive_time_s >= 1, "rpc.keepalive_time_s", "must be >= 1")
        _check(self.keepalive_timeout_s >= 1, "rpc.keepalive_timeout_s", "must be >= 1")
        _check(-1 <= self.metrics_port <= 65535, "rpc.metrics_port", "must be -1 (off) or a TCP port")
        _check(all(t.strip() == t and t for t in self.tokens), "rpc.tokens", "tokens must be non-empty")
        _check((self.tls_cert is None) == (self.tls_key is None), "rpc.tls_cert", "set tls_cert and tls_key")
        _check(0 <= self.max_connection_age_s <= 86400, "rpc.max_connection_age_s", "must be in 0..86400")
        _check(0 < self.deadline_s <= 3600, "rpc.deadline_s", "must be in (0, 3600]")
        _check(0 <= self.retries <= 10, "rpc.retries", "must be in 0..10")
        _check(0 < self.retry_backoff_s <= self.retry_max_backoff_s, "rpc.retry_backoff_s", "must be in (0, max]")

    @property
    def outgoing_token(self) -> str:
        """The bearer token sent downstream ("" = none)."""
        return self.client_token or (self.tokens[0] if self.tokens else "")


@dataclass(frozen=True)
class GatewayConfig:
    """The public API: where it listens and where its peers are."""

    port: int = 50051
    #: Detector address; empty = no detector, the whole photo is one region.
    detector_address: str = ""
    encoder_address: str = "localhost:50052"
    #: Matcher shards in shard order (position K = shard K/N). One entry holding ``{k}`` is a
    #: template expanded for k in 0..shards-1 (``matcher-{k}.matcher:50053`` for a StatefulSet).
    matcher_addresses: tuple[str, ...] = ("localhost:50053",)
    #: Number of shards when ``matcher_addresses`` is a template.
    shards: int = 1
    #: Downstream calls in flight at once (encode + search fan-out), shared by all requests.
    parallel: int = 16
    #: Photos of one IdentifyBatch stream identified at once.
    batch_parallel: int = 4
    #: Ingested references sent to a shard in one Add (each Add is one durable index save).
    ingest_batch: int = 32
    #: Seconds the gateway trusts a detector's "no model" answer and skips Detect (a model-less
    #: detector finds nothing); after that one call asks again, so a detector that gains a model is used.
    detector_recheck_s: float = 30.0

    def __post_init__(self) -> None:
        _check_port(self.port, "gateway.port")
        _check(bool(self.encoder_address.strip()), "gateway.encoder_address", "must not be empty")
        _check(len(self.matcher_addresses) >= 1, "gateway.matcher_addresses", "needs at least one address")
        templated = [a for a in self.matcher_addresses if "{k}" in a]
        _check(
            not templated or len(self.matcher_addresses) == 1,
            "gateway.matcher_addresses",
            "a {k} template must be the only entry",
        )
        _check(1 <= self.shards <= 4096, "gateway.shards", "must be in 1..4096")
        _check(1 <= self.parallel <= 1024, "gateway.parallel", "must be in 1..1024")
        _check(1 <= self.batch_parallel <= 64, "gateway.batch_parallel", "must be in 1..64")
        _check(1 <= self.ingest_batch <= 1024, "gateway.ingest_batch", "must be in 1..1024")
        _check(0 <= self.detector_recheck_s <= 3600, "gateway.detector_recheck_s", "must be in 0..3600")

    def shard_addresses(self) -> list[str]:
        """One address per shard, in shard order."""
        if len(self.matcher_addresses) == 1 and "{k}" in self.matcher_addresses[0]:
            return [self.matcher_addresses[0].replace("{k}", str(k)) for k in range(self.shards)]
        return list(self.matcher_addresses)


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder: where it listens and where its codebook comes from."""

    port: int = 50052
    #: Index folder whose current codebook the encoder uses; empty = the engine's ``index_dir``.
    index_dir: Path | None = None
    #: Seconds between attempts to load the codebook while there is none (health NOT_SERVING).
    reload_s: float = 2.0

    def __post_init__(self) -> None:
        _check_port(self.port, "encoder.port")
        _check(0.05 <= self.reload_s <= 600, "encoder.reload_s", "must be in 0.05..600")


@dataclass(frozen=True)
class MatcherConfig:
    """One matcher shard: which shard it is and which index folder holds it."""

    port: int = 50053
    #: ``K/N``: this process serves shard K of N (``auto/N`` = K from the pod ordinal).
    shard: str = "0/1"
    #: This shard's index folder; ``{k}`` and ``{n}`` are replaced. Empty = the engine's
    #: ``index_dir`` for a single shard, ``<index_dir>-shard-{k}-of-{n}`` beside it otherwise.
    index_dir: str = ""
    #: Seconds between attempts to load the index while there is none (health NOT_SERVING).
    reload_s: float = 2.0
    #: An index folder whose codebook seeds this shard when its own folder holds no index yet: the
    #: shard starts empty with that codebook (a new shard before ``kyb reshard`` fills it, or a fresh
    #: deployment before the first ingest). Empty = wait until an index appears. Point it at the same
    #: folder as ``encoder.index_dir`` so encoder and matchers agree on the codebook.
    codebook_dir: Path | None = None
    #: MiB of photo queries a shard keeps between the calls of one search across shards (the encoding
    #: crosses once per shard and search); the least recently used go first past it (~1 MiB a photo).
    query_cache_mb: float = 256.0
    #: Seconds a kept query lives after its last call; a later call sends the encoding again.
    query_keep_s: float = 10.0

    def __post_init__(self) -> None:
        _check_port(self.port, "matcher.port")
        parse_shard(self.shard, hostname="pod-0")  # syntax only: the real ordinal is read when serving
        _check(0.05 <= self.reload_s <= 600, "matcher.reload_s", "must be in 0.05..600")
        _check(0 <= self.query_cache_mb <= 65536, "matcher.query_cache_mb", "must be in 0..65536")
        _check(0.1 <= self.query_keep_s <= 3600, "matcher.query_keep_s", "must be in 0.1..3600")

    def shard_folder(self, engine_index_dir: Path, index: int, count: int) -> Path:
        """The index folder of shard ``index`` of ``count``."""
        if self.index_dir:
            return Path(self.index_dir.replace("{k}", str(index)).replace("{n}", str(count))).expanduser()
        if count == 1:
            return Path(engine_index_dir)
        base = Path(engine_index_dir)
        return base.parent / f"{base.name}-shard-{index}-of-{count}"


@dataclass(frozen=True)
class WebConfig:
    """The HTTP/JSON front and the page (``kyb serve web``): a thin client of one gateway.

    It accepts the same bearer tokens as the gRPC services (``rpc.tokens``), sends the gateway
    ``rpc.outgoing_token`` and refuses photos over ``limits.max_bytes`` before forwarding them.
    """

    port: int = 8080
    #: The gateway it forwards to (TLS when ``rpc.tls_ca`` is set).
    gateway_address: str = "localhost:50051"
    #: Deadline of each gateway call, in seconds; past it the request answers 504.
    deadline_s: float = 30.0

    def __post_init__(self) -> None:
        _check_port(self.port, "web.port")
        _check(bool(self.gateway_address.strip()), "web.gateway_address", "must not be empty")
        _check(0 < self.deadline_s <= 3600, "web.deadline_s", "must be in (0, 3600]")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything a service process needs; each service reads its own section plus ``rpc``."""

    rpc: RpcConfig = field(default_factory=RpcConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    web: WebConfig = field(default_factory=WebConfig)
    #: The engine's fields and sections, which sit at the top level of a file and of ``KYB_*``.
    engine: EngineConfig = field(default_factory=EngineConfig)

    @property
    def detector(self) -> DetectorConfig:
        return self.engine.detector

    def replace(self, **sections: Any) -> ServiceConfig:
        """A copy with whole sections replaced (``config.replace(gateway=...)``, ``detector=`` too)."""
        if "detector" in sections:
            engine = sections.pop("engine", self.engine)
            sections["engine"] = dataclasses.replace(engine, detector=sections.pop("detector"))
        return dataclasses.replace(self, **sections)

    def shard(self) -> tuple[int, int]:
        """This matcher's ``(K, N)``."""
        return parse_shard(self.matcher.shard)

    def matcher_index_dir(self) -> Path:
        """This matcher shard's index folder."""
        index, count = self.shard()
        return self.matcher.shard_folder(self.engine.index_dir, index, count)

    def encoder_index_dir(self) -> Path:
        """The index folder whose codebook the encoder loads."""
        return Path(self.encoder.index_dir) if self.encoder.index_dir else Path(self.engine.index_dir)


# ---------------------------------------------------------------------------- loading
#: Environment variables of the ``KYB_`` family that are not configuration fields.
_NOT_FIELDS = {"KYB_CONFIG", "KYB_LOG_LEVEL"}


def _sections(cls: type) -> dict[str, Any]:
    return {
        f.name: hint
        for f in dataclasses.fields(cls)
        if dataclasses.is_dataclass(hint := typing.get_type_hints(cls)[f.name])
    }


def _coerce(name: str, target: Any, value: Any) -> Any:
    """A TOML/env/flag value as the field's type, or ConfigError naming the field."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value  # an already built section
    if typing.get_origin(target) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        target = next(a for a in typing.get_args(target) if a is not type(None))
    try:
        if typing.get_origin(target) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
        if target is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(value)
                return lowered in {"1", "true", "yes", "on"}
            if not isinstance(value, bool | int):
                raise ValueError(value)
            return bool(value)
        if target is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if target is Path:
            return Path(value).expanduser()
        return str(value)
    except (TypeError, ValueError):
        kind = getattr(target, "__name__", str(target))
        raise ConfigError(f"config field {name}: cannot read {value!r} as {kind}") from None


def _build(cls: type, prefix: str, values: Mapping[str, Any]) -> Any:
    """``cls`` from ``values`` (field -> value; a section's value is a mapping of its own fields)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"config field {prefix}{key}: unknown field")
        target = hints[key]
        if dataclasses.is_dataclass(target) and isinstance(value, Mapping):
            kwargs[key] = _build(typing.cast(type, target), f"{prefix}{key}.", value)
        else:
            kwargs[key] = _coerce(prefix + key, target, value)
    return cls(**kwargs)


def _layers(
    path: str | Path | None, env: Mapping[str, str] | None, overrides: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The file, then the environment, then ``overrides``, as (engine values, service section values)."""
    engine_sections = _sections(EngineConfig)
    service_sections = {name for name in _sections(ServiceConfig) if name != "engine"}
    engine: dict[str, Any] = {}
    services: dict[str, dict[str, Any]] = {}

    def put(section: str, name: str, value: Any, origin: str) -> None:
        if section in service_sections:
            services.setdefault(section, {})[name] = value
        elif section in engine_sections:
            engine.setdefault(section, {})[name] = value
        elif section in ("", "engine"):
            engine[name] = value
        else:
            raise ConfigError(f"config {origin}: unknown section [{section}]")

    if path is not None:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, value in document.items():
            if isinstance(value, dict):
                for name, item in value.items():
                    put(key, name, item, f"file {path}")
            else:
                put("", key, value, f"file {path}")
    top_fields = {f.name for f in dataclasses.fields(EngineConfig)} - set(engine_sections)
    for key, value in (env or {}).items():
        if not key.startswith("KYB_") or key in _NOT_FIELDS:
            continue
        section, _, name = key[4:].lower().partition("__")
        if name and section in service_sections | set(engine_sections) | {"engine"}:
            put(section, name, value, "variable")
        elif not name and section in top_fields:
            put("", section, value, "variable")
        # Other KYB_* variables belong to tools (KYB_EVAL_CACHE, ...), not to the configuration.
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue  # a flag that was not given leaves the file's value alone
        section, _, name = dotted.rpartition(".")
        put(section, name, value, f"override {dotted!r}")
    return engine, services


def load_service_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServiceConfig:
    """Reads an optional TOML file, then ``KYB_<SECTION>__<FIELD>`` variables, then ``overrides``.

    ``overrides`` uses dotted names (``{"matcher.shard": "1/2", "index_dir": "x"}``); ``None`` values
    are skipped so flags that were not given leave the file's value alone.
    """
    engine, services = _layers(path, env, overrides)
    return _build(ServiceConfig, "", {**services, "engine": _build(EngineConfig, "", engine)})


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> EngineConfig:
    """The engine's part of :func:`load_service_config` (the services' sections are checked too)."""
    return load_service_config(path, env=env, overrides=overrides).engine


def environment(config: ServiceConfig) -> dict[str, str]:
    """The ``KYB_<SECTION>__<FIELD>`` variables that reproduce ``config``'s service and detector sections
    (plus ``KYB_INDEX_DIR`` and ``KYB_CATALOG_URL``).

    Used by ``kyb serve stack`` to start each process exactly as a manifest would configure it.
    """
    out: dict[str, str] = {}
    sections = {name: getattr(config, name) for name in _sections(ServiceConfig) if name != "engine"}
    sections["detector"] = config.detector
    for name, section in sections.items():
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            if value is None:
                continue
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            out[f"KYB_{name.upper()}__{item.name.upper()}"] = text
    out["KYB_INDEX_DIR"] = str(config.engine.index_dir)
    out["KYB_CATALOG_URL"] = str(config.engine.catalog_url)
    return out


def from_environ() -> ServiceConfig:
    """The configuration of a service process: ``KYB_CONFIG`` (a TOML file, optional) plus ``KYB_*``."""
    return load_service_config(os.environ.get("KYB_CONFIG") or None, env=os.environ)
