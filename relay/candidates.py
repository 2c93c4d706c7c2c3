"""A trickled ICE candidate: its syntax checked, and whether the relay may send checks to it.

A remote candidate makes aioice send STUN binding requests to the address it names, so a client
could aim the relay at any host and port (its own network, a cloud metadata address, other
services on the relay's machine). Like coturn's denied-peer ranges for TURN, the relay contacts
no loopback, link-local, multicast, unspecified, private (RFC 1918, ULA, CGNAT) or otherwise
non-global address, nor one of its own, unless an allowed range (`RELAY_ALLOWED_PEER_RANGES`)
covers it. A refused candidate costs a client nothing: aioice still learns the client's real
address from the connectivity checks the client sends (a peer-reflexive candidate).

Malformed candidates are refused with the reason (`CandidateError`) before aiortc or aioice see
them: their parsers answer bad input with assertion errors and stray exceptions.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

from aiortc import RTCIceCandidate

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_PRIORITY = 2**32 - 1
TYPES = frozenset({"host", "srflx", "prflx", "relay"})
TRANSPORTS = frozenset({"udp", "tcp"})
_FOUNDATION = re.compile(r"[A-Za-z0-9+/]{1,32}")  # ice-char (RFC 8839 section 5.1)
_TOKEN = re.compile(r"[\x21-\x7e]{1,256}")  # an extension's name or value: visible ASCII


class CandidateError(ValueError):
    """A candidate the relay refuses to parse or to accept; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Ignored(StrEnum):
    """Why a well-formed candidate is dropped without an error (browsers send these)."""

    MDNS = "mdns"  # a `.local` name hiding a host address: the client's checks reveal it
    TCP = "tcp"  # the relay gathers UDP only: a TCP candidate can never pair
    ADDRESS = "address"  # an address the relay does not contact (the peer policy)


@dataclass(frozen=True)
class Candidate:
    """The fields of one `candidate:` line that the relay reads."""

    foundation: str
    component: int
    transport: str  # lower case
    priority: int
    host: str  # an IP address literal, or an mDNS name
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None
    tcp_type: str | None = None

    @property
    def is_mdns(self) -> bool:
        return self.host.lower().endswith(".local")

    def to_aiortc(self, sdp_mid: str | None, sdp_mline_index: int | None) -> RTCIceCandidate:
        candidate = RTCIceCandidate(
            component=self.component,
            foundation=self.foundation,
            ip=self.host,
            port=self.port,
            priority=self.priority,
            protocol=self.transport,
            type=self.type,
            relatedAddress=self.related_address,
            relatedPort=self.related_port,
            tcpType=self.tcp_type,
            sdpMid=sdp_mid,
            sdpMLineIndex=sdp_mline_index,
        )
        if sdp_mid is None and sdp_mline_index is None:
            candidate.sdpMLineIndex = 0  # bundled: every section shares the first transport
        return candidate


def parse_candidate(text: str) -> Candidate:
    """`candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
    [raddr <address> rport <port>] [<name> <value>]…` (the `candidate:` prefix is optional)."""
    if text.startswith("a="):
        text = text[2:]
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    bits = text.split()
    if len(bits) < 8:
        raise CandidateError(
            "a candidate has 8 fields: foundation component transport priority address port "
            "typ type"
        )
    if len(bits) % 2:
        raise CandidateError("the extensions after the type must be name/value pairs")
    foundation, component, transport, priority, host, port, typ, kind = bits[:8]
    if not _FOUNDATION.fullmatch(foundation):
        raise CandidateError("the foundation must be 1-32 letters, digits, '+' or '/'")
    if typ != "typ":
        raise CandidateError("the seventh field must be the keyword `typ`")
    if kind not in TYPES:
        raise CandidateError(f"the type must be one of {', '.join(sorted(TYPES))}")
    transport = transport.lower()
    if transport not in TRANSPORTS:
        raise CandidateError("the transport must be udp or tcp")
    extensions: dict[str, str] = {}
    for name, value in zip(bits[8::2], bits[9::2], strict=True):
        if not _TOKEN.fullmatch(name) or not _TOKEN.fullmatch(value):
            raise CandidateError("an extension name or value is not printable ASCII")
        extensions.setdefault(name, value)
    related, related_port = extensions.get("raddr"), extensions.get("rport")
    return Candidate(
        foundation=foundation,
        component=_integer(component, "component", 1, 256),
        transport=transport,
        priority=_integer(priority, "priority", 1, MAX_PRIORITY),
        host=_host(host),
        port=_integer(port, "port", 0 if transport == "tcp" else 1, 65535),
        type=kind,
        related_address=None if related is None else str(_address(related, "raddr")),
        related_port=None if related_port is None else _integer(related_port, "rport", 0, 65535),
        tcp_type=extensions.get("tcptype"),
    )


def _integer(text: str, field: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise CandidateError(f"the {field} must be a decimal integer")
    value = int(text)
    if not low <= value <= high:
        raise CandidateError(f"the {field} must be between {low} and {high}")
    return value


def _host(text: str) -> str:
    if text.lower().endswith(".local"):
        return text  # not resolved: ignored (see `Ignored.MDNS`)
    return str(_address(text, "address"))


def _address(text: str, field: str) -> IpAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise CandidateError(f"the {field} must be an IP address literal") from None


@dataclass(frozen=True)
class PeerPolicy:
    """Which addresses the relay may send connectivity checks to (see the module docstring)."""

    # Ranges contacted although the rules below would refuse them (coturn's allowed-peer-ip).
    allowed: tuple[IpNetwork, ...] = ()

    def refusal(self, address: str, own: frozenset[IpAddress] = frozenset()) -> str | None:
        """Why the relay must not contact `address` (an IP literal), or None if it may."""
        ip = _unmapped(ipaddress.ip_address(address))
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return None
        if ip.is_unspecified:
            return "an unspecified address"
        if ip.is_loopback:
            return "a loopback address"
        if ip.is_link_local:
            return "a link-local address"
        if ip.is_multicast:
            return "a multicast address"
        if ip in own:
            return "one of the relay's own addresses"
        if not ip.is_global:
            return "a private or reserved address"
        return None


def _unmapped(ip: IpAddress) -> IpAddress:
    """`::ffff:10.0.0.1` is 10.0.0.1: the IPv4 rules apply to IPv4-mapped IPv6 addresses."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ranges(values: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    """CIDR ranges (`10.0.0.0/8`, `fd00::/8`, or a bare address); ValueError names a bad one."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)
