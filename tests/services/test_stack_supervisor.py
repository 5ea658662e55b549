"""``kyb serve stack`` keeps serving when a service dies: the supervisor restarts it (with backoff,
and a crash-loop limit that is reported), and the gateway answers partially meanwhile."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from kyb.v1 import gateway_pb2, gateway_pb2_grpc
from kyb_services._local import Supervisor

EXITS = [sys.executable, "-c", "import sys; sys.exit(3)"]


def test_a_child_that_exits_is_restarted_with_a_doubling_backoff_until_a_crash_loop(caplog) -> None:
    supervisor = Supervisor(backoff_s=1.0, max_backoff_s=3.0, max_restarts=3, window_s=60.0)
    child = supervisor.add("flaky", EXITS, dict(os.environ))
    now = 1000.0
    delays = []
    with caplog.at_level(logging.ERROR, logger="kyb_services._local"):
        while not child.given_up:
            assert child.process is not None
            child.process.wait(timeout=30)
            first_pid = child.process.pid
            supervisor.check(now)  # noticed: a restart is scheduled after the backoff
            if child.given_up:
                break
            delay = child.next_start - now
            delays.append(delay)
            supervisor.check(now + delay - 0.01)
            assert child.process.pid == first_pid  # not before the backoff is over
            now += delay
            supervisor.check(now)
            assert child.process.pid != first_pid  # started again
    assert delays == [1.0, 2.0, 3.0]  # doubling, capped
    assert len(child.restarts) == 3
    assert any("crash loop" in r.getMessage() and "flaky" in r.getMessage() for r in caplog.records)
    supervisor.check(now + 100)  # a child given up on stays down
    assert child.given_up and child.process.poll() is not None


def test_a_child_that_stayed_up_starts_a_new_count() -> None:
    supervisor = Supervisor(backoff_s=1.0, max_restarts=1, window_s=60.0, stable_s=10.0)
    child = supervisor.add("once", EXITS, dict(os.environ))
    child.restarts = [0.0]  # one restart long ago: the limit would be reached
    assert child.process is not None
    child.process.wait(timeout=30)
    child.started_at = 0.0
    supervisor.check(100.0)  # it had been up for 100 s > stable_s: not a crash loop
    assert not child.given_up and child.next_start == 101.0
    supervisor.stop(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _identify(stub: gateway_pb2_grpc.GatewayStub, photo: bytes) -> gateway_pb2.IdentifyResponse:
    return stub.Identify(gateway_pb2.IdentifyRequest(image=photo), timeout=20)


def test_a_killed_matcher_comes_back_and_answers_are_partial_meanwhile(corpus, tmp_path: Path) -> None:
    port = _free_port()
    config = corpus.engine.config
    env = {
        **os.environ,
        "KYB_INDEX_DIR": str(config.index_dir),
        "KYB_CATALOG_URL": str(config.catalog_url),
        "KYB_MATCHER__INDEX_DIR": str(tmp_path / "shard-{k}-of-{n}"),  # the split goes here
        "KYB_RPC__GRACE_S": "0",
        "KYB_RPC__METRICS_PORT": "-1",
        "KYB_CACHE__URL": "none",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    command = [sys.executable, "-c", "import sys; from kyb.cli import main; sys.exit(main())", "serve", "stack",
               "--shards", "2", "--port", str(port), "--restart-backoff", "3"]  # fmt: skip
    stack = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert stack.stderr is not None
        for line in stack.stderr:
            lines.append(line)
            if "stack ready" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(240), "".join(lines[-30:])
        pids = dict(re.findall(r"(matcher shard-\d) started \(pid (\d+)\)", "".join(lines)))
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            photo = corpus.photo([0, 3, 5], seed=1)
            full = _identify(stub, photo)
            assert not full.partial and len(full.objects) == 3

            os.kill(int(pids["matcher shard-1"]), signal.SIGKILL)
            meanwhile = _identify(stub, photo)  # within the 3 s backoff: shard-1 is down
            assert meanwhile.partial and list(meanwhile.missing_shards) == ["shard-1"]

            deadline = time.monotonic() + 120
            answer = meanwhile
            while answer.partial and time.monotonic() < deadline:
                time.sleep(0.5)  # the restarted shard loads its index
                answer = _identify(stub, photo)
            assert not answer.partial, "".join(lines[-30:])
            assert [o.band.band_id for o in answer.objects] == [o.band.band_id for o in full.objects]
        text = "".join(lines)
        assert "matcher shard-1 exited with code -9: restarting it in 3.0 s" in text
        assert len(re.findall(r"matcher shard-1 started \(pid \d+\)", text)) == 2
        assert stack.poll() is None  # the stack itself kept running
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            code = stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stack.kill()
            pytest.fail("the stack did not stop on SIGTERM")
        finally:
            reader.join(timeout=30)
            assert stack.stderr is not None
            stack.stderr.close()
    assert code == 0
