"""The trained visual codebook: descriptor PCA, a fine vocabulary, a VLAD vocabulary and whitening.

One :class:`Codebook` turns RootSIFT descriptors into everything the index stores and searches:

* ``project``: RootSIFT (128-d) -> PCA (``pca_dims``) -> int8; halves storage and matching cost while
  keeping nearest-neighbour order (PCA-SIFT keeps most of the distinctiveness in 64 dimensions).
* ``assign``: each projected descriptor -> its nearest fine word (an hnswlib graph over the
  centroids, so 2,500 descriptors against 16k words take a few ms); the words feed the inverted file.
* ``signatures``: each feature's 64-bit Hamming embedding, the signs of its residual from its word's
  centroid, so the inverted file can tell a descriptor that really resembles a reference's from one
  that only fell in the same cell (:mod:`kyb.index`).
* ``global_vector``: VLAD over the coarse words with intra-normalisation and power-law
  normalisation, then PCA-whitening learned from reference images (Jégou & Chum 2012), L2-normalised.

A codebook is data: it is saved as one ``.npz`` with its training parameters, and its ``version`` (a
hash of the arrays) is stored in every index and cache key built with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from kyb.config import CodebookConfig
from kyb.errors import IndexCorrupt, NotReady

__all__ = ["Codebook", "kmeans", "train_codebook"]

log = logging.getLogger(__name__)

FORMAT = 1
#: Bits of a feature's Hamming-embedding signature (one uint64): the first 64 PCA dimensions.
SIGNATURE_BITS = 64
#: Rows converted per step by Codebook.signatures (bounds its float32 scratch at ~64 MB).
_SIGNATURE_CHUNK = 131_072
#: hnswlib search depth for assigning a reference's features their words (photos: a setting).
REFERENCE_ASSIGN_EF = 32


def _nearest(
    centroids: np.ndarray, data: np.ndarray, *, exact_below: int = 512, exact_pairs: int = 64_000_000
) -> np.ndarray:
    """Index of the nearest centroid for each row of ``data``: exact for few centroids (``exact_below``)
    or few rows x centroids (``exact_pairs``: a small collection's k-means, where building a graph
    over the centroids every iteration cost more than the products), hnswlib otherwise."""
    k = centroids.shape[0]
    if k <= exact_below or k * data.shape[0] <= exact_pairs:
        out = np.empty(data.shape[0], dtype=np.int64)
        c_sq = (centroids * centroids).sum(1)
        rows = max(256, (1 << 22) // k)  # a block's distances stay at ~16 MB
        for start in range(0, data.shape[0], rows):
            block = data[start : start + rows]
            out[start : start + rows] = np.argmin(c_sq[None, :] - 2.0 * block @ centroids.T, axis=1)
        return out
    graph = _graph(centroids, ef=64)  # training: a more exact assignment than search needs
    labels, _ = graph.knn_query(data, k=1)
    return labels[:, 0].astype(np.int64)


def _graph(centroids: np.ndarray, ef: int = REFERENCE_ASSIGN_EF) -> hnswlib.Index:
    """An hnswlib graph over the centroids for nearest-word assignment.

    ef=32 suffices for k=1 (a near-tie between two words makes either a fine assignment); one
    query thread unless a call asks for more (a photo's words: ``features.query_assign_threads``),
    because references are encoded side by side and spare threads would only contend.
    Built on one thread too: hnswlib's parallel insertion links the graph in whatever order the
    threads run, so each process got a slightly different graph and a few features another near
    word (one logos photo named another reference of its brand from run to run). One thread makes
    the graph a function of the centroids (0.65 s instead of 0.33 s for 16,384 words, once a process).
    """
    graph = hnswlib.Index(space="l2", dim=centroids.shape[1])
    graph.init_index(max_elements=centroids.shape[0], ef_construction=100, M=16, random_seed=1)
    graph.add_items(centroids, np.arange(centroids.shape[0]), num_threads=1)
    graph.set_ef(ef)
    graph.set_num_threads(1)
    return graph


def kmeans(
    data: np.ndarray,
    k: int,
    *,
    iterations: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Lloyd's k-means on float32 rows; returns (k, d) centroids.

    Initialised from distinct random rows (k-means++ is too slow for 16k words on 2 cores and gives
    no measurable retrieval gain at this size); empty clusters are re-seeded from random rows.
    """
    rng = np.random.default_rng(seed)
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} rows, got {data.shape[0]}")
    centroids = data[rng.choice(data.shape[0], size=k, replace=False)].copy()
    for iteration in range(iterations):
        labels = _nearest(centroids, data)
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        sums = np.zeros((k, data.shape[1]), dtype=np.float64)
        _sum_rows(sums, labels, data)
        empty = counts == 0
        centroids = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        if empty.any():
            centroids[empty] = data[rng.choice(data.shape[0], size=int(empty.sum()), replace=False)]
        if progress is not None:
            progress(iteration + 1)
    return centroids


def _sum_rows(sums: np.ndarray, labels: np.ndarray, data: np.ndarray) -> None:
    # Sorting once and reducing contiguous runs is much faster than np.add.at for many clusters.
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sums[sorted_labels[starts]] = np.add.reduceat(data[order].astype(np.float64), starts, axis=0)


@dataclass
class Codebook:
    """Trained arrays; see the module docstring. All arrays are float32 unless noted."""

    pca_mean: np.ndarray  # (128,)
    pca_components: np.ndarray  # (pca_dims, 128)
    int8_scale: float  # projected value * int8_scale -> int8 (clipped)
    words: np.ndarray  # (n_words, pca_dims), in projected (float) space
    vlad_words: np.ndarray  # (n_vlad, pca_dims)
    whiten_mean: np.ndarray  # (n_vlad * pca_dims,)
    whiten: np.ndarray  # (global_dims, n_vlad * pca_dims)
    params: dict

    def __post_init__(self) -> None:
        self._graphs: dict[int, hnswlib.Index] = {}  # assignment graphs by search depth (ef)
        self._version: str | None = None

    # ----------------------------------------------------------------- properties
    @property
    def pca_dims(self) -> int:
        return int(self.pca_components.shape[0])

    @property
    def n_words(self) -> int:
        return int(self.words.shape[0])

    @property
    def global_dims(self) -> int:
        return int(self.whiten.shape[0])

    @property
    def version(self) -> str:
        """Content hash (16 hex chars) of the arrays: changes whenever the codebook changes."""
        if self._version is None:
            digest = hashlib.sha256()
            for array in (self.pca_mean, self.pca_components, self.words, self.vlad_words, self.whiten):
                digest.update(np.ascontiguousarray(array).tobytes())
            digest.update(repr(self.int8_scale).encode())
            self._version = digest.hexdigest()[:16]
        return self._version

    # ----------------------------------------------------------------- encoding
    def project(self, descriptors: np.ndarray) -> np.ndarray:
        """RootSIFT (N, 128) -> PCA (N, pca_dims) float32."""
        return ((descriptors - self.pca_mean) @ self.pca_components.T).astype(np.float32)

    def quantize(self, projected: np.ndarray) -> np.ndarray:
        """Projected float descriptors -> int8 for storage."""
        return np.clip(np.rint(projected * self.int8_scale), -127, 127).astype(np.int8)

    def dequantize(self, stored: np.ndarray) -> np.ndarray:
        return stored.astype(np.float32) * np.float32(1.0 / self.int8_scale)

    def assign(
        self,
        projected: np.ndarray,
        k: int = 1,
        within: float = np.inf,
        ef: int = REFERENCE_ASSIGN_EF,
        threads: int = 1,
    ) -> np.ndarray:
        """Nearest fine word of each projected descriptor, (N,) int32.

        With ``k`` > 1, (N, k): the k nearest words, nearest first, keeping a further word only when
        its distance is within ``within`` times the nearest's (else the nearest word is repeated):
        only descriptors near a word boundary get a second chance. ``ef`` is hnswlib's search depth:
        a photo's features may be assigned less exactly than a reference's (``features.query_assign_ef``).
        ``threads`` split the rows between hnswlib threads; each row's search is the same on any of them.
        """
        k = max(1, min(k, self.n_words))
        if projected.shape[0] == 0:
            return np.zeros((0,) if k == 1 else (0, k), np.int32)
        ef = max(ef, k)
        graph = self._graphs.get(ef)
        if graph is None:
            if self._graphs:
                # hnswlib's ef belongs to the index, and setting it per call would race between
                # threads encoding photos and references: a copy (~10 ms, ~6 MB at 16k words) of the
                # graph already built, not a rebuild (seconds).
                graph = pickle.loads(pickle.dumps(next(iter(self._graphs.values()))))
                graph.set_ef(ef)
                graph.set_num_threads(1)
            else:
                graph = _graph(self.words, ef=ef)
            self._graphs[ef] = graph
        labels, sq_dist = graph.knn_query(np.ascontiguousarray(projected, dtype=np.float32), k=k, num_threads=threads)
        labels = labels.astype(np.int32)
        if k == 1:
            return labels[:, 0]
        far = sq_dist[:, 1:] > (within * within) * sq_dist[:, :1]
        labels[:, 1:][far] = np.broadcast_to(labels[:, :1], far.shape)[far]
        return labels

    def signatures(self, stored: np.ndarray, words: np.ndarray) -> np.ndarray:
        """Hamming-embedding signatures of int8 ``stored`` descriptors with fine ``words``: (N,) uint64.

        Bit j is set when the (dequantised) descriptor lies above its word's centroid in PCA
        dimension j, for the first 64 dimensions: the binarised residual of Tolias et al.'s ASMK*, a
        parameter-free variant of Jégou et al.'s Hamming embedding (PCA dimensions are already
        decorrelated, so no random rotation or per-word medians are needed). Two features that
        share a word and resemble each other differ in few bits; two that merely fell in the same
        cell differ in about half of them. Photo and reference are computed from the same int8
        descriptors, so both sides binarise the same numbers.
        """
        bits = min(self.pca_dims, SIGNATURE_BITS)
        out = np.zeros(len(words), dtype=np.uint64)
        for start in range(0, len(words), _SIGNATURE_CHUNK):
            rows = slice(start, start + _SIGNATURE_CHUNK)
            residual = self.dequantize(stored[rows, :bits]) > self.words[np.asarray(words[rows], np.int64), :bits]
            packed = np.zeros((residual.shape[0], SIGNATURE_BITS // 8), dtype=np.uint8)
            packed[:, : (bits + 7) // 8] = np.packbits(residual, axis=1, bitorder="little")
            out[rows] = packed.view("<u8")[:, 0]
        return out

    def raw_vlad(self, projected: np.ndarray) -> np.ndarray:
        """Intra- and power-normalised, L2-normalised VLAD of (N, pca_dims) descriptors."""
        k, d = self.vlad_words.shape
        vlad = np.zeros((k, d), dtype=np.float32)
        if projected.shape[0]:
            labels = _nearest(self.vlad_words, projected)
            np.add.at(vlad, labels, projected - self.vlad_words[labels])
        norms = np.linalg.norm(vlad, axis=1, keepdims=True)
        vlad = vlad / np.maximum(norms, 1e-12)  # intra-normalisation: bursty words count once
        flat = vlad.reshape(-1)
        flat = np.sign(flat) * np.sqrt(np.abs(flat))
        return (flat / max(float(np.linalg.norm(flat)), 1e-12)).astype(np.float32)

    def global_vector(self, projected: np.ndarray) -> np.ndarray:
        """The whitened global vector (global_dims,) float32 of unit norm (zeros for no features)."""
        if projected.shape[0] == 0:
            return np.zeros((self.global_dims,), np.float32)
        vector = self.whiten @ (self.raw_vlad(projected) - self.whiten_mean)
        return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)

    # ----------------------------------------------------------------- storage
    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            pca_mean=self.pca_mean,
            pca_components=self.pca_components,
            int8_scale=np.float64(self.int8_scale),
            words=self.words,
            vlad_words=self.vlad_words,
            whiten_mean=self.whiten_mean,
            whiten=self.whiten,
            params=np.frombuffer(json.dumps({**self.params, "format": FORMAT}).encode(), dtype=np.uint8),
        )
        return buffer.getvalue()

    def save(self, path: Path) -> None:
        """Writes atomically (temp file, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".codebook-", delete=False) as handle:
            handle.write(self.to_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)

    @classmethod
    def load(cls, path: Path) -> Codebook:
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                params = json.loads(bytes(data["params"]).decode())
                codebook = cls(
                    pca_mean=data["pca_mean"],
                    pca_components=data["pca_components"],
                    int8_scale=float(data["int8_scale"]),
                    words=data["words"],
                    vlad_words=data["vlad_words"],
                    whiten_mean=data["whiten_mean"],
                    whiten=data["whiten"],
                    params=params,
                )
        except FileNotFoundError:
            raise NotReady(f"no codebook at {path}: run `kyb codebook train` or `kyb ingest` first") from None
        except (OSError, KeyError, ValueError) as exc:
            raise IndexCorrupt(f"codebook {path} is unreadable: {exc}") from None
        if params.get("format") != FORMAT:
            raise IndexCorrupt(f"codebook {path} has format {params.get('format')}, expected {FORMAT}")
        return codebook


def train_codebook(
    per_image: Sequence[np.ndarray],
    config: CodebookConfig,
    *,
    pca_dims: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> Codebook:
    """Trains a codebook from the RootSIFT descriptors of reference images (one (n_i, 128) array each).

    Sizes adapt to small collections so a demo of 20 images still gets a sound codebook: the fine
    vocabulary is capped at sample/descriptors_per_word words, the VLAD vocabulary at sample/100,
    and the whitened dimensionality at the number of images minus one.
    """
    rng = np.random.default_rng(config.seed)
    images = [d for d in per_image if d.shape[0] > 0]
    if len(images) < 2:
        raise NotReady("training a codebook needs at least 2 reference images with features")
    total = sum(d.shape[0] for d in images)
    take = min(config.sample_size, total)
    # Sample evenly across images so large images don't dominate the vocabulary.
    share = max(1, take // len(images))
    sample = np.concatenate(
        [d[rng.choice(d.shape[0], size=min(share, d.shape[0]), replace=False)] for d in images]
    ).astype(np.float32)
    if sample.shape[0] < 200:
        raise NotReady(f"training a codebook needs at least 200 descriptors, got {sample.shape[0]}")
    mean = sample.mean(axis=0)
    centred = sample - mean
    # PCA through the 128x128 covariance: exact and cheap.
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / centred.shape[0])
    components = eigvecs[:, ::-1][:, :pca_dims].T.astype(np.float32)
    projected = (centred @ components.T).astype(np.float32)
    scale = 127.0 / max(float(np.quantile(np.abs(projected), 0.9995)), 1e-6)
    n_words = int(min(config.words, max(16, projected.shape[0] // config.descriptors_per_word)))
    n_vlad = int(min(config.vlad_words, max(4, projected.shape[0] // 100)))
    log.info(
        "training codebook: %d descriptors from %d images -> %d words, %d VLAD words",
        sample.shape[0],
        len(images),
        n_words,
        n_vlad,
    )

    def report(stage: str, total_steps: int) -> Callable[[int], None]:
        return lambda step: progress(stage, step, total_steps) if progress else None

    words = kmeans(
        projected,
        n_words,
        iterations=config.kmeans_iterations,
        seed=config.seed,
        progress=report("fine words", config.kmeans_iterations),
    )
    vlad_words = kmeans(projected, n_vlad, iterations=20, seed=config.seed + 1, progress=report("VLAD words", 20))
    partial = Codebook(
        pca_mean=mean.astype(np.float32),
        pca_components=components,
        int8_scale=scale,
        words=words,
        vlad_words=vlad_words,
        whiten_mean=np.zeros(n_vlad * pca_dims, np.float32),
        whiten=np.zeros((1, n_vlad * pca_dims), np.float32),
        params={},
    )
    # Whitening is learned on reference VLADs; its eigenvalues are floored (shrinkage) so that
    # directions seen in few images are not blown up, which would make the ANN ranking noisy.
    sample_images = images if len(images) <= 20000 else [images[i] for i in rng.choice(len(images), 20000)]
    vlads = np.stack([partial.raw_vlad(partial.project(d)) for d in sample_images])
    whiten_mean = vlads.mean(axis=0)
    centred_v = vlads - whiten_mean
    dims = int(min(config.global_dims, max(2, len(sample_images) - 1), centred_v.shape[1]))
    # SVD of the (images x dims) matrix: the covariance's eigenvectors without forming it.
    _, singular, vt = np.linalg.svd(centred_v, full_matrices=False)
    variances = singular[:dims] ** 2 / max(1, len(sample_images) - 1)
    floor = float(np.mean(variances)) * 0.1 + 1e-9
    whiten = (vt[:dims] / np.sqrt(variances + floor)[:, None]).astype(np.float32)
    params = {
        "descriptors": int(sample.shape[0]),
        "images": len(images),
        "words": n_words,
        "vlad_words": n_vlad,
        "global_dims": dims,
        "pca_dims": pca_dims,
        "seed": config.seed,
        "iterations": config.kmeans_iterations,
        "explained_variance": float(eigvals[::-1][:pca_dims].sum() / max(eigvals.sum(), 1e-12)),
    }
    return Codebook(
        pca_mean=mean.astype(np.float32),
        pca_components=components,
        int8_scale=scale,
        words=words,
        vlad_words=vlad_words,
        whiten_mean=whiten_mean.astype(np.float32),
        whiten=whiten,
        params=params,
    )
