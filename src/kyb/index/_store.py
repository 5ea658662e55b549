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
from kyb.index._residuals import ResidualQuantizer

log = logging.getLogger(__name__)

FORMAT = 2
#: Formats this code reads: 1 kept every keypoint's int8 descriptor (converted on load when the
#: index stores residual codes, ``search.residual_bits`` >= 0).
READABLE_FORMATS = (1, 2)
#: Fixed-point factor for stored keypoint positions: 1/16 px steps, up to 4095 px.
XY_SCALE = 16.0
XY_MAX = 65535 / XY_SCALE
#: Postings scanned at a time when counting a segment's words (bounds the temporaries).
_DF_CHUNK = 1 << 24


@dataclass(frozen=True)
class ReferenceFeatures:
    """One reference as the verifier needs it: positions, descriptors and its region's size."""

    reference_id: str
    xy: np.ndarray  # (N, 2) float32, region frame
    descriptors: np.ndarray  # (N, pca_dims) int8
    words: np.ndarray  # (N,) visual words
    region_size: tuple[float, float]


def _ascii(values: np.ndarray | Sequence[str]) -> np.ndarray:
    """Hex digests as bytes (a quarter of numpy's 4-byte characters), as given when not ASCII."""
    array = np.asarray(values)
    if array.dtype.kind == "U":
        try:
            return array.astype("S") if array.size else array.astype("S1")
        except UnicodeEncodeError:
            return array
    return array


class _Segment:
    """An immutable batch of references; only its ``alive`` mask changes (deletions).

    Held in memory per keypoint: its position (4 bytes), its place in the inverted file (the posting:
    reference row 4 bytes, Hamming signature 8 bytes; 4 bytes back to it) and its descriptor, as
    residual codes (:class:`~kyb.index._residuals.ResidualQuantizer`, 8 bytes at 1 bit a dimension)
    or, in an index without a quantizer, as the int8 descriptor. A keypoint's word is the run of the
    inverted file its posting lies in, and a reference's global vector lives in the hnswlib graph:
    neither is held twice. ``global_vectors`` holds them only from a build or a load until the index
    has put them in its graph.
    """

    def __init__(
        self,
        name: str,
        ordinals: np.ndarray,
        ref_ids: np.ndarray,
        sha256: np.ndarray,
        offsets: np.ndarray,
        xy: np.ndarray,
        words: np.ndarray,
        signatures: np.ndarray,
        codes: np.ndarray,
        region: np.ndarray,
        codebook: Codebook,
        quantizer: ResidualQuantizer | None,
        global_vectors: np.ndarray | None = None,
    ) -> None:
        self.name = name
        self.ordinals = ordinals
        self.ref_ids = ref_ids
        self.sha256 = _ascii(sha256)
        self.offsets = offsets
        self.xy = xy
        self.codes = codes
        self.region = region
        self.codebook = codebook
        self.quantizer = quantizer
        self.global_vectors = global_vectors
        self.alive = np.ones(len(ordinals), dtype=bool)
        self.saved = False
        counts = np.diff(offsets)
        self.inv_sqrt_count = 1.0 / np.sqrt(np.maximum(counts, 1)).astype(np.float32)
        self.word_dtype = np.uint16 if codebook.n_words <= 65536 else np.uint32
        # Inverted file with one posting per feature, in word order: each word's postings are one
        # contiguous run (word_starts[w]:word_starts[w + 1]) of the feature's reference row and its
        # Hamming-embedding signature, which the vote (:func:`~kyb.index._vote._vote`) walks for the
        # photo's words only. ``feature_posting`` leads from a feature (reference order) to its posting.
        feature_row = np.repeat(np.arange(len(ordinals), dtype=np.int32), counts)
        order = np.argsort(words, kind="stable")
        self.word_starts = np.searchsorted(words[order], np.arange(codebook.n_words + 1)).astype(np.int64)
        self.posting_rows = feature_row[order]
        self.posting_signatures = np.ascontiguousarray(signatures[order], dtype=np.uint64)
        position_dtype = np.int32 if len(words) < 2**31 else np.int64
        self.feature_posting = np.empty(len(words), dtype=position_dtype)
        self.feature_posting[order] = np.arange(len(words), dtype=position_dtype)

    def __len__(self) -> int:
        return len(self.ordinals)

    @property
    def compressed(self) -> bool:
        return self.quantizer is not None

    @property
    def nbytes(self) -> int:
        return int(
            sum(
                a.nbytes
                for a in (
                    self.ordinals,
                    self.ref_ids,
                    self.sha256,
                    self.offsets,
                    self.xy,
                    self.codes,
                    self.region,
                    self.alive,
                    self.inv_sqrt_count,
                    self.word_starts,
                    self.posting_rows,
                    self.posting_signatures,
                    self.feature_posting,
                )
            )
        )

    def words_of(self, start: int, end: int) -> np.ndarray:
        """Visual words of features ``start:end``: the runs their postings lie in."""
        positions = self.feature_posting[start:end]
        return (np.searchsorted(self.word_starts, positions, side="right") - 1).astype(self.word_dtype)

    def signatures_of(self, start: int, end: int) -> np.ndarray:
        return self.posting_signatures[self.feature_posting[start:end]]

    def descriptors_of(self, start: int, end: int, words: np.ndarray | None = None) -> np.ndarray:
        """int8 descriptors of features ``start:end`` (decoded from their codes when compressed)."""
        if self.quantizer is None:
            return self.codes[start:end]
        words = self.words_of(start, end) if words is None else words
        return self.quantizer.decode(self.codebook, self.codes[start:end], words, self.signatures_of(start, end))

    def features(self, row: int) -> ReferenceFeatures:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        words = self.words_of(start, end)
        return ReferenceFeatures(
            reference_id=str(self.ref_ids[row]),
            xy=self.xy[start:end].astype(np.float32) / XY_SCALE,
            descriptors=self.descriptors_of(start, end, words),
            words=words,
            region_size=(float(self.region[row, 0]), float(self.region[row, 1])),
        )

    def sha256_at(self, row: int) -> str:
        value = self.sha256[row]
        return value.decode() if isinstance(value, bytes) else str(value)

    def word_counts(self) -> np.ndarray:
        """(n_words,) how many alive references hold each word (document frequency)."""
        rows, starts = self.posting_rows, self.word_starts
        counts = np.zeros(self.codebook.n_words, dtype=np.int64)
        for begin in range(0, len(rows), _DF_CHUNK):
            end = min(len(rows), begin + _DF_CHUNK)
            chunk = rows[begin:end]
            # A word's postings ascend by row: a row's first posting in a run counts it once.
            first = np.ones(end - begin, dtype=bool)
            first[1:] = chunk[1:] != chunk[:-1]
            if begin:
                first[0] = chunk[0] != rows[begin - 1]
            run_starts = starts[(starts >= begin) & (starts < end)] - begin
            first[run_starts] = True
            positions = np.flatnonzero(first & self.alive[chunk]) + begin
            counts += np.bincount(np.searchsorted(starts, positions, side="right") - 1, minlength=len(counts))
        return counts

    def part(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of ``rows`` in the stored (reference) order, as :meth:`join` takes them."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        counts = ends - starts
        before = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        features = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - before, counts)
        positions = self.feature_posting[features]
        return {
            "ordinals": self.ordinals[rows],
            "ref_ids": self.ref_ids[rows],
            "sha256": self.sha256[rows],
            "counts": counts,
            "xy": self.xy[features],
            "words": (np.searchsorted(self.word_starts, positions, side="right") - 1).astype(self.word_dtype),
            "signatures": self.posting_signatures[positions],
            "codes": self.codes[features],
            "region": self.region[rows],
        }

    @classmethod
    def join(
        cls, name: str, parts: Sequence[dict[str, np.ndarray]], codebook: Codebook, quantizer: ResidualQuantizer | None
    ) -> _Segment:
        """One segment of the ``parts`` (:meth:`part`) in order: the stored arrays copied, not re-encoded."""
        stack = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        counts = stack.pop("counts")
        return cls(
            name=name,
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            codebook=codebook,
            quantizer=quantizer,
            **stack,
        )

    def save(self, path: Path, global_vectors: np.ndarray) -> None:
        arrays: dict[str, Any] = {
            "ordinals": self.ordinals,
            "ref_ids": self.ref_ids,
            "sha256": self.sha256,
            "offsets": self.offsets,
            "xy": self.xy,
            "words": self.words_of(0, len(self.feature_posting)),
            "signatures": self.signatures_of(0, len(self.feature_posting)),
            "region": self.region,
            "global_vectors": global_vectors,
            ("residual_codes" if self.compressed else "descriptors"): self.codes,
        }
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())

    @classmethod
    def load(cls, path: Path, codebook: Codebook, quantizer: ResidualQuantizer | None) -> _Segment:
        """A saved segment; one saved with int8 descriptors is encoded with ``quantizer`` when given
        (and then written again by the next save)."""
        with np.load(path, allow_pickle=False) as data:
            arrays: dict[str, Any] = {key: data[key] for key in data.files}
        if "signatures" not in arrays:  # written before signatures were stored: derived once here
            arrays["signatures"] = codebook.signatures(arrays["descriptors"], arrays["words"])
        converted = False
        if "residual_codes" in arrays:
            if quantizer is None:
                raise IndexCorrupt(f"segment {path.name} holds residual codes but the index has no quantizer")
            codes = arrays.pop("residual_codes")
        else:
            codes = descriptors = arrays.pop("descriptors")
            if quantizer is not None:
                codes = quantizer.encode(codebook, descriptors, arrays["words"])
                converted = True
        segment = cls(name=path.name, codes=codes, codebook=codebook, quantizer=quantizer, **arrays)
        segment.saved = not converted
        return segment

    @classmethod
    def build(
        cls,
        name: str,
        ordinals: Sequence[int],
        items: Sequence[tuple[str, str, Encoding]],
        codebook: Codebook,
        quantizer: ResidualQuantizer | None,
    ) -> _Segment:
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
            words=words,
            signatures=codebook.signatures(descriptors, words),
            codes=descriptors if quantizer is None else quantizer.encode(codebook, descriptors, words),
            region=np.asarray([e.region_size for _, _, e in items], dtype=np.float32),
            codebook=codebook,
            quantizer=quantizer,
            global_vectors=np.stack([e.global_vector for _, _, e in items]).astype(np.float32),
        )


def write_generation(
    root: Path,
    codebook: Codebook,
    segments: Sequence[_Segment],
    graph: hnswlib.Index,
    quantizer: ResidualQuantizer | None,
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
    if quantizer is not None:
        quantizer.save(staging / "residuals.npz")
    segment_entries = []
    for segment in segments:
        target = staging / segment.name
        source = previous[1] / segment.name if previous else None
        if segment.saved and source is not None and source.exists():
            os.link(source, target)
        else:
            segment.save(target, alive_vectors(graph, segment))
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
        "residual_bits": None if quantizer is None else quantizer.bits,
    }
    publish_generation(root, staging, final, manifest, keep=previous[1] if previous else None)
    for segment in segments:
        segment.saved = True
    return generation, final


def alive_vectors(graph: hnswlib.Index, segment: _Segment) -> np.ndarray:
    """Global vectors of ``segment``'s rows from the graph (zeros for deleted rows, which it dropped)."""
    out = np.zeros((len(segment), graph.dim), dtype=np.float32)
    rows = np.flatnonzero(segment.alive)
    if rows.size:
        out[rows] = graph.get_items(segment.ordinals[rows], return_type="numpy")
    return out


def read_generation(
    root: Path, residual_bits: int = -1
) -> tuple[Path, dict[str, Any], Codebook, ResidualQuantizer | None, list[_Segment]]:
    """The current generation of the index folder ``root``: its folder, manifest, codebook, residual
    quantizer and segments, deleted rows marked (NotReady when there is none, IndexCorrupt when it
    is unreadable). An index without a quantizer (format 1, or saved with ``residual_bits`` -1) gets
    one trained on its first segment when ``residual_bits`` >= 0, and its segments are encoded with
    it as they load."""
    current = _current_generation(root)
    if current is None:
        raise NotReady(f"no index at {root}: ingest references first (`kyb ingest`)")
    folder = current[1]
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"index {folder}: manifest unreadable: {exc}") from None
    if manifest.get("format") not in READABLE_FORMATS:
        raise IndexCorrupt(f"index {folder}: format {manifest.get('format')}, this code reads {READABLE_FORMATS}")
    codebook = Codebook.load(folder / "codebook.npz")
    if codebook.version != manifest["codebook_version"]:
        raise IndexCorrupt(f"index {folder}: codebook version does not match the manifest")
    deleted = set(manifest["deleted"])
    segments = []
    try:
        quantizer = _quantizer_of(folder, manifest, codebook, residual_bits)
        for entry in manifest["segments"]:
            segment = _Segment.load(folder / entry["file"], codebook, quantizer)
            if len(segment) != entry["references"]:
                raise IndexCorrupt(f"index {folder}: segment {entry['file']} has the wrong size")
            if deleted:
                segment.alive &= ~np.isin(segment.ordinals, list(deleted))
            segments.append(segment)
    except (OSError, ValueError, KeyError) as exc:
        raise IndexCorrupt(f"index {folder}: segment unreadable: {exc}") from None
    return folder, manifest, codebook, quantizer, segments


def _quantizer_of(
    folder: Path, manifest: dict[str, Any], codebook: Codebook, residual_bits: int
) -> ResidualQuantizer | None:
    """The generation's quantizer; for one saved without (format 1, or ``residual_bits`` -1) and
    ``residual_bits`` >= 0, bins trained on its first segment (the same bins on every load)."""
    if manifest.get("residual_bits") is not None:
        return ResidualQuantizer.load(folder / "residuals.npz")
    if residual_bits >= 0 and manifest["segments"]:
        return _train_on(folder / manifest["segments"][0]["file"], codebook, residual_bits)
    return None


def _train_on(path: Path, codebook: Codebook, bits: int) -> ResidualQuantizer:
    with np.load(path, allow_pickle=False) as data:
        return ResidualQuantizer.train(codebook, data["descriptors"], data["words"], bits)


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


def load_quantizer(path: Path, residual_bits: int = -1) -> ResidualQuantizer | None:
    """The residual quantizer a load of the index folder ``path`` with ``search.residual_bits``
    ``residual_bits`` gives (:func:`read_generation`), without reading every segment; None when it
    keeps int8 descriptors (NotReady when there is no index)."""
    current = _current_generation(Path(path))
    if current is None:
        raise NotReady(f"no index at {path}: ingest references first (`kyb ingest`)")
    try:
        manifest = json.loads((current[1] / "manifest.json").read_text())
        return _quantizer_of(current[1], manifest, load_codebook(path), residual_bits)
    except (OSError, ValueError, KeyError) as exc:
        raise IndexCorrupt(f"index {current[1]}: residual bins unreadable: {exc}") from None


def current_generation(path: Path) -> int | None:
    """Number of the generation ``CURRENT`` names in the index folder ``path`` (None: no index)."""
    found = _current_generation(Path(path))
    return None if found is None else found[0]
