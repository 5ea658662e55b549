"""kyb.codebook: vocabulary size of a small collection and the nearest-word assignment used in training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from kyb.codebook import _nearest, train_codebook
from kyb.config import CodebookConfig


def _descriptors(rng: np.random.Generator, images: int, per_image: int) -> list[np.ndarray]:
    """RootSIFT-like rows: non-negative, unit L2 norm, with some shared structure between images."""
    parts = rng.gamma(0.6, 1.0, size=(12, 128))
    out = []
    for _ in range(images):
        mix = rng.dirichlet(np.full(12, 0.3), size=per_image)
        rows = mix @ parts + rng.gamma(0.3, 0.2, size=(per_image, 128))
        out.append((rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))
    return out


def test_a_small_collection_gets_one_word_per_few_sampled_descriptors() -> None:
    """A small collection's fine vocabulary is sample/descriptors_per_word words (a coarse one made
    every stranger share words with much of a photo), and never more than codebook.words."""
    descriptors = _descriptors(np.random.default_rng(3), images=20, per_image=150)  # 3,000 sampled
    config = CodebookConfig(kmeans_iterations=3, global_dims=16)
    assert train_codebook(descriptors, config, pca_dims=32).n_words == 1000
    assert train_codebook(descriptors, replace(config, descriptors_per_word=12), pca_dims=32).n_words == 250
    assert train_codebook(descriptors, replace(config, words=600), pca_dims=32).n_words == 600


def test_training_assigns_the_exact_nearest_word_when_rows_times_words_are_few() -> None:
    """Few rows x words: the exact product (a graph over the centroids every k-means iteration cost
    more); many: the hnswlib graph, which may miss a near tie but agrees on nearly every row."""
    rng = np.random.default_rng(5)
    centroids = rng.standard_normal((3000, 32)).astype(np.float32)
    data = rng.standard_normal((4000, 32)).astype(np.float32)
    brute = np.argmin(((data[:, None, :] - centroids[None, :, :]) ** 2).sum(-1), axis=1)
    assert np.array_equal(_nearest(centroids, data), brute)
    by_graph = _nearest(centroids, data, exact_below=0, exact_pairs=0)
    assert (by_graph == brute).mean() > 0.9
