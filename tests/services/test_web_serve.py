"""``kyb serve web`` as a process, and the web front inside a local topology (``serve all --web``)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import httpx
import pytest

from kyb_services._local import start_local, wait_for_http
from tests.services.conftest import Corpus, WebFront, empty_shards, service_config, wait_ready


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(60)
def test_kyb_serve_web_process(web_front: WebFront, corpus: Corpus) -> None:
    port = _free_port()
    env = {**os.environ, "KYB_RPC__HOST": "127.0.0.1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-c", "from kyb.cli import main; import sys; sys.exit(main())"]
    args = ["serve", "web", "--gateway", web_front.gateway_address, "--port", str(port), "--token", "t0k"]
    child = subprocess.Popen([*command, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout_s=30)
        reply = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/identify",
            content=corpus.photo([3]),
            headers={"Authorization": "Bearer t0k"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        assert [o["band"]["band_id"] for o in reply.json()["objects"]] == ["band-3"]
    finally:
        child.send_signal(signal.SIGTERM)
        _out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err


def test_local_topology_with_the_web_front(corpus: Corpus, tmp_path) -> None:
    config = service_config(tmp_path, corpus.engine.config)
    config = config.replace(web=dataclasses.replace(config.web, port=0))
    empty_shards(corpus, config, 1)
    stack = start_local(config, shards=1, web=True)
    try:
        wait_ready(stack)
        assert stack.web is not None and stack.web in stack.servers
        assert stack.web.config.web.gateway_address == f"127.0.0.1:{stack.gateway_port}"
        reply = httpx.get(f"http://127.0.0.1:{stack.web.port}/api/v1/bands/band-0", timeout=10)
        assert reply.status_code == 404  # an empty catalog, answered by this stack's gateway
        assert "Know Your Bands" in httpx.get(f"http://127.0.0.1:{stack.web.port}/", timeout=10).text
    finally:
        stack.stop()
    assert stack.web.wait_for_termination(5)
