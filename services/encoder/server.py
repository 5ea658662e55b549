"""Builds the encoder server: ``create_server(config) -> (server, port)`` for main and the tests."""

from __future__ import annotations

from kyb.rpc import Metrics, ServiceConfig, ServiceServer
from kyb.v1 import encoder_pb2, encoder_pb2_grpc
from kyb_services.encoder.servicer import EncoderServicer

__all__ = ["SERVICE_NAME", "create_server"]

SERVICE_NAME = encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name


def create_server(
    config: ServiceConfig, *, servicer: EncoderServicer | None = None, metrics: Metrics | None = None
) -> tuple[ServiceServer, int]:
    """An encoder bound to ``encoder.port`` (0 = any free port), not started.

    Health is NOT_SERVING until the codebook is loaded (the load starts with the server).
    """
    servicer = servicer if servicer is not None else EncoderServicer(config)
    server = ServiceServer(config, "encoder", metrics=metrics)
    server.add_service(SERVICE_NAME, encoder_pb2_grpc.add_EncoderServicer_to_server, servicer, ready=False)
    server.on_start(lambda: servicer.start(lambda ready: server.set_serving(SERVICE_NAME, ready)))
    server.on_stop(servicer.close)
    port = server.bind(config.encoder.port)
    return server, port
