"""Detection data: boxes on images, read from Pascal VOC XML, COCO JSON or a kyb gt.json, and written
as COCO JSON or VOC XML by the scene generator (:mod:`kyb.detection._scenes`).

Boxes are float ``(x1, y1, x2, y2)`` in image pixels, x2/y2 exclusive (COCO's ``[x, y, w, h]`` and VOC's
1-based inclusive corners are converted on read and back on write). Labels are category names; a
``label_map`` turns a user's names (``"Adidas"``, ``"cd"``) into the detector's (``"logo"``,
``"album_cover"``), and names it does not map are dropped with their boxes.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kyb.errors import InvalidRequest
from kyb.groundtruth import parse_gt_boxes

__all__ = [
    "Sample", "read_annotations", "read_coco", "read_gt_boxes", "read_voc", "split_of", "write_coco", "write_voc",
]  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One annotated image: ``boxes`` ``[(x1, y1, x2, y2)]`` pixels, ``labels`` a category name per box;
    ``width``/``height`` 0 when the annotation file did not say."""

    image: Path
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[str, ...]
    width: int = 0
    height: int = 0


def _mapped(label: str, label_map: Mapping[str, str] | None) -> str | None:
    if label_map is None:
        return label
    return label_map.get(label, label_map.get("*"))


def _valid(box: Sequence[float]) -> bool:
    return box[2] - box[0] >= 1 and box[3] - box[1] >= 1


def split_of(name: str, *, test_fraction: float) -> str:
    """``"test"`` or ``"train"`` for an image name, by a hash of the name: stable across runs and
    machines, and independent of which other images exist."""
    h = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:4], "big") / 2**32
    return "test" if h < test_fraction else "train"


def read_voc(paths: Path | Iterable[Path], *, images_dir: Path | None = None,
             label_map: Mapping[str, str] | None = None) -> list[Sample]:  # fmt: skip
    """Pascal VOC XML: a folder of ``*.xml`` or a list of files. The image is ``images_dir/<filename>``
    (default: beside the XML). ``difficult`` objects are kept (a logo is a logo)."""
    files = list(paths) if not isinstance(paths, Path) else sorted(paths.glob("*.xml")) if paths.is_dir() else [paths]
    samples = []
    for f in files:
        try:
            root = ET.parse(f).getroot()
        except (ET.ParseError, OSError) as exc:
            raise InvalidRequest(f"{f}: not a Pascal VOC XML file ({exc})") from None
        name = root.findtext("filename") or ""
        if not name:
            raise InvalidRequest(f"{f}: no <filename>")
        size = root.find("size")
        width = int(float(size.findtext("width") or 0)) if size is not None else 0
        height = int(float(size.findtext("height") or 0)) if size is not None else 0
        boxes, labels = [], []
        for obj in root.iter("object"):
            label = _mapped((obj.findtext("name") or "").strip(), label_map)
            bb = obj.find("bndbox")
            if label is None or bb is None:
                continue
            try:
                # VOC corners are 1-based and inclusive.
                x1, y1 = float(bb.findtext("xmin") or "") - 1, float(bb.findtext("ymin") or "") - 1
                x2, y2 = float(bb.findtext("xmax") or ""), float(bb.findtext("ymax") or "")
            except ValueError:
                raise InvalidRequest(f"{f}: a <bndbox> without numeric xmin/ymin/xmax/ymax") from None
            if _valid((x1, y1, x2, y2)):
                boxes.append((x1, y1, x2, y2))
                labels.append(label)
        samples.append(Sample((images_dir or f.parent) / name, tuple(boxes), tuple(labels), width, height))
    return samples


def read_coco(
    path: Path, *, images_dir: Path | None = None, label_map: Mapping[str, str] | None = None
) -> list[Sample]:
    """COCO detection JSON (``images``, ``annotations`` with ``bbox`` ``[x, y, w, h]``, ``categories``).
    Crowd annotations are skipped, as COCO's own evaluation ignores them."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        images = {int(im["id"]): im for im in data["images"]}
        anns = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"{path}: not a COCO detection file ({exc})") from None
    per_image: dict[int, list[tuple[tuple[float, float, float, float], str]]] = {i: [] for i in images}
    for a in anns:
        if a.get("iscrowd"):
            continue
        label = _mapped(cats.get(int(a["category_id"]), ""), label_map)
        x, y, w, h = (float(v) for v in a["bbox"])
        if label is None or int(a["image_id"]) not in per_image or not _valid((x, y, x + w, y + h)):
            continue
        per_image[int(a["image_id"])].append(((x, y, x + w, y + h), label))
    base = images_dir or Path(path).parent
    out = []
    for image_id, im in images.items():
        objs = per_image[image_id]
        out.append(Sample(base / im["file_name"], tuple(b for b, _ in objs), tuple(lbl for _, lbl in objs),
                          int(im.get("width", 0)), int(im.get("height", 0))))  # fmt: skip
    return out


def read_gt_boxes(path: Path, *, label: str = "logo") -> list[Sample]:
    """The ``boxes`` of a kyb gt.json (``{"boxes": {image: [{"label", "box": [x1, y1, x2, y2]}]}}``, as in
    ../shared/datasets/logos): every box becomes ``label``; repeated identical boxes count once."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
        entries = parse_gt_boxes(data["boxes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"{path}: no readable 'boxes' in this gt.json ({exc})") from None
    out = []
    for rel, found in sorted(entries.items()):
        boxes = [b for b in found if _valid(b)]
        out.append(Sample(Path(path).parent / rel, tuple(boxes), (label,) * len(boxes)))
    return out


def write_coco(samples: Sequence[Sample], path: Path, *, categories: Sequence[str]) -> Path:
    """COCO JSON for ``samples`` (file names relative to the JSON's folder when they lie under it).
    Category ids are 1.. in ``categories`` order, matching the detector's label ids."""
    cat_id = {name: i + 1 for i, name in enumerate(categories)}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i, s in enumerate(samples, 1):
        try:
            name = str(s.image.relative_to(path.parent))
        except ValueError:
            name = str(s.image)
        images.append({"id": i, "file_name": name, "width": s.width, "height": s.height})
        for box, label in zip(s.boxes, s.labels, strict=True):
            x1, y1, x2, y2 = box
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat_id[label], "iscrowd": 0,
                         "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                         "area": round((x2 - x1) * (y2 - y1), 2)})  # fmt: skip
    data = {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}  # fmt: skip
    path.write_text(json.dumps(data) + "\n", "utf-8")
    return path


def write_voc(sample: Sample, path: Path) -> Path:
    """One Pascal VOC XML file for ``sample`` (1-based inclusive corners, as VOC tools expect)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = sample.image.name
    size = ET.SubElement(root, "size")
    for tag, count in (("width", sample.width), ("height", sample.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(count)
    for box, label in zip(sample.boxes, sample.labels, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = label
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = box
        for tag, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bb, tag).text = str(round(v))
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def read_annotations(
    path: Path,
    *,
    split: str | None = None,
    test_fraction: float = 0.2,
    label_map: Mapping[str, str] | None = None,
) -> list[Sample]:
    """Samples from any supported source, told apart by content: a COCO JSON (``images`` +
    ``annotations``), a kyb gt.json (``boxes``, every box a logo unless ``label_map`` says otherwise), a
    folder of VOC XML (or a generated set's folder holding ``annotations.json`` / ``annotations/``).

    ``split`` (``"train"`` or ``"test"``) keeps the part :func:`split_of` assigns to it, so a training run
    and an evaluation on the same file never share an image.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "annotations.json").is_file():
            samples = read_coco(path / "annotations.json", label_map=label_map)
        elif (path / "annotations").is_dir():
            samples = read_voc(path / "annotations", images_dir=path / "images", label_map=label_map)
        else:
            samples = read_voc(path, label_map=label_map)
    elif path.suffix == ".xml":
        samples = read_voc(path, label_map=label_map)
    else:
        try:
            head = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"{path}: not an annotation file ({exc})") from None
        if isinstance(head, dict) and "boxes" in head:
            label = (label_map or {}).get("*", "logo")
            samples = read_gt_boxes(path, label=label)
        else:
            samples = read_coco(path, label_map=label_map)
    if split is not None:
        if split not in ("train", "test"):
            raise InvalidRequest(f"split must be train or test, not {split!r}")
        samples = [s for s in samples if split_of(s.image.name, test_fraction=test_fraction) == split]
    return samples
