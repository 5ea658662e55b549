"""``kyb serve ...``: the serve commands the main ``kyb`` CLI mounts with :func:`add_serve_commands`.

::

    kyb serve matcher --shard 1/2 --index-dir /data/shard-1    one service (as its container runs it)
    kyb serve gateway --matchers h0:50053,h1:50053 --encoder h:50052
    kyb serve stack --shards 2                                  one local process per service
    kyb serve all --shards 2                                    every service in this process
    kyb serve web --gateway h:50051 --port 8080                 the HTTP/JSON front and the page
    kyb serve all --web                                         ... with the web front on web.port
    kyb reshard --matchers 'matcher-{k}.matcher:50053' --from 2 --to 3   move references after scaling

Flags override ``--config`` (a TOML file, default ``$KYB_CONFIG``), which the ``KYB_*`` variables
override in turn; the names are those of :mod:`kyb.config`, the same a manifest sets.
"""

from __future__ import annotations

import argparse
import logging
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from kyb.config import ServiceConfig, load_service_config
from kyb.errors import EXIT_CODES, ConfigError, KybError, lookup

__all__ = ["add_reshard_command", "add_serve_commands", "run_reshard", "run_serve", "setup_logging"]

log = logging.getLogger(__name__)

_ROLES = {
    "gateway": "the public API: identify, ingest, catalog reads",
    "detector": "logo / album-cover regions (torchvision Faster R-CNN; no weights: whole photo)",
    "encoder": "image -> features with the index's codebook",
    "matcher": "one shard of the reference index",
    "web": "the HTTP/JSON front and the page people use (over a gateway)",
    "stack": "the whole topology as separate local processes",
    "all": "the whole topology in this process",
}


def setup_logging(level: str | None = None) -> None:
    """Logs to stderr at ``level`` (default ``$KYB_LOG_LEVEL`` or INFO); only called by mains."""
    name = (level or os.environ.get("KYB_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, name, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def add_serve_commands(subparsers: Any) -> None:
    """Adds ``serve gateway|detector|encoder|matcher|stack|all`` to an argparse subparsers object.

    Each command sets ``func`` to :func:`run_serve`; the main CLI calls ``args.func(args)`` and
    exits with the integer it returns.
    """
    serve = subparsers.add_parser(
        "serve",
        help="run the gRPC services",
        description="Run one Know Your Bands service, a local stack of processes, or all in one process.",
    )
    roles = serve.add_subparsers(dest="serve_role", metavar="SERVICE", required=True)
    for role, text in _ROLES.items():
        parser = roles.add_parser(role, help=text, description=f"Serve {text}.")
        parser.add_argument("--config", help="TOML file (default: $KYB_CONFIG)")
        parser.add_argument("--host", help="bind address (rpc.host, default [::])")
        parser.add_argument("--port", type=int, help=f"{'gateway' if role in ('stack', 'all') else role} port")
        parser.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (-1 = off)")
        parser.add_argument("--token", action="append", help="accepted bearer token (repeat for several)")
        parser.add_argument("--index-dir", help="embedded index folder (index_dir)")
        parser.add_argument("--catalog", help="catalog URL or SQLite path (catalog_url)")
        parser.add_argument("--log-level", default=os.environ.get("KYB_LOG_LEVEL", "INFO"), help="DEBUG, INFO, ...")
        if role == "matcher":
            parser.add_argument("--shard", help="K/N: serve shard K of N (auto/N = pod ordinal)")
            parser.add_argument("--shard-dir", help="this shard's index folder ({k} and {n} replaced)")
        if role == "gateway":
            parser.add_argument("--encoder", help="encoder address host:port")
            parser.add_argument("--detector", help="detector address (empty = no detector)")
            parser.add_argument("--matchers", help="shard addresses in shard order, comma-separated")
        if role == "web":
            parser.add_argument("--gateway", help="gateway address host:port (web.gateway_address)")
        if role in ("stack", "all"):
            parser.add_argument("--shards", type=int, default=1, help="matcher shards N (default 1)")
            parser.add_argument("--web", action="store_true", help="also serve the web front (web.port)")
            parser.add_argument("--web-port", type=int, help="web front port (web.port, default 8080)")
        if role == "stack":
            parser.add_argument("--restart-backoff", type=float, default=0.5, metavar="S",
                                help="seconds before a service that exited is started again, doubling up to "
                                     "30 s (default 0.5)")  # fmt: skip
            parser.add_argument("--max-restarts", type=int, default=5, metavar="N",
                                help="a service that exits N times within a minute stays down (default 5)")  # fmt: skip
        parser.set_defaults(func=run_serve)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    role = args.serve_role
    section = "gateway" if role in ("stack", "all") else role
    values: dict[str, Any] = {
        "rpc.host": args.host,
        f"{section}.port": args.port,
        "rpc.metrics_port": args.metrics_port,
        "rpc.tokens": ",".join(args.token) if args.token else None,
        "index_dir": args.index_dir,
        "catalog_url": args.catalog,
    }
    if role == "matcher":
        values.update({"matcher.shard": args.shard, "matcher.index_dir": args.shard_dir})
    if role == "web":
        values["web.gateway_address"] = args.gateway
    if role in ("stack", "all"):
        values["web.port"] = args.web_port
    if role == "gateway":
        values.update(
            {
                "gateway.encoder_address": args.encoder,
                "gateway.detector_address": args.detector,
                "gateway.matcher_addresses": args.matchers,
            }
        )
    return values


def load_from_args(args: argparse.Namespace) -> ServiceConfig:
    """The configuration a serve command runs with: file, then environment, then flags."""
    path = args.config or os.environ.get("KYB_CONFIG") or None
    return load_service_config(path, env=os.environ, overrides=_overrides(args))


def service_entry_point(group: str, name: str) -> Any:
    """What the installed services register under ``group`` / ``name`` (pyproject's entry points): the
    services build on this package, so it finds them by name instead of importing them."""
    found = [point for point in entry_points(group=group) if point.name == name]
    if not found:
        raise ConfigError(f"no {group} entry point {name!r}: install the services (pip install -e .)")
    return found[0].load()


def run_serve(args: argparse.Namespace) -> int:
    """Runs the chosen service(s) until SIGTERM/SIGINT; returns the process exit code."""
    if not logging.getLogger().handlers:
        setup_logging(args.log_level)
    role = args.serve_role
    try:
        config = load_from_args(args)
        from kyb.rpc import serve

        if role == "stack":
            if args.config:
                os.environ["KYB_CONFIG"] = args.config  # the child processes read the same file
            run_processes = service_entry_point("kyb.stack", "processes")
            restarts = {"restart_backoff_s": args.restart_backoff, "max_restarts": args.max_restarts}
            return int(run_processes(config, shards=args.shards, web=args.web, **restarts))
        if role == "all":
            return int(service_entry_point("kyb.stack", "in_process")(config, shards=args.shards, web=args.web))
        create_server = service_entry_point("kyb.services", role)
        server, _port = create_server(config)
    except KybError as exc:
        log.error("cannot start %s: %s", role, exc)
        return int(lookup(EXIT_CODES, exc))
    serve([server])
    return 0


def add_reshard_command(subparsers: Any) -> None:
    """Adds ``reshard``: move references between running matcher shards after N -> M."""
    parser = subparsers.add_parser(
        "reshard",
        help="move references between running matcher shards after the shard count changed",
        description="Moves every reference whose jump-consistent-hash shard changed from --from to --to "
        "shards: added to its new shard, then deleted from the old one. Safe to run again.",
    )
    parser.add_argument("--matchers", required=True,
                        help="shard addresses in shard order, comma-separated, or a {k} template "
                             "(matcher-{k}.matcher:50053); max(--from, --to) of them")  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="old_count", type=int, help="shard count before")
    source.add_argument("--from-index", help="instead: copy every reference of this index folder to its shard")
    parser.add_argument("--to", dest="new_count", type=int, required=True, help="shard count now")
    parser.add_argument("--batch", type=int, default=64, help="keys per Add/Delete (one save each)")
    parser.add_argument("--dry-run", action="store_true", help="count what would move, change nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline of each call in seconds")
    parser.add_argument("--config", help="TOML file for the rpc section (default: $KYB_CONFIG)")
    parser.add_argument("--token", help="bearer token (default: rpc.client_token / first of rpc.tokens)")
    parser.add_argument("--log-level", default=os.environ.get("KYB_LOG_LEVEL", "INFO"), help="DEBUG, INFO, ...")
    parser.set_defaults(func=run_reshard)


def run_reshard(args: argparse.Namespace) -> int:
    """``kyb reshard``: prints the moves as a table; errors propagate to the main CLI's exit codes."""
    import dataclasses

    from tqdm import tqdm

    from kyb.rpc._reshard import expand_addresses, reshard

    path = args.config or os.environ.get("KYB_CONFIG") or None
    config = load_service_config(path, env=os.environ)
    rpc = config.rpc
    if args.token:
        rpc = dataclasses.replace(rpc, client_token=args.token)
    old_count = args.old_count or 0
    index = None
    if args.from_index:
        from kyb.index import ReferenceIndex

        index = ReferenceIndex.load(Path(args.from_index), config.engine.search)
    addresses = expand_addresses(args.matchers, max(old_count, args.new_count))
    with tqdm(desc="reshard", unit="key", disable=None) as bar:

        def advance(keys: int) -> None:
            bar.update(keys)

        report = reshard(addresses, old_count, args.new_count, rpc, source_index=index, batch=args.batch,
                         dry_run=args.dry_run, timeout_s=args.timeout, progress=advance)  # fmt: skip
    if args.json:
        import json

        moves = [{"from": a if a >= 0 else "index", "to": b, "keys": n} for (a, b), n in sorted(report.moved.items())]
        print(json.dumps({"old_count": report.old_count, "new_count": report.new_count, "moves": moves,
                          "moved": report.total_moved, "keys_per_shard": report.sizes_after,
                          "elapsed_s": round(report.elapsed_s, 3), "dry_run": report.dry_run}))  # fmt: skip
    else:
        print(report.table())
    return 0
