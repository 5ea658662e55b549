"""GatewayClient rides out a gateway restart: gRPC's retry policy, within the call's deadline."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from kyb.client import GatewayClient
from kyb.errors import Unavailable
from kyb.rpc import ServiceServer
from kyb_services._local import LocalStack
from kyb_services.gateway.server import create_server as create_gateway
from tests.services.conftest import Corpus, StackFactory


def _stop_gateway(stack: LocalStack) -> None:
    stack.gateway.stop(0.0).wait(10)
    assert stack.gateway.wait_for_termination(10)


def _start_gateway_again(stack: LocalStack) -> ServiceServer:
    """A new gateway on the stopped one's port, over the same encoder, shards and catalog."""
    section = dataclasses.replace(stack.config.gateway, port=stack.gateway_port)
    server, port = create_gateway(stack.config.replace(gateway=section))
    assert port == stack.gateway_port
    server.start()
    return server


def _connection_refused(client: GatewayClient) -> tuple[threading.Event, Callable[[], None]]:
    """An event set once the client's channel has tried to connect and failed, and the function that
    stops watching (before the channel closes: gRPC's watcher thread must not outlive it)."""
    failed = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            failed.set()

    client.channel.subscribe(watch, try_to_connect=False)
    return failed, lambda: client.channel.unsubscribe(watch)


def _objects(answer: dict) -> list[tuple[str, list]]:
    return [(o["band"]["band_id"], o["outline"]) for o in answer["objects"]]


@pytest.mark.timeout(120)
def test_a_gateway_stopped_and_started_mid_call_still_answers(corpus: Corpus, make_stack: StackFactory) -> None:
    stack, _ = make_stack(shards=1)
    photo = corpus.photo([1, 3], seed=4)
    restarted: ServiceServer | None = None
    with GatewayClient(f"127.0.0.1:{stack.gateway_port}", timeout=60) as client:
        before = client.identify(photo)
        _stop_gateway(stack)
        refused, stop_watching = _connection_refused(client)
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(client.identify, photo)
            assert refused.wait(30), "the call never tried the stopped gateway"
            stop_watching()
            assert not call.done()  # not failed: waiting for the gateway within its deadline
            restarted = _start_gateway_again(stack)
            try:
                after = call.result(timeout=60)
                assert client.get_band("band-3")["band"]["name"] == "Band 3"
            finally:
                restarted.stop(0.0).wait(10)
    assert _objects(after) == _objects(before) and len(after["objects"]) == 2


@pytest.mark.timeout(120)
def test_without_the_retry_policy_the_same_restart_fails_the_call(corpus: Corpus, make_stack: StackFactory) -> None:
    stack, _ = make_stack(shards=1)
    photo = corpus.photo([1], seed=4)
    with GatewayClient(f"127.0.0.1:{stack.gateway_port}", timeout=60, retry=None) as client:
        assert client.identify(photo)["objects"]
        _stop_gateway(stack)
        with pytest.raises(Unavailable):
            client.identify(photo)


@pytest.mark.timeout(60)
def test_a_gateway_that_stays_down_fails_clearly_at_the_deadline(corpus: Corpus, make_stack: StackFactory) -> None:
    stack, _ = make_stack(shards=1, ingest=False)
    _stop_gateway(stack)
    with GatewayClient(f"127.0.0.1:{stack.gateway_port}", timeout=1.0) as client:
        with pytest.raises(Unavailable, match="cannot connect") as idempotent:
            client.get_band("band-0")
        assert "\n" not in str(idempotent.value)
        # A delete is not retried (a second delete of a deleted reference is NOT_FOUND): it fails at once.
        with pytest.raises(Unavailable) as delete:
            client.delete_reference("anything")
        assert "no connection within" not in str(delete.value)
