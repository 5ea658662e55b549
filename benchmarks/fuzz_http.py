"""Fuzzing of the web front's HTTP API from its own OpenAPI description (schemathesis).

Usage::

    pip install -e ".[fuzz]"
    python benchmarks/fuzz_http.py [--max-examples 50] [--max-time 300] [--work FOLDER]

It draws a sample catalog (kyb.synth), ingests it, serves it in this process (detector, encoder,
two matcher shards, gateway and the web front on free loopback ports: kyb_services._local), and runs
``schemathesis run`` against ``/openapi.json`` with every built-in check (no 5xx, status codes,
content types, headers and bodies as described, negative data refused, ...) plus ours
(:func:`no_internals`, loaded through ``SCHEMATHESIS_HOOKS``): no error body or header carries an
address, port, DSN, path or traceback, and every problem carries the request id of its answer.
Prints schemathesis' summary (operations, cases generated, failures by check); its exit code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import schemathesis

#: The stack requires this bearer token, so that the auth checks (missing, wrong token) test something.
TOKEN = "fuzz-token"
#: What no error answer may show (the fuzzing stack runs on loopback, in a temp folder).
FORBIDDEN = ("127.0.0.1", "localhost:", "ipv4:", "Traceback", "Errno", "postgres", tempfile.gettempdir() + "/")


@schemathesis.check
def no_internals(ctx: Any, response: Any, case: Any) -> bool | None:
    """Error answers name no address, DSN, path or exception text and carry their request id."""
    if response.status_code < 400:
        return None
    shown = response.text + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
    leaked = [word for word in FORBIDDEN if word in shown]
    if leaked:
        raise AssertionError(f"the error answer shows {leaked}: {shown[:300]}")
    if response.headers.get("content-type", [""])[0] == "application/problem+json":
        body = response.json()
        request_id = response.headers.get("x-request-id", [""])[0]
        if not body.get("request_id") or body["request_id"] != request_id:
            raise AssertionError(f"problem without its answer's request id: {body} / X-Request-Id {request_id!r}")
    return None


def _serve(work: Path) -> tuple[Any, int]:
    from kyb import synth
    from kyb.config import load_config
    from kyb.rpc import GatewayConfig, MatcherConfig, RpcConfig, ServiceConfig, WebConfig, wait_until_serving
    from kyb_services._local import start_local, wait_for_http

    demo = synth.write_demo_set(work / "demo", n_bands=8, n_photos=4, seed=0)
    where = {"index_dir": str(work / "index"), "catalog_url": str(work / "catalog.db"), "cache.url": "none"}
    env = {**os.environ, "KYB_INDEX_DIR": where["index_dir"], "KYB_CATALOG_URL": where["catalog_url"]}
    ingest = [sys.executable, "-c", "import sys; from kyb.cli import main; sys.exit(main())", "ingest"]
    subprocess.run([*ingest, str(demo / "catalog.json")], env=env, check=True, capture_output=True)
    config = ServiceConfig(
        rpc=RpcConfig(host="127.0.0.1", grace_s=0.0, metrics_port=-1, tokens=(TOKEN,)),
        gateway=GatewayConfig(port=0),
        web=WebConfig(port=0, deadline_s=30.0),
        matcher=MatcherConfig(port=0, index_dir=str(work / "shard-{k}-of-{n}")),
        engine=load_config(overrides=where),
    )
    stack = start_local(config, shards=2, detector=False, web=True)
    port = stack.web.port
    for server in [stack.encoder, *stack.matchers]:
        wait_until_serving(f"127.0.0.1:{server.port}", config.rpc, timeout_s=120)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout_s=30)
    return stack, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=50, help="cases per operation and phase")
    parser.add_argument("--max-time", type=int, default=300, help="seconds for the whole run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, help="work folder (default: a new temp folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kyb-fuzz-http-"))
    started = time.perf_counter()
    stack, port = _serve(work)
    print(f"web front on port {port} ({time.perf_counter() - started:.0f} s to start)", flush=True)
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run", f"http://127.0.0.1:{port}/openapi.json",
        "--checks", "all", "--max-examples", str(args.max_examples), "--max-time", str(args.max_time),
        "--seed", str(args.seed), "--workers", "2", "--request-timeout", "60", "--no-color",
        "--phases", "examples,coverage,fuzzing", "--header", f"Authorization: Bearer {TOKEN}",
        "--suppress-health-check", "all",
        "--report", "junit", "--report-dir", str(work / "report"),
    ]  # fmt: skip
    hooks = {"SCHEMATHESIS_HOOKS": "fuzz_http", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    try:
        done = subprocess.run(command, env={**os.environ, **hooks})
    finally:
        stack.stop()
    print(f"schemathesis exit code {done.returncode}; {time.perf_counter() - started:.0f} s in all; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")  # fmt: skip
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
