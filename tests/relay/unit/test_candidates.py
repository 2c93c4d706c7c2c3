"""Candidate syntax and the peer policy (relay/candidates.py), without a network."""

from __future__ import annotations

import ipaddress

import pytest
from aioice import Candidate as AioiceCandidate
from aiortc.rtcicetransport import candidate_to_aioice
from hypothesis import given
from hypothesis import strategies as st

from relay.candidates import CandidateError, PeerPolicy, parse_candidate, parse_ranges

CHROMIUM = (
    "candidate:3372946318 1 udp 2122260223 10.77.0.2 54321 typ host generation 0 "
    "ufrag 9Ztb network-id 1"
)


def test_a_chromium_candidate_parses() -> None:
    c = parse_candidate(CHROMIUM)
    assert (c.foundation, c.component, c.transport, c.priority) == (
        "3372946318",
        1,
        "udp",
        2122260223,
    )
    assert (c.host, c.port, c.type) == ("10.77.0.2", 54321, "host")
    srflx = parse_candidate(
        "candidate:1 1 UDP 1685987071 198.51.100.2 40000 typ srflx raddr 0.0.0.0 rport 0"
    )
    assert (srflx.transport, srflx.related_address, srflx.related_port) == ("udp", "0.0.0.0", 0)
    tcp = parse_candidate("candidate:2 1 tcp 1518280447 10.0.0.2 9 typ host tcptype active")
    assert (tcp.port, tcp.tcp_type) == (9, "active")
    assert parse_candidate("a=candidate:1 1 udp 1 abc-123.local 9 typ host").is_mdns


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("candidate:x", "8 fields"),
        ("1 1 udp 1 10.0.0.1 5 typ host extra", "name/value pairs"),
        ("1 1 udp 1.5 10.0.0.1 5 typ host", "priority"),
        ("1 1 udp 0 10.0.0.1 5 typ host", "priority must be between"),
        ("1 1 udp 4294967296 10.0.0.1 5 typ host", "priority must be between"),
        ("1 1 udp 1 10.0.0.1 0 typ host", "port must be between"),
        ("1 1 udp 1 10.0.0.1 ٥ typ host", "port must be a decimal"),
        ("1 257 udp 1 10.0.0.1 5 typ host", "component"),
        ("1 1 udp 1 example.org 5 typ host", "IP address"),
        ("1 1 udp 1 10.0.0.1 5 typ host raddr nowhere rport 1", "raddr"),
        ("f/o=o 1 udp 1 10.0.0.1 5 typ host", "foundation"),
    ],
)
def test_malformed_candidates_say_why(line: str, reason: str) -> None:
    with pytest.raises(CandidateError, match=reason):
        parse_candidate(line)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", False),
        ("2a00:1450:4001::1", False),
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("10.0.0.1", True),
        ("172.31.255.255", True),
        ("192.168.0.1", True),
        ("100.64.0.1", True),
        ("fd00::1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("fe80::1", True),
        ("224.0.0.251", True),
        ("ff02::fb", True),
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("198.51.100.7", True),  # documentation
    ],
)
def test_the_default_policy(address: str, refused: bool) -> None:
    assert (PeerPolicy().refusal(address) is not None) is refused


def test_allowed_ranges_override_and_own_addresses_are_refused() -> None:
    policy = PeerPolicy(parse_ranges(("10.0.0.0/8", "fd00::/8", "8.8.8.8")))
    assert policy.refusal("10.1.2.3") is None
    assert policy.refusal("fd00::5") is None
    assert policy.refusal("192.168.0.1") == "a private or reserved address"
    own = frozenset({ipaddress.ip_address("8.8.4.4")})
    assert PeerPolicy().refusal("8.8.4.4", own) == "one of the relay's own addresses"
    assert policy.refusal("8.8.8.8", frozenset({ipaddress.ip_address("8.8.8.8")})) is None
    with pytest.raises(ValueError, match="does not appear to be"):
        parse_ranges(("10.0.0.0/33",))


tokens = st.sampled_from(
    ["1", "udp", "tcp", "typ", "host", "srflx", "10.0.0.1", "::1", "x.local", "raddr", "rport", "0"]
) | st.text(max_size=6)


@given(st.lists(tokens, max_size=14).map(" ".join) | st.text(max_size=80))
def test_any_text_parses_or_is_a_candidate_error(text: str) -> None:
    try:
        candidate = parse_candidate(text)
    except CandidateError:
        return
    # what the parser accepts, aiortc and aioice take as it is
    converted = candidate_to_aioice(candidate.to_aiortc("0", None))
    assert isinstance(converted, AioiceCandidate)
    assert AioiceCandidate.from_sdp(converted.to_sdp()).host == candidate.host
