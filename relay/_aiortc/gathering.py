"""The relay's own ICE candidates: fixed UDP port range, chosen interfaces, announced address.

aioice 0.13 binds every host candidate to a random port on every local address and has no option
to change that. For the relay's connections only, `restrict_gathering()` replaces aioice's
host-candidate step on the connection's own `aioice.Connection` instance (nothing global: aiortc
clients in the same process keep aioice's normal behaviour):

* `bind_ips` — gather on exactly these local addresses instead of every interface's;
* `udp_ports` — bind each host socket to a free port of this inclusive range, trying ports from a
  random start; when every port is taken, `PortRangeExhausted` (a `NegotiationError`, so the
  signaling layer answers the offer with an `error` event) instead of a hang or a random port;
* `announced_ip` — the address written into the host candidates of that address family, for a
  relay behind 1:1 NAT (a cloud VM, a container with published ports); packets still go out of
  the bound socket, and the NAT maps the announced address back to it.

STUN and TURN gathering (when the relay has ICE servers of its own) is left to aioice unchanged.
The aioice internals used here are checked at start-up by `relay._aiortc.self_test()`
through `internals_problems()`.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol
from aioice.turn import UDP_SOCKET_BUFFER_SIZE
from aiortc import RTCIceGatherer, RTCPeerConnection, RTCSessionDescription

from relay.negotiation import NegotiationError

if TYPE_CHECKING:
    from relay.settings import RelaySettings

logger = logging.getLogger(__name__)

_HOOKED = "_smiling_relay_gathering"  # marks a Connection whose gathering is already ours


class PortRangeExhausted(NegotiationError):
    """Every port of the configured UDP range is in use on an address the relay gathers on."""

    def __init__(self, address: str, ports: tuple[int, int]) -> None:
        low, high = ports
        super().__init__(
            f"no free UDP port for a media connection: all {high - low + 1} ports of "
            f"RELAY_UDP_PORTS {low}-{high} are in use on {address}; widen the range or lower "
            "the number of connections per relay"
        )
        self.address = address
        self.ports = ports


@dataclass(frozen=True)
class GatheringPolicy:
    """How the relay gathers its host candidates (see the module docstring)."""

    bind_ips: tuple[str, ...] = ()
    udp_ports: tuple[int, int] | None = None
    announced_ip: str | None = None

    def __post_init__(self) -> None:
        for address in (*self.bind_ips, *([self.announced_ip] if self.announced_ip else [])):
            ipaddress.ip_address(address)  # ValueError for anything but a literal address
        if self.udp_ports is not None:
            low, high = self.udp_ports
            if not 1 <= low <= high <= 65535:
                raise ValueError(f"invalid UDP port range {low}-{high}")

    @classmethod
    def from_settings(cls, settings: RelaySettings) -> GatheringPolicy:
        return cls(
            bind_ips=settings.bind_ips,
            udp_ports=settings.udp_ports,
            announced_ip=settings.announced_ip,
        )

    @property
    def is_default(self) -> bool:
        return not self.bind_ips and self.udp_ports is None and self.announced_ip is None

    def candidate_address(self, bound: str) -> str:
        """The address a host candidate bound to `bound` advertises."""
        if self.announced_ip is None:
            return bound
        announced = ipaddress.ip_address(self.announced_ip)
        return (
            self.announced_ip if ipaddress.ip_address(bound).version == announced.version else bound
        )


def restrict_gathering(pc: RTCPeerConnection, settings: RelaySettings) -> None:
    """Make `pc` gather its host candidates by the relay's settings; no-op for the defaults.

    Called once, right after the relay creates the connection. The ICE gatherers exist only once
    transceivers do, so the hook is placed when the local description is set (which gathers).
    """
    policy = GatheringPolicy.from_settings(settings)
    if policy.is_default:
        return
    original = pc.setLocalDescription

    async def set_local_description(description: RTCSessionDescription | None = None) -> None:
        for transceiver in pc.getTransceivers():
            gatherer = transceiver.receiver.transport.transport.iceGatherer
            hook_connection(gatherer._connection, policy)
        await original(description)

    pc.setLocalDescription = set_local_description  # type: ignore[method-assign,assignment]


def hook_connection(connection: Connection, policy: GatheringPolicy) -> None:
    """Replace this aioice connection's host-candidate gathering (idempotent)."""
    if getattr(connection, _HOOKED, False):
        return
    original: Callable[..., Awaitable[list[Candidate]]] = connection.get_component_candidates

    async def get_component_candidates(
        component: int,
        addresses: list[str],
        timeout: int = 5,  # noqa: ASYNC109 (aioice API)
    ) -> list[Candidate]:
        # aioice passes no addresses under the relay transport policy: keep that meaning
        chosen = list(policy.bind_ips) if policy.bind_ips and addresses else addresses
        candidates = [
            await _host_candidate(connection, policy, component, address) for address in chosen
        ]
        # STUN/TURN candidates (if the relay has ICE servers): aioice's own code, no host sockets
        candidates += await original(component=component, addresses=[], timeout=timeout)
        return candidates

    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    setattr(connection, _HOOKED, True)


async def _host_candidate(
    connection: Connection, policy: GatheringPolicy, component: int, address: str
) -> Candidate:
    sock = bind_udp(address, policy.udp_ports)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER_SIZE)
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: StunProtocol(connection), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    host = policy.candidate_address(bound_host)
    protocol.local_candidate = Candidate(
        foundation=candidate_foundation("host", "udp", host),
        component=component,
        transport="udp",
        priority=candidate_priority(component, "host"),
        host=host,
        port=bound_port,
        type="host",
    )
    connection._protocols.append(protocol)  # closed with the connection, like aioice's own
    return protocol.local_candidate


def bind_udp(address: str, ports: tuple[int, int] | None) -> socket.socket:
    """A non-blocking UDP socket bound to `address` and a free port of `ports` (any if None).

    Raises `PortRangeExhausted` when every port of the range is taken, and `OSError` for other
    binding failures (e.g. an address that is not local: EADDRNOTAVAIL).
    """
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    candidates: Sequence[int] = [0]
    if ports is not None:
        low, high = ports
        start = random.randint(low, high)  # spreads connections over the range
        candidates = [*range(start, high + 1), *range(low, start)]
    for port in candidates:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and ports is not None:
                continue
            raise OSError(
                exc.errno, f"cannot bind a UDP socket to {address}: {exc.strerror}"
            ) from exc
        return sock
    assert ports is not None
    logger.error("RELAY_UDP_PORTS %d-%d exhausted on %s", ports[0], ports[1], address)
    raise PortRangeExhausted(address, ports)


def internals_problems() -> list[str]:
    """The aioice internals this module relies on, checked by the adapter's start-up self-test."""
    problems: list[str] = []
    method: Any = getattr(Connection, "get_component_candidates", None)
    if method is None or not inspect.iscoroutinefunction(method):
        problems.append("aioice Connection.get_component_candidates is missing")
    else:
        names = list(inspect.signature(method).parameters)
        if names[:3] != ["self", "component", "addresses"]:
            problems.append(f"aioice Connection.get_component_candidates takes {names}")
    gatherer = RTCIceGatherer(iceServers=[])
    connection = getattr(gatherer, "_connection", None)
    if not isinstance(connection, Connection):
        problems.append("aiortc RTCIceGatherer has no aioice _connection")
    elif not isinstance(getattr(connection, "_protocols", None), list):
        problems.append("aioice Connection has no _protocols list")
    return problems


@dataclass(frozen=True)
class SelectedPair:
    """The nominated ICE candidate pair of a connection, as both ends' candidates."""

    local_type: str
    local_address: tuple[str, int]
    remote_type: str
    remote_address: tuple[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "local": {"type": self.local_type, "address": list(self.local_address)},
            "remote": {"type": self.remote_type, "address": list(self.remote_address)},
        }


def selected_pair(pc: RTCPeerConnection) -> SelectedPair | None:
    """The candidate pair ICE nominated for `pc`'s (bundled) transport, if any yet."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        pair = connection._nominated.get(1)
        if pair is None:
            return None
        local, remote = pair.local_candidate, pair.remote_candidate
        return SelectedPair(
            local_type=local.type,
            local_address=(local.host, local.port),
            remote_type=remote.type,
            remote_address=(remote.host, remote.port),
        )
    return None


def ice_sockets(pc: RTCPeerConnection) -> list[socket.socket]:
    """The UDP sockets behind a connection's (bundled) ICE candidates, for introspection."""
    for transceiver in pc.getTransceivers()[:1]:
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        return [p.transport.get_extra_info("socket") for p in connection._protocols]
    return []
