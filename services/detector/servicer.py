"""The Detector servicer behind kyb.v1.Detector.

With ``detector.weights`` configured it loads the trained torchvision detector (sha256 checked
against the manifest and ``detector.sha256``), warms it up on its device (CUDA when present) and only
then reports SERVING. Requests are batched dynamically: concurrent Detect calls share one forward
pass of up to ``detector.batch_size`` photos, waiting at most ``detector.batch_wait_ms`` for company.
Photos are decoded within the configured limits and searched at ``limits.search_max_side``.

With no weights there is no model: Detect still validates the image and answers no boxes with an
empty ``model_version``, and the gateway then searches the whole photo as one region — the
documented fallback, never an error. A process that already holds a detector (any
:class:`kyb.regions.RegionDetector`) can serve it instead of loading weights.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import grpc
import numpy as np

from kyb.detection import DynamicBatcher
from kyb.errors import DeadlineExceeded, InvalidRequest, NotReady
from kyb.imageio import decode_image
from kyb.regions import RegionDetector
from kyb.rpc import ServiceConfig, decoded_from_proto
from kyb.v1 import common_pb2, detector_pb2, detector_pb2_grpc

__all__ = ["DetectorServicer"]

log = logging.getLogger(__name__)

_KINDS = {"logo": common_pb2.KIND_LOGO, "album_cover": common_pb2.KIND_ALBUM_COVER}


class DetectorServicer(detector_pb2_grpc.DetectorServicer):
    """Detect: boxes of likely logos and covers, best first (none when no model is configured)."""

    def __init__(self, config: ServiceConfig, *, detector: RegionDetector | None = None) -> None:
        self._config = config
        self._detector: Any = None
        self._batcher: Any = None
        self._version = ""
        if detector is not None:
            self._serve(detector, getattr(detector, "version", "") or type(detector).__name__)
        self._loader: threading.Thread | None = None
        self.load_error: Exception | None = None

    @property
    def has_model(self) -> bool:
        return self._detector is not None or self._config.detector.weights is not None

    @property
    def model_version(self) -> str:
        """Reported as DetectResponse.model_version; empty = no model."""
        return self._version if self._detector is not None else ""

    def _serve(self, detector: RegionDetector, version: str) -> None:
        cfg = self._config.detector
        self._batcher = DynamicBatcher(detector.detect, max_batch=cfg.batch_size, max_wait_ms=cfg.batch_wait_ms,
                                       name="kyb-detector-batch")  # fmt: skip
        self._detector, self._version = detector, version

    def load(self) -> None:
        """Load, verify and warm up the configured model (blocking); no-op without weights."""
        cfg = self._config.detector
        if cfg.weights is None or self._detector is not None:
            return
        from kyb.detection import Detector

        detector = Detector.from_config(cfg)
        self._serve(detector, detector.version)
        log.info("detector: %s on %s (batch %d / %g ms)", detector.version, detector.device, cfg.batch_size,
                 cfg.batch_wait_ms)  # fmt: skip

    def start(self, on_ready: Callable[[bool], None]) -> None:
        """Load in the background (health NOT_SERVING meanwhile); ``on_ready(True)`` once warm. A model
        that fails to load (bad sha256, corrupt file) keeps the service NOT_SERVING and is logged."""
        if self._detector is not None or not self.has_model:
            on_ready(True)
            return

        def run() -> None:
            try:
                self.load()
            except Exception as exc:
                self.load_error = exc
                log.error("detector: cannot load %s: %s", self._config.detector.weights, exc)
                return
            on_ready(True)

        self._loader = threading.Thread(target=run, name="kyb-detector-load", daemon=True)
        self._loader.start()

    def wait_for_load(self, timeout: float | None = None) -> bool:
        """Waits for the background load :meth:`start` began; True when a model is ready (False: it
        failed, see :attr:`load_error`, or is still loading after ``timeout`` seconds)."""
        if self._loader is not None:
            self._loader.join(timeout)
        return self._detector is not None

    def close(self) -> None:
        if self._loader is not None:
            self._loader.join(timeout=30)
        if self._batcher is not None:
            self._batcher.close()

    def _image(self, request: detector_pb2.DetectRequest) -> tuple[np.ndarray, float]:
        """RGB pixels and the factor from them to the original photo's pixels (boxes are answered in
        original pixels, as kyb.v1.Box and the encoder expect)."""
        source = request.WhichOneof("source")
        limits = self._config.engine.limits
        if source == "image":
            decoded = decode_image(request.image, limits, max_side=limits.search_max_side)
            return decoded.rgb, decoded.scale
        if source == "decoded":
            decoded = decoded_from_proto(request.decoded)
            return decoded.rgb, decoded.scale
        raise InvalidRequest("send the image as bytes (image) or pixels (decoded)")

    def detect_image(self, image: np.ndarray, timeout: float | None) -> Sequence[Any]:
        """Detections for one RGB image through the batcher (what Detect and the embedded engine run)."""
        if self._batcher is None:
            raise NotReady(f"detector model {self._config.detector.weights} is still loading")
        try:
            return self._batcher(image, timeout=timeout)
        except FutureTimeout:
            raise DeadlineExceeded("the deadline ran out while the photo waited for the detector") from None

    def Detect(self, request: detector_pb2.DetectRequest, context: grpc.ServicerContext) -> Any:
        image, scale = self._image(request)  # refuses bad images before anything else
        if request.min_score < 0 or request.min_score > 1 or request.max_boxes < 0:
            raise InvalidRequest("min_score must be in 0..1 and max_boxes >= 0")
        if not self.has_model:
            return detector_pb2.DetectResponse(detections=[], model_version="")
        dets = self.detect_image(image, context.time_remaining())
        min_score = request.min_score or 0.0
        limit = request.max_boxes or self._config.detector.max_boxes
        h, w = image.shape[:2]
        out = []
        for d in dets:
            if d.score < min_score:
                continue
            x1, y1, x2, y2 = d.box
            box = common_pb2.Box(x1=max(0.0, x1) * scale, y1=max(0.0, y1) * scale, x2=min(w, x2) * scale,
                                 y2=min(h, y2) * scale)  # fmt: skip
            out.append(detector_pb2.Detection(box=box, kind=_KINDS.get(d.label, common_pb2.KIND_UNSPECIFIED),
                                              score=d.score))  # fmt: skip
            if len(out) >= limit:
                break
        return detector_pb2.DetectResponse(detections=out, model_version=self.model_version)
