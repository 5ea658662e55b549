"""On-disk storage of the reference index (the folder layout is in :mod:`kyb.index`): immutable
segments, generations written beside each other and switched by ``CURRENT``, the writer lock.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from kyb.codebook import Codebook
from kyb.encoder import Encoding
from kyb.errors import IndexCorrupt, NotReady
from kyb.generations import publish_generation, stage_generation

log = logging.getLogger(__name__)

FORMAT = 1
#: Fixed-point factor for stored keypoint positions: 1/16 px steps, up to 4095 px.
XY_SCALE = 16.0
XY_MAX = 65535 / XY_SCALE


@dataclass(frozen=True)
class ReferenceFeatures:
    """One reference as the verifier needs it: positions, descriptors and its region's size."""

    reference_id: str
    xy: np.ndarray  # (N, 2) float32, region frame
    descriptors: np.ndarray  # (N, pca_dims) int8
    words: np.ndarray  # (N,) visual words
    region_size: tuple[float, float]


class _Segment:
    """An immutable batch of references; only its ``alive`` mask changes (deletions)."""

    def __init__(
        self,
        name: str,
        ordinals: np.ndarray,
        ref_ids: np.ndarray,
        sha256: np.ndarray,
        offsets: np.ndarray,
        xy: np.ndarray,
        descriptors: np.ndarray,
        words: np.ndarray,
        region: np.ndarray,
        global_vectors: np.ndarray,
        signatures: np.ndarray,
        n_words: int,
    ) -> None:
        self.name = name
        self.ordinals = ordinals
        self.ref_ids = ref_ids
        self.sha256 = sha256
        self.offsets = offsets
        self.xy = xy
        self.descriptors = descriptors
        self.words = words
        self.region = region
        self.global_vectors = global_vectors
        self.alive = np.ones(len(ordinals), dtype=bool)
        self.saved = False
        counts = np.diff(offsets)
        self.inv_sqrt_count = 1.0 / np.sqrt(np.maximum(counts, 1)).astype(np.float32)
        # Inverted file with one posting per feature, in word order: each word's postings are one
        # contiguous run (word_starts[w]:word_starts[w + 1]) of the feature's reference row and its
        # Hamming-embedding signature, which the vote (:func:`~kyb.index._vote._vote`) walks for the
        # photo's words only. Held in word order only; save() puts the signatures back in feature order.
        feature_row = np.repeat(np.arange(len(ordinals), dtype=np.int32), counts)
        order = np.argsort(words, kind="stable")
        self.word_starts = np.searchsorted(words[order], np.arange(n_words + 1)).astype(np.int64)
        self.posting_rows = feature_row[order]
        self.posting_signatures = np.ascontiguousarray(signatures[order], dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.ordinals)

    @property
    def nbytes(self) -> int:
        return int(
            self.xy.nbytes
            + self.descriptors.nbytes
            + self.words.nbytes
            + self.offsets.nbytes
            + self.region.nbytes
            + self.global_vectors.nbytes
            + self.ordinals.nbytes
            + self.posting_signatures.nbytes
        )

    def features(self, row: int) -> ReferenceFeatures:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return ReferenceFeatures(
            reference_id=str(self.ref_ids[row]),
            xy=self.xy[start:end].astype(np.float32) / XY_SCALE,
            descriptors=self.descriptors[start:end],
            words=self.words[start:end],
            region_size=(float(self.region[row, 0]), float(self.region[row, 1])),
        )

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(
                handle,
                ordinals=self.ordinals,
                ref_ids=self.ref_ids,
                sha256=self.sha256,
                offsets=self.offsets,
                xy=self.xy,
                descriptors=self.descriptors,
                words=self.words,
                region=self.region,
                global_vectors=self.global_vectors,
                signatures=self.signatures(),
            )
            handle.flush()
            os.fsync(handle.fileno())

    def signatures(self) -> np.ndarray:
        """The features' signatures in feature order (as stored)."""
        signatures = np.empty_like(self.posting_signatures)
        # The order __init__ sorted them in (a stable sort of the same words), not kept in memory.
        signatures[np.argsort(self.words, kind="stable")] = self.posting_signatures
        return signatures

    @classmethod
    def load(cls, path: Path, codebook: Codebook) -> _Segment:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        if "signatures" not in arrays:  # written before signatures were stored: derived once here
            arrays["signatures"] = codebook.signatures(arrays["descriptors"], arrays["words"])
        segment = cls(name=path.name, n_words=codebook.n_words, **arrays)
        segment.saved = True
        return segment

    @classmethod
    def build(cls, name: str, ordinals: Sequence[int], items: Sequence[tuple[str, str, Encoding]], codebook: Codebook):
        counts = [len(e) for _, _, e in items]
        word_dtype = np.uint16 if codebook.n_words <= 65536 else np.uint32
        descriptors = np.concatenate([e.descriptors for _, _, e in items]).astype(np.int8)
        words = np.concatenate([e.words for _, _, e in items]).astype(word_dtype)
        return cls(
            name=name,
            ordinals=np.asarray(ordinals, dtype=np.int64),
            ref_ids=np.asarray([r for r, _, _ in items], dtype=str),
            sha256=np.asarray([s for _, s, _ in items], dtype=str),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            xy=np.concatenate([np.rint(np.clip(e.xy, 0, XY_MAX) * XY_SCALE) for _, _, e in items]).astype(np.uint16),
            descriptors=descriptors,
            words=words,
            region=np.asarray([e.region_size for _, _, e in items], dtype=np.float32),
            global_vectors=np.stack([e.global_vector for _, _, e in items]).astype(np.float32),
            signatures=codebook.signatures(descriptors, words),
            n_words=codebook.n_words,
        )


def write_generation(
    root: Path,
    codebook: Codebook,
    segments: Sequence[_Segment],
    graph: hnswlib.Index,
    *,
    after: int,
    next_ordinal: int,
    references: int,
) -> tuple[int, Path]:
    """Writes ``segments``, ``graph`` and ``codebook`` as a new generation of the index folder ``root``,
    numbered past ``after`` and every generation there, and makes it current; returns its number and
    folder."""
    previous = _current_generation(root)
    generation, staging, final = stage_generation(root, after, previous[0] if previous else 0)
    codebook.save(staging / "codebook.npz")
    segment_entries = []
    for segment in segments:
        target = staging / segment.name
        source = previous[1] / segment.name if previous else None
        if segment.saved and source is not None and source.exists():
            os.link(source, target)
        else:
            segment.save(target)
        segment_entries.append({"file": segment.name, "references": len(segment)})
    graph.save_index(str(staging / "ann.hnsw"))
    with open(staging / "ann.hnsw", "rb+") as handle:
        os.fsync(handle.fileno())
    deleted = [int(s.ordinals[i]) for s in segments for i in np.flatnonzero(~s.alive)]
    manifest = {
        "format": FORMAT,
        "generation": generation,
        "created": time.time(),
        "codebook_version": codebook.version,
        "global_dims": codebook.global_dims,
        "n_words": codebook.n_words,
        "next_ordinal": next_ordinal,
        "references": references,
        "segments": segment_entries,
        "deleted": deleted,
        "graph_capacity": graph.get_max_elements(),
    }
    publish_generation(root, staging, final, manifest, keep=previous[1] if previous else None)
    for segment in segments:
        segment.saved = True
    return generation, final


def read_generation(root: Path) -> tuple[Path, dict[str, Any], Codebook, list[_Segment]]:
    """The current generation of the index folder ``root``: its folder, manifest, codebook and
    segments, deleted rows marked (NotReady when there is none, IndexCorrupt when it is unreadable)."""
    current = _current_generation(root)
    if current is None:
        raise NotReady(f"no index at {root}: ingest references first (`kyb ingest`)")
    folder = current[1]
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"index {folder}: manifest unreadable: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise IndexCorrupt(f"index {folder}: format {manifest.get('format')}, expected {FORMAT}")
    codebook = Codebook.load(folder / "codebook.npz")
    if codebook.version != manifest["codebook_version"]:
        raise IndexCorrupt(f"index {folder}: codebook version does not match the manifest")
    deleted = set(manifest["deleted"])
    segments = []
    try:
        for entry in manifest["segments"]:
            segment = _Segment.load(folder / entry["file"], codebook)
            if len(segment) != entry["references"]:
                raise IndexCorrupt(f"index {folder}: segment {entry['file']} has the wrong size")
            if deleted:
                segment.alive &= ~np.isin(segment.ordinals, list(deleted))
            segments.append(segment)
    except (OSError, ValueError, KeyError) as exc:
        raise IndexCorrupt(f"index {folder}: segment unreadable: {exc}") from None
    return folder, manifest, codebook, segments


def _current_generation(root: Path) -> tuple[int, Path] | None:
    pointer = root / "CURRENT"
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    folder = root / name
    if not name.startswith("gen-") or not folder.is_dir():
        raise IndexCorrupt(f"index {root}: CURRENT names {name!r}, which is not a generation folder")
    return int(name[4:]), folder


def has_index(path: Path) -> bool:
    """True when ``path`` holds a saved index."""
    return (Path(path) / "CURRENT").exists()


def load_codebook(path: Path) -> Codebook:
    """The codebook of the current generation of the index folder ``path`` (NotReady when none)."""
    current = _current_generation(Path(path))
    if current is None:
        raise NotReady(f"no index at {path}: ingest references first (`kyb ingest`)")
    return Codebook.load(current[1] / "codebook.npz")


def current_generation(path: Path) -> int | None:
    """Number of the generation ``CURRENT`` names in the index folder ``path`` (None: no index)."""
    found = _current_generation(Path(path))
    return None if found is None else found[0]
