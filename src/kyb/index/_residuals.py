"""Compressed reference descriptors: a keypoint's descriptor is kept as its visual word's centroid plus
a coarse residual, a few bits a dimension instead of a byte.

The residual's sign in each of the first 64 PCA dimensions is already stored: it is the keypoint's
Hamming-embedding signature (:meth:`kyb.codebook.Codebook.signatures`). What is left to store is the
residual's magnitude, ``bits`` bits a dimension: dimension j's ``|residual|`` falls into one of
``2 ** bits`` equally likely bins (edges are quantiles of the training residuals) and is restored as
the bin's mean. Dimensions past the 64th (``features.pca_dims`` > 64) also store their sign bit.

A decoded descriptor is rounded to int8 like a stored one and nudged, where rounding crossed the
centroid, back to the side its signature says: encoding a decoded reference again (a reference copied
to another shard) gives back the same signature and, almost always, the same codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kyb.codebook import SIGNATURE_BITS, Codebook

#: Residuals sampled to train the bins (the bins are quantiles: a small sample pins them).
_TRAIN_SAMPLE = 200_000
#: Rows encoded or decoded at a time (bounds the float32 temporaries).
_CHUNK = 65_536


@dataclass(frozen=True)
class ResidualQuantizer:
    """Per-dimension bins of ``|descriptor - centroid|``: ``edges`` (dims, 2**bits - 1) and the
    magnitude each bin restores, ``levels`` (dims, 2**bits), float32 in projected (PCA) units."""

    bits: int
    edges: np.ndarray
    levels: np.ndarray

    @property
    def dims(self) -> int:
        return int(self.levels.shape[0])

    @property
    def signed_dims(self) -> int:
        """Dimensions whose residual sign the signature holds (the rest store it here)."""
        return min(self.dims, SIGNATURE_BITS)

    @property
    def code_bytes(self) -> int:
        """Stored bytes per keypoint."""
        return (self.dims * self.bits + self.dims - self.signed_dims + 7) // 8

    @classmethod
    def train(cls, codebook: Codebook, descriptors: np.ndarray, words: np.ndarray, bits: int) -> ResidualQuantizer:
        """Bins fitted to the residuals of int8 ``descriptors`` (the first references an index gets)."""
        if not 0 <= bits <= 4:
            raise ValueError(f"residual bits must be in 0..4, not {bits}")
        if len(words) == 0:
            raise ValueError("no descriptors to train the residual bins on")
        step = max(1, len(words) // _TRAIN_SAMPLE)
        magnitude = np.abs(_residuals(codebook, descriptors[::step], words[::step]))
        n_bins = 1 << bits
        edges = np.quantile(magnitude, np.arange(1, n_bins) / n_bins, axis=0).T.astype(np.float32)
        bins = _bins(magnitude, edges)
        levels = np.empty((codebook.pca_dims, n_bins), dtype=np.float32)
        for b in range(n_bins):
            inside = bins == b
            count = inside.sum(axis=0)
            # An empty bin (ties at an edge) restores its lower edge, a value it stands for.
            lower = edges[:, b - 1] if b else np.zeros(codebook.pca_dims, np.float32)
            levels[:, b] = np.where(count > 0, (magnitude * inside).sum(axis=0) / np.maximum(count, 1), lower)
        return cls(bits, np.ascontiguousarray(edges), levels)

    def encode(self, codebook: Codebook, descriptors: np.ndarray, words: np.ndarray) -> np.ndarray:
        """int8 ``descriptors`` (N, dims) with their ``words`` -> codes (N, code_bytes) uint8."""
        out = np.zeros((len(words), self.code_bytes), dtype=np.uint8)
        for start in range(0, len(words), _CHUNK):
            rows = slice(start, start + _CHUNK)
            residual = _residuals(codebook, descriptors[rows], words[rows])
            bins = _bins(np.abs(residual), self.edges)
            planes = [((bins >> b) & 1).astype(bool) for b in range(self.bits)]
            planes.append(residual[:, self.signed_dims :] > 0)
            packed = np.packbits(np.concatenate(planes, axis=1), axis=1, bitorder="little")
            out[rows, : packed.shape[1]] = packed
        return out

    def decode(self, codebook: Codebook, codes: np.ndarray, words: np.ndarray, signatures: np.ndarray) -> np.ndarray:
        """Codes with the keypoints' ``words`` and ``signatures`` -> int8 descriptors (N, dims)."""
        n, dims, signed = len(words), self.dims, self.signed_dims
        planes = np.unpackbits(codes, axis=1, count=dims * self.bits + dims - signed, bitorder="little")
        bins = np.zeros((n, dims), dtype=np.int64)
        for b in range(self.bits):
            bins |= planes[:, b * dims : (b + 1) * dims].astype(np.int64) << b
        magnitude = self.levels[np.arange(dims), bins]
        sign_bits = np.unpackbits(
            np.ascontiguousarray(signatures, dtype="<u8").view(np.uint8).reshape(n, 8), axis=1, bitorder="little"
        )
        above = np.concatenate([sign_bits[:, :signed], planes[:, dims * self.bits :]], axis=1).astype(bool)
        centroids = codebook.words[np.asarray(words, dtype=np.int64)]
        value = centroids + np.where(above, magnitude, -magnitude)
        stored = np.clip(np.rint(value * codebook.int8_scale), -127, 127).astype(np.int16)
        for _ in range(2):  # rounding may cross the centroid: step back to the signature's side
            wrong = (codebook.dequantize(stored) > centroids) != above
            if not wrong.any():
                break
            stored = np.clip(stored + np.where(above, 1, -1) * wrong, -127, 127)
        return stored.astype(np.int8)

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, bits=np.int64(self.bits), edges=self.edges, levels=self.levels)

    @classmethod
    def load(cls, path: Path) -> ResidualQuantizer:
        with np.load(path, allow_pickle=False) as data:
            return cls(int(data["bits"]), data["edges"].astype(np.float32), data["levels"].astype(np.float32))


def _residuals(codebook: Codebook, descriptors: np.ndarray, words: np.ndarray) -> np.ndarray:
    return codebook.dequantize(descriptors) - codebook.words[np.asarray(words, dtype=np.int64)]


def _bins(magnitude: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each ``|residual|`` (N, dims) by the per-dimension ``edges`` (dims, n_bins - 1)."""
    bins = np.zeros(magnitude.shape, dtype=np.int64)
    for k in range(edges.shape[1]):
        bins += magnitude > edges[:, k]
    return bins
