"""The WebSocket and media hardening settings (issue 14) in `Config.from_env`."""

from __future__ import annotations

import pytest

from smiling_relay.app import relay_settings, signaling_limits
from smiling_relay.config import Config, ConfigError


def test_defaults_and_values() -> None:
    default = Config.from_env({})
    assert default.relay_allowed_peer_ranges == ()
    assert signaling_limits(default).max_pending_per_ip == 10
    assert signaling_limits(default).max_sessions_per_user == 3
    config = Config.from_env(
        {
            "RELAY_ALLOWED_PEER_RANGES": "10.0.0.0/8, fd00::/8",
            "WS_MAX_PENDING_PER_IP": "50",
            "WS_MAX_CONNECTIONS_PER_USER": "5",
            "WS_MESSAGES_PER_SECOND": "10.5",
            "WS_MESSAGE_BURST": "30",
        }
    )
    assert config.relay_allowed_peer_ranges == ("10.0.0.0/8", "fd00::/8")
    assert relay_settings(config).peer_policy.refusal("10.9.9.9") is None
    limits = signaling_limits(config)
    assert (limits.max_pending_per_ip, limits.max_sessions_per_user) == (50, 5)
    assert (limits.messages_per_second, limits.message_burst) == (10.5, 30)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_ALLOWED_PEER_RANGES", "10.0.0.0/33"),
        ("RELAY_ALLOWED_PEER_RANGES", "private"),
        ("WS_MAX_PENDING_PER_IP", "0"),
        ("WS_MAX_CONNECTIONS_PER_USER", "x"),
        ("WS_MESSAGES_PER_SECOND", "0.5"),
        ("WS_MESSAGE_BURST", "0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})
