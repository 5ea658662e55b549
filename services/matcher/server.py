"""Builds the matcher server: ``create_server(config) -> (server, port)`` for main and the tests."""

from __future__ import annotations

from kyb.rpc import Metrics, ServiceConfig, ServiceServer
from kyb.v1 import matcher_pb2, matcher_pb2_grpc
from kyb_services.matcher.servicer import MatcherServicer

__all__ = ["SERVICE_NAME", "create_server"]

SERVICE_NAME = matcher_pb2.DESCRIPTOR.services_by_name["Matcher"].full_name


def create_server(
    config: ServiceConfig, *, servicer: MatcherServicer | None = None, metrics: Metrics | None = None
) -> tuple[ServiceServer, int]:
    """A matcher for shard ``matcher.shard`` bound to ``matcher.port`` (0 = any free port), not started.

    Health is NOT_SERVING until the shard's index is loaded (the load starts with the server).
    """
    servicer = servicer if servicer is not None else MatcherServicer(config)
    server = ServiceServer(config, f"matcher {servicer.name}", metrics=metrics)
    server.add_service(SERVICE_NAME, matcher_pb2_grpc.add_MatcherServicer_to_server, servicer, ready=False)
    server.on_start(lambda: servicer.start(lambda ready: server.set_serving(SERVICE_NAME, ready)))
    server.on_stop(servicer.close)
    port = server.bind(config.matcher.port)
    return server, port
