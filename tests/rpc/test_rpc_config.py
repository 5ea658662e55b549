"""ServiceConfig: defaults, TOML + KYB_* + overrides, validation naming the field, shard parsing."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kyb.errors import ConfigError
from kyb.rpc import ServiceConfig, environment, load_service_config, parse_shard
from kyb.rpc.cli import add_serve_commands, load_from_args


def test_defaults_are_valid_and_sections_are_separate():
    config = load_service_config(env={})
    assert config == ServiceConfig(engine=config.engine)
    assert config.gateway.shard_addresses() == ["localhost:50053"]
    assert config.shard() == (0, 1)
    assert config.matcher_index_dir() == config.engine.index_dir


def test_file_then_environment_then_overrides(tmp_path: Path):
    path = tmp_path / "kyb.toml"
    path.write_text(
        'index_dir = "/data/index"\n'
        "[rpc]\ntokens = ['a', 'b']\ndeadline_s = 5\n"
        "[gateway]\nport = 7000\nmatcher_addresses = ['matcher-{k}.matcher:50053']\nshards = 3\n"
        "[matcher]\nshard = '1/3'\n"
    )
    env = {"KYB_GATEWAY__PORT": "7001", "KYB_RPC__RETRIES": "4", "KYB_MATCHER__INDEX_DIR": "/data/s{k}-{n}"}
    config = load_service_config(path, env=env, overrides={"gateway.parallel": 3, "rpc.retries": None})
    assert config.rpc.tokens == ("a", "b") and config.rpc.outgoing_token == "a"
    assert config.rpc.deadline_s == 5.0 and config.rpc.retries == 4
    assert (config.gateway.port, config.gateway.parallel) == (7001, 3)
    assert config.gateway.shard_addresses() == [f"matcher-{k}.matcher:50053" for k in range(3)]
    assert config.matcher_index_dir() == Path("/data/s1-3")
    assert config.engine.index_dir == Path("/data/index")


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"KYB_GATEWAY__PORT": "70000"}, "gateway.port"),
        ({"KYB_GATEWAY__PORT": "http"}, "gateway.port"),
        ({"KYB_MATCHER__SHARD": "3/3"}, "matcher.shard"),
        ({"KYB_RPC__TLS_CERT": "/x.pem"}, "rpc.tls_cert"),
        ({"KYB_RPC__NOPE": "1"}, "rpc.nope"),
        ({"KYB_DETECTOR__SHA256": "not-hex"}, "detector.sha256"),
        ({"KYB_DETECTOR__BATCH_SIZE": "0"}, "detector.batch_size"),
        ({"KYB_DETECTOR__DEVICE": "tpu"}, "detector.device"),
        ({"KYB_GATEWAY__MATCHER_ADDRESSES": "a-{k}:1,b:2"}, "gateway.matcher_addresses"),
    ],
)
def test_bad_values_name_their_field(env, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_service_config(env=env)


def test_shard_parsing_including_the_statefulset_ordinal():
    assert parse_shard("2/4") == (2, 4)
    assert parse_shard(" 0 / 1 ") == (0, 1)
    assert parse_shard("auto/4", hostname="matcher-3") == (3, 4)
    for bad in ("4/4", "1", "a/b", "auto/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad, hostname="no-ordinal-here" if bad.startswith("auto") else "x-0")


def test_environment_round_trips_the_service_sections():
    config = load_service_config(env={"KYB_RPC__TOKENS": "t1,t2", "KYB_MATCHER__SHARD": "1/2"})
    again = load_service_config(env=environment(config))
    assert again.replace(engine=config.engine) == config
    assert environment(config)["KYB_RPC__TOKENS"] == "t1,t2"


def test_serve_flags_override_the_configuration(monkeypatch):
    monkeypatch.delenv("KYB_CONFIG", raising=False)
    parser = argparse.ArgumentParser(prog="kyb")
    add_serve_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "serve",
            "matcher",
            "--shard",
            "1/2",
            "--port",
            "0",
            "--token",
            "a",
            "--token",
            "b",
            "--index-dir",
            "/i",
        ]
    )
    config = load_from_args(args)
    assert callable(args.func)
    assert (config.matcher.shard, config.matcher.port, config.rpc.tokens) == ("1/2", 0, ("a", "b"))
    assert config.matcher_index_dir() == Path("/i-shard-1-of-2")
    args = parser.parse_args(["serve", "gateway", "--matchers", "h0:1,h1:2", "--detector", ""])
    config = load_from_args(args)
    assert config.gateway.shard_addresses() == ["h0:1", "h1:2"] and config.gateway.detector_address == ""
    assert parser.parse_args(["serve", "stack", "--shards", "3"]).shards == 3
