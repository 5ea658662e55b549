"""Shared gRPC plumbing of the Know Your Bands services (issue 4).

Servers (:class:`ServiceServer`, :func:`serve`: health, reflection, auth, metrics, error mapping,
graceful shutdown), clients (:func:`open_channel`, :func:`call_unary` with deadlines and retries),
typed configuration (:class:`ServiceConfig`, ``KYB_*``), shard placement (:func:`shard_for`) and
the engine <-> protobuf conversions. The services under ``services/`` are thin layers on top.
"""

from kyb.rpc._auth import TokenCheck, bearer_metadata
from kyb.rpc._channels import Deadline, RetryPolicy, call_unary, open_channel, wait_until_serving
from kyb.rpc._config import (
    DetectorConfig,
    EncoderConfig,
    GatewayConfig,
    MatcherConfig,
    RpcConfig,
    ServiceConfig,
    environment,
    from_environ,
    load_service_config,
    parse_shard,
)
from kyb.rpc._convert import (
    album_from_proto,
    album_to_proto,
    band_from_proto,
    band_to_proto,
    box_from_proto,
    box_to_proto,
    decoded_from_proto,
    decoded_to_proto,
    encoding_from_proto,
    encoding_to_proto,
    kind_from_proto,
    kind_to_proto,
    outline_from_proto,
    outline_to_proto,
    pack_array,
    reference_to_proto,
    unpack_array,
)
from kyb.rpc._errors import error_from_rpc, one_line, status_for
from kyb.rpc._metrics import Metrics
from kyb.rpc._server import ServiceServer, serve
from kyb.rpc._sharding import base_reference_id, shard_for, shard_name, split_index

__all__ = [
    "Deadline",
    "DetectorConfig",
    "EncoderConfig",
    "GatewayConfig",
    "MatcherConfig",
    "Metrics",
    "RetryPolicy",
    "RpcConfig",
    "ServiceConfig",
    "ServiceServer",
    "TokenCheck",
    "album_from_proto",
    "album_to_proto",
    "band_from_proto",
    "band_to_proto",
    "base_reference_id",
    "bearer_metadata",
    "box_from_proto",
    "box_to_proto",
    "call_unary",
    "decoded_from_proto",
    "decoded_to_proto",
    "encoding_from_proto",
    "encoding_to_proto",
    "environment",
    "error_from_rpc",
    "from_environ",
    "kind_from_proto",
    "kind_to_proto",
    "load_service_config",
    "one_line",
    "open_channel",
    "outline_from_proto",
    "outline_to_proto",
    "pack_array",
    "parse_shard",
    "reference_to_proto",
    "serve",
    "shard_for",
    "shard_name",
    "split_index",
    "status_for",
    "unpack_array",
    "wait_until_serving",
]
