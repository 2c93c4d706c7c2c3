"""The media core's unit tier: real producers and forwarders, fake time, a capturing sink.

Nothing here needs root, a network namespace, a socket or aiortc's peer connections: packets
are built as bytes, handed to `Producer.on_rtp` one by one, and read back from `CaptureSink`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from aiortc.rtp import AnyRtcpPacket, RtcpPsfbPacket, RtcpRtpfbPacket, unpack_remb_fci

from relay.forwarder import Forwarder, SendParameters
from relay.negotiation import Codec
from relay.producer import Producer
from relay.rtp import FIXED_HEADER
from relay.stats import FORWARDING_DELAY_BUCKETS, Histogram

PUBLISHER_SSRC = 0x1111_0000
PUBLISHER_RTX_SSRC = 0x1111_0001
RELAY_RTCP_SSRC = 0x2222_0000
SLOT_SSRC = 0x3333_0000
SLOT_RTX_SSRC = 0x3333_0001

VP8 = Codec("VP8", 96, 90_000, None, {}, rtx_payload_type=97, nack=True, remb=True)
OPUS = Codec("opus", 111, 48_000, 2, {"minptime": 10}, None, nack=False, remb=False)
# what a subscriber's answer may settle for the same formats: other payload types
VP8_ANSWERED = Codec("VP8", 120, 90_000, None, {}, rtx_payload_type=121, nack=True, remb=True)
OPUS_ANSWERED = Codec("opus", 109, 48_000, 2, {"minptime": 10}, None, nack=False, remb=False)

# VP8 payload descriptors (RFC 7741): S=1, partition 0, then the frame tag's inverse key bit
VP8_KEYFRAME = bytes([0x10, 0x00, 0x00, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01])
VP8_DELTA = bytes([0x10, 0x01, 0x00, 0x00, 0xAA, 0xBB])
VP8_CONTINUATION = bytes([0x00, 0xCC, 0xDD])  # not the start of a partition


class FakeClock:
    """Monotonic time that moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CaptureSink:
    """A `PacketSink` that keeps every packet the forwarder hands it."""

    def __init__(self) -> None:
        self.ready = True
        self.up = True  # False: send_rtp fails, as when the connection went away
        self.packets: list[bytes] = []

    def send_rtp(self, packet: bytes) -> bool:
        if not self.up:
            return False
        self.packets.append(packet)
        return True

    def take(self) -> list[Rtp]:
        """The packets sent since the last call, parsed."""
        packets, self.packets = self.packets, []
        return [Rtp.parse(p) for p in packets]


@dataclass(frozen=True)
class Rtp:
    """The header fields of one RTP packet (no CSRCs; header extensions skipped)."""

    seq: int
    ts: int
    ssrc: int
    pt: int
    marker: int
    payload: bytes

    @classmethod
    def parse(cls, data: bytes) -> Rtp:
        first, second, seq, ts, ssrc = FIXED_HEADER.unpack_from(data)
        start = 12
        if first & 0x10:
            start += 4 + int.from_bytes(data[14:16], "big") * 4
        return cls(seq, ts, ssrc, second & 0x7F, second >> 7, data[start:])


def rtp(
    seq: int,
    ts: int,
    payload: bytes = b"\x01\x02\x03",
    *,
    pt: int = 111,
    ssrc: int = PUBLISHER_SSRC,
    marker: int = 0,
) -> bytes:
    """An RTP packet as a publisher sends it (after SRTP unprotect)."""
    header = FIXED_HEADER.pack(0x80, marker << 7 | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    return header + payload


def rtx(osn: int, rtx_seq: int, ts: int, payload: bytes, *, pt: int = 97, marker: int = 0) -> bytes:
    """A retransmission (RFC 4588): RTX payload type and SSRC, original seq first in the payload."""
    return rtp(
        rtx_seq, ts, osn.to_bytes(2, "big") + payload, pt=pt, ssrc=PUBLISHER_RTX_SSRC, marker=marker
    )


@dataclass
class Upstream:
    """The RTCP a producer sends its publisher, captured and sorted by kind."""

    packets: list[AnyRtcpPacket] = field(default_factory=list)

    def __call__(self, packets: list[AnyRtcpPacket]) -> None:
        self.packets.extend(packets)

    def plis(self) -> list[RtcpPsfbPacket]:
        return [p for p in self.packets if isinstance(p, RtcpPsfbPacket) and p.fmt == 1]

    def nacks(self) -> list[list[int]]:
        return [list(p.lost) for p in self.packets if isinstance(p, RtcpRtpfbPacket)]

    def rembs(self) -> list[int]:
        return [
            unpack_remb_fci(p.fci)[0]
            for p in self.packets
            if isinstance(p, RtcpPsfbPacket) and p.fmt == 15
        ]

    def clear(self) -> None:
        self.packets.clear()


class WallClock(FakeClock):
    """Wall-clock time (seconds since 1970) that moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        super().__init__(start)


@dataclass
class Bench:
    """One fake publisher's side of the relay: a shared clock pair and its RTCP."""

    clock: FakeClock = field(default_factory=FakeClock)
    wall: WallClock = field(default_factory=WallClock)
    delay: Histogram = field(default_factory=lambda: Histogram(FORWARDING_DELAY_BUCKETS))

    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.wall.advance(seconds)

    def producer(
        self,
        codec: Codec = OPUS,
        *,
        upstream: Upstream | None = None,
        owner: str = "publisher",
        abs_send_time_id: int = 0,
    ) -> Producer:
        return Producer(
            owner=owner,
            mid="0" if codec.name == "opus" else "1",
            kind="audio" if codec.name == "opus" else "video",
            codec=codec,
            rtcp_ssrc=RELAY_RTCP_SSRC,
            send_rtcp=upstream if upstream is not None else Upstream(),
            abs_send_time_id=abs_send_time_id,
            forwarding_delay=self.delay,
            keyframe_interval=0.5,
            clock=self.clock,
            wall_clock=self.wall,
        )

    def forwarder(
        self, producer: Producer, sink: CaptureSink, answered: Codec | None = None
    ) -> Forwarder:
        """A started slot carrying `producer`, as after the subscriber's answer."""
        forwarder = Forwarder(
            kind=producer.kind,
            ssrc=SLOT_SSRC,
            rtx_ssrc=SLOT_RTX_SSRC,
            codec=producer.codec,
            clock=self.clock,
            wall_clock=self.wall,
        )
        forwarder.attach(producer)
        forwarder.start(
            sink,
            SendParameters(codec=answered or producer.codec, mid="0", mid_id=0, abs_send_time_id=0),
        )
        return forwarder


@pytest.fixture
def bench() -> Bench:
    return Bench()


@pytest.fixture
def sink() -> CaptureSink:
    return CaptureSink()
