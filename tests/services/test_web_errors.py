"""Errors that leave the web front name the failing stage and the remedy, never an address, port,
DSN, path or exception text, whatever is down behind it; the full text is in the log under the
request id the answer carries."""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
from pathlib import Path

import httpx
import pytest

from kyb_services._local import start_local
from tests.conftest import drop_database, scratch_database
from tests.services.conftest import Corpus, empty_shards, service_config, start_stack, start_web, wait_ready


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _calls(url: str, photo: bytes) -> list[httpx.Response]:
    """One call of every API endpoint, each of which needs the gateway (and what is behind it)."""
    form = {"kind": "album_cover", "band_id": "band-0"}
    return [
        httpx.post(f"{url}/api/v1/identify", content=photo, timeout=30),
        httpx.post(f"{url}/api/v1/identify/batch", files=[("photos", ("a.jpg", photo))], timeout=30),
        httpx.get(f"{url}/api/v1/bands", params={"q": "band"}, timeout=30),
        httpx.get(f"{url}/api/v1/bands/band-0", timeout=30),
        httpx.post(f"{url}/api/v1/references", data=form, files={"image": ("c.jpg", photo)}, timeout=30),
        httpx.get(f"{url}/api/v1/references", timeout=30),
        httpx.get(f"{url}/api/v1/references/ref-x", timeout=30),
        httpx.delete(f"{url}/api/v1/references/ref-x", timeout=30),
    ]


def _check_clean(replies: list[httpx.Response], internals: list[str]) -> list[dict]:
    """Every error body and header is free of ``internals``; returns the problems (batch items too)."""
    problems = []
    for reply in replies:
        shown = reply.text + "".join(f"{k}: {v}\n" for k, v in reply.headers.items())
        for secret in internals:
            assert secret not in shown, f"{reply.request.method} {reply.request.url.path} shows {secret!r}: {shown}"
        assert not re.search(r"Traceback|Errno|Exception|grpc|ipv[46]:|postgres(ql)?://|\w@\w", shown), shown
        if reply.headers["content-type"] == "application/problem+json":
            problems.append(reply.json())
        elif reply.request.url.path.endswith("/batch") and reply.status_code == 200:
            problems += [r["error"] for r in reply.json()["results"] if r["error"]]
    for problem in problems:
        assert problem["request_id"], problem
    return problems


def _internals(stack, tmp_path: Path, *extra: str) -> list[str]:
    ports = [stack.gateway_port, stack.encoder.port, *(m.port for m in stack.matchers)]
    if stack.detector is not None:
        ports.append(stack.detector.port)
    return ["127.0.0.1", "localhost", str(tmp_path), *(f":{p}" for p in ports), *extra]


@pytest.mark.timeout(120)
def test_no_internals_when_the_stages_behind_the_gateway_and_then_the_gateway_are_down(
    corpus: Corpus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack, channel = start_stack(corpus, tmp_path, shards=2)
    server = start_web(stack.config, f"127.0.0.1:{stack.gateway_port}", deadline_s=3.0)
    url = f"http://127.0.0.1:{server.port}"
    internals = _internals(stack, tmp_path)
    try:
        for inner in [stack.encoder, *stack.matchers, *([stack.detector] if stack.detector else [])]:
            inner.stop(0).wait(5)
        with caplog.at_level(logging.WARNING, logger="kyb_services.web.servicer"):
            problems = _check_clean(_calls(url, corpus.photo([0])), internals)
        # 503 naming the stage, or 504 when the gateway was still retrying it at the front's deadline.
        identify = problems[0]
        assert identify["status"] in (503, 504) and "try again" in identify["detail"], identify
        assert any(re.search(r"\b(detector|encoder|matcher)\b", p["detail"]) for p in problems if p["status"] == 503)
        # The operator's copy: the full text, under the id the caller was given.
        logged = [r.getMessage() for r in caplog.records if identify["request_id"] in r.getMessage()]
        assert logged and any("127.0.0.1" in line or ":" in line for line in logged), logged

        channel.close()
        stack.gateway.stop(0).wait(5)
        problems = _check_clean(_calls(url, corpus.photo([0])), internals)
        assert problems and all(p["status"] == 503 and "gateway" in p["detail"] for p in problems), problems
    finally:
        server.stop()
        stack.stop()


@pytest.mark.timeout(120)
def test_no_dsn_when_the_catalog_goes_away(corpus: Corpus, tmp_path: Path) -> None:
    with scratch_database("kyb_test_web") as catalog_url:
        _catalog_goes_away(corpus, tmp_path, catalog_url)


def _catalog_goes_away(corpus: Corpus, tmp_path: Path, catalog_url: str) -> None:
    database = catalog_url.rsplit("/", 1)[1]
    config = service_config(tmp_path, corpus.engine.config)
    config = config.replace(engine=config.engine.replace(catalog_url=catalog_url))
    empty_shards(corpus, config, 1)
    stack = start_local(config, shards=1)
    server = start_web(stack.config, f"127.0.0.1:{stack.gateway_port}", deadline_s=5.0)
    try:
        wait_ready(stack)
        url = f"http://127.0.0.1:{server.port}"
        drop_database(catalog_url)
        replies = _calls(url, corpus.photo([0]))
        problems = _check_clean(replies, [*_internals(stack, tmp_path), database, ":5432"])
        assert replies[0].status_code == 200  # identification answers without the catalog
        catalog = [p for p in problems if p["status"] == 503]
        assert catalog and all("catalog" in p["detail"] for p in catalog), problems
    finally:
        server.stop()
        stack.stop()


def test_an_unexpected_error_is_a_problem_with_a_request_id(corpus: Corpus, tmp_path: Path) -> None:
    config = service_config(tmp_path, corpus.engine.config)
    server = start_web(dataclasses.replace(config), f"127.0.0.1:{_closed_port()}", deadline_s=2.0)
    try:

        def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError(f"cannot read {tmp_path}/secret.db at 10.1.2.3:5432")

        server.servicer.get_band = broken  # type: ignore[method-assign]
        reply = httpx.get(f"http://127.0.0.1:{server.port}/api/v1/bands/band-0", timeout=10)
        assert reply.status_code == 500
        [problem] = _check_clean([reply], [str(tmp_path), "10.1.2.3", "secret.db"])
        assert problem["code"] == "INTERNAL" and problem["request_id"] == reply.headers["x-request-id"]
    finally:
        server.stop()
