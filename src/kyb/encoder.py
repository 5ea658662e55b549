"""Image -> encoding: RootSIFT features, their PCA/int8 form, visual words and the global vector.

The encoder is the one place where pixels become numbers; the index and the verifier only ever see
:class:`Encoding` objects, which is what lets the encoder run as its own service (issue 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from kyb.blas import one_blas_thread
from kyb.codebook import REFERENCE_ASSIGN_EF, Codebook
from kyb.config import FeatureConfig
from kyb.errors import InvalidImage, InvalidRequest
from kyb.features import LocalFeatures, extract_rootsift, invert_polarity
from kyb.imageio import DecodedImage

__all__ = [
    "MIN_REFERENCE_FEATURES",
    "Box",
    "Encoder",
    "Encoding",
    "extract_reference",
    "extract_region",
    "extract_views",
    "parse_box",
    "scaled_box",
    "with_views",
]

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels, x2 > x1, y2 > y1


def scaled_box(box: Sequence[float], factor: float) -> Box:
    """``box`` with every coordinate divided by ``factor`` (original pixels -> decoded pixels)."""
    x1, y1, x2, y2 = (float(v) / factor for v in box)
    return x1, y1, x2, y2


def parse_box(text: str) -> Box:
    """``"x1,y1,x2,y2"`` (commas or spaces) as a :data:`Box`; InvalidRequest naming the problem."""
    try:
        values = tuple(float(v) for v in text.replace(" ", ",").split(",") if v)
    except ValueError:
        raise InvalidRequest(f"box must be x1,y1,x2,y2 numbers, got {text!r}") from None
    if len(values) != 4 or not all(np.isfinite(values)) or values[2] <= values[0] or values[3] <= values[1]:
        raise InvalidRequest(f"box must be x1,y1,x2,y2 with x2>x1 and y2>y1, got {text!r}")
    return values


#: A reference (or region) with fewer keypoints has too little to verify a match against.
MIN_REFERENCE_FEATURES = 8


@dataclass(frozen=True)
class Encoding:
    """What the index stores for a reference, or searches with for a photo.

    * ``xy``: (N, 2) float32 keypoint positions in the *region frame*: pixels of the encoded image,
      relative to the region's top-left corner.
    * ``descriptors``: (N, pca_dims) int8 (PCA-projected RootSIFT, see :meth:`Codebook.quantize`).
    * ``words``: (N,) int32 fine visual words.
    * ``near_words``: photos only, (N, k) int32: each feature's nearest words, nearest first (the first
      column is ``words``), for verification's first look; None for references and k = 1.
    * ``inverted``: photos searched in both polarities only, (N,) bool: the rows that describe the
      luminance-inverted photo. The encoder appends one such twin per feature (same keypoint, the
      descriptor permuted, :func:`kyb.features.invert_polarity`); None = every row is as photographed.
    * ``global_vector``: (D,) float32, unit norm (or zeros with no features), of the photo as it is.
    * ``region_size``: (width, height) of the region in the same frame; its outline is the rectangle
      (0, 0)-(width, height).
    * ``origin``: the region's top-left corner in the encoded image, and ``scale`` maps encoded-image
      pixels to original-image pixels, so outlines can be reported in the caller's frame.
    """

    xy: np.ndarray
    descriptors: np.ndarray
    words: np.ndarray
    global_vector: np.ndarray
    region_size: tuple[float, float]
    origin: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    codebook_version: str = ""
    near_words: np.ndarray | None = None
    inverted: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.xy.shape[0])


class Encoder:
    """Encodes references and photos with one codebook and one feature configuration."""

    def __init__(self, codebook: Codebook, features: FeatureConfig) -> None:
        if codebook.pca_dims != features.pca_dims:
            raise InvalidRequest(
                f"codebook has {codebook.pca_dims} PCA dims but features.pca_dims is {features.pca_dims}"
            )
        self.codebook = codebook
        self.features = features

    @property
    def version(self) -> str:
        """Changes whenever an encoding would change: the codebook and the feature settings."""
        f = self.features
        return (
            f"{self.codebook.version}-q{f.query_features}-r{f.reference_features}"
            f"-c{f.contrast_threshold:g}-m{f.min_region_side}-s{f.query_min_side}"
            f"-n{f.query_near_words}x{f.query_near_ratio:g}-e{f.query_assign_ef}-w{f.reference_scale_weight:g}"
            f"-i{f.query_inverted_features}-r{f.query_region_side}x{f.query_region_upscale:g}"
        )

    def warm_up(self) -> None:
        """Builds the word-assignment graphs a photo and a reference need (~0.65 s at 16,384 words once
        a process; a second depth is a copy), so that a service reports ready only when its first
        request will not pay for them."""
        probe = np.zeros((1, self.codebook.pca_dims), np.float32)
        for photo in (True, False):
            self._assign_words(probe, photo=photo)

    def _assign_words(self, projected: np.ndarray, *, photo: bool) -> np.ndarray:
        """Fine words of projected descriptors: a photo's k near words at features.query_assign_ef on
        features.query_assign_threads, (N, k); a reference's nearest word at REFERENCE_ASSIGN_EF, (N,)."""
        f = self.features
        if photo:
            return self.codebook.assign(
                projected, f.query_near_words, f.query_near_ratio, ef=f.query_assign_ef, threads=f.query_assign_threads
            )
        return self.codebook.assign(projected, 1, f.query_near_ratio, ef=REFERENCE_ASSIGN_EF)

    def extract(self, image: DecodedImage, box: Box | None, *, reference: bool) -> tuple[LocalFeatures, Box]:
        return extract_region(image, box, self.features, reference=reference)

    def encode_features(
        self, features: LocalFeatures, region: Box, *, scale: float = 1.0, photo: bool = False
    ) -> Encoding:
        """The encoding of extracted ``features``; a ``photo``'s also carries its near words and, with
        ``features.query_inverted_features``, an inverted twin of its strongest features (rows appended)."""
        count = len(features)
        twins = min(count, self.features.query_inverted_features) if photo else 0
        with one_blas_thread():  # small products: a second BLAS thread would only spin (kyb.blas)
            projected = self.codebook.project(features.descriptors)
            global_vector = self.codebook.global_vector(projected)
            if twins:
                # A light-on-dark print of a dark-on-light reference (or the other way round) matches
                # the photo's inverted twins: one extraction, a row more to assign and verify per twin.
                inverted = self.codebook.project(invert_polarity(features.descriptors[:twins]))
                projected = np.concatenate([projected, inverted])
            words = self._assign_words(projected, photo=photo)
        single = words.ndim == 1
        xy = features.xy.astype(np.float32)
        return Encoding(
            xy=np.concatenate([xy, xy[:twins]]) if twins else xy,
            descriptors=self.codebook.quantize(projected),
            words=words if single else np.ascontiguousarray(words[:, 0]),
            near_words=None if single else words,
            global_vector=global_vector,
            region_size=(region[2] - region[0], region[3] - region[1]),
            origin=(region[0], region[1]),
            scale=scale,
            codebook_version=self.codebook.version,
            inverted=np.arange(count + twins) >= count if twins else None,
        )

    def encode(self, image: DecodedImage, box: Box | None = None, *, reference: bool = False) -> Encoding:
        """Encodes ``image`` (or the ``box`` region of it, in ``image`` pixels).

        References keep ``features.reference_features`` keypoints and small regions are upscaled;
        photos keep ``features.query_features``. Raises :class:`InvalidImage` for a featureless image.
        """
        features, region = self.extract(image, box, reference=reference)
        if len(features) < 4:
            raise InvalidImage(
                "featureless image: no texture to match (blank, flat or too blurred)"
                if box is None
                else f"featureless region {tuple(round(v) for v in region)}: no texture to match"
            )
        return self.encode_features(features, region, scale=image.scale, photo=not reference)


def extract_region(
    image: DecodedImage, box: Box | None, features: FeatureConfig, *, reference: bool
) -> tuple[LocalFeatures, Box]:
    """RootSIFT of the whole image or of ``box`` (clipped to the image), in region coordinates.

    Needs no codebook, so ingest can extract before a codebook exists. Returns the features and the
    region actually used (x1, y1, x2, y2 in ``image`` pixels).
    """
    height, width = image.height, image.width
    if box is None:
        region: Box = (0.0, 0.0, float(width), float(height))
    else:
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, y1 = max(0.0, x1), max(0.0, y1)
        x2, y2 = min(float(width), x2), min(float(height), y2)
        if x2 - x1 < 8 or y2 - y1 < 8:
            raise InvalidRequest(f"box {tuple(box)} is empty or outside the {width}x{height} image")
        region = (x1, y1, x2, y2)
    x1, y1, x2, y2 = (round(v) for v in region)
    crop = image.gray((x1, y1, x2, y2))  # the region's pixels only, not the whole image's
    used = (float(x1), float(y1), float(x2), float(y2))
    if crop.size == 0 or int(crop.max()) - int(crop.min()) < 8:
        return LocalFeatures.empty(), used
    if reference:
        # Small reference regions (a logo box) are enlarged up to 4x to a usable shorter side.
        upscale = min(4.0, features.min_region_side / max(1, min(crop.shape)))
    else:
        # Small photos (a 500-px web image) are enlarged up to 2x, a region of one (a detector box, the
        # second look) further: small logos in them need it.
        if box is None:
            upscale = min(2.0, features.query_min_side / max(1, max(crop.shape)))
        else:
            upscale = min(features.query_region_upscale, features.query_region_side / max(1, max(crop.shape)))
    extracted = extract_rootsift(
        crop,
        max_features=features.reference_features if reference else features.query_features,
        contrast_threshold=features.contrast_threshold,
        upscale=upscale,
        # A whole reference image is artwork or a scan, with detail finer than a photo of it resolves;
        # a boxed region (a logo in a merch photo) was photographed already: its strongest keypoints
        # are ones a photo has, so it keeps them (docs/engine.md section 2).
        scale_weight=features.reference_scale_weight if reference and box is None else 0.0,
    )
    return extracted, used


#: A reference region that yields fewer than MIN_REFERENCE_FEATURES keypoints is extracted again at
#: half the contrast threshold, down to this share of features.contrast_threshold: a plain mark (a
#: silhouette, a single-colour word on a flat box) has edges and corners that a photo of it shows too,
#: only faint ones, and without them it cannot be found at all.
LOW_CONTRAST_FLOOR = 0.25


#: A reference's views (features.reference_view_side times these): the sizes a print has in the
#: photos it is missed in most, 50-150 px across (docs/engine.md section 2).
VIEW_STEPS = (1.0, 1.5, 2.25)
#: A view is rendered only when it is at most this share of the region's longer side: a view about
#: the region's own size repeats the reference's keypoints.
VIEW_MAX_SHARE = 0.75
#: Each view is enlarged like a photo before extraction (a 500-px web photo is searched at 2x,
#: features.query_min_side), so that its keypoints are the ones such a photo gives.
VIEW_UPSCALE = 2.0
#: A view keypoint repeats one the reference has when it lies within this share of the larger
#: keypoint's diameter of it, its diameter is within DUPLICATE_SIZE_RATIO and its orientation within
#: DUPLICATE_ANGLE degrees: it would describe the same patch at the same scale.
DUPLICATE_OFFSET = 0.25
DUPLICATE_SIZE_RATIO = 1.5
DUPLICATE_ANGLE = 30.0


def extract_views(crop: np.ndarray, features: FeatureConfig, *, contrast_threshold: float) -> list[LocalFeatures]:
    """RootSIFT of small renderings of ``crop`` (a reference region, H×W uint8), smallest first.

    Each view has a longer side of features.reference_view_side x :data:`VIEW_STEPS`, is shrunk with
    area averaging (a camera's pixels average the light too) and enlarged by :data:`VIEW_UPSCALE`
    as a photo would be, and keeps up to features.reference_view_features keypoints, mapped back to
    ``crop``'s frame (positions and sizes). Views no smaller than :data:`VIEW_MAX_SHARE` of the crop
    are skipped.
    """
    height, width = crop.shape
    longer = max(height, width)
    views = []
    for step in VIEW_STEPS:
        side = features.reference_view_side * step
        if side > VIEW_MAX_SHARE * longer:
            break
        size = (max(8, round(width * side / longer)), max(8, round(height * side / longer)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        found = extract_rootsift(
            small,
            max_features=features.reference_view_features,
            contrast_threshold=contrast_threshold,
            upscale=VIEW_UPSCALE,
        )
        fx, fy = width / size[0], height / size[1]
        # Pixel centres: view pixel i covers crop pixels i*f .. (i+1)*f, so its centre is (i+0.5)*f-0.5.
        xy = (found.xy + 0.5) * np.array([fx, fy], np.float32) - 0.5
        views.append(
            LocalFeatures(xy.astype(np.float32), found.size * np.float32((fx + fy) / 2), found.descriptors, found.angle)
        )
    return views


def _repeats(xy: np.ndarray, size: float, angle: float, kept: LocalFeatures) -> bool:
    """Whether a keypoint at ``xy`` (diameter ``size``, orientation ``angle``) repeats one of ``kept``."""
    if not len(kept):
        return False
    larger = np.maximum(kept.size, size)
    near = np.hypot(*(kept.xy - xy).T) <= DUPLICATE_OFFSET * larger
    ratio = larger / np.maximum(np.minimum(kept.size, size), 1e-6)
    turn = np.abs((kept.angle - angle + 180.0) % 360.0 - 180.0)
    return bool(np.any(near & (ratio <= DUPLICATE_SIZE_RATIO) & (turn <= DUPLICATE_ANGLE)))


def with_views(extracted: LocalFeatures, views: Sequence[LocalFeatures], count: int) -> LocalFeatures:
    """``extracted`` with up to ``count`` of the views' keypoints appended: taken in turn from each view
    (smallest first), strongest first, skipping any that repeats one kept already (:func:`_repeats`)."""
    depth = max((len(v) for v in views), default=0)
    kept = extracted
    added = 0
    for rank in range(depth):
        for view in views:
            if added >= count:
                break
            if rank < len(view) and not _repeats(view.xy[rank], float(view.size[rank]), float(view.angle[rank]), kept):
                added += 1
                one = view.take(np.array([rank]))
                kept = LocalFeatures(
                    np.concatenate([kept.xy, one.xy]),
                    np.concatenate([kept.size, one.size]),
                    np.concatenate([kept.descriptors, one.descriptors]),
                    np.concatenate([kept.angle, one.angle]),
                )
    return kept


def extract_reference(image: DecodedImage, box: Box | None, features: FeatureConfig) -> tuple[LocalFeatures, Box]:
    """:func:`extract_region` for a reference, at a lower contrast threshold when it is nearly featureless
    (:data:`LOW_CONTRAST_FLOOR`); InvalidRequest when it is still too featureless to index. A boxed
    region also gets features.reference_view_features keypoints of small views of itself
    (:func:`extract_views`, :func:`with_views`): it keeps its strongest, finest keypoints (a part of a
    photo, :func:`extract_region`), so without views it has none of the coarse ones a small print of
    it shows; a whole image keeps larger keypoints already (features.reference_scale_weight)."""
    extracted, used = extract_region(image, box, features, reference=True)
    threshold = features.contrast_threshold
    while len(extracted) < MIN_REFERENCE_FEATURES and threshold / 2 >= LOW_CONTRAST_FLOOR * features.contrast_threshold:
        threshold /= 2
        extracted, used = extract_region(image, box, replace(features, contrast_threshold=threshold), reference=True)
    if len(extracted) < MIN_REFERENCE_FEATURES:
        where = "image" if box is None else f"region {[round(v) for v in box]}"
        raise InvalidRequest(f"featureless {where}: fewer than {MIN_REFERENCE_FEATURES} keypoints, nothing to match")
    if box is not None and features.reference_view_features > 0:
        x1, y1, x2, y2 = (round(v) for v in used)
        views = extract_views(image.gray((x1, y1, x2, y2)), features, contrast_threshold=threshold)
        extracted = with_views(extracted, views, features.reference_view_features)
    return extracted, used
