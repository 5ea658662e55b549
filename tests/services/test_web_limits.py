"""The web front's size limits as clients meet them: a client that sends its whole body before
reading (Python's urllib) reads the 413 and its problem body, never a reset; a client that waits for
``100-continue`` is answered before it sends anything. No gateway is needed: these bodies are refused
before anything is forwarded (the gateway address is a closed port)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from kyb.rpc import RpcConfig, ServiceConfig
from kyb_services.web.server import WebServer
from tests.services.conftest import start_web

LIMIT = 64 * 1024
MESSAGE = rf"^image is (\d+|over {LIMIT}) bytes; the limit is {LIMIT}$"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def front() -> Iterator[WebServer]:
    config = ServiceConfig(rpc=RpcConfig(host="127.0.0.1"))
    limits = dataclasses.replace(config.engine.limits, max_bytes=LIMIT)
    config = config.replace(engine=config.engine.replace(limits=limits))
    server = start_web(config, f"127.0.0.1:{_closed_port()}", deadline_s=2.0)
    yield server
    server.stop()
    server.wait_for_termination(10)


def _check_problem(status: int, headers: http.client.HTTPMessage, body: bytes, pattern: str) -> dict:
    assert status == 413, body
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == 413 and problem["code"] == "RESOURCE_EXHAUSTED"
    assert problem["request_id"] and problem["request_id"] == headers["x-request-id"]
    assert re.match(pattern, problem["detail"]), problem["detail"]
    return problem


@pytest.mark.parametrize("size", [LIMIT + 1, 3 * 1024 * 1024, 40 * 1024 * 1024], ids=["just-over", "3MB", "40MB"])
def test_urllib_reads_the_413_of_a_body_it_sends_whole(front: WebServer, size: int) -> None:
    url = f"http://127.0.0.1:{front.port}/api/v1/identify"
    for _ in range(3):  # every time, not once by luck of timing
        request = urllib.request.Request(url, data=b"\xff" * size, method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        problem = _check_problem(info.value.code, info.value.headers, info.value.read(), MESSAGE)
        assert problem["detail"] == f"image is {size} bytes; the limit is {LIMIT}"


def test_a_chunked_body_is_cut_off_and_its_413_read(front: WebServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        chunks = (b"\xff" * 16384 for _ in range(64))  # 1 MiB, no Content-Length
        connection.request("POST", "/api/v1/identify", body=chunks, encode_chunked=True)
        reply = connection.getresponse()
        _check_problem(reply.status, reply.headers, reply.read(), MESSAGE)
        # The connection is still good for the next call.
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_a_client_that_waits_for_100_continue_is_answered_before_it_sends(front: WebServer) -> None:
    # It announces 1 GiB (far past what the front would read) and sends none of it.
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        head = (
            "POST /api/v1/identify HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {1 << 30}\r\nExpect: 100-continue\r\n\r\n"
        )
        sock.sendall(head.encode())
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status != 100  # no invitation to send the body
        _check_problem(reply.status, reply.headers, reply.read(), MESSAGE)


def test_upload_forms_over_the_limit_are_read_as_413_too(front: WebServer) -> None:
    url = f"http://127.0.0.1:{front.port}/api/v1/references"
    boundary = "kybtestboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'.encode()
        + b"\xff" * (2 * 1024 * 1024)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    _check_problem(info.value.code, info.value.headers, info.value.read(), r"^image is \d+ bytes; the limit is \d+$")
