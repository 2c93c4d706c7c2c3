"""Configuration from the environment, with the platform's variable names."""

from __future__ import annotations

import pytest

from smiling_relay.config import Config, ConfigError

SECRET = "s" * 40


def test_defaults() -> None:
    config = Config.from_env({"JWT_SECRET": SECRET})
    assert config.port == 8080
    assert config.host == "0.0.0.0"
    assert config.sqlite_path == "data/relay.sqlite3"
    assert config.storage_backend == "sqlite"
    assert config.environment == "development"
    assert not config.is_production
    assert config.rate_limit_api_per_min == 10
    assert config.rate_limit_ws_per_min == 3
    assert config.room_max_participants == 4
    assert config.turn_credential_ttl == 86400
    assert config.relay_udp_ports is None
    assert config.cors_origins == ()
    assert config.stun_server_url is None
    assert config.base_url() == "http://127.0.0.1:8080"


def test_production_requires_jwt_secret() -> None:
    for env in ({"NODE_ENV": "production"}, {"APP_ENV": "prod"}):
        with pytest.raises(ConfigError, match="JWT_SECRET"):
            Config.from_env(env)


def test_development_generates_a_secret() -> None:
    a = Config.from_env({})
    b = Config.from_env({"JWT_SECRET": "   "})  # blank counts as unset
    assert a.jwt_secret_generated
    assert b.jwt_secret_generated
    assert len(a.jwt_secret) >= 32
    assert a.jwt_secret != b.jwt_secret


def test_app_env_wins_over_node_env() -> None:
    config = Config.from_env({"NODE_ENV": "production", "APP_ENV": "development"})
    assert config.environment == "development"
    assert config.jwt_secret_generated


def test_everything_parsed() -> None:
    config = Config.from_env(
        {
            "JWT_SECRET": SECRET,
            "NODE_ENV": "production",
            "PORT": "5000",
            "HOST": "127.0.0.1",
            "PUBLIC_URL": "https://relay.example.org/",
            "MONGODB_URI": "mongodb+srv://u:p@cluster.example.net/smiling",
            "SQLITE_PATH": "/var/lib/relay.db",
            "STUN_SERVER_URL": "stun:stun.l.google.com:19302",
            "TURN_SERVER_URL": "turn:turn.example.org:3478",
            "TURN_USERNAME": "user",
            "TURN_PASSWORD": "pass",
            "TURN_SECRET": "coturn-secret",
            "TURN_CREDENTIAL_TTL": "3600",
            "TURN_URLS": "turns:turn.example.org:5349, turn:turn.example.org:3478?transport=tcp",
            "CORS_ORIGIN": "https://app.example.org,https://admin.example.org",
            "ROOM_MAX_PARTICIPANTS": "6",
            "RELAY_ANNOUNCED_IP": "203.0.113.10",
            "RELAY_BIND_IPS": "10.0.0.5, ::1",
            "RELAY_UDP_PORTS": "40000-40999",
            "RATE_LIMIT_API_PER_MIN": "100",
            "RATE_LIMIT_WS_PER_MIN": "0",
            "METRICS_AUTH_TOKEN": "metrics-token",
        }
    )
    assert config.is_production
    assert config.port == 5000
    assert config.base_url() == "https://relay.example.org"
    assert config.storage_backend == "mongodb"
    assert config.turn_urls == (
        "turns:turn.example.org:5349",
        "turn:turn.example.org:3478?transport=tcp",
    )
    assert config.cors_origins == ("https://app.example.org", "https://admin.example.org")
    assert config.relay_bind_ips == ("10.0.0.5", "::1")
    assert config.relay_udp_ports == (40000, 40999)
    assert config.relay_announced_ip == "203.0.113.10"
    assert config.room_max_participants == 6
    assert config.turn_credential_ttl == 3600
    assert (config.rate_limit_api_per_min, config.rate_limit_ws_per_min) == (100, 0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("RATE_LIMIT_API_PER_MIN", "-1"),
        ("RATE_LIMIT_WS_PER_MIN", "1.5"),
        ("ROOM_MAX_PARTICIPANTS", "1"),
        ("TURN_CREDENTIAL_TTL", "5"),
        ("RELAY_UDP_PORTS", "40000"),
        ("RELAY_UDP_PORTS", "41000-40000"),
        ("RELAY_UDP_PORTS", "80-90"),
        ("RELAY_ANNOUNCED_IP", "relay.example.org"),
        ("RELAY_BIND_IPS", "10.0.0.1,nope"),
        ("MONGODB_URI", "postgres://x"),
        ("PUBLIC_URL", "relay.example.org"),
        ("STUN_SERVER_URL", "turn:x:3478"),
        ("TURN_SERVER_URL", "https://turn.example.org"),
        ("TURN_URLS", "stun:x:3478"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({"JWT_SECRET": SECRET, name: value})


def test_base_url_for_ipv6_host() -> None:
    config = Config.from_env({"JWT_SECRET": SECRET, "HOST": "::1", "PORT": "9000"})
    assert config.base_url() == "http://[::1]:9000"


def test_metrics_settings() -> None:
    defaults = Config.from_env({"JWT_SECRET": SECRET})
    assert (defaults.metrics_max_calls, defaults.metrics_sample_interval) == (200, 1.0)
    assert defaults.metrics_auth_token is None
    config = Config.from_env(
        {
            "JWT_SECRET": SECRET,
            "METRICS_MAX_CALLS": "0",
            "METRICS_SAMPLE_INTERVAL": "0.25",
            "METRICS_AUTH_TOKEN": " t0ken ",
        }
    )
    assert (config.metrics_max_calls, config.metrics_sample_interval) == (0, 0.25)
    assert config.metrics_auth_token == "t0ken"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("METRICS_MAX_CALLS", "lots", "METRICS_MAX_CALLS must be an integer, got 'lots'"),
        ("METRICS_MAX_CALLS", "-1", "METRICS_MAX_CALLS must be >= 0, got -1"),
        ("METRICS_SAMPLE_INTERVAL", "0", "METRICS_SAMPLE_INTERVAL must be >= 0.1, got 0.0"),
        ("METRICS_SAMPLE_INTERVAL", "fast", "METRICS_SAMPLE_INTERVAL must be a number, got 'fast'"),
        ("MEDIA_COALESCE_MS", "-1", "MEDIA_COALESCE_MS must be >= 0.0, got -1.0"),
        ("MEDIA_COALESCE_MS", "5", "MEDIA_COALESCE_MS must be <= 2.0, got 5.0"),
        ("MEDIA_COALESCE_MS", "inf", "MEDIA_COALESCE_MS must be <= 2.0, got inf"),
    ],
)
def test_metrics_settings_keep_their_messages(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({"JWT_SECRET": SECRET, name: value})
    assert str(info.value) == message


def test_data_encryption_key_is_validated_and_never_printed() -> None:
    key = "k1:" + "A" * 43 + "="
    config = Config.from_env({"JWT_SECRET": "x" * 40, "DATA_ENCRYPTION_KEY": key})
    assert config.data_encryption_key == key
    assert key not in repr(config)
    with pytest.raises(ConfigError, match="DATA_ENCRYPTION_KEY: key 'k1' must be 32 bytes"):
        Config.from_env({"JWT_SECRET": "x" * 40, "DATA_ENCRYPTION_KEY": "k1:c2hvcnQ="})


def test_e2ee_policy_defaults_to_preferred_and_refuses_other_values() -> None:
    assert Config.from_env({}).e2ee == "preferred"
    assert Config.from_env({"E2EE": "Required"}).e2ee == "required"
    with pytest.raises(ConfigError, match=r"E2EE must be one of required\|preferred\|off"):
        Config.from_env({"E2EE": "maybe"})


def test_audio_first_defaults_to_on_and_refuses_other_values() -> None:
    assert Config.from_env({}).audio_first is True
    assert Config.from_env({"AUDIO_FIRST": "OFF"}).audio_first is False
    with pytest.raises(ConfigError, match=r"AUDIO_FIRST must be one of on\|off"):
        Config.from_env({"AUDIO_FIRST": "yes"})
    from smiling_relay.app import relay_settings

    assert relay_settings(Config.from_env({"AUDIO_FIRST": "off"})).audio_first is False
    assert relay_settings(Config.from_env({})).audio_first is True
