"""Health follows readiness (NOT_SERVING until the index or codebook is loaded); graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kyb.index import ReferenceIndex
from kyb.rpc import wait_until_serving
from kyb.v1 import encoder_pb2, encoder_pb2_grpc, matcher_pb2, matcher_pb2_grpc
from kyb_services.encoder.server import create_server as create_encoder
from kyb_services.matcher.server import create_server as create_matcher

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(channel: grpc.Channel, service: str) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


def test_matcher_is_not_serving_until_its_index_is_loaded(corpus, config):
    server, port = create_matcher(config)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert _status(channel, "kyb.v1.Matcher") == NOT_SERVING
            assert _status(channel, "") == NOT_SERVING
            with pytest.raises(grpc.RpcError) as failure:
                matcher_pb2_grpc.MatcherStub(channel).Stats(matcher_pb2.StatsRequest(), timeout=5)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not loaded yet" in failure.value.details()

            folder = config.matcher_index_dir()
            ReferenceIndex(corpus.engine.index.codebook, config.engine.search, folder).save(folder)
            wait_until_serving(f"127.0.0.1:{port}", config.rpc, service="kyb.v1.Matcher", timeout_s=5)
            assert _status(channel, "") == SERVING
            stats = matcher_pb2_grpc.MatcherStub(channel).Stats(matcher_pb2.StatsRequest(), timeout=5)
            assert (stats.shard, stats.references) == ("shard-0", 0)
    finally:
        server.stop(0).wait(5)


def test_encoder_is_not_serving_until_its_codebook_is_loaded(corpus, config):
    server, port = create_encoder(config)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert _status(channel, "kyb.v1.Encoder") == NOT_SERVING
            stub = encoder_pb2_grpc.EncoderStub(channel)
            with pytest.raises(grpc.RpcError) as failure:
                stub.Encode(encoder_pb2.EncodeRequest(image=corpus.images[0]), timeout=5)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            folder = config.encoder_index_dir()
            ReferenceIndex(corpus.engine.index.codebook, config.engine.search, folder).save(folder)
            wait_until_serving(f"127.0.0.1:{port}", config.rpc, service="kyb.v1.Encoder", timeout_s=5)
            reply = stub.Encode(encoder_pb2.EncodeRequest(image=corpus.images[0], is_reference=True), timeout=5)
            embedded = corpus.engine.index.features(corpus.engine.index.reference_ids()[0])
            assert reply.encoding.codebook_version == corpus.engine.index.codebook.version
            assert reply.encoding.xy.shape[0] == embedded.xy.shape[0]  # same keypoints as the embedded ingest
    finally:
        server.stop(0).wait(5)


def test_sigterm_stops_a_service_process_gracefully(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path("src").resolve()), str(Path(".").resolve())]),
        "KYB_RPC__HOST": "127.0.0.1",
        "KYB_DETECTOR__PORT": "0",
        "KYB_RPC__GRACE_S": "1",
        "KYB_INDEX_DIR": str(tmp_path / "index"),
        "KYB_CATALOG_URL": str(tmp_path / "catalog.db"),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "kyb_services.detector"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        port = None
        deadline = time.monotonic() + 20
        lines = []
        while port is None and time.monotonic() < deadline:
            line = child.stderr.readline()
            lines.append(line)
            if "serving on" in line:
                port = int(line.rsplit(":", 1)[1].split()[0])
        assert port, "".join(lines)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert _status(channel, "kyb.v1.Detector") == SERVING
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 0
        assert "SIGTERM: stopping gracefully" in child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
