"""The web front's HTTP/JSON API against a real stack: one test per status it answers, every
endpoint next to the gateway call it stands for, errors as RFC 9457 problem details."""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import zlib

import httpx
import pytest

from kyb.client import GatewayClient
from kyb_services.web.servicer import MAX_BATCH, RETRY_AFTER_S
from tests.services.conftest import Corpus, WebFront, draw_cover, encode, start_stack, start_web


def _post(url: str, body: bytes, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/identify", content=body, timeout=30, **kwargs)  # type: ignore[arg-type]


def _problem(reply: httpx.Response, status: int, code: str) -> dict:
    """The reply is an RFC 9457 problem with this status and gRPC status name, on one line."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    problem = reply.json()
    assert {"type", "title", "status", "detail", "instance", "code"} <= set(problem)
    assert problem["status"] == status and problem["code"] == code and problem["type"] == "about:blank"
    assert problem["detail"] and "\n" not in problem["detail"]
    assert re.fullmatch(r"[0-9a-f]{12}", problem["request_id"]), problem
    assert reply.headers["x-request-id"] == problem["request_id"]
    return problem


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
    assert set(answer) == set(direct) - {"request_id"}  # every field of the gateway's answer comes through


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
    assert _problem(missing, 404, "NOT_FOUND")["instance"] == "/api/v1/bands/no-such-band"


@pytest.mark.parametrize(
    ("body", "params"),
    [(b"this is not a photo", {}), (b"", {}), (b"\xff\xd8\xff\xe0 truncated", {}), (None, {"crop": "5,5,1,1"})],
    ids=["text", "empty", "truncated-jpeg", "bad-crop"],
)
def test_bad_input_is_400(web_front: WebFront, corpus: Corpus, body: bytes | None, params: dict[str, str]) -> None:
    reply = _post(web_front.url, corpus.photo([0]) if body is None else body, params=params)
    _problem(reply, 400, "INVALID_ARGUMENT")


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
        _problem(reply, 413, "RESOURCE_EXHAUSTED")
        # Sent without a Content-Length (chunked), it is cut off while streaming, with the same answer.
        streamed = httpx.post(f"{url}/api/v1/identify", content=iter([photo[:3000], photo[3000:]]), timeout=30)
        assert streamed.status_code == 413
    finally:
        server.stop()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with no pixels behind it (a bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(9_000, 9_000), (60_000, 60_000), (1_000_000, 100)])
def test_pixel_limits_are_413_in_the_projects_words(web_front: WebFront, width: int, height: int) -> None:
    problem = _problem(_post(web_front.url, _png_header(width, height)), 413, "RESOURCE_EXHAUSTED")
    limit = web_front.stack.config.engine.limits.max_pixels
    assert re.fullmatch(rf"gateway: image is .*pixels; the limit is {limit}", problem["detail"]), problem["detail"]


def test_every_answer_carries_a_request_id(web_front: WebFront, corpus: Corpus) -> None:
    ok = _post(web_front.url, corpus.photo([0]))
    assert ok.status_code == 200 and re.fullmatch(r"[0-9a-f]{12}", ok.headers["x-request-id"])
    assert _post(web_front.url, corpus.photo([0])).headers["x-request-id"] != ok.headers["x-request-id"]
    # A proxy's own id (a plain token) is kept; anything else is replaced.
    given = httpx.get(f"{web_front.url}/healthz", headers={"X-Request-Id": "edge-42.a"}, timeout=10)
    assert given.headers["x-request-id"] == "edge-42.a"
    odd = httpx.get(f"{web_front.url}/healthz", headers={"X-Request-Id": "a b<script>"}, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{12}", odd.headers["x-request-id"])


def test_token_auth_is_401_without_the_token(web_front: WebFront, corpus: Corpus) -> None:
    config = web_front.stack.config
    guarded = config.replace(rpc=dataclasses.replace(config.rpc, tokens=("s3cret",)))
    server = start_web(guarded, web_front.gateway_address)
    try:
        url = f"http://127.0.0.1:{server.port}"
        photo = corpus.photo([2])
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            reply = _post(url, photo, headers=headers)
            _problem(reply, 401, "UNAUTHENTICATED")
            assert reply.headers["www-authenticate"] == "Bearer"
        # Every API endpoint takes the same token.
        for method, path in [("GET", "/api/v1/bands/band-2"), ("GET", "/api/v1/bands?q=band"),
                             ("GET", "/api/v1/references"), ("GET", "/api/v1/references/x"),
                             ("DELETE", "/api/v1/references/x"), ("POST", "/api/v1/references"),
                             ("POST", "/api/v1/identify/batch")]:  # fmt: skip
            _problem(httpx.request(method, f"{url}{path}", timeout=10), 401, "UNAUTHENTICATED")
        ok = _post(url, photo, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["objects"][0]["band"]["band_id"] == "band-2"
        # The page, its files and the API description stay open, like the gRPC health checks.
        assert httpx.get(f"{url}/", timeout=10).status_code == 200
        assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 200
        assert httpx.get(f"{url}/docs", timeout=10).status_code == 200
    finally:
        server.stop()


def test_deadline_is_504(web_front: WebFront, corpus: Corpus) -> None:
    server = start_web(web_front.stack.config, web_front.gateway_address, deadline_s=0.001)
    try:
        reply = _post(f"http://127.0.0.1:{server.port}", corpus.photo([0, 1]))
        _problem(reply, 504, "DEADLINE_EXCEEDED")
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_gateway_down_is_503_with_retry_after(corpus: Corpus, tmp_path) -> None:
    stack, channel = start_stack(corpus, tmp_path, shards=1, ingest=False)
    # The client waits for a gateway that restarts, up to the front's deadline: keep it short here.
    server = start_web(stack.config, f"127.0.0.1:{stack.gateway_port}", deadline_s=1.0)
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{url}/api/v1/bands/band-0", timeout=10).status_code == 404  # up: it answers
        channel.close()
        stack.stop()
        reply = _post(url, corpus.photo([0]))
        problem = _problem(reply, 503, "UNAVAILABLE")
        assert "gateway" in problem["detail"] and reply.headers["retry-after"] == str(RETRY_AFTER_S)
        _problem(httpx.get(f"{url}/api/v1/bands?q=band", timeout=10), 503, "UNAVAILABLE")
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # the front itself stays up
    finally:
        server.stop()
        stack.stop()


#: Every endpoint of the API (the page, its files and the docs pages are not in the description).
_ENDPOINTS = {
    ("/api/v1/identify", "post"),
    ("/api/v1/identify/batch", "post"),
    ("/api/v1/bands", "get"),
    ("/api/v1/bands/{band_id}", "get"),
    ("/api/v1/references", "post"),
    ("/api/v1/references", "get"),
    ("/api/v1/references/{reference_id}", "get"),
    ("/api/v1/references/{reference_id}", "delete"),
    ("/healthz", "get"),
}


def test_openapi_describes_every_endpoint(web_front: WebFront) -> None:
    spec = httpx.get(f"{web_front.url}/openapi.json", timeout=10).json()
    listed = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert listed == _ENDPOINTS
    identify = spec["paths"]["/api/v1/identify"]["post"]
    assert "image/jpeg" in identify["requestBody"]["content"]
    assert {"200", "400", "401", "413", "503", "504"} <= set(identify["responses"])
    assert identify["parameters"][0]["name"] == "crop"
    for path, method in _ENDPOINTS - {("/healthz", "get")}:
        operation = spec["paths"][path][method]
        assert {"401", "503", "504"} <= set(operation["responses"]), (path, method)
        problem = operation["responses"]["503"]["content"]["application/problem+json"]["schema"]
        assert problem == {"$ref": "#/components/schemas/Problem"}
        assert operation["security"] == [{"HTTPBearer": []}], (path, method)
    assert "404" in spec["paths"]["/api/v1/bands/{band_id}"]["get"]["responses"]
    form = spec["paths"]["/api/v1/references"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert {"image", "kind", "band", "album"} <= set(form["schema"]["properties"])
    schemas = spec["components"]["schemas"]
    assert {"IdentifyAnswer", "BandList", "ReferencePage", "ReferenceInfo", "BatchAnswer", "Problem"} <= set(schemas)
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(web_front: WebFront, page: str) -> None:
    html = httpx.get(f"{web_front.url}{page}", timeout=10)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text) + re.findall(
        r"""url: *["']([^"']+)["']""", html.text
    )
    assert assets and "/openapi.json" in html.text
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        assert httpx.get(f"{web_front.url}{asset}", timeout=10).status_code == 200, asset
    assert not re.search(r"https?://(?!www\.w3\.org)", html.text), "a docs page names an outside host"


def test_unknown_endpoint_is_a_problem_too(web_front: WebFront) -> None:
    missing = _problem(httpx.get(f"{web_front.url}/api/v1/nothing-here", timeout=10), 404, "NOT_FOUND")
    assert missing["detail"] == "no such endpoint: /api/v1/nothing-here"  # the caller's own path, kept
    _problem(httpx.put(f"{web_front.url}/api/v1/identify", content=b"x", timeout=10), 405, "UNIMPLEMENTED")
    # Allow names every method of the path (two routes share this one).
    wrong = httpx.put(f"{web_front.url}/api/v1/references/some-id", timeout=10)
    assert _problem(wrong, 405, "UNIMPLEMENTED") and wrong.headers["allow"] == "DELETE, GET"


def test_band_search_is_the_gateways(web_front: WebFront) -> None:
    reply = httpx.get(f"{web_front.url}/api/v1/bands", params={"q": "band 3"}, timeout=10)
    assert reply.status_code == 200, reply.text
    with GatewayClient(web_front.gateway_address, timeout=30) as client:
        assert reply.json()["bands"] == client.search_bands("band 3")
    assert reply.json()["bands"][0]["band_id"] == "band-3"  # the exact name first
    limited = httpx.get(f"{web_front.url}/api/v1/bands", params={"q": "band", "limit": 2}, timeout=10)
    assert len(limited.json()["bands"]) == 2
    _problem(httpx.get(f"{web_front.url}/api/v1/bands", timeout=10), 400, "INVALID_ARGUMENT")
    _problem(httpx.get(f"{web_front.url}/api/v1/bands", params={"q": "x", "limit": 0}, timeout=10), 400,
             "INVALID_ARGUMENT")  # fmt: skip


def _add(url: str, image: bytes, fields: dict[str, str], name: str = "new-cover.png") -> httpx.Response:
    return httpx.post(f"{url}/api/v1/references", files={"image": (name, image, "image/png")}, data=fields,
                      timeout=30)  # fmt: skip


def test_references_add_get_list_identify_delete(web_front: WebFront, corpus: Corpus) -> None:
    url = web_front.url
    cover = draw_cover(99)
    band = {"band_id": "band-new", "name": "The Newcomers", "country": "Sweden", "genre": "Doom Metal"}
    album = {"album_id": "band-new/first", "band_id": "band-new", "title": "First Light", "year": 2024}
    fields = {"kind": "album_cover", "band": json.dumps(band), "album": json.dumps(album)}
    added = _add(url, encode(cover), fields)
    assert added.status_code == 201, added.text
    stored = added.json()
    assert stored["status"] == "added" and stored["source"] == "new-cover.png"
    location = added.headers["location"]
    assert location == f"/api/v1/references/{stored['reference_id']}"

    record = httpx.get(f"{url}{location}", timeout=10).json()
    assert (
        record["band_id"] == "band-new" and record["album_id"] == "band-new/first" and record["kind"] == "album_cover"
    )
    with GatewayClient(web_front.gateway_address, timeout=30) as client:
        assert record == client.get_reference(stored["reference_id"])
    page = httpx.get(f"{url}/api/v1/references", params={"band_id": "band-new"}, timeout=10).json()
    assert [r["reference_id"] for r in page["references"]] == [stored["reference_id"]] and not page["next_page_token"]
    assert httpx.get(f"{url}/api/v1/bands/band-new", timeout=10).json()["albums"][0]["title"] == "First Light"
    again = _add(url, encode(cover), fields)
    assert again.status_code == 200 and again.json()["status"] == "unchanged"

    from tests.services.conftest import compose_photo

    photo = encode(compose_photo([cover], seed=8), ".jpg")
    found = _post(url, photo).json()["objects"]
    assert [(o["band"]["name"], o["album"]["title"]) for o in found] == [("The Newcomers", "First Light")]

    deleted = httpx.delete(f"{url}{location}", timeout=10)
    assert deleted.status_code == 200 and deleted.json()["deleted_from_catalog"] is True
    _problem(httpx.delete(f"{url}{location}", timeout=10), 404, "NOT_FOUND")
    _problem(httpx.get(f"{url}{location}", timeout=10), 404, "NOT_FOUND")
    assert _post(url, photo).json()["objects"] == []


def test_references_paginate(web_front: WebFront) -> None:
    first = httpx.get(f"{web_front.url}/api/v1/references", params={"page_size": 4}, timeout=10).json()
    rest = httpx.get(f"{web_front.url}/api/v1/references",
                     params={"page_size": 4, "page_token": first["next_page_token"]}, timeout=10).json()  # fmt: skip
    ids = [r["reference_id"] for r in first["references"] + rest["references"]]
    assert len(first["references"]) == 4 and len(ids) == len(set(ids)) == 6 and rest["next_page_token"] == ""
    logos = httpx.get(f"{web_front.url}/api/v1/references", params={"kind": "logo"}, timeout=10).json()
    assert logos["references"] == []  # the corpus holds album covers only
    _problem(httpx.get(f"{web_front.url}/api/v1/references", params={"kind": "poster"}, timeout=10), 400,
             "INVALID_ARGUMENT")  # fmt: skip
    _problem(httpx.get(f"{web_front.url}/api/v1/references", params={"page_token": "nonsense"}, timeout=10), 400,
             "INVALID_ARGUMENT")  # fmt: skip


@pytest.mark.parametrize(
    ("image", "fields", "status"),
    [
        (b"not an image at all", {"kind": "logo", "band_id": "band-1"}, 400),
        (None, {"band_id": "band-1"}, 400),  # no kind
        (None, {"kind": "logo", "band_id": "band-1", "band": "{not json"}, 400),
        (None, {"kind": "logo", "band_id": "band-1", "regions": "[[5, 5, 1, 1]]"}, 400),
    ],
    ids=["not-an-image", "no-kind", "bad-band-json", "bad-region"],
)
def test_bad_references_are_400(
    web_front: WebFront, corpus: Corpus, image: bytes | None, fields: dict, status: int
) -> None:
    reply = _add(web_front.url, corpus.images[1] if image is None else image, fields)
    _problem(reply, status, "INVALID_ARGUMENT")


def test_uploads_need_a_length_and_a_form(web_front: WebFront) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="kind"\r\n\r\nlogo\r\n--b--\r\n'
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    chunked = httpx.post(f"{web_front.url}/api/v1/references", content=iter([body]), headers=headers, timeout=10)
    _problem(chunked, 411, "INVALID_ARGUMENT")
    _problem(httpx.post(f"{web_front.url}/api/v1/identify/batch", content=b"x", timeout=10), 400, "INVALID_ARGUMENT")


def test_batch_identify_answers_each_photo(web_front: WebFront, corpus: Corpus) -> None:
    photos = [corpus.photo([0, 1], seed=3), b"this is not a photo", corpus.photo([4], seed=6)]
    files = [("photos", (f"p{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
    reply = httpx.post(f"{web_front.url}/api/v1/identify/batch", files=files, timeout=60)
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [(r["index"], r["filename"]) for r in results] == [(0, "p0.jpg"), (1, "p1.jpg"), (2, "p2.jpg")]
    single = _post(web_front.url, photos[0]).json()
    assert [o["outline"] for o in results[0]["answer"]["objects"]] == [o["outline"] for o in single["objects"]]
    assert results[0]["error"] is None and [o["band"]["band_id"] for o in results[2]["answer"]["objects"]] == ["band-4"]
    error = results[1]["error"]
    assert results[1]["answer"] is None and error["status"] == 400 and error["code"] == "INVALID_ARGUMENT"
    assert error["instance"] == "p1.jpg"
    too_many = [("photos", (f"p{i}.jpg", photos[2], "image/jpeg")) for i in range(MAX_BATCH + 1)]
    _problem(httpx.post(f"{web_front.url}/api/v1/identify/batch", files=too_many, timeout=60), 400, "INVALID_ARGUMENT")


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


def test_band_search_by_name_with_filters(web_front: WebFront) -> None:
    reply = httpx.get(f"{web_front.url}/api/v1/bands", params={"q": "Band 3"}, timeout=20)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["bands"][0]["band_id"] == "band-3" and answer["bands"][0]["score"] > 0
    # The corpus catalog has no band vectors: names only, and the answer says so in one line.
    assert answer["mode"] == "name" and "searching names only" in answer["notice"]
    formed = httpx.get(f"{web_front.url}/api/v1/bands", params={"q": "band", "formed": "1992..1993"}, timeout=20)
    assert sorted(b["band_id"] for b in formed.json()["bands"]) == ["band-2", "band-3"]
    card = httpx.get(f"{web_front.url}/api/v1/bands/band-3", timeout=10).json()
    assert card["similar_bands"] == []  # similar bands come from band vectors, which this catalog lacks


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "q"),
        ({"q": ""}, "query"),
        ({"q": "band", "formed": "90s"}, "bad year range"),
        ({"q": "band", "country": "Atlantis"}, "unknown country"),
        ({"q": "band", "status": "alive"}, "unknown status"),
        ({"q": "band", "limit": "500"}, "limit"),
    ],
)
def test_band_search_bad_input_is_400(web_front: WebFront, params: dict[str, str], message: str) -> None:
    reply = httpx.get(f"{web_front.url}/api/v1/bands", params=params, timeout=20)
    assert message in _problem(reply, 400, "INVALID_ARGUMENT")["detail"]
