"""The web front's HTTP/JSON API against a real stack: one test per status it answers."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from kyb.client import GatewayClient
from tests.services.conftest import Corpus, WebFront, start_stack, start_web


def _post(url: str, body: bytes, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/identify", content=body, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_identify_is_the_gateway_answer_as_json(web_front: WebFront, corpus: Corpus) -> None:
    photo = corpus.photo([0, 1], seed=3)
    reply = _post(web_front.url, photo, headers={"Content-Type": "image/jpeg"})
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    with GatewayClient(web_front.gateway_address, timeout=30) as client:
        direct = client.identify(photo)
    assert sorted(o["band"]["band_id"] for o in answer["objects"]) == ["band-0", "band-1"]
    assert [o["outline"] for o in answer["objects"]] == [o["outline"] for o in direct["objects"]]
    assert all(len(o["outline"]) == 4 for o in answer["objects"])
    assert answer["image"] == direct["image"] and answer["partial"] is False


def test_crop_searches_only_the_box(web_front: WebFront, corpus: Corpus) -> None:
    photo = corpus.photo([0, 1], seed=3)
    # compose_photo puts cover 0 at about x 20..280, y 60..320 of a 720x480 photo.
    reply = _post(web_front.url, photo, params={"crop": "0,30,330,360"})
    assert reply.status_code == 200, reply.text
    assert [o["band"]["band_id"] for o in reply.json()["objects"]] == ["band-0"]


def test_band_by_id_and_unknown_band(web_front: WebFront) -> None:
    reply = httpx.get(f"{web_front.url}/api/v1/bands/band-2", timeout=10)
    assert reply.status_code == 200
    assert reply.json()["band"]["name"] == "Band 2"
    missing = httpx.get(f"{web_front.url}/api/v1/bands/no-such-band", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "params"),
    [(b"this is not a photo", {}), (b"", {}), (b"\xff\xd8\xff\xe0 truncated", {}), (None, {"crop": "5,5,1,1"})],
    ids=["text", "empty", "truncated-jpeg", "bad-crop"],
)
def test_bad_input_is_400(web_front: WebFront, corpus: Corpus, body: bytes | None, params: dict[str, str]) -> None:
    reply = _post(web_front.url, corpus.photo([0]) if body is None else body, params=params)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["message"] and "\n" not in error["message"]


def test_over_the_size_limit_is_413(web_front: WebFront, corpus: Corpus) -> None:
    config = web_front.stack.config
    small = config.replace(
        engine=config.engine.replace(limits=dataclasses.replace(config.engine.limits, max_bytes=4096))
    )
    server = start_web(small, web_front.gateway_address)
    try:
        url = f"http://127.0.0.1:{server.port}"
        photo = corpus.photo([0, 1])
        assert len(photo) > 4096
        reply = _post(url, photo)
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        # Sent without a Content-Length (chunked), it is cut off while streaming, with the same answer.
        streamed = httpx.post(f"{url}/api/v1/identify", content=iter([photo[:3000], photo[3000:]]), timeout=30)
        assert streamed.status_code == 413
    finally:
        server.stop()


def test_token_auth_is_401_without_the_token(web_front: WebFront, corpus: Corpus) -> None:
    config = web_front.stack.config
    guarded = config.replace(rpc=dataclasses.replace(config.rpc, tokens=("s3cret",)))
    server = start_web(guarded, web_front.gateway_address)
    try:
        url = f"http://127.0.0.1:{server.port}"
        photo = corpus.photo([2])
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            reply = _post(url, photo, headers=headers)
            assert reply.status_code == 401, headers
            assert reply.headers["www-authenticate"] == "Bearer"
            assert reply.json()["error"]["code"] == "UNAUTHENTICATED"
        assert httpx.get(f"{url}/api/v1/bands/band-2", timeout=10).status_code == 401
        ok = _post(url, photo, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["objects"][0]["band"]["band_id"] == "band-2"
        # The page, its files and the API description stay open, like the gRPC health checks.
        assert httpx.get(f"{url}/", timeout=10).status_code == 200
        assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 200
    finally:
        server.stop()


def test_deadline_is_504(web_front: WebFront, corpus: Corpus) -> None:
    server = start_web(web_front.stack.config, web_front.gateway_address, deadline_s=0.001)
    try:
        reply = _post(f"http://127.0.0.1:{server.port}", corpus.photo([0, 1]))
        assert reply.status_code == 504 and reply.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_gateway_down_is_503(corpus: Corpus, tmp_path) -> None:
    stack, channel = start_stack(corpus, tmp_path, shards=1, ingest=False)
    server = start_web(stack.config, f"127.0.0.1:{stack.gateway_port}")
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{url}/api/v1/bands/band-0", timeout=10).status_code == 404  # up: it answers
        channel.close()
        stack.stop()
        reply = _post(url, corpus.photo([0]))
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["code"] == "UNAVAILABLE" and "gateway" in reply.json()["error"]["message"]
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # the front itself stays up
    finally:
        server.stop()
        stack.stop()


def test_openapi_describes_the_endpoints(web_front: WebFront) -> None:
    spec = httpx.get(f"{web_front.url}/openapi.json", timeout=10).json()
    identify = spec["paths"]["/api/v1/identify"]["post"]
    assert "image/jpeg" in identify["requestBody"]["content"]
    assert {"200", "400", "401", "413", "503", "504"} <= set(identify["responses"])
    assert identify["parameters"][0]["name"] == "crop"
    assert "404" in spec["paths"]["/api/v1/bands/{band_id}"]["get"]["responses"]
    assert "IdentifyAnswer" in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_calls_are_counted_per_endpoint_and_status(web_front: WebFront) -> None:
    metrics = web_front.server.servicer.metrics
    sample = "kyb_rpc_handled_total"
    before = metrics.count(sample, service="Web", method="GetBand", code="HTTP_404")
    ok_before = metrics.count(sample, service="Web", method="GetBand", code="OK")
    httpx.get(f"{web_front.url}/api/v1/bands/nobody", timeout=10)
    httpx.get(f"{web_front.url}/api/v1/bands/band-1", timeout=10)
    assert metrics.count(sample, service="Web", method="GetBand", code="HTTP_404") == before + 1
    assert metrics.count(sample, service="Web", method="GetBand", code="OK") == ok_before + 1
    assert b'kyb_rpc_latency_seconds_count{method="GetBand",service="Web"}' in metrics.text()
