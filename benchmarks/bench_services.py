"""Embedded engine vs. the split services (``kyb serve stack``): latency, throughput, bytes per stage.

Usage::

    python benchmarks/bench_services.py ../shared/datasets/covers [--photos 40] [--concurrency 1 4 16]
        [--shards 2] [--encoders 1 2] [--cache ~/.cache/kyb/eval] [--json out.json]

The set's database is indexed once (:func:`kyb.evaluation.index_dataset`, cached), then the same
``--photos`` query photos are identified:

1. ``embedded``: :meth:`kyb.engine.Engine.identify` in this process, from a pool of C threads;
2. ``stack``: ``kyb serve stack --shards N`` started as a child process (it runs
   :func:`services._local.run_processes`: detector, encoder, N matcher shards split from the same
   index by :func:`services._local.prepare_shards`, gateway, each its own process on loopback), called
   through :class:`kyb.client.GatewayClient` from C threads;
3. ``stack, K encoders`` (each K > 1 in ``--encoders``): ``kyb serve stack`` starts one encoder and
   the gateway takes ONE encoder target (``gateway.encoder_address``). Several encoders are reached
   only as several addresses behind that one target, which the gateway's channels balance
   round-robin (what a Kubernetes Service in front of encoder replicas gives). So K-1 more encoder
   processes (``python -m services.encoder``, same codebook) and a second gateway
   (``python -m services.gateway``) whose encoder target is ``ipv4:<encoder 1>,<encoder 2>,...`` and
   whose detector and shards are the stack's are started next to the stack.

Latency is measured by the caller around each call; photos/s is photos / wall time of the whole
pass. Bytes per stage are the protobuf sizes (``ByteSize()``, without gRPC/HTTP2 framing) of the
requests the gateway sends, replayed by calling each stage's stub with the same inputs, and of the
answers. The stack's answers are checked against the embedded ones (same top reference per photo).

Every process started here runs in its own process group and is stopped at the end, on an error or
on Ctrl-C/SIGTERM (SIGTERM to the group leader, SIGKILL to the group after a timeout).
The data sets are copyrighted photos: they are read from their folder, never copied.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from kyb.client import GatewayClient
from kyb.config import load_config
from kyb.engine import Engine
from kyb.errors import Unavailable
from kyb.evaluation import GroundTruth, index_dataset, load_ground_truth
from kyb.imageio import decode_image
from kyb.rpc import (
    ServiceConfig,
    bearer_metadata,
    decoded_to_proto,
    environment,
    load_service_config,
    open_channel,
    wait_until_serving,
)
from kyb.v1 import (
    detector_pb2,
    detector_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    matcher_pb2,
    matcher_pb2_grpc,
)

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
#: Seconds a call may take before it counts as failed (keeps every pass bounded).
CALL_TIMEOUT_S = 120.0
#: Seconds the children get to stop after SIGTERM before their process group is killed.
STOP_TIMEOUT_S = 20.0
#: Photos whose per-stage messages are replayed for the bytes table (first ones of the sample).
BYTES_PHOTOS = 8
#: Marks a photo whose call failed in a run's list of top references.
FAILED = "<failed>"
_ADDRESS = re.compile(r"\b(detector|encoder|gateway|matcher shard-\d+) SERVING on (\S+)")


# ---------------------------------------------------------------------- measuring
@dataclass
class Run:
    """One pass over the photos: per-photo latency (NaN = failed) and top reference, wall time."""

    mode: str
    concurrency: int
    latencies_ms: list[float]
    tops: list[str | None]
    wall_s: float
    errors: list[str] = field(default_factory=list)

    def _ok(self) -> list[float]:
        return [v for v in self.latencies_ms if not math.isnan(v)]

    def percentile(self, q: float) -> float:
        ok = self._ok()
        return float(np.percentile(ok, q)) if ok else math.nan

    @property
    def photos_per_s(self) -> float:
        return len(self._ok()) / self.wall_s if self.wall_s > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95),
            "photos_per_s": self.photos_per_s,
            "wall_s": self.wall_s,
            "latencies_ms": self.latencies_ms,
            "tops": self.tops,
            "errors": self.errors,
        }


def measure(mode: str, top: Callable[[bytes], str | None], photos: Sequence[tuple[str, bytes]], threads: int) -> Run:
    """Identifies every photo once with ``threads`` calls in flight; ``top`` returns the top reference."""
    latencies = [math.nan] * len(photos)
    tops: list[str | None] = [FAILED] * len(photos)
    errors: list[str] = []

    def one(i: int) -> None:
        started = time.perf_counter()
        try:
            tops[i] = top(photos[i][1])
        except Exception as exc:  # a failed photo is reported, not fatal
            errors.append(f"{photos[i][0]}: {type(exc).__name__}: {exc}")
            return
        latencies[i] = (time.perf_counter() - started) * 1000.0

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench")
    started = time.perf_counter()
    try:
        list(pool.map(one, range(len(photos))))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    run = Run(mode, threads, latencies, tops, time.perf_counter() - started, errors)
    print(
        f"  {mode:<22} c={threads:<3} {len(photos)} photos in {run.wall_s:6.1f} s "
        f"p50 {run.percentile(50):7.0f} ms  {len(errors)} failed",
        file=sys.stderr,
        flush=True,
    )
    return run


def embedded_top(engine: Engine) -> Callable[[bytes], str | None]:
    def top(data: bytes) -> str | None:
        result = engine.identify(data)
        return result.objects[0].matches[0].reference_id if result.objects else None

    return top


def stack_top(client: GatewayClient) -> Callable[[bytes], str | None]:
    def top(data: bytes) -> str | None:
        answer = client.identify(data)
        objects = answer["objects"]
        return str(objects[0]["matches"][0]["reference_id"]) if objects else None

    return top


def pick_photos(gt: GroundTruth, count: int) -> list[tuple[str, bytes]]:
    """The first ``count`` query photos (then distractors, if the set has too few queries)."""
    paths = [str(q["query"]) for q in gt.queries] + list(gt.distractors)
    return [(path, (gt.root / path).read_bytes()) for path in paths[:count]]


# ---------------------------------------------------------------------- child processes
def _child_env(*layers: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``layers``, with the repository root on PYTHONPATH."""
    env = dict(os.environ)
    for layer in layers:
        env.update(layer)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


class Children:
    """Every process this benchmark starts, each the leader of its own process group."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.items: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        log = self.log_dir / (re.sub(r"[^a-z0-9]+", "-", name.lower()) + ".log")
        with log.open("wb") as handle:
            process = subprocess.Popen(
                list(argv),
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only this script, which stops them in order
            )
        child = Child(name, process, log)
        self.items.append(child)
        return child

    def stop(self) -> None:
        """SIGTERM to every leader (the stack stops its own children), then SIGKILL to what is left."""
        for child in reversed(self.items):
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        limit = time.monotonic() + STOP_TIMEOUT_S
        for child in reversed(self.items):
            try:
                child.process.wait(timeout=max(0.1, limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  {child.name} did not stop in {STOP_TIMEOUT_S:g} s: killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.process.pid, signal.SIGKILL)  # the group it leads: anything left behind
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)
        self.items.clear()


def wait_for_stack(child: Child, timeout_s: float) -> dict[str, str]:
    """Waits for ``kyb serve stack`` to log "stack ready"; returns its services' addresses by name."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = child.log.read_text(errors="replace")
        if "stack ready" in text:
            return {name: address for name, address in _ADDRESS.findall(text)}
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with code {child.process.returncode}:\n{_tail(child.log)}")
        time.sleep(0.25)
    raise RuntimeError(f"{child.name} not ready after {timeout_s:g} s:\n{_tail(child.log)}")


def wait_for_service(child: Child, address: str, service: str, config: ServiceConfig, timeout_s: float) -> None:
    """Polls ``service``'s health on ``address`` until SERVING; fails early when the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with code {child.process.returncode}:\n{_tail(child.log)}")
        try:
            wait_until_serving(address, config.rpc, service=service, timeout_s=min(2.0, deadline - time.monotonic()))
            return
        except Unavailable:
            continue
    raise RuntimeError(f"{child.name} not SERVING on {address} after {timeout_s:g} s:\n{_tail(child.log)}")


def start_stack(children: Children, config: ServiceConfig, shards: int, timeout_s: float) -> dict[str, str]:
    """``kyb serve stack --shards N`` on a free loopback port; the addresses of its services."""
    port = _free_port()
    argv = [sys.executable, "-m", "kyb.cli", "serve", "stack", "--shards", str(shards), "--host", LOOPBACK]
    argv += ["--port", str(port), "--metrics-port", "-1", "--log-level", "INFO"]
    argv += ["--index-dir", str(config.engine.index_dir), "--catalog", str(config.engine.catalog_url)]
    # Services log warnings only; the stack itself logs INFO (its "X SERVING on ADDRESS" lines).
    env = _child_env({"KYB_LOG_LEVEL": "WARNING", "KYB_RPC__GRACE_S": str(config.rpc.grace_s)})
    child = children.start("kyb serve stack", argv, env)
    addresses = wait_for_stack(child, timeout_s)
    addresses["gateway"] = f"{LOOPBACK}:{port}"
    expected = {"detector", "encoder", *(f"matcher shard-{k}" for k in range(shards))}
    if not expected <= addresses.keys():
        raise RuntimeError(f"stack log names {sorted(addresses)}, expected {sorted(expected)}:\n{_tail(child.log)}")
    return addresses


@dataclass
class ExtraGateway:
    """A gateway over K encoders (the stack's and K-1 started here) and the stack's detector and shards."""

    address: str
    metrics_urls: list[str]  # /metrics of the encoders started here


def start_encoders_gateway(
    children: Children, config: ServiceConfig, stack: dict[str, str], shards: int, encoders: int, timeout_s: float
) -> ExtraGateway:
    base = _child_env(
        environment(config),  # the KYB_* variables a manifest would set
        {"KYB_LOG_LEVEL": "WARNING", "KYB_RPC__HOST": LOOPBACK, "KYB_RPC__METRICS_PORT": "-1"},
    )
    encoder_addresses = [stack["encoder"]]
    metrics_urls: list[str] = []
    started: list[tuple[Child, str]] = []
    for k in range(1, encoders):
        port, metrics_port = _free_port(), _free_port()
        env = {
            **base,
            "KYB_ENCODER__PORT": str(port),
            "KYB_ENCODER__INDEX_DIR": str(config.encoder_index_dir()),  # the codebook the stack's encoder loads
            "KYB_RPC__METRICS_PORT": str(metrics_port),
        }
        child = children.start(f"encoder {k + 1} of {encoders}", [sys.executable, "-m", "services.encoder"], env)
        started.append((child, f"{LOOPBACK}:{port}"))
        encoder_addresses.append(f"{LOOPBACK}:{port}")
        metrics_urls.append(f"http://{LOOPBACK}:{metrics_port}/metrics")
    for child, address in started:
        wait_for_service(child, address, "kyb.v1.Encoder", config, timeout_s)
    port = _free_port()
    env = {
        **base,
        "KYB_GATEWAY__PORT": str(port),
        "KYB_GATEWAY__ENCODER_ADDRESS": "ipv4:" + ",".join(encoder_addresses),
        "KYB_GATEWAY__DETECTOR_ADDRESS": stack["detector"],
        "KYB_GATEWAY__MATCHER_ADDRESSES": ",".join(stack[f"matcher shard-{k}"] for k in range(shards)),
        "KYB_GATEWAY__SHARDS": str(shards),
    }
    child = children.start(f"gateway over {encoders} encoders", [sys.executable, "-m", "services.gateway"], env)
    wait_for_service(child, f"{LOOPBACK}:{port}", "kyb.v1.Gateway", config, timeout_s)
    return ExtraGateway(f"{LOOPBACK}:{port}", metrics_urls)


def encode_calls(metrics_url: str) -> float:
    """Encode calls an encoder has finished (its kyb_rpc_handled counter), NaN when unreadable."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return math.nan
    pattern = re.compile(r'^kyb_rpc_handled_total\{[^}]*method="Encode"[^}]*\}\s+(\S+)$', re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


# ---------------------------------------------------------------------- bytes per stage
@dataclass
class StageBytes:
    calls: int = 0
    request: int = 0
    response: int = 0


def stage_bytes(
    config: ServiceConfig, stack: dict[str, str], shards: int, photos: Sequence[tuple[str, bytes]]
) -> dict[str, StageBytes]:
    """Replays what the gateway sends each stage for ``photos`` and sums the message sizes."""
    metadata = bearer_metadata(config.rpc.outgoing_token)
    limits, detector, gateway = config.engine.limits, config.detector, config.gateway
    stages = {
        name: StageBytes() for name in ("Gateway.Identify", "Detector.Detect", "Encoder.Encode", "Matcher.Search")
    }
    channels = [open_channel(stack["gateway"], config.rpc), open_channel(stack["detector"], config.rpc)]
    channels.append(open_channel(stack["encoder"], config.rpc))
    channels += [open_channel(stack[f"matcher shard-{k}"], config.rpc) for k in range(shards)]
    try:
        gateway_stub = gateway_pb2_grpc.GatewayStub(channels[0])
        detector_stub = detector_pb2_grpc.DetectorStub(channels[1])
        encoder_stub = encoder_pb2_grpc.EncoderStub(channels[2])
        matcher_stubs = [matcher_pb2_grpc.MatcherStub(c) for c in channels[3:]]

        def record(stage: str, request: Any, response: Any) -> None:
            stages[stage].calls += 1
            stages[stage].request += request.ByteSize()
            stages[stage].response += response.ByteSize()

        for _path, data in photos:
            call: dict[str, Any] = {"timeout": CALL_TIMEOUT_S, "metadata": metadata}
            identify = gateway_pb2.IdentifyRequest(image=data)
            record("Gateway.Identify", identify, gateway_stub.Identify(identify, **call))
            # What the gateway's _identify does: decode once, send pixels to the detector, encode
            # each region (the whole photo when there are no boxes), search each on every shard.
            decoded = decode_image(data, limits, max_side=limits.search_max_side)
            raw = decoded_to_proto(decoded)
            detect = detector_pb2.DetectRequest(decoded=raw, min_score=detector.min_score, max_boxes=detector.max_boxes)
            detections = detector_stub.Detect(detect, **call)
            record("Detector.Detect", detect, detections)
            boxes = [d.box for d in sorted(detections.detections, key=lambda d: -d.score)[: gateway.max_regions]]
            for box in boxes or [None]:
                encode = encoder_pb2.EncodeRequest(decoded=raw, is_reference=False)
                if box is not None:
                    encode.box.CopyFrom(box)
                encoded = encoder_stub.Encode(encode, **call)
                record("Encoder.Encode", encode, encoded)
                search = matcher_pb2.SearchRequest(
                    encoding=encoded.encoding, image_width=decoded.width, image_height=decoded.height
                )
                for stub in matcher_stubs:
                    record("Matcher.Search", search, stub.Search(search, **call))
    finally:
        for channel in channels:
            channel.close()
    return stages


# ---------------------------------------------------------------------- report
def _fmt(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def agreement(reference: Run, runs: Sequence[Run], photos: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """How many photos every run of a mode answers with the embedded top reference."""
    same = [all(run.tops[i] == reference.tops[i] for run in runs) for i in range(len(photos))]
    differences = [
        {"photo": photos[i][0], "embedded": reference.tops[i], "stack": [run.tops[i] for run in runs]}
        for i in range(len(photos))
        if not same[i]
    ]
    return {"photos": len(photos), "same": sum(same), "differences": differences}


def report(
    runs: list[Run],
    bytes_table: dict[str, StageBytes],
    bytes_photos: int,
    checks: dict[str, dict[str, Any]],
    notes: list[str],
) -> list[str]:
    lines = ["| mode | concurrency | p50 ms | p95 ms | photos/s |", "|---|---|---|---|---|"]
    for run in runs:
        failed = f" ({len(run.errors)} failed)" if run.errors else ""
        lines.append(
            f"| {run.mode}{failed} | {run.concurrency} | {_fmt(run.percentile(50))} | {_fmt(run.percentile(95))} "
            f"| {_fmt(run.photos_per_s, 2)} |"
        )
    lines += ["", f"Bytes each stage sends per photo (protobuf payloads, mean of {bytes_photos} photos):", ""]
    lines += [
        "| stage | calls/photo | request B/call | response B/call | B/photo (both ways) |",
        "|---|---|---|---|---|",
    ]
    for stage, counted in bytes_table.items():
        calls = max(1, counted.calls)
        lines.append(
            f"| {stage} | {counted.calls / bytes_photos:.1f} | {counted.request / calls:,.0f} "
            f"| {counted.response / calls:,.0f} | {(counted.request + counted.response) / bytes_photos:,.0f} |"
        )
    internal = sum(c.request + c.response for stage, c in bytes_table.items() if stage != "Gateway.Identify")
    sent = bytes_table["Gateway.Identify"].request if "Gateway.Identify" in bytes_table else 0
    if sent:
        lines.append(
            f"\nbehind the gateway: {internal / bytes_photos:,.0f} B per photo, "
            f"{internal / sent:.1f}x the photo bytes the client sends"
        )
    lines.append("")
    for mode, check in checks.items():
        against = f"embedded at concurrency {runs[0].concurrency}" if mode == runs[0].mode else "embedded"
        lines.append(f"answers, {mode} vs {against}: {check['same']}/{check['photos']} photos, same top reference")
        for difference in check["differences"]:
            lines.append(
                f"  differs: {difference['photo']}: embedded {difference['embedded']}, {mode} {difference['stack']}"
            )
    lines += ["", *notes]
    return lines


def summary(runs: list[Run], encoder_modes: dict[int, str]) -> tuple[list[str], dict[str, Any]]:
    """The "split adds X ms" line and the throughput change with more encoders."""
    by = {(run.mode, run.concurrency): run for run in runs}
    levels = sorted({run.concurrency for run in runs})
    lines: list[str] = []
    numbers: dict[str, Any] = {}
    if levels:
        low = levels[0]
        embedded, stack = by.get(("embedded", low)), by.get(("stack", low))
        if embedded is not None and stack is not None:
            added = stack.percentile(50) - embedded.percentile(50)
            numbers["split_adds_p50_ms"] = {"concurrency": low, "ms": added}
            lines.append(f"split adds {_fmt(added)} ms p50 at concurrency {low}")
    for count, mode in encoder_modes.items():
        changes = []
        for level in levels:
            one, more = by.get(("stack", level)), by.get((mode, level))
            if one is None or more is None:
                continue
            change = (more.photos_per_s / one.photos_per_s - 1.0) * 100.0 if one.photos_per_s else math.nan
            numbers.setdefault("encoder_throughput_change_pct", {}).setdefault(str(count), {})[str(level)] = change
            changes.append(
                f"c={level}: {_fmt(one.photos_per_s, 2)} -> {_fmt(more.photos_per_s, 2)} photos/s ({change:+.0f}%)"
            )
        if changes:
            lines.append(f"{count} encoders vs 1: " + "; ".join(changes))
    return lines, numbers


# ---------------------------------------------------------------------- main
@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so the clean-up below runs for it as for Ctrl-C."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="a folder with gt.json (e.g. ../shared/datasets/covers)")
    parser.add_argument("--photos", type=int, default=40, help="query photos identified per pass (default 40)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="calls in flight")
    parser.add_argument("--shards", type=int, default=2, help="matcher shards of the stack (default 2)")
    parser.add_argument("--encoders", type=int, nargs="+", default=[1, 2], help="encoder processes to measure")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("KYB_EVAL_CACHE") or "~/.cache/kyb/eval"))
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds for the services to start")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    if args.photos < 1 or args.shards < 1 or min(args.concurrency) < 1 or min(args.encoders) < 1:
        parser.error("--photos, --shards, --concurrency and --encoders must be >= 1")
    levels = sorted(set(args.concurrency))

    config_file = os.environ.get("KYB_CONFIG") or None
    gt = load_ground_truth(args.dataset)
    photos = pick_photos(gt, args.photos)
    if not photos:
        parser.error(f"{args.dataset}/gt.json lists no query photos")
    print(f"index of {gt.name}: {len(gt.database)} references (built once into {args.cache})", file=sys.stderr)
    engine, _mapping = index_dataset(gt, load_config(config_file, env=os.environ), args.cache.expanduser())
    overrides = {"index_dir": str(engine.config.index_dir), "catalog_url": engine.config.catalog_url}
    config = load_service_config(config_file, env=os.environ, overrides={**overrides, "rpc.grace_s": 2.0})
    # services/ lives beside src/ at the repository root (an older editable install may not map it).
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from services._local import prepare_shards

    prepare_shards(config, args.shards)  # what `kyb serve stack` does first; split once, then reused

    runs: list[Run] = []
    notes = [
        "`kyb serve stack` starts one encoder and the gateway takes one encoder target; "
        "K encoders = K-1 more encoder processes behind one round-robin `ipv4:` target of a second gateway."
    ]
    encoder_modes = {count: f"stack, {count} encoders" for count in sorted(set(args.encoders)) if count > 1}
    bytes_table: dict[str, StageBytes] = {}
    sample = photos[:BYTES_PHOTOS]
    with tempfile.TemporaryDirectory(prefix="kyb-bench-") as logs, sigterm_as_interrupt():
        children = Children(Path(logs))
        try:
            print("embedded", file=sys.stderr, flush=True)
            embedded_top(engine)(photos[0][1])  # warm-up: loads the index
            runs += [measure("embedded", embedded_top(engine), photos, level) for level in levels]

            print(f"stack: {args.shards} matcher shard(s)", file=sys.stderr, flush=True)
            stack = start_stack(children, config, args.shards, args.ready_timeout)
            token = config.rpc.outgoing_token or None
            with GatewayClient(stack["gateway"], token, timeout=CALL_TIMEOUT_S) as client:
                stack_top(client)(photos[0][1])
                runs += [measure("stack", stack_top(client), photos, level) for level in levels]
            bytes_table = stage_bytes(config, stack, args.shards, sample)

            for count, mode in encoder_modes.items():
                print(f"stack with {count} encoders", file=sys.stderr, flush=True)
                extra = start_encoders_gateway(children, config, stack, args.shards, count, args.ready_timeout)
                with GatewayClient(extra.address, token, timeout=CALL_TIMEOUT_S) as client:
                    for _ in range(count):  # one warm-up per encoder: round-robin reaches each
                        stack_top(client)(photos[0][1])
                    before = sum(encode_calls(url) for url in extra.metrics_urls)
                    mode_runs = [measure(mode, stack_top(client), photos, level) for level in levels]
                    after = sum(encode_calls(url) for url in extra.metrics_urls)
                runs += mode_runs
                calls = len(photos) * len(levels)
                notes.append(f"{mode}: the started encoder(s) served {_fmt(after - before)} of {calls} Encode calls")
        finally:
            print("stopping the services", file=sys.stderr, flush=True)
            children.stop()
            engine.close()

    reference = runs[0]
    checks = {
        mode: agreement(reference, [run for run in runs if run.mode == mode], photos)
        for mode in dict.fromkeys(run.mode for run in runs)
    }
    lines = report(runs, bytes_table, len(sample), checks, notes)
    tail, numbers = summary(runs, encoder_modes)
    print("\n".join([*lines, *tail]))
    if args.json:
        document = {
            "dataset": gt.name,
            "photos": [path for path, _ in photos],
            "shards": args.shards,
            "runs": [run.to_dict() for run in runs],
            "bytes_per_stage": {k: {**vars(v), "photos": len(sample)} for k, v in bytes_table.items()},
            "agreement": checks,
            "notes": notes,
            **numbers,
        }
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted (every service started was stopped)", file=sys.stderr)
        sys.exit(130)
