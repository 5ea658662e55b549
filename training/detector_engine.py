"""One epoch of detector training and the COCO evaluation (torchvision references/detection/engine.py habits).

``evaluate`` scores with pycocotools' COCOeval (the reference implementation of COCO AP), per class:
AP50 and AP50:95.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from kyb.detection import Sample

__all__ = ["DetectionDataset", "collate", "evaluate", "load_image", "train_one_epoch"]


def load_image(path: Path, max_side: int) -> tuple[np.ndarray, float]:
    """RGB uint8 image shrunk so its longer side is at most ``max_side``, and the scale applied."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    s = min(1.0, max_side / max(img.shape[:2]))
    if s < 1.0:
        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), s


class DetectionDataset(torch.utils.data.Dataset):
    """Samples as ``(image (3, H, W) float 0..1, {"boxes", "labels"})``; labels are indices into
    ``categories``. ``augment``: horizontal flip and colour jitter (the model's transform adds the
    multi-scale resize)."""

    def __init__(self, samples: Sequence[Sample], categories: Sequence[str], *, max_side: int, augment: bool,
                 seed: int = 0) -> None:  # fmt: skip
        self.samples = list(samples)
        self.index = {c: i for i, c in enumerate(categories)}
        self.max_side = max_side
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.samples[i]
        img, scale = load_image(s.image, self.max_side)
        boxes = np.array(s.boxes, np.float32).reshape(-1, 4) * scale
        labels = np.array([self.index[lbl] for lbl in s.labels], np.int64)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            if rng.random() < 0.5:
                img = img[:, ::-1]
                w = img.shape[1]
                boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
            f = img.astype(np.float32)
            grey = f.mean(axis=2, keepdims=True)
            f = grey + (f - grey) * rng.uniform(0.6, 1.4)  # saturation
            f = (f - 128) * rng.uniform(0.75, 1.25) + 128 + rng.uniform(-20, 20)  # contrast, brightness
            img = np.clip(f, 0, 255).astype(np.uint8)
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)
        return t, {"boxes": torch.from_numpy(np.ascontiguousarray(boxes)).reshape(-1, 4),
                   "labels": torch.from_numpy(labels)}  # fmt: skip


def collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader: Any,
    device: torch.device,
    *,
    epoch: int,
    scaler: Any = None,
    max_iters: int | None = None,
    deadline: float | None = None,
    clock: Any = None,
) -> dict[str, float]:
    """Train for one pass over ``loader`` (or ``max_iters`` steps, or until ``clock() > deadline``).
    Returns the mean of each loss and ``iters``. ``scaler`` (a GradScaler) turns on CUDA mixed precision."""
    model.train()
    sums: dict[str, float] = {}
    n = 0
    total = len(loader) if max_iters is None else min(len(loader), max_iters)
    bar = tqdm(loader, total=total, desc=f"epoch {epoch}", unit="batch", leave=False)
    for images, targets in bar:
        if (max_iters is not None and n >= max_iters) or (deadline is not None and clock() > deadline):
            break
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            losses = model(images, targets)
        loss = sum(losses.values())
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at epoch {epoch} step {n}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
        scheduler.step()
        n += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["loss"] = sums.get("loss", 0.0) + loss_value
        bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    return {**{k: v / max(1, n) for k, v in sums.items()}, "iters": float(n)}


@torch.inference_mode()
def predict(model: torch.nn.Module, dataset: DetectionDataset, device: torch.device,
            batch_size: int = 4) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """Detections for every sample, boxes in the sample's original pixels."""
    model.eval()
    out: list[dict[str, np.ndarray]] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluating", unit="batch", leave=False):
        idx = list(range(start, min(len(dataset), start + batch_size)))
        images = []
        scales = []
        for i in idx:
            img, s = load_image(dataset.samples[i].image, dataset.max_side)
            images.append(torch.from_numpy(img).permute(2, 0, 1).float().div_(255).to(device))
            scales.append(s)
        for det, s in zip(model(images), scales, strict=True):
            out.append({"boxes": det["boxes"].cpu().numpy() / s, "labels": det["labels"].cpu().numpy(),
                        "scores": det["scores"].cpu().numpy()})  # fmt: skip
    return out


def evaluate(model: torch.nn.Module, dataset: DetectionDataset, categories: Sequence[str],
             device: torch.device) -> dict[str, float]:  # fmt: skip
    """COCO AP of ``model`` on ``dataset``: ``AP50``, ``AP50:95`` overall and ``AP50/<class>``,
    ``AP50:95/<class>`` per class present in the ground truth (pycocotools COCOeval, bbox)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise SystemExit("detector evaluation needs pycocotools: pip install 'know-your-bands[detector]'") from None

    preds = predict(model, dataset, device)
    images, anns, dets = [], [], []
    for i, (s, p) in enumerate(zip(dataset.samples, preds, strict=True), 1):
        h, w = s.height, s.width
        if not (h and w):
            img = cv2.imread(str(s.image), cv2.IMREAD_REDUCED_GRAYSCALE_2)
            h, w = (img.shape[0] * 2, img.shape[1] * 2) if img is not None else (1, 1)
        images.append({"id": i, "width": w, "height": h})
        for (x1, y1, x2, y2), lbl in zip(s.boxes, s.labels, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": dataset.index[lbl], "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})  # fmt: skip
        for (x1, y1, x2, y2), lbl, sc in zip(p["boxes"], p["labels"], p["scores"], strict=True):
            dets.append({"image_id": i, "category_id": int(lbl), "score": float(sc),
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})  # fmt: skip
    present = sorted({a["category_id"] for a in anns})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": i, "name": c} for i, c in enumerate(categories) if i > 0]}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints its progress
        gt.createIndex()
        if not dets:
            return {"AP50": 0.0, "AP50:95": 0.0, **{f"AP50/{categories[c]}": 0.0 for c in present}}
        dt = gt.loadRes(dets)
        result: dict[str, float] = {}
        for cats, suffix in [(present, "")] + [([c], f"/{categories[c]}") for c in present]:
            ev = COCOeval(gt, dt, "bbox")
            ev.params.catIds = cats
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            result[f"AP50:95{suffix}"] = max(0.0, float(ev.stats[0]))
            result[f"AP50{suffix}"] = max(0.0, float(ev.stats[1]))
    return result
