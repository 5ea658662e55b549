"""The Detector servicer behind kyb.v1.Detector.

There is no detector model yet: Detect validates the image and answers no boxes, and the gateway
then searches the whole photo as one region (what the embedded engine does). The torchvision
detector (Faster R-CNN family, trained from Pascal VOC boxes, weights verified on load) comes with
issue 6 behind this same contract: ``build_detector(*, weights=..., num_classes=...)`` plugs in here.
"""

from __future__ import annotations

from typing import Any

import grpc

from kyb.errors import InvalidRequest
from kyb.imageio import decode_image
from kyb.rpc import ServiceConfig, decoded_from_proto
from kyb.v1 import detector_pb2, detector_pb2_grpc

__all__ = ["DetectorServicer"]


class DetectorServicer(detector_pb2_grpc.DetectorServicer):
    """Detect: boxes of likely logos and covers, best first (none until issue 6 brings a model)."""

    #: Reported as DetectResponse.model_version; empty = no model.
    model_version = ""

    def __init__(self, config: ServiceConfig) -> None:
        self._config = config

    def Detect(self, request: detector_pb2.DetectRequest, context: grpc.ServicerContext) -> Any:
        source = request.WhichOneof("source")
        if source == "image":
            limits = self._config.engine.limits
            decode_image(request.image, limits, max_side=limits.search_max_side)  # refuses bad images
        elif source == "decoded":
            decoded_from_proto(request.decoded)
        else:
            raise InvalidRequest("send the image as bytes (image) or pixels (decoded)")
        if request.min_score < 0 or request.min_score > 1 or request.max_boxes < 0:
            raise InvalidRequest("min_score must be in 0..1 and max_boxes >= 0")
        return detector_pb2.DetectResponse(detections=[], model_version=self.model_version)
