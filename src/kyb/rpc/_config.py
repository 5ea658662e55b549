"""Typed configuration of the gRPC services: one frozen dataclass per section, loaded once in main.

Sections and their variables (the same names in a TOML file, ``KYB_*`` variables and a Kubernetes
manifest; the environment wins over the file, flags win over both):

* ``[rpc]`` (``KYB_RPC__*``): plumbing every server and client shares: bind host, message limits,
  keepalive, grace period, bearer tokens, TLS files, default deadline and retries, metrics port.
* ``[gateway]``, ``[encoder]``, ``[matcher]``, ``[detector]`` (``KYB_GATEWAY__PORT``,
  ``KYB_MATCHER__SHARD=2/4``, ...): what each service listens on and where it finds its peers.
* ``[web]`` (``KYB_WEB__PORT``, ``KYB_WEB__GATEWAY_ADDRESS``): the HTTP/JSON front and its page.
* Everything else (``index_dir``, ``catalog_url``, ``[limits]``, ``[search]``, ...) is the engine's
  :class:`~kyb.config.EngineConfig`, read by :func:`kyb.config.load_config`.

Lists are comma-separated in variables (``KYB_RPC__TOKENS=a,b``). A bad value raises
:class:`~kyb.errors.ConfigError` naming the field. Nothing here reads the environment at import.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kyb.config import EngineConfig, load_config
from kyb.errors import ConfigError

__all__ = [
    "DetectorConfig",
    "EncoderConfig",
    "GatewayConfig",
    "MatcherConfig",
    "RpcConfig",
    "ServiceConfig",
    "WebConfig",
    "load_service_config",
    "parse_shard",
]

_MIB = 1024 * 1024


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field {name}: {message}")


def _check_port(port: int, name: str) -> None:
    _check(0 <= port <= 65535, name, "must be a TCP port in 0..65535 (0 = any free port)")


def parse_shard(text: str, *, name: str = "matcher.shard", hostname: str | None = None) -> tuple[int, int]:
    """Reads ``"K/N"`` (shard K of N, 0 <= K < N) into ``(K, N)``.

    ``"auto/N"`` takes K from the trailing ``-<ordinal>`` of the host name, which is how a
    Kubernetes StatefulSet names its pods (``matcher-2`` -> shard 2), so one manifest serves all.
    """
    match = re.fullmatch(r"\s*(\d+|auto)\s*/\s*(\d+)\s*", text or "")
    _check(match is not None, name, f"expected K/N such as 0/4 or auto/4, got {text!r}")
    assert match is not None
    count = int(match.group(2))
    if match.group(1) == "auto":
        host = hostname if hostname is not None else socket.gethostname()
        ordinal = re.search(r"-(\d+)$", host)
        _check(ordinal is not None, name, f"auto needs a host name ending in -<ordinal>, got {host!r}")
        assert ordinal is not None
        index = int(ordinal.group(1))
    else:
        index = int(match.group(1))
    _check(count >= 1, name, "N must be >= 1")
    _check(index < count, name, f"K must be in 0..{count - 1}, got {index}")
    return index, count


@dataclass(frozen=True)
class RpcConfig:
    """Server and client plumbing shared by every service."""

    #: Address servers bind to; ``[::]`` listens on every interface (IPv4 too).
    host: str = "[::]"
    #: Largest message in either direction. A photo may be 30 MiB (limits.max_bytes); decoded
    #: search-size pixels are at most 1024x1024x3 = 3 MiB; 64 MiB leaves room for both.
    max_message_bytes: int = 64 * _MIB
    #: Threads serving calls per server; calls beyond this queue in gRPC.
    workers: int = 16
    #: On SIGTERM, in-flight calls get this long to finish (Kubernetes waits 30 s by default).
    grace_s: float = 10.0
    #: HTTP/2 keepalive pings: find dead peers behind load balancers that drop idle connections.
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    #: Prometheus /metrics HTTP port; -1 = no metrics endpoint, 0 = any free port.
    metrics_port: int = -1
    #: Accepted bearer tokens (``authorization: Bearer <token>``); empty = open (logged loudly).
    tokens: tuple[str, ...] = ()
    #: Token the gateway sends to the services it calls; empty = the first of ``tokens``.
    client_token: str = ""
    #: Server certificate chain and key (PEM): both set = TLS, neither = plaintext.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA bundle (PEM) that clients use to verify servers; set it to call TLS servers.
    tls_ca: Path | None = None
    #: Servers close each client connection after this many seconds (0 = never), after letting its
    #: calls finish: clients then re-resolve the name and spread over replicas added since (an
    #: autoscaled encoder behind a headless Service), which one long-lived HTTP/2 connection never does.
    max_connection_age_s: float = 0.0
    #: Deadline applied to calls that arrive without one, in seconds.
    deadline_s: float = 30.0
    #: Extra attempts on UNAVAILABLE for idempotent downstream calls, with exponential backoff
    #: (base ``retry_backoff_s``, capped at ``retry_max_backoff_s``) and full jitter.
    retries: int = 2
    retry_backoff_s: float = 0.05
    retry_max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        _check(bool(self.host.strip()), "rpc.host", "must not be empty")
        _check(_MIB <= self.max_message_bytes <= 2047 * _MIB, "rpc.max_message_bytes", "must be 1..2047 MiB")
        _check(1 <= self.workers <= 1024, "rpc.workers", "must be in 1..1024")
        _check(0 <= self.grace_s <= 600, "rpc.grace_s", "must be in 0..600")
        _check(self.keepalive_time_s >= 1, "rpc.keepalive_time_s", "must be >= 1")
        _check(self.keepalive_timeout_s >= 1, "rpc.keepalive_timeout_s", "must be >= 1")
        _check(-1 <= self.metrics_port <= 65535, "rpc.metrics_port", "must be -1 (off) or a TCP port")
        _check(all(t.strip() == t and t for t in self.tokens), "rpc.tokens", "tokens must be non-empty")
        _check((self.tls_cert is None) == (self.tls_key is None), "rpc.tls_cert", "set tls_cert and tls_key")
        _check(0 <= self.max_connection_age_s <= 86400, "rpc.max_connection_age_s", "must be in 0..86400")
        _check(0 < self.deadline_s <= 3600, "rpc.deadline_s", "must be in (0, 3600]")
        _check(0 <= self.retries <= 10, "rpc.retries", "must be in 0..10")
        _check(0 < self.retry_backoff_s <= self.retry_max_backoff_s, "rpc.retry_backoff_s", "must be in (0, max]")

    @property
    def outgoing_token(self) -> str:
        """The bearer token sent downstream ("" = none)."""
        return self.client_token or (self.tokens[0] if self.tokens else "")


@dataclass(frozen=True)
class GatewayConfig:
    """The public API: where it listens and where its peers are."""

    port: int = 50051
    #: Detector address; empty = no detector, the whole photo is one region.
    detector_address: str = ""
    encoder_address: str = "localhost:50052"
    #: Matcher shards in shard order (position K = shard K/N). One entry holding ``{k}`` is a
    #: template expanded for k in 0..shards-1 (``matcher-{k}.matcher:50053`` for a StatefulSet).
    matcher_addresses: tuple[str, ...] = ("localhost:50053",)
    #: Number of shards when ``matcher_addresses`` is a template.
    shards: int = 1
    #: Downstream calls in flight at once (encode + search fan-out), shared by all requests.
    parallel: int = 16
    #: Detector regions searched per photo at most (the best-scoring ones).
    max_regions: int = 8
    #: Photos of one IdentifyBatch stream identified at once.
    batch_parallel: int = 4
    #: Ingested references sent to a shard in one Add (each Add is one durable index save).
    ingest_batch: int = 32
    #: Seconds the gateway trusts a detector's "no model" answer and skips Detect (a model-less
    #: detector finds nothing); after that one call asks again, so a detector that gains a model is used.
    detector_recheck_s: float = 30.0

    def __post_init__(self) -> None:
        _check_port(self.port, "gateway.port")
        _check(bool(self.encoder_address.strip()), "gateway.encoder_address", "must not be empty")
        _check(len(self.matcher_addresses) >= 1, "gateway.matcher_addresses", "needs at least one address")
        templated = [a for a in self.matcher_addresses if "{k}" in a]
        _check(
            not templated or len(self.matcher_addresses) == 1,
            "gateway.matcher_addresses",
            "a {k} template must be the only entry",
        )
        _check(1 <= self.shards <= 4096, "gateway.shards", "must be in 1..4096")
        _check(1 <= self.parallel <= 1024, "gateway.parallel", "must be in 1..1024")
        _check(1 <= self.max_regions <= 64, "gateway.max_regions", "must be in 1..64")
        _check(1 <= self.batch_parallel <= 64, "gateway.batch_parallel", "must be in 1..64")
        _check(1 <= self.ingest_batch <= 1024, "gateway.ingest_batch", "must be in 1..1024")
        _check(0 <= self.detector_recheck_s <= 3600, "gateway.detector_recheck_s", "must be in 0..3600")

    def shard_addresses(self) -> list[str]:
        """One address per shard, in shard order."""
        if len(self.matcher_addresses) == 1 and "{k}" in self.matcher_addresses[0]:
            return [self.matcher_addresses[0].replace("{k}", str(k)) for k in range(self.shards)]
        return list(self.matcher_addresses)


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder: where it listens and where its codebook comes from."""

    port: int = 50052
    #: Index folder whose current codebook the encoder uses; empty = the engine's ``index_dir``.
    index_dir: Path | None = None
    #: Seconds between attempts to load the codebook while there is none (health NOT_SERVING).
    reload_s: float = 2.0

    def __post_init__(self) -> None:
        _check_port(self.port, "encoder.port")
        _check(0.05 <= self.reload_s <= 600, "encoder.reload_s", "must be in 0.05..600")


@dataclass(frozen=True)
class MatcherConfig:
    """One matcher shard: which shard it is and which index folder holds it."""

    port: int = 50053
    #: ``K/N``: this process serves shard K of N (``auto/N`` = K from the pod ordinal).
    shard: str = "0/1"
    #: This shard's index folder; ``{k}`` and ``{n}`` are replaced. Empty = the engine's
    #: ``index_dir`` for a single shard, ``<index_dir>-shard-{k}-of-{n}`` beside it otherwise.
    index_dir: str = ""
    #: Seconds between attempts to load the index while there is none (health NOT_SERVING).
    reload_s: float = 2.0
    #: An index folder whose codebook seeds this shard when its own folder holds no index yet: the
    #: shard starts empty with that codebook (a new shard before ``kyb reshard`` fills it, or a fresh
    #: deployment before the first ingest). Empty = wait until an index appears. Point it at the same
    #: folder as ``encoder.index_dir`` so encoder and matchers agree on the codebook.
    codebook_dir: Path | None = None

    def __post_init__(self) -> None:
        _check_port(self.port, "matcher.port")
        parse_shard(self.shard, hostname="pod-0")  # syntax only: the real ordinal is read when serving
        _check(0.05 <= self.reload_s <= 600, "matcher.reload_s", "must be in 0.05..600")

    def shard_folder(self, engine_index_dir: Path, index: int, count: int) -> Path:
        """The index folder of shard ``index`` of ``count``."""
        if self.index_dir:
            return Path(self.index_dir.replace("{k}", str(index)).replace("{n}", str(count))).expanduser()
        if count == 1:
            return Path(engine_index_dir)
        base = Path(engine_index_dir)
        return base.parent / f"{base.name}-shard-{index}-of-{count}"


@dataclass(frozen=True)
class DetectorConfig:
    """The detector service: trained weights (docs/detector.md), thresholds and dynamic batching.

    With no ``weights`` it has no model: it answers no boxes and the gateway searches the whole photo
    as one region (the documented fallback, not an error).
    """

    port: int = 50054
    #: Trained detector weights (``detector.pt`` with its ``detector.json`` manifest); empty = no model.
    weights: Path | None = None
    #: Expected sha256 of ``weights`` (hex); empty = the manifest's own is checked.
    sha256: str = ""
    #: Boxes below this score are dropped (a request may ask for a higher one).
    min_score: float = 0.3
    #: Boxes returned per photo at most.
    max_boxes: int = 16
    #: Boxes overlapping a better one by more IoU than this are dropped (across classes).
    nms_iou: float = 0.5
    #: Dynamic batching: at most this many photos per forward pass...
    batch_size: int = 8
    #: ...and a photo waits at most this long for others to join its batch.
    batch_wait_ms: float = 5.0
    #: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
    device: str = "auto"
    #: torch CPU threads (0 = torch's default); 1 is fastest where other processes share the cores.
    threads: int = 0
    #: The network's input (shorter side, px) at inference; 0 = the size it was trained at. Training
    #: varies the scale by 0.8-1.2x, so up to 1.2x the trained size is within what it has seen.
    input_size: int = 0

    def __post_init__(self) -> None:
        _check_port(self.port, "detector.port")
        _check(self.input_size == 0 or 64 <= self.input_size <= 2048, "detector.input_size", "must be 0 or 64..2048")
        _check(0 <= self.min_score <= 1, "detector.min_score", "must be in 0..1")
        _check(1 <= self.max_boxes <= 256, "detector.max_boxes", "must be in 1..256")
        _check(0 < self.nms_iou <= 1, "detector.nms_iou", "must be in (0, 1]")
        _check(1 <= self.batch_size <= 256, "detector.batch_size", "must be in 1..256")
        _check(0 <= self.batch_wait_ms <= 1000, "detector.batch_wait_ms", "must be in 0..1000")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "detector.device",
               "must be auto, cpu or cuda[:N]")  # fmt: skip
        _check(0 <= self.threads <= 256, "detector.threads", "must be in 0..256")
        _check(all(c in "0123456789abcdefABCDEF" for c in self.sha256) and len(self.sha256) in (0, 64),
               "detector.sha256", "must be 64 hex digits")  # fmt: skip


@dataclass(frozen=True)
class WebConfig:
    """The HTTP/JSON front and the page (``kyb serve web``): a thin client of one gateway.

    It accepts the same bearer tokens as the gRPC services (``rpc.tokens``), sends the gateway
    ``rpc.outgoing_token`` and refuses photos over ``limits.max_bytes`` before forwarding them.
    """

    port: int = 8080
    #: The gateway it forwards to (TLS when ``rpc.tls_ca`` is set).
    gateway_address: str = "localhost:50051"
    #: Deadline of each gateway call, in seconds; past it the request answers 504.
    deadline_s: float = 30.0

    def __post_init__(self) -> None:
        _check_port(self.port, "web.port")
        _check(bool(self.gateway_address.strip()), "web.gateway_address", "must not be empty")
        _check(0 < self.deadline_s <= 3600, "web.deadline_s", "must be in (0, 3600]")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything a service process needs; each service reads its own section plus ``rpc``."""

    rpc: RpcConfig = field(default_factory=RpcConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    web: WebConfig = field(default_factory=WebConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def replace(self, **sections: Any) -> ServiceConfig:
        """A copy with whole sections replaced (``config.replace(gateway=...)``)."""
        return dataclasses.replace(self, **sections)

    def shard(self) -> tuple[int, int]:
        """This matcher's ``(K, N)``."""
        return parse_shard(self.matcher.shard)

    def matcher_index_dir(self) -> Path:
        """This matcher shard's index folder."""
        index, count = self.shard()
        return self.matcher.shard_folder(self.engine.index_dir, index, count)

    def encoder_index_dir(self) -> Path:
        """The index folder whose codebook the encoder loads."""
        return Path(self.encoder.index_dir) if self.encoder.index_dir else Path(self.engine.index_dir)


_SECTIONS: dict[str, type] = {
    "rpc": RpcConfig,
    "gateway": GatewayConfig,
    "encoder": EncoderConfig,
    "matcher": MatcherConfig,
    "detector": DetectorConfig,
    "web": WebConfig,
}


def _coerce(name: str, target: Any, value: Any) -> Any:
    """A TOML/env/flag value as the field's type, or ConfigError naming the field."""
    if typing.get_origin(target) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        target = next(a for a in typing.get_args(target) if a is not type(None))
    try:
        if typing.get_origin(target) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
        if target is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(value)
                return lowered in {"1", "true", "yes", "on"}
            return bool(value)
        if target is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if target is float:
            return float(value)
        if target is Path:
            return Path(value).expanduser()
        return str(value)
    except (TypeError, ValueError):
        kind = getattr(target, "__name__", str(target))
        raise ConfigError(f"config field {name}: cannot read {value!r} as {kind}") from None


def _build(cls: type, section: str, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"config field {section}.{key}: unknown field")
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
    return cls(**kwargs)


def load_service_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServiceConfig:
    """Reads an optional TOML file, then ``KYB_<SECTION>__<FIELD>`` variables, then ``overrides``.

    ``overrides`` uses dotted names (``{"matcher.shard": "1/2", "index_dir": "x"}``); ``None`` values
    are skipped so flags that were not given leave the file's value alone. Names outside the service
    sections go to the engine's :func:`~kyb.config.load_config`.
    """
    raw: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for name in _SECTIONS:
            values = document.get(name, {})
            _check(isinstance(values, dict), name, "must be a table")
            raw[name].update(values)
    for key, value in (env or {}).items():
        section, _, fieldname = key[4:].lower().partition("__")
        if key.startswith("KYB_") and fieldname and section in _SECTIONS:
            raw[section][fieldname] = value
    engine_overrides: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, fieldname = dotted.rpartition(".")
        if section in _SECTIONS:
            raw[section][fieldname] = value
        else:
            engine_overrides[dotted] = value
    engine = load_config(path, env=env, overrides=engine_overrides)
    sections = {name: _build(cls, name, raw[name]) for name, cls in _SECTIONS.items()}
    return ServiceConfig(engine=engine, **sections)


def environment(config: ServiceConfig) -> dict[str, str]:
    """The ``KYB_<SECTION>__<FIELD>`` variables that reproduce ``config``'s service sections.

    Used by ``kyb serve stack`` to start each process exactly as a manifest would configure it.
    """
    out: dict[str, str] = {}
    for name in _SECTIONS:
        section = getattr(config, name)
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            if value is None:
                continue
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            out[f"KYB_{name.upper()}__{item.name.upper()}"] = text
    out["KYB_INDEX_DIR"] = str(config.engine.index_dir)
    out["KYB_CATALOG_URL"] = str(config.engine.catalog_url)
    return out


def from_environ() -> ServiceConfig:
    """The configuration of a service process: ``KYB_CONFIG`` (a TOML file, optional) plus ``KYB_*``."""
    return load_service_config(os.environ.get("KYB_CONFIG") or None, env=os.environ)
