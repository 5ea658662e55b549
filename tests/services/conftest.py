"""Fixtures for the service tests: generated covers and photos, an embedded engine, live stacks.

Everything is drawn here with numpy + OpenCV (random shapes and letters on noise, so SIFT finds
plenty of distinctive corners) and perspective-warped into photos; nothing is read from disk. The
embedded engine is built once per session; every test starts its own servers on free localhost
ports and stops them at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from kyb.catalog import Band
from kyb.config import EngineConfig, FeatureConfig, load_config
from kyb.engine import Engine, IngestItem
from kyb.index import ReferenceIndex
from kyb.regions import RegionDetector
from kyb.rpc import (
    EncoderConfig,
    GatewayConfig,
    MatcherConfig,
    RpcConfig,
    ServiceConfig,
    band_to_proto,
    wait_until_serving,
)
from kyb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from kyb_services._local import LocalStack, start_local, wait_for_http
from kyb_services.web.server import WebServer
from kyb_services.web.server import create_server as create_web
from tests.conftest import scratch_database

BANDS = 6


def draw_cover(seed: int, size: int = 320) -> np.ndarray:
    """A random textured square 'album cover' (BGR uint8): filled shapes, outlines, letters, grain."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), rng.integers(0, 255, 3), np.uint8)
    for _ in range(40):
        color = tuple(int(v) for v in rng.integers(0, 255, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            cv2.circle(image, (x, y), int(rng.integers(5, 50)), color, -1)
        elif shape == 1:
            x2, y2 = (int(v) for v in rng.integers(0, size, 2))
            cv2.rectangle(image, (x, y), (x2, y2), color, int(rng.integers(-1, 6)))
        else:
            text = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, 4))
            cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.5, 2)), color, 2)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def compose_photo(covers: list[np.ndarray], seed: int, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """Covers side by side on a blurred noise background, each under a random perspective tilt."""
    rng = np.random.default_rng(seed)
    width, height = size
    photo = cv2.GaussianBlur(np.clip(rng.normal(120, 30, (height, width, 3)), 0, 255).astype(np.uint8), (9, 9), 0)
    slot = width // len(covers)
    for i, cover in enumerate(covers):
        side = min(slot - 40, 260)
        x0, y0 = 20 + i * slot, 60
        corners = np.float32([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]])
        corners += rng.uniform(-12, 12, (4, 2)).astype(np.float32)
        s = cover.shape[0]
        source = np.float32([[0, 0], [s, 0], [s, s], [0, s]])
        warp = cv2.getPerspectiveTransform(source, corners)
        warped = cv2.warpPerspective(cover, warp, (width, height))
        mask = cv2.warpPerspective(np.full((s, s), 255, np.uint8), warp, (width, height)) > 0
        photo[mask] = warped[mask]
    return photo


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


@dataclass
class Corpus:
    """The references every test uses and the embedded engine that indexed them."""

    covers: list[np.ndarray]
    images: list[bytes]
    bands: list[Band]
    engine: Engine
    root: Path

    def photo(self, which: list[int], seed: int = 0, ext: str = ".jpg", size: tuple[int, int] = (720, 480)) -> bytes:
        """Photo bytes showing the covers ``which``, left to right."""
        return encode(compose_photo([self.covers[i] for i in which], seed, size), ext)

    def ingest_requests(self) -> list[gateway_pb2.IngestRequest]:
        return [
            gateway_pb2.IngestRequest(
                image=data,
                kind=common_pb2.KIND_ALBUM_COVER,
                band_id=band.band_id,
                source=f"cover-{i}.png",
                band=band_to_proto(band),
            )
            for i, (data, band) in enumerate(zip(self.images, self.bands, strict=True))
        ]


def engine_config(root: Path) -> EngineConfig:
    # Fewer photo features than the default 2500: same answers on these clean covers, 2x faster.
    base = load_config(overrides={"index_dir": str(root / "index"), "catalog_url": str(root / "catalog.db")})
    return base.replace(features=FeatureConfig(query_features=1000), workers=1)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    root = tmp_path_factory.mktemp("embedded")
    covers = [draw_cover(seed) for seed in range(BANDS)]
    images = [encode(c) for c in covers]
    bands = [Band(band_id=f"band-{i}", name=f"Band {i}", genre="Black Metal", formed_in=1990 + i) for i in range(BANDS)]
    engine = Engine(engine_config(root))
    engine.catalog.upsert_bands(bands)
    outcomes = engine.ingest(
        IngestItem(source=f"cover-{i}.png", data=data, kind="album_cover", band_id=band.band_id)
        for i, (data, band) in enumerate(zip(images, bands, strict=True))
    )
    assert [o.status for o in outcomes] == ["added"] * BANDS
    yield Corpus(covers, images, bands, engine, root)
    engine.close()


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh catalog of each backend: a SQLite file, then a scratch Postgres database."""
    if request.param == "sqlite":
        yield str(tmp_path / "bands.db")
        return
    with scratch_database("kyb_test_services") as url:
        yield url


def service_config(root: Path, engine: EngineConfig, **rpc: object) -> ServiceConfig:
    """Fast settings for tests: loopback, free ports, no grace period, quick retries and reloads."""
    rpc_section = dataclasses.replace(
        RpcConfig(host="127.0.0.1", workers=8, grace_s=0.0, deadline_s=10.0),
        retries=2,
        retry_backoff_s=0.02,
        retry_max_backoff_s=0.1,
        **rpc,  # type: ignore[arg-type]
    )
    return ServiceConfig(
        rpc=rpc_section,
        gateway=GatewayConfig(port=0, parallel=8),
        encoder=EncoderConfig(port=0, reload_s=0.05),
        matcher=MatcherConfig(port=0, reload_s=0.05, index_dir=str(root / "shard-{k}-of-{n}")),
        engine=engine.replace(index_dir=root / "codebook-index", catalog_url=str(root / "gateway.db")),
    )


@pytest.fixture
def config(corpus: Corpus, tmp_path: Path) -> ServiceConfig:
    """Test settings (see :func:`service_config`) with folders in this test's tmp_path."""
    return service_config(tmp_path, corpus.engine.config)


def empty_shards(corpus: Corpus, config: ServiceConfig, shards: int) -> None:
    """Empty shard indexes (and the encoder's folder) sharing the corpus codebook and residual bins,
    as shards seeded from the corpus index (``matcher.codebook_dir``) are: the references ingested
    through the gateway are then stored as the embedded engine stores them."""
    folders = [config.matcher.shard_folder(config.engine.index_dir, k, shards) for k in range(shards)]
    for folder in [*folders, config.engine.index_dir]:
        ReferenceIndex.empty_like(corpus.engine.index, config.engine.search, folder).save(folder)


def wait_ready(stack: LocalStack) -> None:
    rpc = stack.config.rpc
    for server in [stack.encoder, *stack.matchers]:
        wait_until_serving(f"127.0.0.1:{server.port}", rpc, timeout_s=10)


StackFactory = Callable[..., tuple[LocalStack, gateway_pb2_grpc.GatewayStub]]


def start_stack(
    corpus: Corpus,
    root: Path,
    shards: int = 2,
    *,
    ingest: bool = True,
    tokens: tuple[str, ...] = (),
    detector: bool | RegionDetector = True,
    **rpc: object,
) -> tuple[LocalStack, grpc.Channel]:
    """A started stack with ``shards`` empty shards under ``root``, the corpus ingested through the
    gateway (unless ``ingest=False``), and an open channel to its gateway; the caller stops both.
    ``detector`` is what the detector service serves (True: the configured weights, none here)."""
    config = service_config(root, corpus.engine.config, tokens=tokens, **rpc)
    empty_shards(corpus, config, shards)
    stack = start_local(config, shards=shards, detector=detector)
    wait_ready(stack)
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}")
    if ingest:
        metadata = (("authorization", f"Bearer {tokens[0]}"),) if tokens else ()
        reply = gateway_pb2_grpc.GatewayStub(channel).Ingest(
            iter(corpus.ingest_requests()), timeout=20, metadata=metadata
        )
        assert [r.status for r in reply.results] == ["added"] * BANDS, reply
    return stack, channel


@pytest.fixture
def make_stack(corpus: Corpus, tmp_path: Path) -> Iterator[StackFactory]:
    """Starts a stack with :func:`start_stack` and returns it with a gateway stub; everything stops at
    the end of the test."""
    started: list[tuple[LocalStack, grpc.Channel]] = []

    def factory(
        shards: int = 2,
        *,
        ingest: bool = True,
        tokens: tuple[str, ...] = (),
        detector: bool | RegionDetector = True,
        **rpc: object,
    ) -> tuple[LocalStack, gateway_pb2_grpc.GatewayStub]:
        stack, channel = start_stack(corpus, tmp_path, shards, ingest=ingest, tokens=tokens, detector=detector, **rpc)
        started.append((stack, channel))
        return stack, gateway_pb2_grpc.GatewayStub(channel)

    yield factory
    for stack, channel in started:
        channel.close()
        stack.stop()


def start_web(config: ServiceConfig, gateway_address: str, **web: object) -> WebServer:
    """A started web front over ``gateway_address`` on a free port (``web`` overrides its fields)."""
    section = dataclasses.replace(config.web, port=0, gateway_address=gateway_address, **web)  # type: ignore[arg-type]
    server, _port = create_web(config.replace(web=section))
    server.start()
    wait_for_http(f"http://127.0.0.1:{server.port}/healthz", timeout_s=10)
    return server


@dataclass
class WebFront:
    """A stack with the corpus ingested (one shard) and a web front over its gateway."""

    stack: LocalStack
    server: WebServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.stack.gateway_port}"


@pytest.fixture(scope="module")
def web_front(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebFront]:
    stack, channel = start_stack(corpus, tmp_path_factory.mktemp("web"), shards=1)
    server = start_web(stack.config, f"127.0.0.1:{stack.gateway_port}")
    yield WebFront(stack, server)
    server.stop()
    server.wait_for_termination(10)
    channel.close()
    stack.stop()
