"""Builds the detector server: ``create_server(config) -> (server, port)`` for main and the tests."""

from __future__ import annotations

from kyb.rpc import Metrics, ServiceConfig, ServiceServer
from kyb.v1 import detector_pb2, detector_pb2_grpc
from kyb_services.detector.servicer import DetectorServicer

__all__ = ["SERVICE_NAME", "create_server"]

SERVICE_NAME = detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name


def create_server(
    config: ServiceConfig, *, servicer: DetectorServicer | None = None, metrics: Metrics | None = None
) -> tuple[ServiceServer, int]:
    """A detector bound to ``detector.port`` (0 = any free port), not started.

    With ``detector.weights`` health is NOT_SERVING until the model is loaded, verified and warmed up
    (that starts with the server); without, it is SERVING at once and answers no boxes.
    """
    servicer = servicer if servicer is not None else DetectorServicer(config)
    server = ServiceServer(config, "detector", metrics=metrics)
    server.add_service(SERVICE_NAME, detector_pb2_grpc.add_DetectorServicer_to_server, servicer,
                       ready=servicer.model_version != "" or not servicer.has_model)  # fmt: skip
    server.on_start(lambda: servicer.start(lambda ready: server.set_serving(SERVICE_NAME, ready)))
    server.on_stop(servicer.close)
    port = server.bind(config.detector.port)
    return server, port
