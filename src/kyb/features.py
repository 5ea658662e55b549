"""RootSIFT local features (OpenCV SIFT, then Arandjelović & Zisserman's square-root L1 mapping).

RootSIFT makes Euclidean distance behave like the Hellinger kernel on SIFT histograms, which
improves matching and retrieval at no cost; it is the local feature every later stage uses.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["INVERTED_ORDER", "LocalFeatures", "extract_rootsift", "invert_polarity"]

_local = threading.local()


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints and descriptors of one image or region.

    ``xy`` is (N, 2) float32 pixel coordinates (x right, y down) in the frame the caller asked for;
    ``size`` is (N,) float32 keypoint diameters in the same frame; ``angle`` is (N,) float32 keypoint
    orientations in degrees (OpenCV's convention); ``descriptors`` is (N, 128) float32 RootSIFT, each
    row of unit L2 norm. Rows are ordered best first (by detector response, or
    by response x size ** scale_weight, see :func:`extract_rootsift`).
    """

    xy: np.ndarray
    size: np.ndarray
    descriptors: np.ndarray
    angle: np.ndarray

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @staticmethod
    def empty() -> LocalFeatures:
        none = np.zeros((0,), np.float32)
        return LocalFeatures(np.zeros((0, 2), np.float32), none, np.zeros((0, 128), np.float32), none)

    def take(self, rows: np.ndarray) -> LocalFeatures:
        return LocalFeatures(self.xy[rows], self.size[rows], self.descriptors[rows], self.angle[rows])


#: SIFT lays its 128 values out as 4 x 4 spatial cells (rows, then columns) of 8 orientation bins.
#: Inverting an image's luminance turns every gradient by 180 degrees: the DoG extrema stay where they
#: were (a maximum becomes a minimum of the same strength) and the keypoint's orientation turns by 180
#: degrees too, so relative to it every gradient keeps its angle while the sample grid turns half a
#: circle: cell (r, c) becomes cell (3 - r, 3 - c), bins unchanged. Descriptor ``d`` of the inverted
#: image is ``d[INVERTED_ORDER]`` (checked to float precision on OpenCV's SIFT, tests/kyb/test_features.py).
INVERTED_ORDER = np.array([((3 - r) * 4 + (3 - c)) * 8 + b for r in range(4) for c in range(4) for b in range(8)])


def invert_polarity(descriptors: np.ndarray) -> np.ndarray:
    """The (RootSIFT or SIFT) descriptors the same keypoints have in the luminance-inverted image.

    A permutation, so it commutes with RootSIFT's L1 normalisation and square root: a photo is searched
    in both polarities (a black-on-white logo printed white on a black shirt) without a second extraction.
    """
    if descriptors.ndim != 2 or descriptors.shape[1] != INVERTED_ORDER.size:
        raise ValueError(f"descriptors must be (N, {INVERTED_ORDER.size}), got {descriptors.shape}")
    return descriptors[:, INVERTED_ORDER]


def _detector(max_features: int, contrast_threshold: float) -> cv2.SIFT:
    # cv2.SIFT objects are not safe to share between threads; keep one per thread and setting.
    cache: dict[tuple[int, float], cv2.SIFT] = getattr(_local, "sift", None) or {}
    _local.sift = cache
    key = (max_features, contrast_threshold)
    if key not in cache:
        cache[key] = cv2.SIFT.create(nfeatures=max_features, contrastThreshold=contrast_threshold)
    return cache[key]


def extract_rootsift(
    gray: np.ndarray,
    *,
    max_features: int,
    contrast_threshold: float = 0.04,
    upscale: float = 1.0,
    scale_weight: float = 0.0,
) -> LocalFeatures:
    """Detects up to ``max_features`` SIFT keypoints in ``gray`` (H×W uint8) and describes them.

    With ``upscale`` > 1 the image is enlarged first (cubic) so that small logos and small photos
    still give enough keypoints; coordinates are always returned in ``gray``'s frame. With
    ``scale_weight`` > 0 the keypoints kept are the best by response x size ** scale_weight instead of
    by response (every keypoint is detected, only those kept are described): the strongest
    responses are mostly the finest scale, which a smaller or blurred view of the image loses first.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"gray must be a 2-D uint8 array, got shape {gray.shape} dtype {gray.dtype}")
    factor = max(1.0, float(upscale))
    work = gray
    if factor > 1.0:
        size = (round(gray.shape[1] * factor), round(gray.shape[0] * factor))
        work = cv2.resize(gray, size, interpolation=cv2.INTER_CUBIC)
    if scale_weight > 0:
        detector = _detector(0, contrast_threshold)  # 0: every keypoint, ranked here
        found = detector.detect(work, None)
        rank = np.argsort([-kp.response * kp.size**scale_weight for kp in found], kind="stable")[:max_features]
        keypoints, descriptors = detector.compute(work, [found[i] for i in rank])
        if descriptors is None or not keypoints:
            return LocalFeatures.empty()
        order = list(range(len(keypoints)))  # compute() keeps the order given (best first)
    else:
        keypoints, descriptors = _detector(max_features, contrast_threshold).detectAndCompute(work, None)
        if descriptors is None or not keypoints:
            return LocalFeatures.empty()
        # SIFT may return a few more than asked (ties on response); keep the strongest max_features.
        order = np.argsort([-kp.response for kp in keypoints], kind="stable")[:max_features].tolist()
    xy = np.array([keypoints[i].pt for i in order], dtype=np.float32) / factor
    sizes = np.array([keypoints[i].size for i in order], dtype=np.float32) / factor
    angle = np.array([keypoints[i].angle for i in order], dtype=np.float32)
    desc = descriptors[order].astype(np.float32)
    desc /= desc.sum(axis=1, keepdims=True) + 1e-7
    np.sqrt(desc, out=desc)
    return LocalFeatures(xy=xy, size=sizes, descriptors=desc, angle=angle)
