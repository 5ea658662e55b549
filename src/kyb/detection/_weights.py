"""Weights are data: a file, its sha256, the categories, the architecture and the recipe that made it.

A trained detector is one ``.pt`` file (``torch.save`` of ``{"meta": ..., "model": state_dict}``) and a
``.json`` manifest beside it with the file's sha256, categories, architecture, recipe command and
measured metrics (the manifest is what a person reads; the ``meta`` copy inside the file makes it
self-describing). Loading checks the sha256 before torch reads a byte, like torchvision's
``check_hash=True``: a mismatch is a :class:`WeightsError`, never a silently different model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kyb.errors import ConfigError

if TYPE_CHECKING:
    from kyb.detection._model import DetectorArch

__all__ = ["DetectorWeights", "WeightsError", "WeightsFile", "file_sha256", "save_weights"]

#: Format of the manifest and of ``meta`` inside the file; bump on an incompatible change.
FORMAT = "kyb-detector/1"


class WeightsError(ConfigError):
    """A weights file that is missing, corrupt, or not the one its sha256 names."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class WeightsFile:
    """A local file pinned by content: ``sha256`` (hex) is checked before it is used; empty = trust the file
    (only for backbone files a person just made; detector weights carry their own in the manifest)."""

    path: Path
    sha256: str = ""

    def verified_path(self) -> Path:
        """``path`` after checking it exists and hashes to ``sha256``; raises :class:`WeightsError`."""
        path = Path(self.path)
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        if self.sha256:
            actual = file_sha256(path)
            if actual != self.sha256.lower():
                raise WeightsError(f"weights file {path}: sha256 {actual[:16]}… but {self.sha256[:16]}… was expected")
        return path


@dataclass(frozen=True)
class DetectorWeights:
    """Trained detector weights, verified: build them with :meth:`load` (a file checked against its
    manifest and, when given, the sha256 a config pins)."""

    path: Path
    sha256: str
    categories: tuple[str, ...]
    arch: DetectorArch
    recipe: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    _state: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def version(self) -> str:
        """Short id of these weights (DetectResponse.model_version)."""
        return f"{Path(self.path).stem}@{self.sha256[:12]}"

    def state_dict(self) -> dict[str, Any]:
        return self._state

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, sha256: str = "") -> DetectorWeights:
        """Read and verify ``path``: its sha256 must equal the manifest's (``path`` with ``.json``) and
        ``sha256`` when that is given. Raises :class:`WeightsError` naming the file otherwise."""
        import torch

        from kyb.detection._model import DetectorArch

        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"detector weights {path} do not exist")
        manifest_path = path.with_suffix(".json")
        try:
            manifest = json.loads(manifest_path.read_text("utf-8"))
        except FileNotFoundError:
            raise WeightsError(f"detector weights {path}: manifest {manifest_path.name} is missing") from None
        except (OSError, ValueError) as exc:
            raise WeightsError(f"detector weights {path}: unreadable manifest ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise WeightsError(f"detector weights {path}: manifest format {manifest.get('format')!r}, not {FORMAT}")
        actual = file_sha256(path)
        for expected, source in ((manifest.get("sha256", ""), "its manifest"), (sha256, "the config")):
            if expected and actual != expected.lower():
                raise WeightsError(
                    f"detector weights {path}: sha256 {actual[:16]}… does not match {source} ({expected[:16]}…)"
                )
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            meta, state = blob["meta"], blob["model"]
            arch = DetectorArch.from_dict(meta["arch"])
            categories = tuple(meta["categories"])
        except Exception as exc:  # a file that hashes right but is not ours (or an older format)
            raise WeightsError(f"detector weights {path}: not a kyb detector file ({exc})") from None
        return cls(path, actual, categories, arch, str(manifest.get("recipe", "")), dict(manifest.get("metrics", {})),
                   state)  # fmt: skip


def save_weights(
    path: str | os.PathLike[str],
    model: Any,
    *,
    arch: DetectorArch,
    categories: tuple[str, ...],
    recipe: str,
    metrics: dict[str, Any] | None = None,
) -> DetectorWeights:
    """Write ``model``'s weights to ``path`` (atomically) with its manifest; returns them, verified."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "arch": arch.to_dict(), "categories": list(categories)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"meta": meta, "model": model.state_dict()}, tmp)
    os.replace(tmp, path)
    manifest = {**meta, "file": path.name, "sha256": file_sha256(path), "recipe": recipe, "metrics": metrics or {}}
    tmp_m = path.with_suffix(".json.tmp")
    tmp_m.write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    os.replace(tmp_m, path.with_suffix(".json"))
    return DetectorWeights.load(path)
