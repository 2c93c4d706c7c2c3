"""The scale-out settings: workers, Redis, drain, node ids, the internal listener, secrets."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket

import pytest

from smiling_relay import config as config_module
from smiling_relay.config import Config, ConfigError

SECRET = "s" * 40


def test_defaults() -> None:
    config = Config.from_env({"JWT_SECRET": SECRET})
    assert config.workers == max(1, min(len(os.sched_getaffinity(0)), 64))
    assert config.redis_url is None
    assert config.drain_timeout == 8100.0  # 2 h 15 min
    assert config.node_id == config_module.default_node_id()
    assert config.worker_index is None
    assert (config.internal_host, config.internal_port, config.internal_url) == (
        "127.0.0.1",
        None,
        None,
    )
    assert config.worker_max_calls == 60
    assert config.cluster_state_file is None
    assert not config.clustered
    expected = hmac.new(
        SECRET.encode(), b"smiling-relay cluster secret v1", hashlib.sha256
    ).hexdigest()
    assert config.cluster_secret == expected
    # A Config built in code (as the tests do) is one process and derives the secret too.
    built = Config(jwt_secret=SECRET)
    assert built.workers == 1
    assert built.cluster_secret == expected


def test_everything_parsed() -> None:
    config = Config.from_env(
        {
            "JWT_SECRET": SECRET,
            "RELAY_WORKERS": "4",
            "REDIS_URL": "rediss://:pw@redis.internal:6380/2",
            "DRAIN_TIMEOUT": "0",
            "RELAY_NODE_ID": "node-a.eu_1",
            "RELAY_WORKER_INDEX": "3",
            "RELAY_INTERNAL_HOST": "10.0.0.5",
            "RELAY_INTERNAL_PORT": "9103",
            "RELAY_WORKER_MAX_CALLS": "25",
            "CLUSTER_SECRET": "c" * 40,
            "RELAY_CLUSTER_STATE_FILE": "/run/relay/state.sqlite3",
        }
    )
    assert config.workers == 4
    assert config.redis_url == "rediss://:pw@redis.internal:6380/2"
    assert config.drain_timeout == 0.0
    assert config.node_id == "node-a.eu_1"
    assert config.worker_index == 3
    assert config.internal_url == "http://10.0.0.5:9103"
    assert config.worker_max_calls == 25
    assert config.cluster_secret == "c" * 40
    assert config.cluster_state_file == "/run/relay/state.sqlite3"
    assert config.clustered


def test_redis_schemes() -> None:
    for url in ("redis://localhost:6379/0", "unix:///run/redis.sock"):
        config = Config.from_env({"JWT_SECRET": SECRET, "REDIS_URL": url})
        assert config.redis_url == url
        assert config.clustered  # one process, sharing placement with other nodes


def test_internal_url() -> None:
    def url(**env: str) -> str | None:
        return Config.from_env({"JWT_SECRET": SECRET, **env}).internal_url

    assert url(RELAY_INTERNAL_PORT="9100") == "http://127.0.0.1:9100"
    assert url(RELAY_INTERNAL_HOST="0.0.0.0", RELAY_INTERNAL_PORT="9100") == "http://127.0.0.1:9100"
    assert url(RELAY_INTERNAL_HOST="::", RELAY_INTERNAL_PORT="9100") == "http://[::1]:9100"
    assert url(RELAY_INTERNAL_HOST="fd00::5", RELAY_INTERNAL_PORT="9100") == "http://[fd00::5]:9100"
    explicit = "https://relay-a.internal:{port}/"
    assert url(RELAY_INTERNAL_URL=explicit, RELAY_INTERNAL_PORT="9101") == (
        "https://relay-a.internal:9101/"
    )
    assert url(RELAY_INTERNAL_URL="http://10.1.2.3:9000") == "http://10.1.2.3:9000"


def test_secrets_are_not_printed() -> None:
    config = Config.from_env({"JWT_SECRET": SECRET, "CLUSTER_SECRET": "q" * 40})
    assert "q" * 40 not in repr(config)
    derived = Config.from_env({"JWT_SECRET": SECRET}).cluster_secret
    assert derived not in repr(Config.from_env({"JWT_SECRET": SECRET}))
    assert derived != Config.from_env({"JWT_SECRET": "t" * 40}).cluster_secret
    assert SECRET not in derived


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RELAY_WORKERS", "0", "RELAY_WORKERS must be between 1 and 64"),
        ("RELAY_WORKERS", "65", "RELAY_WORKERS must be between 1 and 64"),
        ("RELAY_WORKERS", "two", "RELAY_WORKERS must be an integer"),
        ("REDIS_URL", "http://redis:6379", "REDIS_URL must be a redis/rediss/unix URL"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL must be a redis/rediss/unix URL"),
        ("DRAIN_TIMEOUT", "-1", "DRAIN_TIMEOUT must be >= 0"),
        ("DRAIN_TIMEOUT", "nan", "DRAIN_TIMEOUT must be >= 0"),
        ("DRAIN_TIMEOUT", "soon", "DRAIN_TIMEOUT must be a number"),
        ("RELAY_NODE_ID", "node a", "RELAY_NODE_ID must be 1-64 letters"),
        ("RELAY_NODE_ID", "n" * 65, "RELAY_NODE_ID must be 1-64 letters"),
        ("RELAY_NODE_ID", "nœud", "RELAY_NODE_ID must be 1-64 letters"),
        ("RELAY_WORKER_INDEX", "-1", "RELAY_WORKER_INDEX must be between 0 and 63"),
        ("RELAY_WORKER_INDEX", "64", "RELAY_WORKER_INDEX must be between 0 and 63"),
        ("RELAY_INTERNAL_PORT", "70000", "RELAY_INTERNAL_PORT must be between 0 and 65535"),
        ("RELAY_INTERNAL_URL", "ftp://x:1", "RELAY_INTERNAL_URL must be a http/https URL"),
        ("RELAY_WORKER_MAX_CALLS", "0", "RELAY_WORKER_MAX_CALLS must be >= 1"),
    ],
)
def test_refusals_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({"JWT_SECRET": SECRET, name: value})
    assert message in str(excinfo.value)


def test_default_workers_follow_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(3)))
    assert Config.from_env({"JWT_SECRET": SECRET}).workers == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(200)))
    assert Config.from_env({"JWT_SECRET": SECRET}).workers == 64


def test_default_node_id_is_the_host_name_made_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "relay-a.example.org")
    assert Config.from_env({"JWT_SECRET": SECRET}).node_id == "relay-a.example.org"
    monkeypatch.setattr(socket, "gethostname", lambda: "my host+" + "x" * 80)
    node_id = Config.from_env({"JWT_SECRET": SECRET}).node_id
    assert node_id.startswith("my-host-x")
    assert len(node_id) == 60  # room for the supervisor's -wNN suffix within 64
