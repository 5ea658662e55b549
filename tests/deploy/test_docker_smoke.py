"""The cpu image run as containers, as the manifests run it (deploy/docker/smoke.sh): Postgres,
Redis, encoder, two matcher shards, gateway and web front on their own network, non-root, read-only
root file system. The demo catalog goes in through the gateway; the demo photos are identified over
HTTP and gRPC and must get the embedded engine's answers; SIGTERM stops every service with exit 0.

Runs where a Docker daemon answers (building the image first when it is missing); skips, saying
why, where none does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kyb import synth
from kyb.catalog import Album, Band, import_catalog, open_catalog
from kyb.client import GatewayClient
from kyb.config import load_config
from kyb.engine import Engine
from kyb.ingest import IngestItem
from kyb.rpc import RpcConfig, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "deploy" / "docker" / "smoke.sh"
IMAGE = "kyb:0.1.0"
PREFIX = "kyb-smoke-test"


def _docker_problem() -> str | None:
    """Why this machine cannot run the smoke test, or None when a Docker daemon answers."""
    if shutil.which("docker") is None:
        return "no docker client on this machine (apt-get install docker.io)"
    try:
        reply = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                               text=True, timeout=20)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "the Docker daemon does not answer"
    if reply.returncode != 0:
        return f"no Docker daemon answers: {reply.stderr.strip().splitlines()[-1] if reply.stderr.strip() else ''}"
    return None


pytestmark = pytest.mark.skipif(_docker_problem() is not None, reason=str(_docker_problem()))


@dataclass
class Stack:
    demo: Path
    endpoints: dict[str, str]
    stopped: dict[str, int] | None = None

    @property
    def gateway(self) -> str:
        return self.endpoints["gateway"]

    @property
    def web(self) -> str:
        return self.endpoints["web"]


def _smoke(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"KYB_SMOKE_PREFIX": PREFIX, "KYB_IMAGE": IMAGE, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    return subprocess.run(["bash", str(SMOKE), *args], capture_output=True, text=True, env=env, check=False)


def _down() -> dict[str, int]:
    result = _smoke("down")
    codes = {}
    for line in result.stdout.splitlines():
        name, _, code = line.partition(" exit ")
        codes[name] = int(code)
    return codes


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        subprocess.run(["bash", str(ROOT / "deploy" / "docker" / "build.sh"), "cpu"], check=True)
    demo = tmp_path_factory.mktemp("demo")
    synth.write_demo_set(demo, n_bands=8, n_photos=6, seed=0)  # what `kyb demo` draws
    _down()  # leftovers of an interrupted run
    running = Stack(demo, {})
    try:
        started = _smoke("up", str(demo))
        assert started.returncode == 0, started.stderr[-3000:]
        running.endpoints = dict(line.split("=", 1) for line in started.stdout.split())
        for name in ("encoder", "matcher-0", "matcher-1", "gateway"):
            wait_until_serving(running.endpoints[name], RpcConfig(), timeout_s=180)
        yield running
    finally:
        if running.stopped is None:
            _down()


def _demo_items(stack: Stack, root: Path) -> tuple[list[IngestItem], list[Band], list[Album]]:
    """The demo catalog's references, bands and albums, read as `kyb ingest catalog.json` reads them."""
    with open_catalog(str(root / "scratch.db")) as catalog:
        report = import_catalog(catalog, stack.demo / "catalog.json")
    records = json.loads((stack.demo / "catalog.json").read_text())
    items = [IngestItem(e.image_path, e.kind, e.band_id, e.album_id, tuple(e.regions)) for e in report.references]
    return items, [Band.from_dict(b) for b in records["bands"]], [Album.from_dict(a) for a in records["albums"]]


def _objects(answer: dict) -> list[tuple]:
    """What must agree between paths: which band and album, where (outline to the pixel)."""
    return sorted(
        (o["band"]["band_id"] if o["band"] else None, (o["album"] or {}).get("album_id"), o["kind"],
         tuple(tuple(round(v) for v in point) for point in o["outline"]))
        for o in answer["objects"]
    )  # fmt: skip


def test_demo_catalog_in_through_the_gateway_and_photos_answered_as_embedded(stack: Stack, tmp_path: Path) -> None:
    items, bands, albums = _demo_items(stack, tmp_path)
    with GatewayClient(stack.gateway, timeout=120) as client:
        results = client.ingest(items, bands=bands, albums=albums)
        failed = [(r["source"], r["message"]) for r in results if r["status"] != "added"]
        assert len(results) == len(items) and not failed, failed
        assert {r["shard"] for r in results} == {"shard-0", "shard-1"}  # both shards hold references

        # The embedded engine over the same references and codebook: the index build's own folder.
        subprocess.run(["docker", "cp", f"{PREFIX}-encoder:/builds/build-1", str(tmp_path / "build")], check=True)
        embedded = Engine(load_config(overrides={"index_dir": str(tmp_path / "build" / "index"),
                                                 "catalog_url": str(tmp_path / "build" / "catalog.db")}))  # fmt: skip
        gt = json.loads((stack.demo / "gt.json").read_text())
        photos = [q["query"] for q in gt["queries"]] + gt.get("distractor_queries", [])
        found = 0
        for name in photos:
            data = (stack.demo / name).read_bytes()
            served = client.identify(data)
            over_http = httpx.post(f"{stack.web}/api/v1/identify", content=data, timeout=120)
            assert over_http.status_code == 200, over_http.text
            local = embedded.identify(data).to_dict()
            assert served["partial"] is False and served["missing_shards"] == []
            assert _objects(served) == _objects(over_http.json()) == _objects(local), name
            found += len(served["objects"])
        embedded.close()
    assert found >= len(gt["queries"])  # every demo photo of a band finds at least one object


def test_http_api_of_the_container_front(stack: Stack) -> None:
    bands = httpx.get(f"{stack.web}/api/v1/bands", params={"q": _first_band_name(stack)}, timeout=30)
    assert bands.status_code == 200 and bands.json()["bands"]
    docs = httpx.get(f"{stack.web}/docs", timeout=30)
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    missing = httpx.get(f"{stack.web}/api/v1/references/no-such-reference", timeout=30)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


def _first_band_name(stack: Stack) -> str:
    return json.loads((stack.demo / "catalog.json").read_text())["bands"][0]["name"]


def test_sigterm_stops_every_service_with_exit_0(stack: Stack) -> None:
    stack.stopped = _down()
    assert stack.stopped == {name: 0 for name in ("encoder", "matcher-0", "matcher-1", "gateway", "web")}
