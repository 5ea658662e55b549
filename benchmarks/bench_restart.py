"""A gateway restart under concurrent clients: failed calls with and without the client's retry policy.

Usage::

    kyb demo                                     # once: draws and ingests the sample catalog in .kyb/demo
    python benchmarks/bench_restart.py [.kyb/demo] [--clients 16] [--down-s 1.0] [--restarts 3]

It serves the demo index with the whole topology in this process (two matcher shards), then runs
``--clients`` threads, each with its own :class:`kyb.client.GatewayClient` (its own channel, as 16
separate processes would have), identifying ``--calls`` demo photos one after another. Once every
client is under way, the gateway is stopped (``--grace-s``, 0: calls in flight are cut off), left down
``--down-s`` seconds, and a new gateway is started on the same port (``--restarts`` times). Each
client counts answered and failed calls.
The whole run is done twice, on the same stack: without a retry policy (``retry=None``: every call
fails at the first UNAVAILABLE, as clients did before) and with the default
:class:`kyb.rpc.ClientRetry`. Every call's deadline is ``--deadline-s``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from kyb.client import GatewayClient
from kyb.config import load_config
from kyb.errors import KybError
from kyb.index import has_index
from kyb.rpc import ClientRetry, GatewayConfig, RpcConfig, ServiceConfig, wait_until_serving
from kyb_services._local import LocalStack, start_local
from kyb_services.gateway.server import create_server as create_gateway


def _restart(stack: LocalStack, down_s: float, grace_s: float) -> None:
    """Stops the stack's gateway (``grace_s`` for calls in flight), waits ``down_s``, starts a new
    one on its port in its place."""
    old = stack.gateway
    old.stop(grace_s).wait(grace_s + 10)
    old.wait_for_termination(grace_s + 10)
    time.sleep(down_s)  # the time a real restart takes (a new process, or a new pod)
    section = dataclasses.replace(stack.config.gateway, port=stack.gateway_port)
    fresh, _port = create_gateway(stack.config.replace(gateway=section))
    fresh.start()
    stack.servers[stack.servers.index(old)] = fresh
    stack.gateway = fresh


def _run(stack: LocalStack, photos: list[bytes], args: argparse.Namespace, retry: ClientRetry | None) -> dict:
    """Every client identifies ``--calls`` photos one after another (a failed call is counted and the
    client goes on with its next photo, as `kyb identify a.jpg b.jpg ...` does); the gateway restarts
    each time another ``--clients`` calls have been answered since the last restart."""
    address = f"127.0.0.1:{stack.gateway_port}"
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    examples: dict[str, str] = {}  # the first message of each kind of failure
    answered = threading.Semaphore(0)
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        with GatewayClient(address, timeout=args.deadline_s, retry=retry) as client:
            for i in range(args.calls):
                started = time.perf_counter()
                try:
                    client.identify(photos[(k + i) % len(photos)])
                    outcome = "ok"
                except KybError as exc:
                    outcome = type(exc).__name__
                    examples.setdefault(f"{outcome} {getattr(exc, 'code', '')}", str(exc))
                with lock:
                    outcomes[outcome] += 1
                    latencies.append(time.perf_counter() - started)
                if outcome == "ok":
                    answered.release()

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(args.clients)]
    for thread in threads:
        thread.start()
    restarts = 0
    for _ in range(args.restarts):
        # Restart once as many calls as there are clients have been answered: every client is mid-run.
        if not all(answered.acquire(timeout=args.deadline_s * 4) for _ in range(args.clients)):
            break
        _restart(stack, args.down_s, args.grace_s)
        restarts += 1
    for thread in threads:
        thread.join()
    failed = sum(n for name, n in outcomes.items() if name != "ok")
    return {"outcomes": dict(outcomes), "examples": examples, "failed": failed, "calls": sum(outcomes.values()),
            "restarts": restarts, "max_s": max(latencies), "p50_s": statistics.median(latencies)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", nargs="?", default=".kyb/demo", help="a demo set made by `kyb demo`")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--calls", type=int, default=6, help="photos each client identifies")
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--down-s", type=float, default=1.0, help="seconds the gateway stays down each time")
    parser.add_argument("--deadline-s", type=float, default=30.0)
    parser.add_argument("--grace-s", type=float, default=0.0,
                        help="grace period of the old gateway (0: calls in flight are cut off)")  # fmt: skip
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if not has_index(folder / "index"):
        print(f"error: {folder}/index has no index: run `kyb demo --dir {folder}` first", file=sys.stderr)
        return 2
    photos = [p.read_bytes() for p in sorted((folder / "photos").glob("*.jpg"))]
    where = {"index_dir": str(folder / "index"), "catalog_url": str(folder / "catalog.db"), "cache.url": "none"}
    config = ServiceConfig(rpc=RpcConfig(host="127.0.0.1", grace_s=0.0), gateway=GatewayConfig(port=0),
                           engine=load_config(overrides=where))  # fmt: skip
    stack = start_local(config, shards=2, detector=False)
    try:
        for server in [stack.encoder, *stack.matchers]:
            wait_until_serving(f"127.0.0.1:{server.port}", config.rpc, timeout_s=120)
        print(f"{args.clients} clients x {args.calls} calls, {args.restarts} gateway restart(s) ({args.down_s:g} s "
              f"down, grace {args.grace_s:g} s), deadline {args.deadline_s:g} s")  # fmt: skip
        print(f"{'client policy':<24} {'calls':>6} {'failed':>7} {'restarts':>8} {'p50 s':>7} {'max s':>7}  outcomes")
        for name, retry in (("none (first UNAVAILABLE)", None), ("ClientRetry()", ClientRetry())):
            report = _run(stack, photos, args, retry)
            print(f"{name:<24} {report['calls']:>6} {report['failed']:>7} {report['restarts']:>8} "
                  f"{report['p50_s']:>7.2f} {report['max_s']:>7.2f}  {report['outcomes']}")  # fmt: skip
            for kind, message in report["examples"].items():
                print(f"    {kind}: {message}")
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
