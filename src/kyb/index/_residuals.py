"""Compressed reference descriptors: a keypoint's descriptor is kept as its visual word's centroid plus
a coarse residual, a few bits a dimension instead of a byte.

The residual's sign in each of the first 64 PCA dimensions is already stored: it is the keypoint's
Hamming-embedding signature (:meth:`kyb.codebook.Codebook.signatures`). What is left to store is the
residual's magnitude, ``bits`` bits a dimension: dimension j's ``|residual|`` falls into one of
``2 ** bits`` equally likely bins (edges are quantiles of the training residuals) and is restored as
the bin's mean. Dimensions past the 64th (``features.pca_dims`` > 64) also store their sign bit.

A decoded descriptor is rounded to int8 like a stored one and nudged, where rounding crossed the
centroid, back to the side its signature says, and where rounding crossed a bin edge, back into its
bin: encoding a decoded reference again (a reference sent to another shard as an encoding) gives
back the same signature and the same codes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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
        """Codes with the keypoints' ``words`` and ``signatures`` -> int8 descriptors (N, dims).

        Compiled (:func:`_decode`): verification decodes every candidate it looks at, a few hundred
        keypoints each, and the numpy version's dozen passes over them cost ~0.5 ms a candidate."""
        out = np.empty((len(words), self.dims), dtype=np.int8)
        if len(words):
            _compiled_decode()(
                np.ascontiguousarray(codes),
                np.ascontiguousarray(words, dtype=np.int64),
                np.ascontiguousarray(signatures, dtype=np.uint64),
                codebook.words,
                self.levels,
                self.edges,
                np.float32(codebook.int8_scale),
                np.float32(1.0 / codebook.int8_scale),
                self.bits,
                self.signed_dims,
                out,
            )
        return out

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


def _decode(
    codes: np.ndarray,
    words: np.ndarray,
    signatures: np.ndarray,
    centroids: np.ndarray,
    levels: np.ndarray,
    edges: np.ndarray,
    scale: np.float32,
    inv_scale: np.float32,
    bits: int,
    signed: int,
    out: np.ndarray,
) -> None:
    """Row i, dimension j: the centroid plus or minus the level of the magnitude bin (bit b of the bin
    at bit ``b * dims + j`` of the row's codes, little-endian), the sign from the signature (j < 64)
    or from the codes after the magnitudes; rounded like Codebook.quantize, then stepped back to the
    sign's side of the centroid where rounding crossed it, and into the magnitude's bin where
    rounding crossed one of its edges (float32 throughout, as numpy computes): encoding the decoded
    descriptor again gives back its codes wherever the bin holds an int8 value on that side."""
    dims = centroids.shape[1]
    for i in range(words.size):
        word = words[i]
        signature = signatures[i]
        for j in range(dims):
            b = 0
            for k in range(bits):
                position = k * dims + j
                b |= ((codes[i, position >> 3] >> (position & 7)) & 1) << k
            if j < signed:
                above = (signature >> np.uint64(j)) & np.uint64(1) == np.uint64(1)
            else:
                position = bits * dims + j - signed
                above = (codes[i, position >> 3] >> (position & 7)) & 1 == 1
            centroid = centroids[word, j]
            magnitude = levels[j, b]
            value = centroid + magnitude if above else centroid - magnitude
            stored = min(max(np.rint(value * scale), np.float32(-127.0)), np.float32(127.0))
            for _ in range(2):
                if (stored * inv_scale > centroid) == above:
                    break
                stored = min(
                    max(stored + (np.float32(1.0) if above else np.float32(-1.0)), np.float32(-127.0)),
                    np.float32(127.0),
                )
            outward = np.float32(1.0) if above else np.float32(-1.0)
            for _ in range(2):
                restored = abs(stored * inv_scale - centroid)
                found = 0
                for k in range(edges.shape[1]):
                    found += restored > edges[j, k]
                if found == b:
                    break
                # A step out (too near) or in (too far), unless that crosses the centroid (the sign wins).
                step = outward if found < b else -outward
                moved = min(max(stored + step, np.float32(-127.0)), np.float32(127.0))
                if (moved * inv_scale > centroid) != above:
                    break
                stored = moved
            out[i, j] = np.int8(stored)


@functools.cache
def _compiled_decode() -> Callable[..., None]:
    """:func:`_decode` compiled by numba on first use, cached beside this module where writable."""
    import numba

    try:
        return numba.njit(nogil=True, cache=True)(_decode)
    except RuntimeError:  # numba found no writable cache folder
        return numba.njit(nogil=True)(_decode)
