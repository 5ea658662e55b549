"""Training scenes for the detector: references composited into backgrounds, with their boxes.

References are drawn logos and covers (:mod:`kyb.synth`, as ``kyb demo`` draws them), a folder or
catalog of real ones, or crops of boxes from annotated photos. Backgrounds are drawn textures
(shelves, walls, tables, fabric) or random crops of a folder of the user's photos. Each scene gets
perspective, scale, rotation, lighting, glare, blur, noise, JPEG artefacts, partial occlusion and
several objects (:func:`kyb.synth.compose_scene`). Every image has its own seeded generator, so a set
is reproducible file for file, and two seeds never share a reference or a background.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kyb import synth
from kyb.detection._data import Sample, write_coco, write_voc
from kyb.errors import InvalidRequest

__all__ = ["DETECTION_STYLE", "Reference", "crop_references", "drawn_references", "folder_references",
           "generate_scenes"]  # fmt: skip

#: Wider than the identification demo: objects from 7% to 75% of the shorter side, heavier occlusion,
#: glare and compression, because a detector must also find the small and the damaged ones.
DETECTION_STYLE = synth.SceneStyle(
    scale=(0.07, 0.75), rotation_deg=25.0, perspective=0.18, occlusion=0.3, glare=0.3, jpeg_quality=(35, 92),
    blur_sigma=(0.0, 1.5), max_attempts=24,
)  # fmt: skip

_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True, eq=False)
class Reference:
    """A reference image (BGR uint8) and the category it belongs to (``logo`` or ``album_cover``)."""

    image: np.ndarray
    label: str


def drawn_references(n_logos: int, n_covers: int, *, seed: int) -> list[Reference]:
    """Fictional band logos and album covers drawn by :mod:`kyb.synth` (different seeds, different art)."""
    out: list[Reference] = []
    for i in tqdm(range(n_logos + n_covers), desc="drawing references", unit="ref", leave=False):
        rng = np.random.default_rng([seed, 11, i])
        name = synth._band_name(rng)
        if i < n_logos:
            out.append(Reference(synth.draw_logo(name, rng, (int(rng.integers(360, 720)), int(rng.integers(140, 400)))),
                                 "logo"))  # fmt: skip
        else:
            out.append(Reference(synth.draw_album_cover(synth._album_title(rng), name, rng, 480), "album_cover"))
    return out


def _read(path: Path, max_side: int = 800) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InvalidRequest(f"{path}: not a readable image")
    s = max_side / max(img.shape[:2])
    return cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img


def folder_references(path: Path) -> list[Reference]:
    """References from a kyb catalog file (``catalog.json`` with ``references[].image/kind``) or a folder
    holding ``logo/`` and ``album_cover/`` sub-folders of images."""
    path = Path(path)
    if path.is_file():
        data = json.loads(path.read_text("utf-8"))
        return [Reference(_read(path.parent / r["image"]), str(r["kind"])) for r in data.get("references", [])
                if r.get("kind") in ("logo", "album_cover")]  # fmt: skip
    out = []
    for label in ("logo", "album_cover"):
        for f in sorted((path / label).glob("*")):
            if f.suffix.lower() in _IMAGE_EXTS:
                out.append(Reference(_read(f), label))
    if not out:
        raise InvalidRequest(f"{path}: no catalog.json and no logo/ or album_cover/ images")
    return out


def crop_references(samples: Sequence[Sample], *, min_side: int = 24, pad: float = 0.04) -> list[Reference]:
    """The boxed regions of annotated photos as references (a real logo cut from a photo), slightly padded."""
    out = []
    for s in samples:
        img = cv2.imread(str(s.image), cv2.IMREAD_COLOR)
        if img is None:
            continue
        h, w = img.shape[:2]
        for (x1, y1, x2, y2), label in zip(s.boxes, s.labels, strict=True):
            px, py = pad * (x2 - x1), pad * (y2 - y1)
            a, b = max(0, int(x1 - px)), max(0, int(y1 - py))
            c, d = min(w, int(x2 + px + 0.5)), min(h, int(y2 + py + 0.5))
            if min(c - a, d - b) >= min_side:
                out.append(Reference(img[b:d, a:c].copy(), label))
    return out


def _background(rng: np.random.Generator, size: tuple[int, int], photos: Sequence[Path]) -> np.ndarray:
    """A drawn background, or (half of the time when photos are given) a random crop of one of them."""
    w, h = size
    if photos and rng.random() < 0.5:
        img = cv2.imread(str(photos[int(rng.integers(len(photos)))]), cv2.IMREAD_COLOR)
        if img is not None and min(img.shape[:2]) >= 32:
            ih, iw = img.shape[:2]
            f = rng.uniform(0.5, 1.0) * min(iw / w, ih / h)
            cw, ch = max(16, int(w * f)), max(16, int(h * f))
            x, y = int(rng.integers(0, iw - cw + 1)), int(rng.integers(0, ih - ch + 1))
            return cv2.resize(img[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA)
    return synth.draw_background(rng, size)


def _squash(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vary a reference's aspect ratio a little (a wide banner, a narrow sticker)."""
    f = float(np.exp(rng.uniform(-0.3, 0.3)))
    h, w = ref.shape[:2]
    return cv2.resize(ref, (max(8, int(w * f)), max(8, int(h / f))), interpolation=cv2.INTER_AREA)


def generate_scenes(
    out_dir: Path,
    references: Sequence[Reference],
    *,
    n: int,
    seed: int,
    size: tuple[int, int] = (512, 384),
    objects: tuple[int, int] = (0, 5),
    backgrounds: Sequence[Path] = (),
    fmt: str = "coco",
    style: synth.SceneStyle = DETECTION_STYLE,
    min_box_side: int = 6,
    balance: bool = True,
) -> list[Sample]:
    """Write ``n`` scenes to ``out_dir/images/`` with their boxes as ``out_dir/annotations.json`` (COCO) or
    ``out_dir/annotations/<name>.xml`` (``fmt="voc"``), and return them as samples.

    ``size`` is (width, height); ``objects`` the inclusive range of references per scene (a scene with 0 is
    a negative: background only). Objects that do not fit are left out, as are boxes under
    ``min_box_side`` px. ``balance``: every category is placed equally often however many references
    each has (logo crops cut from photos can outnumber the covers several times over, and a detector
    trained on that imbalance learns the rarer class late).
    """
    if fmt not in ("coco", "voc"):
        raise InvalidRequest(f"fmt must be coco or voc, not {fmt!r}")
    if not references:
        raise InvalidRequest("no references to place")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if fmt == "voc":
        (out_dir / "annotations").mkdir(exist_ok=True)
    labels_of = [r.label for r in references]
    share = None
    if balance:
        counts = {label: labels_of.count(label) for label in set(labels_of)}
        share = np.array([1.0 / (len(counts) * counts[label]) for label in labels_of])
        share /= share.sum()
    samples: list[Sample] = []
    for i in tqdm(range(n), desc=f"scenes -> {out_dir.name}", unit="scene"):
        rng = np.random.default_rng([seed, 7, i])
        k = int(rng.integers(objects[0], objects[1] + 1))
        chosen = rng.choice(len(references), size=min(k, len(references)), replace=False, p=share)
        picks = [references[int(j)] for j in chosen]
        refs = [_squash(r.image, rng) for r in picks]
        photo, placements = synth.compose_scene(refs, rng, size=size, style=style,
                                                background=_background(rng, size, backgrounds))  # fmt: skip
        boxes, labels = [], []
        for p in placements:
            x1, y1, x2, y2 = p.box
            if min(x2 - x1, y2 - y1) >= min_box_side:
                boxes.append((float(x1), float(y1), float(x2), float(y2)))
                labels.append(picks[p.ref_index].label)
        name = f"s{seed}_{i:05d}.jpg"
        cv2.imwrite(str(out_dir / "images" / name), photo, [cv2.IMWRITE_JPEG_QUALITY, 92])
        sample = Sample(out_dir / "images" / name, tuple(boxes), tuple(labels), size[0], size[1])
        if fmt == "voc":
            write_voc(sample, out_dir / "annotations" / f"{Path(name).stem}.xml")
        samples.append(sample)
    if fmt == "coco":
        write_coco(samples, out_dir / "annotations.json", categories=("logo", "album_cover"))
    return samples
