"""The logo / album-cover detector: a torchvision Faster R-CNN trained here (nothing is downloaded).

``build_detector`` assembles the network (torchvision's builder habits: keyword-only ``weights=`` and
``num_classes=``); :class:`DetectorWeights` are verified data (file + sha256 + categories + recipe);
:class:`Detector` runs it for serving with a :class:`DynamicBatcher`; the readers and the scene
generator make and load training data. Training lives apart, in ``training/detector.py``.
Importing this package does not import torch; the functions that need it import it when called.
"""

from kyb.detection._batching import DynamicBatcher
from kyb.detection._data import (
    Sample,
    read_annotations,
    read_coco,
    read_gt_boxes,
    read_voc,
    split_of,
    write_coco,
    write_voc,
)
from kyb.detection._detector import Detection, Detector, set_input_size
from kyb.detection._model import CATEGORIES, DetectorArch, build_detector
from kyb.detection._scenes import (
    DETECTION_STYLE,
    Reference,
    crop_references,
    drawn_references,
    folder_references,
    generate_scenes,
)
from kyb.detection._weights import DetectorWeights, WeightsError, WeightsFile, file_sha256, save_weights

__all__ = [
    "CATEGORIES",
    "DETECTION_STYLE",
    "Detection",
    "Detector",
    "DetectorArch",
    "DetectorWeights",
    "DynamicBatcher",
    "Reference",
    "Sample",
    "WeightsError",
    "WeightsFile",
    "build_detector",
    "crop_references",
    "drawn_references",
    "file_sha256",
    "folder_references",
    "generate_scenes",
    "read_annotations",
    "read_coco",
    "read_gt_boxes",
    "read_voc",
    "save_weights",
    "set_input_size",
    "split_of",
    "write_coco",
    "write_voc",
]
