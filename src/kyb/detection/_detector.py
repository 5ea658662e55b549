"""Running a trained detector: verified weights in, boxes with a category and a score out.

:class:`Detector` is what serving uses (the detector service, the embedded engine, ``kyb eval
--detector``); it never imports the training code. Images are RGB uint8 as :mod:`kyb.imageio`
decodes them; they are shrunk with area averaging to the network's input size first (what the
network would do anyway, but cheaper than resizing a 1024-px tensor), and boxes come back in the
caller's pixels.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from kyb.detection._weights import DetectorWeights
from kyb.regions import Detection

if TYPE_CHECKING:
    from kyb.config import DetectorConfig

__all__ = ["Detection", "Detector", "set_input_size"]


def set_input_size(model: Any, weights: DetectorWeights, input_size: int) -> tuple[int, int]:
    """Sets the torchvision model's input size (shorter side ``input_size``, the longer capped in the
    trained proportion; 0 = as trained); returns (min_size, max_size)."""
    arch = weights.arch
    if not input_size:
        return arch.min_size, arch.max_size
    if not 64 <= input_size <= 2048:
        raise ValueError(f"input_size must be 0 or in 64..2048, not {input_size}")
    longer = round(input_size * arch.max_size / arch.min_size)
    model.transform.min_size, model.transform.max_size = (input_size,), longer
    return input_size, longer


class Detector:
    """A loaded, warmed-up detector.

    ``device``: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda[:N]``. ``score_threshold``: boxes
    below are dropped. ``nms_iou``: boxes overlapping a better one by more than this are dropped —
    per class inside torchvision, then across classes here (a region is a logo *or* a cover, so the
    best label wins). ``max_boxes`` per image. ``threads``: torch CPU threads (0 = leave torch's
    setting; 1 is fastest on a shared machine, where idle-spinning OpenMP threads cost more than
    they give). ``input_size``: the network's shorter side at inference (0 = as trained).
    """

    def __init__(self, weights: DetectorWeights, *, device: str = "auto", score_threshold: float = 0.3,
                 nms_iou: float = 0.5, max_boxes: int = 16, threads: int = 0,
                 input_size: int = 0) -> None:  # fmt: skip
        import torch

        from kyb.detection._model import build_detector

        if not 0 <= score_threshold <= 1:
            raise ValueError(f"score_threshold must be in 0..1, not {score_threshold}")
        if not 0 < nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], not {nms_iou}")
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1, not {max_boxes}")
        if threads:
            torch.set_num_threads(threads)
        self.weights = weights
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))  # fmt: skip
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_boxes = max_boxes
        self.model = build_detector(weights=weights, box_score_thresh=score_threshold, box_nms_thresh=nms_iou,
                                    box_detections_per_img=max_boxes).to(self.device).eval()  # fmt: skip
        self.arch = weights.arch
        self.min_size, self.max_size = set_input_size(self.model, weights, input_size)
        # torch modules are not safe to call from several threads at once on CUDA; the batcher
        # serialises anyway, this guards direct callers.
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, *, sha256: str = "", **kwargs: Any) -> Detector:
        """Load and verify ``path`` (see :meth:`DetectorWeights.load`), then build the detector."""
        return cls(DetectorWeights.load(path, sha256=sha256), **kwargs)

    @classmethod
    def from_config(cls, config: DetectorConfig, *, sha256: str | None = None) -> Detector:
        """The detector ``config`` (``[detector]``) describes: its weights (checked against ``sha256``,
        else ``config.sha256``), device, thresholds, threads and input size; warmed up."""
        if config.weights is None:
            raise ValueError("no detector.weights configured")
        detector = cls.from_file(config.weights, sha256=config.sha256 if sha256 is None else sha256,
                                 device=config.device, score_threshold=config.min_score, nms_iou=config.nms_iou,
                                 max_boxes=config.max_boxes, threads=config.threads,
                                 input_size=config.input_size)  # fmt: skip
        detector.warm_up()
        return detector

    @property
    def version(self) -> str:
        return self.weights.version

    @property
    def categories(self) -> tuple[str, ...]:
        return self.weights.categories

    def warm_up(self, batch: int = 1) -> None:
        """One forward pass on a blank image (the first call allocates and picks kernels)."""
        blank = np.full((self.min_size, self.max_size, 3), 127, np.uint8)
        self.detect([blank] * batch)

    def _prepare(self, image: np.ndarray) -> tuple[Any, tuple[float, float]]:
        import torch

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("images must be RGB uint8 (H, W, 3)")
        h, w = image.shape[:2]
        s = min(self.min_size / min(h, w), self.max_size / max(h, w))
        small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) \
            if s < 1 else image  # fmt: skip
        if not small.flags.writeable or not small.flags.c_contiguous:  # torch wants its own writable buffer
            small = np.array(small, order="C")
        t = torch.from_numpy(small).to(self.device).permute(2, 0, 1).float().div_(255)
        return t, (small.shape[1] / w, small.shape[0] / h)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections per image, best first: one list per input image, in order."""
        import torch
        from torchvision.ops import nms

        if not images:
            return []
        prepared = [self._prepare(im) for im in images]
        with self._lock, torch.inference_mode(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            outputs = self.model([t for t, _ in prepared])
        results: list[list[Detection]] = []
        for out, (_, (sx, sy)) in zip(outputs, prepared, strict=True):
            boxes, scores, labels = out["boxes"].float(), out["scores"].float(), out["labels"]
            keep = nms(boxes, scores, self.nms_iou)[: self.max_boxes]  # across classes
            dets = []
            for i in keep.tolist():
                # Each axis by its own factor: rounding the resized size makes them differ slightly.
                x1, y1, x2, y2 = (float(v) / f for v, f in zip(boxes[i].tolist(), (sx, sy, sx, sy), strict=True))
                dets.append(Detection((x1, y1, x2, y2), self.categories[int(labels[i])], float(scores[i])))
            results.append(dets)
        return results
