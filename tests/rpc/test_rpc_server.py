"""Server plumbing on a real server: status mapping, metrics, retries, deadlines, health."""

from __future__ import annotations

import dataclasses
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kyb.catalog import CatalogUnavailable
from kyb.config import DetectorConfig, EngineConfig
from kyb.errors import DeadlineExceeded, ImageTooLarge, NotFound, Unavailable
from kyb.rpc import Deadline, RetryPolicy, RpcConfig, ServiceConfig, call_unary, open_channel
from kyb.v1 import detector_pb2, detector_pb2_grpc
from kyb_services.detector.server import create_server
from kyb_services.detector.servicer import DetectorServicer


class ScriptedDetector(DetectorServicer):
    """Raises the next scripted error (or answers when the script is empty)."""

    def __init__(self, config: ServiceConfig, script: list[BaseException]) -> None:
        super().__init__(config)
        self.script = script
        self.calls = 0

    def Detect(self, request, context):
        self.calls += 1
        if self.script:
            raise self.script.pop(0)
        return detector_pb2.DetectResponse(model_version="scripted")


@pytest.fixture
def detector(tmp_path) -> Iterator[tuple[ScriptedDetector, grpc.Channel, object]]:
    config = ServiceConfig(
        rpc=RpcConfig(host="127.0.0.1", grace_s=0, metrics_port=0),
        engine=EngineConfig(detector=DetectorConfig(port=0)),
    )
    config = config.replace(engine=dataclasses.replace(config.engine, index_dir=tmp_path / "i"))
    servicer = ScriptedDetector(config, [])
    server, port = create_server(config, servicer=servicer)
    server.start()
    channel = open_channel(f"127.0.0.1:{port}", config.rpc)
    yield servicer, channel, server
    channel.close()
    server.stop(0).wait(5)


def _detect(channel: grpc.Channel, **kwargs):
    stub = detector_pb2_grpc.DetectorStub(channel)
    return stub.Detect(detector_pb2.DetectRequest(image=b"x", **kwargs), timeout=5)


@pytest.mark.parametrize(
    ("error", "code", "details"),
    [
        (
            ImageTooLarge("image is 9000x9000 pixels\nsecond line"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "image is",
        ),
        (NotFound("no band x"), grpc.StatusCode.NOT_FOUND, "no band x"),
        (CatalogUnavailable("database is locked"), grpc.StatusCode.UNAVAILABLE, "database is locked"),
        (RuntimeError("secret internals"), grpc.StatusCode.INTERNAL, "internal error (RuntimeError)"),
    ],
)
def test_errors_become_statuses_with_one_line(detector, error, code, details):
    servicer, channel, server = detector
    servicer.script.append(error)
    with pytest.raises(grpc.RpcError) as failure:
        _detect(channel)
    assert failure.value.code() == code
    assert failure.value.details().startswith(details)
    assert "\n" not in failure.value.details() and "secret" not in failure.value.details()
    assert server.metrics.count("kyb_rpc_errors_total", service="Detector", method="Detect", code=code.name) == 1


def test_no_model_detector_answers_no_boxes_and_refuses_bad_images(tmp_path):
    config = ServiceConfig(
        rpc=RpcConfig(host="127.0.0.1", grace_s=0), engine=EngineConfig(detector=DetectorConfig(port=0))
    )
    server, port = create_server(config)
    server.start()
    try:
        with open_channel(f"127.0.0.1:{port}", config.rpc) as channel:
            with pytest.raises(grpc.RpcError) as failure:
                _detect(channel)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0).wait(5)


def test_metrics_are_served_over_http(detector):
    _servicer, channel, server = detector
    _detect(channel)
    port = server.metrics.serve_http(0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert 'kyb_rpc_handled_total{code="OK",method="Detect",service="Detector"} 1.0' in text
    assert "kyb_rpc_latency_seconds_bucket" in text


def test_unavailable_is_retried_with_backoff_only_when_allowed(detector):
    servicer, channel, server = detector
    stub = detector_pb2_grpc.DetectorStub(channel)
    request = detector_pb2.DetectRequest(image=b"x")
    servicer.script.extend([Unavailable("busy"), Unavailable("busy")])
    policy = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02)
    reply = call_unary(
        stub.Detect,
        request,
        deadline=Deadline(5),
        policy=policy,
        target="detector",
        name="Detect",
        metrics=server.metrics,
    )
    assert reply.model_version == "scripted" and servicer.calls == 3
    assert server.metrics.count("kyb_rpc_client_retries_total", target="detector", method="Detect") == 2
    servicer.script.append(Unavailable("busy"))
    with pytest.raises(Unavailable, match="detector: busy"):
        call_unary(stub.Detect, request, deadline=Deadline(5), policy=None, target="detector")
    with pytest.raises(DeadlineExceeded):
        call_unary(stub.Detect, request, deadline=Deadline(0), policy=policy, target="detector")
    assert servicer.calls == 4  # the expired deadline never reached the server


def test_max_connection_age_makes_clients_reconnect(tmp_path):
    """rpc.max_connection_age_s: the server ends old connections (so clients re-resolve and reach
    replicas added since); calls keep succeeding across the reconnect."""
    import threading
    import time

    config = ServiceConfig(
        rpc=RpcConfig(host="127.0.0.1", grace_s=0.2, max_connection_age_s=0.3),
        engine=EngineConfig(detector=DetectorConfig(port=0)),
    )
    config = config.replace(engine=dataclasses.replace(config.engine, index_dir=tmp_path / "i"))
    server, port = create_server(config, servicer=ScriptedDetector(config, []))
    server.start()
    channel = open_channel(f"127.0.0.1:{port}", config.rpc)
    states: list[grpc.ChannelConnectivity] = []
    reconnected = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if grpc.ChannelConnectivity.READY in states[:-1] and state != grpc.ChannelConnectivity.READY:
            reconnected.set()

    channel.subscribe(watch)
    try:
        assert _detect(channel).model_version == "scripted"
        assert reconnected.wait(5), states  # the server closed the aged connection
        time.sleep(0.1)
        assert _detect(channel).model_version == "scripted"
    finally:
        channel.unsubscribe(watch)
        channel.close()
        server.stop(0).wait(5)
    with pytest.raises(Exception, match="max_connection_age_s"):
        RpcConfig(max_connection_age_s=-1)
