"""The socket callback: bad SRTP is dropped silently, a bug in the handlers is counted and logged.

A real pylibsrtp session pair with a throw-away key, and a stand-in for the aiortc/aioice
objects `MediaTransport` hooks into (no socket, no ICE, no DTLS handshake).
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from relay._aiortc import MediaTransport
from relay.participant import LOGGED_MEDIA_PATH_ERRORS, Participant, ParticipantInfo
from relay.reasons import LeaveReason
from relay.settings import RelaySettings
from relay.stats import RelayStats
from tests.relay.unit.conftest import FakeClock, rtp

KEY = os.urandom(30)  # AES_CM_128_HMAC_SHA1_80: 16 bytes of key, 14 of salt


class Wire:
    """The publisher's SRTP session, and the stand-in DTLS transport holding the relay's."""

    def __init__(self) -> None:
        self.tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        self.to_aioice: list[bytes] = []
        connection = SimpleNamespace(
            data_received=lambda data, component: self.to_aioice.append(data),
            _protocols=[],
            _nominated={},
        )
        self.dtls: Any = SimpleNamespace(
            transport=SimpleNamespace(_connection=connection),
            _rx_srtp=Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND)),
            _tx_srtp=None,
            _send_rtp=None,
        )
        self._seq = 0

    def packet(self) -> bytes:
        self._seq += 1
        return self.tx.protect(rtp(self._seq, self._seq * 960))

    def rtcp(self) -> bytes:
        receiver_report = bytes([0x80, 201, 0, 1]) + (1234).to_bytes(4, "big")
        return self.tx.protect_rtcp(receiver_report)


class Handlers:
    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.errors = 0
        self.broken = False

    def on_rtp(self, data: bytes, arrival: float) -> None:
        if self.broken:
            raise TypeError("a bug in the forwarding chain")
        self.rtp.append(data)

    def on_rtcp(self, data: bytes) -> None:
        if self.broken:
            raise KeyError("a bug in the RTCP handling")
        self.rtcp.append(data)

    def on_error(self) -> None:
        self.errors += 1


def transport_on(wire: Wire, handlers: Handlers) -> MediaTransport:
    transport = MediaTransport(wire.dtls, handlers.on_error)
    transport.on_rtp = handlers.on_rtp
    transport.on_rtcp = handlers.on_rtcp
    return transport


async def test_bad_srtp_is_dropped_without_a_word() -> None:
    wire, handlers = Wire(), Handlers()
    transport = transport_on(wire, handlers)
    receive = wire.dtls.transport._connection.data_received
    good = wire.packet()
    forged = bytearray(wire.packet())
    forged[-1] ^= 0xFF  # authentication tag no longer matches

    receive(good, 1)
    receive(good, 1)  # replayed
    receive(bytes(forged), 1)
    receive(b"\x80", 1)  # no packet-type byte
    receive(b"\x80\x6f" + b"\x00" * 2000, 1)  # longer than any SRTP buffer
    receive(b"\x90" + os.urandom(40), 1)  # noise in the RTP range
    assert handlers.errors == 0
    assert len(handlers.rtp) == 1 and handlers.rtp[0][:12] == rtp(1, 960)[:12]
    assert transport.last_rtcp_at is None

    receive(wire.packet(), 1)  # the socket goes on
    receive(wire.rtcp(), 1)
    assert len(handlers.rtp) == 2 and len(handlers.rtcp) == 1
    assert transport.last_rtcp_at is not None
    receive(b"\x00\x01stun", 1)  # not media: aioice's own handler
    assert wire.to_aioice == [b"\x00\x01stun"]


async def test_a_bug_in_the_handlers_is_reported_and_the_socket_lives_on() -> None:
    wire, handlers = Wire(), Handlers()
    transport_on(wire, handlers)
    receive = wire.dtls.transport._connection.data_received
    handlers.broken = True
    receive(wire.packet(), 1)
    receive(wire.rtcp(), 1)
    assert handlers.errors == 2
    handlers.broken = False
    receive(wire.packet(), 1)
    receive(wire.rtcp(), 1)
    assert (len(handlers.rtp), len(handlers.rtcp), handlers.errors) == (1, 1, 2)


class Nobody:
    """A listener and an owner that are never called in these tests."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected call: {name}")


class LonelyRoom:
    def drop(self, participant: Participant, reason: LeaveReason) -> None:
        raise AssertionError("not dropped")

    def producers_added(self, participant: Participant, producers: list[Any]) -> None:
        raise AssertionError("no producers")

    def participant_info(self, socket_id: str) -> ParticipantInfo | None:
        return None

    def video_changed(self, participant: Participant, *args: Any) -> None:
        raise AssertionError("no video to pause")


def participant(socket_id: str, stats: RelayStats) -> Participant:
    """A participant built without a room or a relay: its owner is a tiny stand-in."""
    info = ParticipantInfo(socket_id, f"user-{socket_id}", "A. Person", "client")
    return Participant(
        info, Nobody(), settings=RelaySettings(), stats=stats, clock=FakeClock(), owner=LonelyRoom()
    )


async def test_media_path_errors_are_counted_per_relay_and_the_first_few_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = RelayStats()
    handlers = Handlers()
    handlers.broken = True
    wires = [Wire(), Wire()]
    for number, wire in enumerate(wires):  # two participants of one relay
        transport = MediaTransport(wire.dtls, participant(f"s{number}", stats)._media_path_failed)
        transport.on_rtp = handlers.on_rtp
    with caplog.at_level(logging.ERROR, logger="relay.participant"):
        for _ in range(4):
            for wire in wires:
                wire.dtls.transport._connection.data_received(wire.packet(), 1)
    assert stats.media_path_errors == 8
    logged = [r for r in caplog.records if r.name == "relay.participant"]
    assert len(logged) == LOGGED_MEDIA_PATH_ERRORS == 5
    assert all(r.exc_info and r.exc_info[0] is TypeError for r in logged)
