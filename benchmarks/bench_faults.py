"""Faults under load: `kyb serve stack` (2 matcher shards, Redis cache, Postgres catalog, the web front)
with N concurrent clients, phase by phase, and what each phase's answers were.

Usage::

    python benchmarks/bench_faults.py [--clients 16] [--phase-seconds 10] [--http-every 4]
                                      [--rss-calls 5000] [--dir FOLDER] [--keep]
                                      [--faults shard redis postgres] [--baseline-root DIR]

It draws a sample catalog (kyb.synth, 8 bands, 12 photos), starts a scratch Redis and a scratch
PostgreSQL cluster on free ports in the work folder (the machine's own Redis and Postgres are never
touched; without ``redis-server`` or ``initdb``/``pg_ctl`` the cache is off or the catalog is SQLite,
and their phases are skipped), ingests the catalog, and starts ``kyb serve stack --shards 2 --web`` as
a child process. ``--clients`` threads then identify the photos one after another for the whole run,
every ``--http-every``-th client over the web front's HTTP API, the others over gRPC
(:class:`kyb.client.GatewayClient`, its default retry policy). Each phase lasts ``--phase-seconds``:

1. ``baseline``: all up;
2. ``shard-1 kill -9``: the matcher process of shard 1 is killed at the start of the phase; the
   supervisor starts it again after ``--restart-backoff`` and it loads its index;
3. ``shard-1 back``: everything up again;
4. ``redis stopped`` / 5. ``redis back``: the cache server stopped, then started again (empty);
6. ``postgres stopped`` / 7. ``postgres back``: the catalog cluster stopped (``-m immediate``, as a
   crash) and started again.

Every call is counted once, in the phase in which it ended, as ``ok`` (every band of the all-up answer,
not partial, catalog read), ``partial`` (shards missing, named; no band outside the all-up answer),
``degraded`` (the catalog unavailable: the bands found with the metadata last seen), ``wrong`` (an
answer that differs otherwise) or ``error``; latencies are of all answered calls. The design accepts
``partial`` while a shard is down and ``degraded`` while the catalog is; an ``error`` or ``wrong``
anywhere is a fault of the stack, and the exit code is 1.

``--faults shard redis postgres`` (the default: all) runs only the phases of the faults named, e.g.
``--faults redis postgres`` for a stack that would not survive the shard's kill.

``--rss-calls N``: afterwards, with everything up, N more identifications over the same clients,
and each service process's resident memory (VmRSS) before and after.

``--baseline-root DIR``: the ingest and the stack run the code of another checkout instead of this
one (``git worktree add /work/base <commit>``, set up with its own ``bash scripts/setup.sh``: its
``.venv`` is used where it has one, see ``benchmarks/other_checkout.py``), so the table before a change is
measured with the same benchmark, clients and judgement as the table after it. Options its
``kyb serve stack`` lacks (``--restart-backoff`` before issue 29) are left out, as its ``--help``
shows; an answer without ``catalog_unavailable`` reads as not degraded, so a call that an older stack
fails counts as an error (a stack that stops whole when a shard dies gives errors until the end:
``--faults redis postgres`` shows how such a stack meets the other faults).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kyb import synth
from kyb.client import GatewayClient
from kyb.errors import KybError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helper for --baseline-root
import other_checkout as checkout

KYB = checkout.kyb_command(None)
#: The faults ``--faults`` can pick, in the order their phases run.
FAULTS = ("shard", "redis", "postgres")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(command: list[str], **kwargs: Any) -> None:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:4])}... exited {done.returncode}: {done.stderr.strip()[-600:]}")


# ---------------------------------------------------------------------------- scratch servers
class ScratchRedis:
    """A redis-server of our own on a free port, without persistence."""

    def __init__(self, root: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.port = _free_port()
        self.root = root
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, 10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class ScratchPostgres:
    """A throwaway PostgreSQL cluster in ``root`` on a free port (initdb, trust auth, fsync off), run
    as the ``postgres`` user when this runs as root (initdb refuses root)."""

    def __init__(self, root: Path) -> None:
        self.initdb, self.pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
            if found:
                self.initdb, self.pg_ctl = str(found[-1].with_name("initdb")), str(found[-1])
        self.root = root
        self.data = root / "pgdata"
        self.port = _free_port()
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def available(self) -> bool:
        return bool(self.initdb and self.pg_ctl) and (not self.prefix or shutil.which("runuser") is not None)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        assert self.initdb
        self.root.mkdir(parents=True, exist_ok=True)
        if self.prefix:
            shutil.chown(self.root, "postgres")
        _run([*self.prefix, self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])

    def start(self) -> None:
        assert self.pg_ctl
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "postgres.log")
        _run([*self.prefix, self.pg_ctl, "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "60", "start"])

    def stop(self) -> None:
        assert self.pg_ctl
        _run([*self.prefix, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])


def _wait_for_port(port: int, timeout_s: float) -> None:
    limit = time.monotonic() + timeout_s
    while time.monotonic() < limit:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s:.0f} s")


# ---------------------------------------------------------------------------- the stack
class Stack:
    """``kyb serve stack`` as a child process; its log gives the pid of each service."""

    def __init__(self, env: dict[str, str], log_path: Path, args: argparse.Namespace, kyb: list[str] = KYB) -> None:
        self.gateway_port, self.web_port = _free_port(), _free_port()
        self.log_path = log_path
        self.command = stack_command(kyb, self.gateway_port, self.web_port, args, _stack_help(kyb, env, args))
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            self.command, env=env, cwd=args.baseline_root, stdout=self._log, stderr=subprocess.STDOUT
        )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float) -> None:
        limit = time.monotonic() + timeout_s
        while "stack ready" not in self.text():
            if self.process.poll() is not None or time.monotonic() > limit:
                raise RuntimeError(f"the stack did not start:\n{self.text()[-3000:]}")
            time.sleep(0.5)

    def pids(self) -> dict[str, int]:
        """The pid of each service process now: the stack's children, named by module (and shard)."""
        found: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != self.process.pid:
                    continue
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            name = argv[argv.index(b"-m") + 1].decode().rsplit(".", 1)[-1] if b"-m" in argv else "?"
            if name == "matcher":
                shard = next(
                    (v[len(b"KYB_MATCHER__SHARD=") :] for v in environ if v.startswith(b"KYB_MATCHER__SHARD=")), b"?"
                )
                name = f"matcher shard-{shard.decode().split('/')[0]}"
            found[name] = int(entry.name)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _stack_help(kyb: list[str], env: dict[str, str], args: argparse.Namespace) -> str | None:
    """``kyb serve stack --help`` of the checkout under test; None for this checkout's (known)."""
    if args.baseline_root is None:
        return None
    return checkout.cli_help(kyb, ["serve", "stack"], env, cwd=args.baseline_root)


def stack_command(
    kyb: list[str], port: int, web_port: int, args: argparse.Namespace, help_text: str | None
) -> list[str]:
    """The ``kyb serve stack`` argv: 2 shards, the web front, and ``--restart-backoff`` where that
    command line has it (``help_text`` None: this checkout's, which has it)."""
    command = [*kyb, "serve", "stack", "--shards", "2", "--web", "--port", str(port), "--web-port", str(web_port)]
    if help_text is None or checkout.has_option(help_text, "--restart-backoff"):
        command += ["--restart-backoff", str(args.restart_backoff)]
    return command


def _commit(root: Path) -> str:
    done = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def _rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else float("nan")


# ---------------------------------------------------------------------------- clients
@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)


def _bands(answer: dict[str, Any]) -> frozenset[str]:
    return frozenset(
        o["matches"][0]["band_id"] for o in answer["objects"] if o["matches"] and o["matches"][0]["band_id"]
    )


def _outcome(answer: dict[str, Any], expected: frozenset[str]) -> str:
    found = _bands(answer)
    if answer.get("partial"):
        return "partial" if found <= expected else "wrong"
    if found != expected:
        return "wrong"
    return "degraded" if answer.get("catalog_unavailable") else "ok"


def _http_identify(url: str, photo: bytes, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, data=photo, method="POST", headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read())


class Load:
    """``clients`` threads identifying photos until stopped; each call is tallied under the phase
    current when it ended (a call in flight when a shard is killed counts where its answer shows it)."""

    def __init__(self, stack: Stack, photos: list[bytes], expected: list[frozenset[str]], args: argparse.Namespace):
        self.stack, self.photos, self.expected, self.args = stack, photos, expected, args
        self.phase = "warm-up"
        self.tallies: dict[str, Tally] = defaultdict(Tally)
        self.calls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(args.clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.args.deadline_s + 10)

    def _client(self, k: int) -> None:
        http = self.args.http_every > 0 and k % self.args.http_every == self.args.http_every - 1
        url = f"http://127.0.0.1:{self.stack.web_port}/api/v1/identify"
        with GatewayClient(f"127.0.0.1:{self.stack.gateway_port}", timeout=self.args.deadline_s) as client:
            i = k
            while not self._stop.is_set():
                index = i % len(self.photos)
                i += 1
                started = time.perf_counter()
                try:
                    if http:
                        answer = _http_identify(url, self.photos[index], self.args.deadline_s)
                    else:
                        answer = client.identify(self.photos[index])
                    outcome = _outcome(answer, self.expected[index])
                    example = f"photo {index}: {sorted(_bands(answer))} vs {sorted(self.expected[index])}"
                except urllib.error.HTTPError as exc:
                    outcome, example = f"error HTTP {exc.code}", exc.read().decode(errors="replace")[:300]
                except (KybError, OSError) as exc:
                    outcome, example = f"error {type(exc).__name__}", str(exc)[:300]
                except Exception as exc:  # an answer this client cannot read (an older stack's) is an error
                    outcome, example = f"error {type(exc).__name__}", str(exc)[:300]
                elapsed = time.perf_counter() - started
                with self._lock:
                    tally = self.tallies[self.phase]
                    tally.outcomes[outcome] += 1
                    if not outcome.startswith("error"):
                        tally.latencies.append(elapsed)
                    if outcome not in ("ok", "partial", "degraded"):
                        tally.examples.setdefault(outcome, example)
                    self.calls += 1


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _row(name: str, tally: Tally, note: str) -> str:
    counts = tally.outcomes
    errors = sum(n for o, n in counts.items() if o.startswith("error"))
    return (f"{name:<18} {sum(counts.values()):>6} {counts['ok']:>6} {counts['partial']:>8} {counts['degraded']:>9} "
            f"{counts['wrong']:>6} {errors:>7} {_percentile(tally.latencies, 0.5):>7.2f} "
            f"{_percentile(tally.latencies, 0.95):>7.2f}  {note}")  # fmt: skip


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--phase-seconds", type=float, default=10.0)
    parser.add_argument("--http-every", type=int, default=4, help="every N-th client uses HTTP (0: none)")
    parser.add_argument("--restart-backoff", type=float, default=1.0, help="the supervisor's first backoff, s")
    parser.add_argument("--deadline-s", type=float, default=30.0, help="each call's deadline")
    parser.add_argument("--rss-calls", type=int, default=0, help="then N more calls and each service's RSS")
    parser.add_argument("--dir", type=Path, help="work folder (default: a new one under the system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--faults", nargs="+", choices=FAULTS, default=list(FAULTS), help="the fault phases to run (default: all)"
    )
    parser.add_argument("--baseline-root", type=Path, help="run the ingest and the stack from this checkout's code")
    args = parser.parse_args(argv)
    if args.baseline_root is not None:
        args.baseline_root = args.baseline_root.resolve()
        problem = checkout.root_error(args.baseline_root)
        if problem:
            parser.error(f"--baseline-root {problem}")
    kyb = checkout.kyb_command(args.baseline_root)

    # Absolute: the children of --baseline-root run in that folder (so that its code, not this one's, is first).
    work = (args.dir or Path(tempfile.mkdtemp(prefix="kyb-faults-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # the scratch Postgres runs as another user
    redis, postgres = ScratchRedis(work), ScratchPostgres(work / "pg")
    stack: Stack | None = None
    load: Load | None = None
    try:
        started = time.perf_counter()
        demo = synth.write_demo_set(work / "demo", n_bands=8, n_photos=12, seed=0)
        if redis.binary:
            redis.start()
        if postgres.available:
            postgres.init()
            postgres.start()
        catalog = postgres.url if postgres.available else str(work / "catalog.db")
        cache = redis.url if redis.binary else "none"
        env = {
            **os.environ,
            "KYB_INDEX_DIR": str(work / "index"),
            "KYB_CATALOG_URL": catalog,
            "KYB_CACHE__URL": cache,
            "KYB_MATCHER__INDEX_DIR": str(work / "shard-{k}-of-{n}"),
            "KYB_RPC__GRACE_S": "0",
            "KYB_RPC__METRICS_PORT": "-1",
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
        if args.baseline_root is not None:
            env = checkout.env(args.baseline_root, env)
        _run([*kyb, "ingest", str(demo / "catalog.json")], env=env, cwd=args.baseline_root)
        stack = Stack(env, work / "stack.log", args, kyb)
        stack.wait_ready(300)
        gt = json.loads((demo / "gt.json").read_text())
        queries = [q["query"] for q in gt["queries"]] + gt.get("distractor_queries", [])
        photos = [(demo / q).read_bytes() for q in queries]
        with GatewayClient(f"127.0.0.1:{stack.gateway_port}", timeout=args.deadline_s) as client:
            answers = [client.identify(p) for p in photos]
        if any(a["partial"] or a.get("catalog_unavailable") for a in answers):
            raise RuntimeError("the all-up answers are partial or degraded: the stack is not ready")
        expected = [_bands(a) for a in answers]
        over = f"every {args.http_every}-th over HTTP" if args.http_every else "all gRPC"
        where = f"catalog {'postgres' if postgres.available else 'sqlite'}, cache {cache.split(':')[0]}"
        if args.baseline_root is not None:
            backoff = "" if "--restart-backoff" in stack.command else ", no --restart-backoff"
            where += f"; code of {args.baseline_root} ({_commit(args.baseline_root)}{backoff})"
        print(f"stack ready in {time.perf_counter() - started:.0f} s: {len(photos)} photos, "
              f"{sum(len(e) for e in expected)} bands found all-up; {where}; {args.clients} clients ({over}), "
              f"{args.phase_seconds:g} s per phase")  # fmt: skip

        load = Load(stack, photos, expected, args)
        load.start()
        time.sleep(min(5.0, args.phase_seconds))  # every client under way
        notes: dict[str, str] = {}

        def kill_shard() -> str:
            assert stack is not None
            pid = stack.pids()["matcher shard-1"]
            os.kill(pid, signal.SIGKILL)
            return f"pid {pid} killed"

        def shard_back() -> str:
            assert stack is not None
            return f"shard-1 now pid {stack.pids().get('matcher shard-1', '(none: not restarted)')}"

        phases: list[tuple[str, Callable[[], str] | None]] = [("baseline", None)]
        if "shard" in args.faults:
            phases += [("shard-1 kill -9", kill_shard), ("shard-1 back", shard_back)]
        if redis.binary and "redis" in args.faults:
            phases += [("redis stopped", lambda: (redis.stop(), "")[1]), ("redis back", lambda: (redis.start(), "")[1])]
        if postgres.available and "postgres" in args.faults:
            phases += [
                ("postgres stopped", lambda: (postgres.stop(), "")[1]),
                ("postgres back", lambda: (postgres.start(), "")[1]),
            ]
        for name, action in phases:
            began = time.perf_counter()
            load.phase = name
            notes[name] = action() if action else ""
            spent = time.perf_counter() - began
            if spent > 0.5:
                notes[name] = f"{notes[name]} ({spent:.1f} s to act)".strip()
            time.sleep(max(0.0, args.phase_seconds - spent))
        rss: dict[str, tuple[float, float]] = {}
        if args.rss_calls:
            pids = stack.pids()
            before = {name: _rss_mb(pid) for name, pid in pids.items()}
            load.phase = f"{args.rss_calls} calls"
            goal = load.calls + args.rss_calls
            while load.calls < goal:
                time.sleep(0.5)
            rss = {name: (before[name], _rss_mb(pid)) for name, pid in pids.items()}
        load.phase = "stopping"
        load.stop()

        print(f"{'phase':<18} {'calls':>6} {'ok':>6} {'partial':>8} {'degraded':>9} {'wrong':>6} {'errors':>7} "
              f"{'p50 s':>7} {'p95 s':>7}  note")  # fmt: skip
        faults = 0
        for name in [p for p, _ in phases] + ([f"{args.rss_calls} calls"] if args.rss_calls else []):
            tally = load.tallies[name]
            print(_row(name, tally, notes.get(name, "")))
            faults += sum(n for o, n in tally.outcomes.items() if o not in ("ok", "partial", "degraded"))
            for kind, example in tally.examples.items():
                print(f"    {kind}: {example}")
        if rss:
            print(f"\nresident memory (VmRSS, MB) before and after {args.rss_calls} more identifications")
            for name, (first, last) in rss.items():
                print(f"  {name:<16} {first:>8.0f} {last:>8.0f}  {last - first:+.0f}")
        kept = stack.log_path if args.keep or args.dir is not None else "removed (--keep keeps it)"
        print(f"\nload average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; stack log {kept}")
        return 1 if faults else 0
    finally:
        if load is not None:
            load.stop()
        if stack is not None:
            stack.stop()
        redis.stop()
        if postgres.available and (postgres.data / "postmaster.pid").exists():
            postgres.stop()
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
