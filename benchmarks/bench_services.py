"""Embedded engine vs. the split services (``kyb serve stack``): latency, throughput, bytes per stage.

Usage::

    python benchmarks/bench_services.py ../shared/datasets/covers [--photos 40] [--concurrency 1 4 16]
        [--shards 2] [--encoders 1 2] [--rounds 1] [--baseline-root DIR] [--encoder-only]
        [--rtt-ms 0 1 5] [--cache ~/.cache/kyb/eval] [--json out.json]

The set's database is indexed once (:func:`kyb.evaluation.index_dataset`, cached), then the same
``--photos`` query photos are identified by every mode:

1. ``embedded``: :meth:`kyb.engine.Engine.identify` in this process, from a pool of C threads;
2. ``stack``: ``kyb serve stack --shards N`` started as a child process (it runs
   :func:`kyb_services._local.run_processes`: detector, encoder, N matcher shards split from the same
   index by :func:`kyb_services._local.prepare_shards`, gateway, each its own process on loopback), called
   through :class:`kyb.client.GatewayClient` from C threads;
3. ``stack (baseline)`` with ``--baseline-root DIR``: the same, with the code of another checkout
   (e.g. ``git worktree add /tmp/base main~3``; its own ``.venv`` where it has one, see
   ``benchmarks/other_checkout.py``), so a change is measured against what it replaces
   in the same run, under the same machine load;
4. ``stack, K encoders`` (each K > 1 in ``--encoders``): ``kyb serve stack`` starts one encoder and
   the gateway takes ONE encoder target (``gateway.encoder_address``). Several encoders are reached
   only as several addresses behind that one target, which the gateway's channels balance
   round-robin (what a Kubernetes Service in front of encoder replicas gives). So K-1 more encoder
   processes (``python -m kyb_services.encoder``, same codebook) and a second gateway
   (``python -m kyb_services.gateway``) whose encoder target is ``ipv4:<encoder 1>,<encoder 2>,...`` and
   whose detector and shards are the stack's are started next to the stack.

Every service is started before anything is measured, and the modes take turns, so a machine whose
load changes (shared cores) changes every mode alike: at concurrency 1 each photo is identified by
every mode in turn (a rotating order) and "split adds" is the median of the per-photo differences;
at higher concurrency the modes' passes alternate, ``--rounds`` times each.
Latency is measured by the caller around each call; photos/s is photos / wall time of a pass (at
concurrency 1: photos / summed latency). Where the time goes: the mean of the stages each answer
reports (``timings_ms``) at concurrency 1. Bytes per stage are the gateway's own counters of the
protobuf payloads it sends and receives per target and method (``kyb_rpc_client_bytes``, read from
its /metrics before and after identifying the first photos once more).

``--encoder-only`` adds the encoder alone, the one stage more processes should speed up: Encoder.Encode
of the photo bytes, photos/s with 1 encoder process vs K (round-robin over them), at each concurrency.
These encoders are started for it, encoder k pinned to core k (mod the cores there are), so adding an
encoder process adds a core as adding a pod does; on a machine shared with other work the cores are
not free, so compare the rows of one run.

``--rtt-ms X [Y ...]`` measures everything above once per injected round-trip time: the stacks
(this checkout's and the baseline's) start with ``benchmarks/rtt`` first on their PYTHONPATH, whose
``sitecustomize`` makes every gRPC channel their processes open wait X ms before each unary call (what
a call costs on a real network; loopback has almost none): so the gateway pays X ms per downstream
call, and fewer round trips show up as latency. The delay is read from a file, so the same started
services are measured at each X in turn. The extra gateway over K encoders gets no delay.

Bytes per stage are counted on both stacks (this checkout's and the baseline's) with no delay, and
summed up per photo: bytes behind the gateway (every downstream call, both ways) against the photo's
own bytes, and Matcher calls per shard per photo.

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
import resource
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
from kyb.evaluation import index_dataset
from kyb.groundtruth import GroundTruth, load_ground_truth
from kyb.rpc import (
    ServiceConfig,
    bearer_metadata,
    environment,
    load_service_config,
    open_channel,
    wait_until_serving,
)
from kyb.v1 import (
    encoder_pb2,
    encoder_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helper for --baseline-root
import other_checkout as checkout

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
#: Seconds a call may take before it counts as failed (keeps every pass bounded).
CALL_TIMEOUT_S = 120.0
#: Seconds the children get to stop after SIGTERM before their process group is killed.
STOP_TIMEOUT_S = 20.0
#: Photos whose per-stage messages are replayed for the bytes table (first ones of the sample).
BYTES_PHOTOS = 8
#: The folder whose sitecustomize injects the ``--rtt-ms`` delay into the stacks' gRPC channels.
RTT_HOOK = REPO / "benchmarks" / "rtt"
#: Seconds to wait after changing the delay file: the services re-read it every 0.2 s.
RTT_SETTLE_S = 0.5
#: Marks a photo whose call failed in a run's list of top references.
FAILED = "<failed>"
_ADDRESS = re.compile(r"\b(detector|encoder|gateway|matcher shard-\d+) SERVING on (\S+)")


# ---------------------------------------------------------------------- measuring
@dataclass
class Run:
    """One pass over the photos: per-photo latency (NaN = failed), top reference and stage timings."""

    mode: str
    concurrency: int
    latencies_ms: list[float]
    tops: list[str | None]
    wall_s: float
    errors: list[str] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # per photo, every process (paired passes only)
    rtt_ms: float = 0.0  # injected round-trip time of the gateway's downstream calls

    def _ok(self) -> list[float]:
        return [v for v in self.latencies_ms if not math.isnan(v)]

    def percentile(self, q: float) -> float:
        ok = self._ok()
        return float(np.percentile(ok, q)) if ok else math.nan

    @property
    def photos_per_s(self) -> float:
        return len(self._ok()) / self.wall_s if self.wall_s > 0 else math.nan

    def extend(self, other: Run) -> None:
        """Pools another pass of the same mode and concurrency into this one."""
        self.latencies_ms += other.latencies_ms
        self.tops += other.tops
        self.wall_s += other.wall_s
        self.errors += other.errors
        self.timings += other.timings

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rtt_ms": self.rtt_ms,
            "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95),
            "photos_per_s": self.photos_per_s,
            "wall_s": self.wall_s,
            "latencies_ms": self.latencies_ms,
            "tops": self.tops,
            "errors": self.errors,
        }


#: Identifies one photo: (top reference or None, stage timings in ms).
Top = Callable[[bytes], tuple[str | None, dict[str, float]]]


def _timed(top: Top, name: str, data: bytes) -> tuple[float, str | None, dict[str, float], str]:
    """(latency ms or NaN, top, timings, error) of one call."""
    started = time.perf_counter()
    try:
        answer, timings = top(data)
    except Exception as exc:  # a failed photo is reported, not fatal
        return math.nan, FAILED, {}, f"{name}: {type(exc).__name__}: {exc}"
    return (time.perf_counter() - started) * 1000.0, answer, timings, ""


def _progress(run: Run, photos: int) -> None:
    print(
        f"  {run.mode:<22} c={run.concurrency:<3} {photos} photos in {run.wall_s:6.1f} s "
        f"p50 {run.percentile(50):7.0f} ms  {len(run.errors)} failed",
        file=sys.stderr,
        flush=True,
    )


def measure(mode: str, top: Top, photos: Sequence[tuple[str, bytes]], threads: int) -> Run:
    """Identifies every photo once with ``threads`` calls in flight; ``top`` returns the top reference."""
    results: list[tuple[float, str | None, dict[str, float], str]] = [(math.nan, FAILED, {}, "")] * len(photos)

    def one(i: int) -> None:
        results[i] = _timed(top, photos[i][0], photos[i][1])

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench")
    started = time.perf_counter()
    try:
        list(pool.map(one, range(len(photos))))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    wall = time.perf_counter() - started
    run = Run(mode, threads, [r[0] for r in results], [r[1] for r in results], wall, [r[3] for r in results if r[3]])
    run.timings = [r[2] for r in results if r[2]]
    _progress(run, len(photos))
    return run


def _descendants(roots: Sequence[int]) -> list[int]:
    """``roots`` and every process below them (from /proc; Linux)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2 :].split()[1])
                parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system) used so far by this process and ``pids``: a cost that, unlike wall
    time, hardly depends on how many other jobs share the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def measure_paired(modes: dict[str, Top], photos: Sequence[tuple[str, bytes]], pids: Sequence[int] = ()) -> list[Run]:
    """Concurrency 1, photo by photo: each photo is identified by every mode in turn (the order
    rotates), so a change in machine load between photos hits every mode alike. Calls never
    overlap, so the CPU time every process used during a call (``pids`` and this one) is its cost."""
    names = list(modes)
    runs = {name: Run(name, 1, [], [], 0.0) for name in names}
    for i, (path, data) in enumerate(photos):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            before = cpu_seconds(pids)
            latency, answer, timings, error = _timed(modes[name], path, data)
            run = runs[name]
            run.cpu_ms.append((cpu_seconds(pids) - before) * 1000.0)
            run.latencies_ms.append(latency)
            run.tops.append(answer)
            if error:
                run.errors.append(error)
            else:
                run.wall_s += latency / 1000.0
                run.timings.append(timings)
    for run in runs.values():
        _progress(run, len(photos))
    return list(runs.values())


def measure_levels(
    modes: dict[str, Top],
    encoder_modes: dict[str, Top],
    photos: Sequence[tuple[str, bytes]],
    levels: Sequence[int],
    rounds: int,
    pids: Sequence[int],
) -> list[Run]:
    """Every mode at every concurrency: paired photo by photo at 1, alternating passes above."""
    by: dict[tuple[str, int], Run] = {}
    for level in levels:
        print(f"concurrency {level}", file=sys.stderr, flush=True)
        if level == 1:
            for run in measure_paired(modes, photos, pids):
                by[(run.mode, 1)] = run
        for r in range(rounds if level > 1 else 0):
            names = list(modes)
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                run = measure(name, modes[name], photos, level)
                if (name, level) in by:
                    by[(name, level)].extend(run)
                else:
                    by[(name, level)] = run
        for name, top in encoder_modes.items():
            by[(name, level)] = measure(name, top, photos, level)
    order = [*modes, *encoder_modes]
    return [by[(name, level)] for name in order for level in levels if (name, level) in by]


def embedded_top(engine: Engine) -> Top:
    def top(data: bytes) -> tuple[str | None, dict[str, float]]:
        result = engine.identify(data)
        return (result.objects[0].matches[0].reference_id if result.objects else None), result.timings_ms

    return top


def stack_top(client: GatewayClient) -> Top:
    def top(data: bytes) -> tuple[str | None, dict[str, float]]:
        answer = client.identify(data)
        objects = answer["objects"]
        return (str(objects[0]["matches"][0]["reference_id"]) if objects else None), dict(answer["timings_ms"])

    return top


def encoder_top(stub: encoder_pb2_grpc.EncoderStub, metadata: Sequence[tuple[str, str]]) -> Top:
    """Encoder.Encode of the photo bytes (what the gateway sends for a whole photo); no top reference."""

    def top(data: bytes) -> tuple[str | None, dict[str, float]]:
        stub.Encode(encoder_pb2.EncodeRequest(image=data), timeout=CALL_TIMEOUT_S, metadata=tuple(metadata))
        return None, {}

    return top


def pick_photos(gt: GroundTruth, count: int) -> list[tuple[str, bytes]]:
    """The first ``count`` query photos (then distractors, if the set has too few queries)."""
    paths = [str(q["query"]) for q in gt.queries] + list(gt.distractors)
    return [(path, (gt.root / path).read_bytes()) for path in paths[:count]]


# ---------------------------------------------------------------------- child processes
def _child_env(*layers: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``layers``, the descriptor cache off, the repository root on PYTHONPATH."""
    env = dict(os.environ)
    for layer in layers:
        env.update(layer)
    # Every photo is timed as a first sighting (as embedded, which runs uncached): the services'
    # descriptor cache would otherwise answer repeated photos of later passes without encoding.
    env["KYB_CACHE__URL"] = "none"
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

    def start(self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path = REPO) -> Child:
        log = self.log_dir / (re.sub(r"[^a-z0-9]+", "-", name.lower()) + ".log")
        with log.open("wb") as handle:
            process = subprocess.Popen(
                list(argv),
                env=env,
                cwd=cwd,
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


def start_stack(
    children: Children,
    config: ServiceConfig,
    shards: int,
    timeout_s: float,
    *,
    root: Path = REPO,
    name: str = "kyb serve stack",
    metrics_port: int = -1,
    rtt_file: Path | None = None,
) -> dict[str, str]:
    """``kyb serve stack --shards N`` (the code under ``root``) on a free loopback port; the addresses
    of its services (and its gateway's /metrics URL under "metrics" when ``metrics_port`` >= 0).
    With ``rtt_file`` its gRPC channels wait the milliseconds that file holds before each call."""
    port = _free_port()
    python = sys.executable if root == REPO else checkout.python(root)  # its own .venv where it has one
    argv = [python, "-m", "kyb.cli", "serve", "stack", "--shards", str(shards), "--host", LOOPBACK]
    argv += ["--port", str(port), "--metrics-port", str(metrics_port), "--log-level", "INFO"]
    argv += ["--index-dir", str(config.engine.index_dir), "--catalog", str(config.engine.catalog_url)]
    # Services log warnings only; the stack itself logs INFO (its "X SERVING on ADDRESS" lines).
    env = _child_env({"KYB_LOG_LEVEL": "WARNING", "KYB_RPC__GRACE_S": str(config.rpc.grace_s)})
    if root != REPO:  # another checkout's code, and only its code
        env = checkout.env(root, env)
    if rtt_file is not None:
        env["KYB_BENCH_RTT_FILE"] = str(rtt_file)
        env["PYTHONPATH"] = os.pathsep.join([str(RTT_HOOK), env["PYTHONPATH"]])
    child = children.start(name, argv, env, cwd=root)
    addresses = wait_for_stack(child, timeout_s)
    addresses["gateway"] = f"{LOOPBACK}:{port}"
    if metrics_port >= 0:
        addresses["metrics"] = f"http://{LOOPBACK}:{metrics_port}/metrics"
    expected = {"detector", "encoder", *(f"matcher shard-{k}" for k in range(shards))}
    if not expected <= addresses.keys():
        raise RuntimeError(f"stack log names {sorted(addresses)}, expected {sorted(expected)}:\n{_tail(child.log)}")
    return addresses


@dataclass
class ExtraGateway:
    """A gateway over K encoders (the stack's and K-1 started here) and the stack's detector and shards."""

    address: str
    metrics_urls: list[str]  # /metrics of the encoders started here
    encoder_addresses: list[str]  # the stack's encoder first


def _service_env(config: ServiceConfig) -> dict[str, str]:
    return _child_env(
        environment(config),  # the KYB_* variables a manifest would set
        {"KYB_LOG_LEVEL": "WARNING", "KYB_RPC__HOST": LOOPBACK, "KYB_RPC__METRICS_PORT": "-1"},
    )


def start_encoder(
    children: Children, config: ServiceConfig, name: str, core: int | None = None
) -> tuple[Child, str, str]:
    """One more encoder process (same codebook as the stack's), pinned to ``core`` when given;
    (child, address, /metrics URL). Wait for it with :func:`wait_for_service`."""
    port, metrics_port = _free_port(), _free_port()
    env = {
        **_service_env(config),
        "KYB_ENCODER__PORT": str(port),
        "KYB_ENCODER__INDEX_DIR": str(config.encoder_index_dir()),  # the codebook the stack's encoder loads
        "KYB_RPC__METRICS_PORT": str(metrics_port),
    }
    argv = [sys.executable, "-m", "kyb_services.encoder"]
    if core is not None:  # one core of its own: OpenCV then runs one thread too
        argv = ["taskset", "-c", str(core), *argv]
    child = children.start(name, argv, env)
    return child, f"{LOOPBACK}:{port}", f"http://{LOOPBACK}:{metrics_port}/metrics"


def start_encoders_gateway(
    children: Children, config: ServiceConfig, stack: dict[str, str], shards: int, encoders: int, timeout_s: float
) -> ExtraGateway:
    base = _service_env(config)
    encoder_addresses = [stack["encoder"]]
    metrics_urls: list[str] = []
    started: list[tuple[Child, str]] = []
    for k in range(1, encoders):
        child, address, metrics_url = start_encoder(children, config, f"encoder {k + 1} of {encoders}")
        started.append((child, address))
        encoder_addresses.append(address)
        metrics_urls.append(metrics_url)
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
    child = children.start(f"gateway over {encoders} encoders", [sys.executable, "-m", "kyb_services.gateway"], env)
    wait_for_service(child, f"{LOOPBACK}:{port}", "kyb.v1.Gateway", config, timeout_s)
    return ExtraGateway(f"{LOOPBACK}:{port}", metrics_urls, encoder_addresses)


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
    calls: float = 0
    request: float = 0
    response: float = 0


_CLIENT_SAMPLE = re.compile(r"^kyb_rpc_client_(bytes|calls)_total\{([^}]*)\}\s+(\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def _stage(target: str, method: str) -> str:
    service = "Matcher" if target.startswith("shard-") else target.capitalize()
    return f"{service}.{method}"


def gateway_counters(metrics_url: str) -> dict[str, StageBytes]:
    """The gateway's downstream calls and payload bytes so far, per stage ("Encoder.Encode", ...)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    stages: dict[str, StageBytes] = {}
    for kind, labels, value in _CLIENT_SAMPLE.findall(text):
        label = dict(_LABEL.findall(labels))
        counted = stages.setdefault(_stage(label["target"], label["method"]), StageBytes())
        if kind == "calls":
            counted.calls += float(value)
        elif label.get("direction") == "sent":
            counted.request += float(value)
        else:
            counted.response += float(value)
    return stages


def stage_bytes(
    config: ServiceConfig, stack: dict[str, str], photos: Sequence[tuple[str, bytes]]
) -> dict[str, StageBytes]:
    """Identifies ``photos`` once more and takes what the gateway sent and received meanwhile."""
    metadata = bearer_metadata(config.rpc.outgoing_token)
    stages = {"Gateway.Identify": StageBytes()}
    before = gateway_counters(stack["metrics"])
    with open_channel(stack["gateway"], config.rpc) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for _path, data in photos:
            request = gateway_pb2.IdentifyRequest(image=data)
            answer = stub.Identify(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
            stages["Gateway.Identify"].calls += 1
            stages["Gateway.Identify"].request += request.ByteSize()
            stages["Gateway.Identify"].response += answer.ByteSize()
    after = gateway_counters(stack["metrics"])
    for stage, counted in sorted(after.items()):
        old = before.get(stage, StageBytes())
        stages[stage] = StageBytes(
            counted.calls - old.calls, counted.request - old.request, counted.response - old.response
        )
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
    bytes_table: dict[str, dict[str, StageBytes]],
    bytes_photos: int,
    checks: dict[str, dict[str, Any]],
    notes: list[str],
) -> list[str]:
    lines = ["| mode | concurrency | p50 ms | p95 ms | photos/s |", "|---|---|---|---|---|"] if runs else []
    for run in runs:
        failed = f" ({len(run.errors)} failed)" if run.errors else ""
        lines.append(
            f"| {run.mode}{failed} | {run.concurrency} | {_fmt(run.percentile(50))} | {_fmt(run.percentile(95))} "
            f"| {_fmt(run.photos_per_s, 2)} |"
        )
    timed = [run for run in runs if run.concurrency == 1 and run.timings]
    if timed:
        keys = list(dict.fromkeys(key for run in timed for t in run.timings for key in t))
        lines += ["", "Where the time goes at concurrency 1 (mean ms of the stages each answer reports):", ""]
        lines += [
            "| mode | " + " | ".join(keys) + " | caller's latency | CPU ms, all processes |",
            "|---" * (len(keys) + 3) + "|",
        ]
        for run in timed:
            means = [
                np.mean([t[key] for t in run.timings if key in t]) if any(key in t for t in run.timings) else math.nan
                for key in keys
            ]
            latency = float(np.nanmean(run.latencies_ms)) if run.latencies_ms else math.nan
            cpu = float(np.median(run.cpu_ms)) if run.cpu_ms else math.nan
            cells = " | ".join(_fmt(m, 1) for m in means)
            lines.append(f"| {run.mode} | {cells} | {_fmt(latency, 1)} | {_fmt(cpu, 1)} (median) |")
    for stack, table in bytes_table.items():
        lines += ["", f"Bytes each stage sends per photo, {stack} (protobuf payloads, {bytes_photos} photos):", ""]
        lines += [
            "| stage | calls/photo | request B/call | response B/call | B/photo (both ways) |",
            "|---|---|---|---|---|",
        ]
        for stage, counted in table.items():
            calls = max(1.0, counted.calls)
            lines.append(
                f"| {stage} | {counted.calls / bytes_photos:.1f} | {counted.request / calls:,.0f} "
                f"| {counted.response / calls:,.0f} | {(counted.request + counted.response) / bytes_photos:,.0f} |"
            )
    lines.append("")
    for mode, check in checks.items():
        if mode.startswith("encoder"):
            continue
        against = f"embedded at concurrency {runs[0].concurrency}" if mode == runs[0].mode else "embedded"
        lines.append(f"answers, {mode} vs {against}: {check['same']}/{check['photos']} photos, same top reference")
        for difference in check["differences"]:
            lines.append(
                f"  differs: {difference['photo']}: embedded {difference['embedded']}, {mode} {difference['stack']}"
            )
    lines += ["", *notes]
    return lines


def traffic(table: dict[str, StageBytes], photos: int, shards: int) -> dict[str, float]:
    """Per photo: bytes behind the gateway (every downstream call, both ways), that as a multiple of
    the photo's bytes, the Matcher's share, and Matcher calls per shard."""
    internal = sum(c.request + c.response for stage, c in table.items() if stage != "Gateway.Identify")
    matcher = sum(c.request + c.response for stage, c in table.items() if stage.startswith("Matcher."))
    sent = table["Gateway.Identify"].request if "Gateway.Identify" in table else math.nan
    numbers = {
        "behind_gateway_B": internal / photos,
        "photo_multiple": internal / sent if sent else math.nan,
        "matcher_B": matcher / photos,
    }
    for stage, counted in table.items():
        if stage.startswith("Matcher."):
            numbers[f"{stage.split('.')[1]}_calls_per_shard"] = counted.calls / photos / shards
    return numbers


def traffic_report(tables: dict[str, dict[str, StageBytes]], photos: int, shards: int) -> list[str]:
    """One line per stack: what a photo costs behind the gateway."""
    methods = sorted({stage.split(".")[1] for t in tables.values() for stage in t if stage.startswith("Matcher.")})
    lines = [
        "",
        f"Behind the gateway per photo ({shards} shards, {photos} photos, no injected delay):",
        "",
        "| stack | B per photo | x the photo's bytes | to/from matchers B | "
        + " | ".join(f"{m} calls/shard" for m in methods)
        + " |",
        "|---" * (4 + len(methods)) + "|",
    ]
    for stack, table in tables.items():
        numbers = traffic(table, photos, shards)
        calls = " | ".join(f"{numbers.get(f'{m}_calls_per_shard', 0.0):.2f}" for m in methods)
        lines.append(
            f"| {stack} | {numbers['behind_gateway_B']:,.0f} | {_fmt(numbers['photo_multiple'], 2)} "
            f"| {numbers['matcher_B']:,.0f} | {calls} |"
        )
    return lines


def rtt_report(sections: Sequence[tuple[float, list[Run], dict[str, Any]]]) -> list[str]:
    """p50 of every stack mode at each injected RTT, and what the split adds over embedded there."""
    rtts = [rtt for rtt, _runs, _numbers in sections]
    keys = list(dict.fromkeys((run.mode, run.concurrency) for _rtt, runs, _ in sections for run in runs))
    keys = [(mode, level) for mode, level in keys if mode.startswith("stack") or mode == "embedded"]
    header = " | ".join(f"p50 at {rtt:g} ms" for rtt in rtts)
    lines = ["", "Latency by injected round-trip time (ms):", "", f"| mode | concurrency | {header} |"]
    lines.append("|---|---" + "|---" * len(rtts) + "|")
    for mode, level in keys:
        cells = []
        for _rtt, runs, _numbers in sections:
            run = next((r for r in runs if (r.mode, r.concurrency) == (mode, level)), None)
            cells.append(_fmt(run.percentile(50)) if run is not None else "n/a")
        lines.append(f"| {mode} | {level} | " + " | ".join(cells) + " |")
    added = [
        (rtt, numbers.get("split_adds_p50_ms", {}), numbers.get("split_adds_cpu_ms", {}))
        for rtt, _, numbers in sections
    ]
    changes = [numbers.get("stack_vs_baseline") for _rtt, _runs, numbers in sections]
    if all(changes):
        lines += ["", "This checkout's stack minus the baseline's, per photo at concurrency 1 (medians, ms):", ""]
        lines += ["| injected RTT | latency | search stage | CPU |", "|---|---|---|---|"]
        for rtt, change in zip(rtts, changes, strict=True):
            assert change is not None
            lines.append(
                f"| {rtt:g} | {change['latency_ms']:+.1f} | {change['search_ms']:+.1f} | {change['cpu_ms']:+.1f} |"
            )
    modes = list(dict.fromkeys(mode for _rtt, p50, _cpu in added for mode in p50))
    if modes:
        lines += ["", "Split cost at concurrency 1 (median per-photo difference to embedded; ms):", ""]
        lines += ["| mode | " + " | ".join(f"adds at {rtt:g} ms | CPU at {rtt:g} ms" for rtt in rtts) + " |"]
        lines.append("|---" + "|---|---" * len(rtts) + "|")
        for mode in modes:
            cells = [f"{_fmt(p50.get(mode, math.nan))} | {_fmt(cpu.get(mode, math.nan))}" for _rtt, p50, cpu in added]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def summary(runs: list[Run], encoder_modes: dict[int, str]) -> tuple[list[str], dict[str, Any]]:
    """The "split adds X ms" lines (median of per-photo differences at concurrency 1) and the
    throughput change with more encoders."""
    by = {(run.mode, run.concurrency): run for run in runs}
    levels = sorted({run.concurrency for run in runs})
    lines: list[str] = []
    numbers: dict[str, Any] = {}
    embedded = by.get(("embedded", 1))
    for mode in dict.fromkeys(run.mode for run in runs):
        stack = by.get((mode, 1))
        if embedded is None or stack is None or not mode.startswith("stack") or "encoders" in mode:
            continue
        pairs = [
            s - e for s, e in zip(stack.latencies_ms, embedded.latencies_ms, strict=False) if not math.isnan(s + e)
        ]
        added = float(np.median(pairs)) if pairs else math.nan
        numbers.setdefault("split_adds_p50_ms", {})[mode] = added
        extra_cpu = float(np.median(np.subtract(stack.cpu_ms, embedded.cpu_ms))) if stack.cpu_ms else math.nan
        numbers.setdefault("split_adds_cpu_ms", {})[mode] = extra_cpu
        lines.append(
            f"{mode}: split adds {_fmt(added)} ms at concurrency 1 (median of {len(pairs)} per-photo differences; "
            f"p50 {_fmt(stack.percentile(50))} vs embedded {_fmt(embedded.percentile(50))} ms); "
            f"CPU of all processes: {_fmt(extra_cpu)} ms more per photo (median)"
        )
    stack, baseline = by.get(("stack", 1)), by.get(("stack (baseline)", 1))
    if stack is not None and baseline is not None:
        # Paired photo by photo, as against embedded: the change itself, under the same load.
        pairs = [s - b for s, b in zip(stack.latencies_ms, baseline.latencies_ms, strict=True) if not math.isnan(s + b)]
        searched = [
            s["search"] - b["search"]
            for s, b in zip(stack.timings, baseline.timings, strict=False)
            if "search" in s and "search" in b
        ]
        cpu = float(np.median(np.subtract(stack.cpu_ms, baseline.cpu_ms))) if stack.cpu_ms else math.nan
        change = {
            "latency_ms": float(np.median(pairs)) if pairs else math.nan,
            "search_ms": float(np.median(searched)) if searched else math.nan,
            "cpu_ms": cpu,
        }
        numbers["stack_vs_baseline"] = change
        lines.append(
            f"stack vs stack (baseline), per photo at concurrency 1 (medians of {len(pairs)} differences): "
            f"latency {change['latency_ms']:+.1f} ms, search stage {change['search_ms']:+.1f} ms, "
            f"CPU {change['cpu_ms']:+.1f} ms"
        )
    for count, mode in encoder_modes.items():
        for base in ("stack", "encoder x1"):
            more_mode = mode if base == "stack" else f"encoder x{count}"
            changes = []
            for level in levels:
                one, more = by.get((base, level)), by.get((more_mode, level))
                if one is None or more is None:
                    continue
                change = (more.photos_per_s / one.photos_per_s - 1.0) * 100.0 if one.photos_per_s else math.nan
                numbers.setdefault("throughput_change_pct", {}).setdefault(more_mode, {})[str(level)] = change
                changes.append(
                    f"c={level}: {_fmt(one.photos_per_s, 2)} -> {_fmt(more.photos_per_s, 2)} photos/s ({change:+.0f}%)"
                )
            if changes:
                lines.append(f"{more_mode} vs {base}: " + "; ".join(changes))
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
    parser.add_argument("--rounds", type=int, default=1, help="passes per mode at concurrency > 1, alternating")
    parser.add_argument("--baseline-root", type=Path, help="also measure the stack of this checkout")
    parser.add_argument("--encoder-only", action="store_true", help="also measure Encoder.Encode alone")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("KYB_EVAL_CACHE") or "~/.cache/kyb/eval"))
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds for the services to start")
    parser.add_argument(
        "--rtt-ms", type=float, nargs="+", default=[0.0], help="injected round-trip times of the stacks' calls"
    )
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    rtts = list(dict.fromkeys(args.rtt_ms))
    if min(rtts) < 0:
        parser.error("--rtt-ms must be >= 0")
    if args.photos < 1 or args.shards < 1 or min(args.concurrency) < 1 or min(args.encoders) < 1 or args.rounds < 1:
        parser.error("--photos, --shards, --concurrency, --encoders and --rounds must be >= 1")
    problem = checkout.root_error(args.baseline_root) if args.baseline_root is not None else None
    if problem:
        parser.error(f"--baseline-root {problem}")
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
    from kyb_services._local import prepare_shards

    prepare_shards(config, args.shards)  # what `kyb serve stack` does first; split once, then reused

    runs: list[Run] = []
    notes = [
        "`kyb serve stack` starts one encoder and the gateway takes one encoder target; "
        "K encoders = K-1 more encoder processes behind one round-robin `ipv4:` target of a second gateway."
    ]
    encoder_modes = {count: f"stack, {count} encoders" for count in sorted(set(args.encoders)) if count > 1}
    bytes_tables: dict[str, dict[str, StageBytes]] = {}
    sample = photos[:BYTES_PHOTOS]
    token = config.rpc.outgoing_token or None
    metadata = bearer_metadata(config.rpc.outgoing_token)
    with (
        tempfile.TemporaryDirectory(prefix="kyb-bench-") as logs,
        sigterm_as_interrupt(),
        contextlib.ExitStack() as open_,
    ):
        children = Children(Path(logs))
        rtt_file = Path(logs) / "rtt-ms" if any(rtts) else None
        if rtt_file is not None:
            rtt_file.write_text("0")
        open_.callback(engine.close)
        open_.callback(children.stop)
        open_.callback(lambda: print("stopping the services", file=sys.stderr, flush=True))
        # Everything starts first, so the modes can take turns under the same machine load.
        print(f"starting the stack ({args.shards} matcher shards)", file=sys.stderr, flush=True)
        stack = start_stack(
            children, config, args.shards, args.ready_timeout, metrics_port=_free_port(), rtt_file=rtt_file
        )
        modes: dict[str, Top] = {"embedded": embedded_top(engine)}
        base: dict[str, str] | None = None
        modes["stack"] = stack_top(open_.enter_context(GatewayClient(stack["gateway"], token, timeout=CALL_TIMEOUT_S)))
        if args.baseline_root is not None:
            print(f"starting the baseline stack from {args.baseline_root}", file=sys.stderr, flush=True)
            base = start_stack(
                children,
                config,
                args.shards,
                args.ready_timeout,
                root=args.baseline_root.resolve(),
                name="baseline",
                metrics_port=_free_port(),
                rtt_file=rtt_file,
            )
            client = open_.enter_context(GatewayClient(base["gateway"], token, timeout=CALL_TIMEOUT_S))
            modes["stack (baseline)"] = stack_top(client)
        extras: dict[int, ExtraGateway] = {}
        for count, mode in encoder_modes.items():
            print(f"starting {count - 1} more encoder(s) and a gateway over {count}", file=sys.stderr, flush=True)
            extras[count] = start_encoders_gateway(children, config, stack, args.shards, count, args.ready_timeout)
            client = open_.enter_context(GatewayClient(extras[count].address, token, timeout=CALL_TIMEOUT_S))
            modes[mode] = stack_top(client)
        encoder_modes_only: dict[str, Top] = {}
        if args.encoder_only:
            # Encoders of their own, each pinned to one core (encoder k to core k mod cores): adding
            # an encoder process then adds a core, what a node pool does, even on a small machine.
            cores = len(os.sched_getaffinity(0))
            pinned = [
                start_encoder(children, config, f"pinned encoder {k + 1}", core=k % cores)
                for k in range(max(args.encoders))
            ]
            for child, address, _url in pinned:
                wait_for_service(child, address, "kyb.v1.Encoder", config, args.ready_timeout)
            for count in sorted({1, *args.encoders}):
                target = "ipv4:" + ",".join(address for _child, address, _url in pinned[:count])
                channel = open_.enter_context(open_channel(target, config.rpc))
                encoder_modes_only[f"encoder x{count}"] = encoder_top(encoder_pb2_grpc.EncoderStub(channel), metadata)
            notes.append(f"encoder xK: K encoder processes, encoder k pinned to core k mod {cores} (taskset)")
        for name, top in [*modes.items(), *encoder_modes_only.items()]:  # warm-up (round-robin: once per encoder)
            for _ in range(max(args.encoders) if name != "embedded" else 1):
                top(photos[0][1])

        pids = _descendants([child.process.pid for child in children.items])
        sections: list[tuple[float, list[Run]]] = []
        for rtt in rtts:
            if rtt_file is not None:
                rtt_file.write_text(f"{rtt:g}")
                time.sleep(RTT_SETTLE_S)
                print(f"injected RTT {rtt:g} ms", file=sys.stderr, flush=True)
            runs = measure_levels(modes, encoder_modes_only, photos, levels, args.rounds, pids)
            for run in runs:
                run.rtt_ms = rtt
            sections.append((rtt, runs))
        for count in encoder_modes:
            before = sum(encode_calls(url) for url in extras[count].metrics_urls)
            notes.append(f"stack, {count} encoders: the started encoder(s) served {_fmt(before)} Encode calls in all")
        if rtt_file is not None:
            rtt_file.write_text("0")
            time.sleep(RTT_SETTLE_S)
        bytes_tables["stack"] = stage_bytes(config, stack, sample)
        if base is not None:
            bytes_tables["stack (baseline)"] = stage_bytes(config, base, sample)

    output: list[str] = []
    reported: list[tuple[float, list[Run], dict[str, Any]]] = []
    every_run: list[Run] = []
    for rtt, runs in sections:
        reference = runs[0]
        checks = {
            mode: agreement(reference, [run for run in runs if run.mode == mode], photos)
            for mode in dict.fromkeys(run.mode for run in runs)
        }
        if len(sections) > 1:
            output += ["", f"## Injected round-trip time {rtt:g} ms", ""]
        output += report(runs, {}, len(sample), checks, [])
        tail, numbers = summary(runs, encoder_modes)
        output += tail
        reported.append((rtt, runs, {**numbers, "agreement": checks}))
        every_run += runs
    output += report([], bytes_tables, len(sample), {}, notes)
    output += traffic_report(bytes_tables, len(sample), args.shards)
    output += rtt_report(reported)
    print("\n".join(output))
    if args.json:
        document = {
            "dataset": gt.name,
            "photos": [path for path, _ in photos],
            "shards": args.shards,
            "runs": [run.to_dict() for run in every_run],
            "bytes_per_stage": {
                stack: {k: {**vars(v), "photos": len(sample)} for k, v in table.items()}
                for stack, table in bytes_tables.items()
            },
            "traffic": {stack: traffic(table, len(sample), args.shards) for stack, table in bytes_tables.items()},
            "by_rtt": {f"{rtt:g}": numbers for rtt, _runs, numbers in reported},
            "notes": notes,
        }
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted (every service started was stopped)", file=sys.stderr)
        sys.exit(130)
