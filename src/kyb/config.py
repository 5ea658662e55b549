"""Typed configuration: one frozen dataclass per concern, loaded once and passed down.

Every field can be set in a TOML file (``[section] field = value``) or an environment variable
``KYB_<SECTION>__<FIELD>`` (e.g. ``KYB_SEARCH__MIN_INLIERS=15``); the environment wins. A bad value
raises :class:`~kyb.errors.ConfigError` naming the field. Nothing here reads the environment at import.
"""

from __future__ import annotations

import dataclasses
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
    "EngineConfig",
    "FeatureConfig",
    "ImageLimits",
    "SearchConfig",
    "load_config",
]


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field {name}: {message}")


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

    def __post_init__(self) -> None:
        _check(50 <= self.query_features <= 20000, "features.query_features", "must be in 50..20000")
        _check(20 <= self.reference_features <= 5000, "features.reference_features", "must be in 20..5000")
        _check(0 <= self.reference_scale_weight <= 4, "features.reference_scale_weight", "must be in 0..4")
        _check(0 < self.contrast_threshold < 0.5, "features.contrast_threshold", "must be in (0, 0.5)")
        _check(32 <= self.min_region_side <= 2048, "features.min_region_side", "must be in 32..2048")
        _check(64 <= self.query_min_side <= 4096, "features.query_min_side", "must be in 64..4096")
        _check(8 <= self.pca_dims <= 128, "features.pca_dims", "must be in 8..128")
        _check(1 <= self.query_near_words <= 8, "features.query_near_words", "must be in 1..8")
        _check(self.query_near_ratio >= 1.0, "features.query_near_ratio", "must be >= 1")
        _check(4 <= self.query_assign_ef <= 512, "features.query_assign_ef", "must be in 4..512")
        _check(1 <= self.query_assign_threads <= 256, "features.query_assign_threads", "must be in 1..256")
        _check(0 <= self.query_inverted_features <= 20000, "features.query_inverted_features", "must be in 0..20000")


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
    #: Threads that verify ahead of the caller once a walk down a shortlist is past its first
    #: kyb.search.SERIAL_LOOKS candidates (a photo where nothing verifies looks at up to verify_max):
    #: the same pool as the vote, a few candidates a task. The answers do not change, only when they
    #: are ready; 1 verifies in the caller's thread (a server whose cores are all busy loses nothing).
    verify_threads: int = 2
    #: Objects returned per photo at most.
    max_objects: int = 12
    #: Also-matched references kept per object (other references of the same object, for explanation).
    alternatives: int = 4

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
        _check(1 <= self.verify_threads <= 64, "search.verify_threads", "must be in 1..64")
        _check(1 <= self.max_objects <= 100, "search.max_objects", "must be in 1..100")


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
class EngineConfig:
    """Everything the embedded engine needs; services add their own sections (issue 4)."""

    #: Folder holding the index (codebook, segments, ANN graph).
    index_dir: Path = Path(".kyb/index")
    #: Catalog location: a SQLite path / ``sqlite:///path`` (default) or ``postgresql://...``.
    catalog_url: str = ".kyb/catalog.db"
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

    def __post_init__(self) -> None:
        _check(1 <= self.workers <= 64, "engine.workers", "must be in 1..64")
        _check(0 <= self.heap_retain_mb <= 2047, "engine.heap_retain_mb", "must be in 0..2047")

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with top-level fields changed (sections as whole dataclasses)."""
        return dataclasses.replace(self, **changes)


_SECTIONS = {"limits", "features", "codebook", "search", "cache"}


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Converts a TOML/env value to the annotated field type, or raises ConfigError naming the field."""
    if dataclasses.is_dataclass(value):
        return value  # an already built section
    target = annotation
    if isinstance(annotation, str):
        target = {"int": int, "float": float, "str": str, "bool": bool, "Path": Path}.get(annotation, str)
    origin = typing.get_origin(target)
    if origin in (typing.Union, types.UnionType):
        target = next(a for a in typing.get_args(target) if a is not type(None))
    try:
        if target is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(value)
                return lowered in {"1", "true", "yes", "on"}
            return bool(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if target is float:
            return float(value)
        if target is Path:
            return Path(value).expanduser()
        return str(value)
    except (TypeError, ValueError):
        kind = getattr(target, "__name__", target)
        raise ConfigError(f"config field {name}: cannot read {value!r} as {kind}") from None


def _build(cls: type, prefix: str, values: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"config field {prefix}{key}: unknown field")
        kwargs[key] = _coerce(prefix + key, fields[key].type, value)
    return cls(**kwargs)


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> EngineConfig:
    """Reads an optional TOML file, then ``KYB_*`` variables from ``env``, then ``overrides``.

    ``overrides`` uses dotted names (``{"search.min_inliers": 15, "index_dir": "x"}``); ``None`` values
    are skipped so CLI flags that were not given leave the file's value alone.
    """
    raw: dict[str, dict[str, Any]] = {"": {}}
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
                raw.setdefault(key, {}).update(value)
            else:
                raw[""][key] = value
    for key, value in (env or {}).items():
        if not key.startswith("KYB_") or key in {"KYB_CONFIG", "KYB_LOG_LEVEL"}:
            continue
        name = key[4:].lower()
        section, _, fieldname = name.partition("__")
        if fieldname:
            raw.setdefault(section, {})[fieldname] = value
        elif name in {f.name for f in dataclasses.fields(EngineConfig)}:
            raw[""][name] = value
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, fieldname = dotted.rpartition(".")
        raw.setdefault(section, {})[fieldname] = value
    top: dict[str, Any] = {}
    for section, values in raw.items():
        if section == "":
            top.update(values)
        elif section in _SECTIONS:
            section_cls = {f.name: f.default_factory for f in dataclasses.fields(EngineConfig)}[section]
            top[section] = _build(section_cls, section + ".", values)  # type: ignore[arg-type]
        elif section in {"engine"}:
            top.update(values)
        # Other sections belong to the services (gateway, matcher, ...) and are read there.
    return _build(EngineConfig, "", top)
