"""The ICE server list of `GET /api/video-calls/config` (calls/ice_servers.py), without a server."""

from __future__ import annotations

from datetime import UTC, datetime

from calls.ice_servers import IceSettings, ice_servers, turn_rest_credentials, turn_urls

NOW = datetime(2025, 12, 15, 14, 0, tzinfo=UTC)
USER = "507f1f77bcf86cd799439011"


def config(**overrides: object) -> IceSettings:
    return IceSettings(**overrides)  # type: ignore[arg-type]


def test_nothing_configured_means_host_candidates_only() -> None:
    assert ice_servers(config(), user_id=USER, now=NOW) == []


def test_stun_only() -> None:
    servers = ice_servers(
        config(stun_server_url="stun:stun.example.org:3478"), user_id=USER, now=NOW
    )
    assert servers == [{"urls": "stun:stun.example.org:3478"}]


def test_static_turn_credentials_as_in_the_seed() -> None:
    servers = ice_servers(
        config(turn_server_url="turn:t.example.org:3478", turn_username="u", turn_password="p"),
        user_id=USER,
        now=NOW,
    )
    assert servers == [{"urls": "turn:t.example.org:3478", "username": "u", "credential": "p"}]


def test_incomplete_static_credentials_give_no_turn_entry() -> None:
    cfg = config(turn_server_url="turn:t.example.org:3478", turn_username="u")
    assert ice_servers(cfg, user_id=USER, now=NOW) == []


def test_turn_rest_credentials_are_per_user_and_expire_after_the_ttl() -> None:
    cfg = config(
        stun_server_url="stun:t.example.org:3478",
        turn_server_url="turn:t.example.org:3478?transport=udp",
        turn_urls=(
            "turn:t.example.org:3478?transport=tcp",
            "turns:t.example.org:443?transport=tcp",
        ),
        turn_secret="s3cret",
        turn_credential_ttl=3600,
        turn_username="ignored",
        turn_password="ignored",
    )
    stun, turn = ice_servers(cfg, user_id=USER, now=NOW)
    assert stun == {"urls": "stun:t.example.org:3478"}
    assert turn["urls"] == [
        "turn:t.example.org:3478?transport=udp",
        "turn:t.example.org:3478?transport=tcp",
        "turns:t.example.org:443?transport=tcp",
    ]
    assert turn["username"] == "1765810800:507f1f77bcf86cd799439011"  # NOW + 1 h : the user
    # known answer, computed outside Python: printf '%s' "$username" |
    #   openssl dgst -sha1 -hmac s3cret -binary | base64
    assert turn["credential"] == "Si2lAjzW2Ozfit8zf6uX9ZbFzXg="


def test_turn_rest_credentials_differ_per_user() -> None:
    cfg = config(turn_server_url="turn:t.example.org", turn_secret="s3cret")
    first = ice_servers(cfg, user_id="a" * 24, now=NOW)[0]
    second = ice_servers(cfg, user_id="b" * 24, now=NOW)[0]
    assert first["credential"] != second["credential"]


def test_turn_urls_without_a_primary_url_and_without_duplicates() -> None:
    cfg = config(
        turn_server_url="turn:a.example.org",
        turn_urls=("turn:a.example.org", "turns:a.example.org:443?transport=tcp"),
    )
    assert turn_urls(cfg) == ["turn:a.example.org", "turns:a.example.org:443?transport=tcp"]
    only_list = config(turn_urls=("turns:a.example.org:443",), turn_secret="k")
    (server,) = ice_servers(only_list, user_id=USER, now=NOW)
    assert server["urls"] == "turns:a.example.org:443"


def test_the_coturn_example_from_the_turn_rest_draft() -> None:
    # coturn's documented example: secret "north", username "1433182100:ninefingers"
    username, credential = turn_rest_credentials("north", "ninefingers", 1433182100)
    assert username == "1433182100:ninefingers"
    # known answer (openssl dgst -sha1 -hmac north -binary | base64), not the code's recipe again
    assert credential == "xbXHLv3ydhdHr4Wblg5JNjX6t1o="
