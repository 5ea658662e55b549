"""Bearer tokens: refused without one, accepted with one; probes and reflection stay open."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kyb.client import GatewayClient
from kyb.errors import Unauthenticated
from kyb.v1 import gateway_pb2, matcher_pb2, matcher_pb2_grpc

TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ((), "missing bearer token"),
        ((("authorization", "Bearer wrong"),), "invalid bearer token"),
        ((("authorization", f"Basic {TOKEN}"),), "malformed"),
    ],
)
def test_missing_or_wrong_token_is_unauthenticated(corpus, make_stack, metadata, words):
    stack, stub = make_stack(1, ingest=False, tokens=(TOKEN,))
    photo = corpus.photo([2], seed=7)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=5, metadata=metadata)
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert words in failure.value.details()
    # the internal services check the same tokens (the gateway sends its own)
    with grpc.insecure_channel(f"127.0.0.1:{stack.matchers[0].port}") as channel:
        with pytest.raises(grpc.RpcError) as inner:
            matcher_pb2_grpc.MatcherStub(channel).Stats(matcher_pb2.StatsRequest(), timeout=5, metadata=metadata)
        assert inner.value.code() == grpc.StatusCode.UNAUTHENTICATED
    counted = stack.gateway.metrics.count(
        "kyb_rpc_handled_total", service="Gateway", method="Identify", code="UNAUTHENTICATED"
    )
    assert counted == 1


def test_right_token_is_served_and_probes_stay_open(corpus, make_stack):
    stack, _stub = make_stack(1, tokens=(TOKEN,))
    address = f"127.0.0.1:{stack.gateway_port}"
    with GatewayClient(address, token=TOKEN, timeout=10) as client:
        answer = client.identify(corpus.photo([2], seed=7))
        assert [o["band"]["band_id"] for o in answer["objects"]] == ["band-2"]
    with GatewayClient(address, token="nope", timeout=10) as client, pytest.raises(Unauthenticated):
        client.get_band("band-2")
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=5)
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"kyb.v1.Gateway", "grpc.health.v1.Health"} <= names
