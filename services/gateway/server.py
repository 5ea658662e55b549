"""Builds the gateway server: ``create_server(config) -> (server, port)`` for main and the tests."""

from __future__ import annotations

from kyb.rpc import Metrics, ServiceConfig, ServiceServer
from kyb.v1 import gateway_pb2, gateway_pb2_grpc
from kyb_services.gateway.servicer import GatewayServicer

__all__ = ["SERVICE_NAME", "create_server"]

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


def create_server(
    config: ServiceConfig, *, servicer: GatewayServicer | None = None, metrics: Metrics | None = None
) -> tuple[ServiceServer, int]:
    """A gateway bound to ``gateway.port`` (0 = any free port), not started.

    It is SERVING once started: a peer that is down makes answers partial or UNAVAILABLE, it does
    not take the gateway out of its load balancer.
    """
    server = ServiceServer(config, "gateway", metrics=metrics, public=True)
    servicer = servicer if servicer is not None else GatewayServicer(config, metrics=server.metrics)
    server.add_service(SERVICE_NAME, gateway_pb2_grpc.add_GatewayServicer_to_server, servicer, ready=True)
    server.on_stop(servicer.close)
    port = server.bind(config.gateway.port)
    return server, port
