"""One sending slot on a subscriber's connection, carrying whichever producer is attached to it.

A forwarder owns an SSRC that aiortc announced in the subscriber's SDP. It rewrites each packet of
the attached producer into that stream (payload type, SSRC, sequence number and timestamp offsets,
fresh header extensions), sends it, keeps it for retransmission, and turns the subscriber's RTCP
into feedback for the producer. When another producer is attached later (a participant reloaded
the page), numbering continues where it stopped, so the subscriber's decoder sees one stream and
no renegotiation is needed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiortc.rtp import RtcpReceiverInfo, RtcpSenderInfo, RtcpSrPacket

from relay.negotiation import Codec
from relay.producer import Producer
from relay.rtp import FIXED_HEADER, abs_send_time_now, extension_template
from relay.stats import StreamStats

HISTORY_SIZE = 512  # packets kept for NACK, ~2 s of 500 kbit/s video
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 to 1970
# A packet is resent at most once per this long (or per round trip, when that is longer).
RESEND_MIN_INTERVAL = 0.1
# GCC's loss-based control of a video leg (`Forwarder._follow_loss`)
LOSS_DECREASE_ABOVE = 0.10
LOSS_INCREASE_BELOW = 0.02
LOSS_LIMIT_FLOOR_BPS = 30_000


class PacketSink(Protocol):
    """Where a forwarder writes its packets: the subscriber's media transport, or a test's fake."""

    @property
    def ready(self) -> bool:
        """Whether `send_rtp` can send now (keys negotiated, a candidate pair nominated)."""
        ...

    def send_rtp(self, packet: bytes) -> bool:
        """Protect and send one RTP packet; False when it could not be sent."""
        ...


@dataclass(frozen=True)
class SendParameters:
    """What the subscriber's answer settled for this slot."""

    codec: Codec
    mid: str
    mid_id: int  # 0 when the extension was not negotiated
    abs_send_time_id: int


class Forwarder:
    def __init__(
        self,
        *,
        kind: str,
        ssrc: int,
        rtx_ssrc: int,
        codec: Codec,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.kind = kind
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.codec = codec  # what the slot was offered with; attach only matching producers
        self.mid: str | None = None
        self.producer: Producer | None = None
        self.stats = StreamStats(kind=kind, direction="out", codec=codec.name)
        self._clock = clock
        self._wall_clock = wall_clock
        self._sink: PacketSink | None = None
        self._pt = codec.payload_type
        self._rtx_pt: int | None = None
        self._ext_prefix = b""
        self._ext_suffix = b""
        self._abs_send_time = False
        self._header_size = 12
        self._first_byte = 0x80
        self._needs_rebase = True
        self._needs_keyframe = kind == "video"
        # Audio first (relay/adaptation.py): the subscriber's link cannot carry this video now.
        # Checked only inside the `_needs_rebase` branch, which a pause enters: no cost per
        # packet while the stream flows.
        self._paused = False
        # While paused or on probation, the subscriber's REMB does not hold the publisher back;
        # nor does one below `remb_floor` (audio first: such a link gets no video, not a
        # publisher slowed down for everyone); the loss-based limit stops at it.
        self._remb_counts = True
        self.remb_floor = 0
        # Whether the keyframe request of "the sink is ready now" went out (see `forward`).
        self._asked_when_ready = False
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_seq: int | None = None
        self._last_ts = 0
        self._last_sent_at = 0.0
        self._rtx_seq = random.randrange(0x8000)
        self._history: list[bytes | None] = [None] * HISTORY_SIZE
        self._resent_at: dict[int, float] = {}  # seq → when it was last resent (`on_nack`)
        self._sr_sent: dict[int, float] = {}  # middle 32 bits of SR NTP → send time
        # When the subscriber's last receiver report for this stream (its RTX stream: the
        # padding of audio first's probe) came, and the loss it reported.
        self.reported_at: float | None = None
        self._loss_checked_at = clock()  # what the leg carried between two reports (bytes)
        self._loss_checked_bytes = 0
        self.padding_loss = 0.0
        self.padding_reported_at: float | None = None

    @property
    def idle(self) -> bool:
        return self.producer is None

    @property
    def remb_bps(self) -> int | None:
        """What this leg lets the publisher send: the subscriber's REMB, lowered by the loss
        it reports (`_follow_loss`); None when it must not hold the publisher back."""
        bps = self.stats.remb_bps
        limit = self.stats.loss_limit_bps
        if bps is not None and limit is not None and limit < bps:
            bps = limit
        return bps if self._remb_counts and bps is not None and bps >= self.remb_floor else None

    @property
    def paused(self) -> bool:
        return self._paused

    def start(self, sink: PacketSink, parameters: SendParameters) -> None:
        """Called once the subscriber's answer is applied: from now on packets can flow."""
        self._sink = sink
        self.mid = parameters.mid
        codec = parameters.codec
        self._pt = codec.payload_type
        self._rtx_pt = codec.rtx_payload_type if codec.nack else None
        mid = [(parameters.mid_id, parameters.mid.encode())] if parameters.mid_id else []
        self._abs_send_time = bool(parameters.abs_send_time_id) and self.kind == "video"
        # abs-send-time's 3 value bytes are written per packet between prefix and suffix
        self._ext_prefix, self._ext_suffix = extension_template(
            mid, parameters.abs_send_time_id if self._abs_send_time else 0
        )
        self._header_size = 12 + len(self._ext_prefix) + len(self._ext_suffix)
        self._header_size += 3 if self._abs_send_time else 0
        self._first_byte = 0x90 if self._ext_prefix else 0x80
        if self.producer is not None:
            self.producer.request_keyframe()

    # -- attaching producers ------------------------------------------------------------------

    def attach(self, producer: Producer) -> None:
        self.detach()
        self.producer = producer
        producer.add_forwarder(self)
        self._needs_rebase = True
        self._needs_keyframe = self.kind == "video"
        self._asked_when_ready = False
        producer.request_keyframe()

    def detach(self) -> None:
        producer = self.producer
        if producer is None:
            return
        self.producer = None
        self.stats.remb_bps = None  # before removal: the producer recomputes REMB without it
        producer.remove_forwarder(self)

    # -- audio first ---------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop sending this stream to the subscriber (its link is too weak for it)."""
        if self._paused:
            return
        self._paused = True
        self._needs_rebase = True  # the branch `forward` checks the pause in
        self._remb_counts = False
        if self.producer is not None:
            self.producer.update_bandwidth()

    def resume(self, *, probing: bool = False) -> None:
        """Send again, starting on a keyframe; `probing`: on probation, the subscriber's stale
        REMB is forgotten and fresh ones do not yet hold the publisher back."""
        if self._paused:
            self._paused = False
            self._needs_rebase = True
            self._needs_keyframe = self.kind == "video"
            self._asked_when_ready = False
            self.stats.remb_bps = self.stats.loss_limit_bps = None
            if self.producer is not None:
                self.producer.request_keyframe()
        self._remb_counts = not probing

    @property
    def can_pad(self) -> bool:
        """Whether `padding_packet` can build one (checked without using a sequence number:
        a gap in the RTX stream would read as the probe's loss)."""
        return self._rtx_pt is not None and self._abs_send_time and self._sink is not None

    def padding_packet(self, size: int) -> bytes | None:
        """An RTP packet of `size` (1..255) padding bytes and no media on this slot's RTX stream,
        with a fresh abs-send-time: audio first's downlink probe (relay/probe.py). The
        subscriber's bandwidth estimator counts its size (aiortc's and Chromium's count padding);
        its depacketizer drops it. None when the slot cannot carry one (no RTX, no
        abs-send-time, not started)."""
        if not self.can_pad or self._rtx_pt is None:
            return None
        rtx_seq = self._rtx_seq
        self._rtx_seq = (rtx_seq + 1) & 0xFFFF
        header = FIXED_HEADER.pack(
            self._first_byte | 0x20, self._rtx_pt, rtx_seq, self._last_ts, self.rtx_ssrc
        )
        padding = bytes(size - 1) + bytes((size,))
        return b"".join((header, self._ext_prefix, abs_send_time_now(), self._ext_suffix, padding))

    def send_padding(self, size: int) -> int:
        """Send one `padding_packet`; the bytes sent (0: none could be)."""
        packet = self.padding_packet(size)
        if packet is None or self._sink is None or not self._sink.send_rtp(packet):
            return 0
        return len(packet)

    # -- media path ---------------------------------------------------------------------------

    def forward(
        self, seq: int, timestamp: int, marker: int, payload: bytes, keyframe: bool
    ) -> None:
        sink = self._sink
        if self._needs_rebase:
            if self._paused:
                return
            # readiness is checked only until the first packet goes out: afterwards a failed
            # send says the same, at no extra cost per packet
            if sink is None or not sink.ready:
                return
            if self._needs_keyframe and not keyframe:
                if self.producer is not None:
                    self.producer.request_keyframe(now_ready=not self._asked_when_ready)
                    self._asked_when_ready = True
                return
            self._rebase(seq, timestamp)
        assert sink is not None
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        header = FIXED_HEADER.pack(
            self._first_byte, marker << 7 | self._pt, out_seq, out_ts, self.ssrc
        )
        if self._abs_send_time:
            packet = b"".join(
                (header, self._ext_prefix, abs_send_time_now(), self._ext_suffix, payload)
            )
        else:
            packet = b"".join((header, self._ext_prefix, payload))
        if not sink.send_rtp(packet):
            self._needs_rebase = True  # the connection went away: start again on a keyframe
            self._needs_keyframe = self.kind == "video"
            self._asked_when_ready = False
            return
        self._history[out_seq % HISTORY_SIZE] = packet
        stats = self.stats
        stats.packets += 1
        stats.bytes += len(packet)
        if keyframe:
            stats.keyframes += 1
        if marker or self.kind == "audio":
            stats.frames += 1
        if self._last_seq is None or ((out_seq - self._last_seq) & 0xFFFF) < 0x8000:
            self._last_seq, self._last_ts = out_seq, out_ts
            self._last_sent_at = self._clock()

    def _rebase(self, seq: int, timestamp: int) -> None:
        """Continue this slot's numbering from where it stopped, whatever the new source uses."""
        if self._last_seq is None:
            first_seq, first_ts = random.randrange(0x8000), random.randrange(1 << 32)
        else:
            elapsed = max(self._clock() - self._last_sent_at, 0.001)
            first_seq = (self._last_seq + 1) & 0xFFFF
            first_ts = (self._last_ts + int(elapsed * self.codec.clock_rate)) & 0xFFFFFFFF
        self._seq_offset = (first_seq - seq) & 0xFFFF
        self._ts_offset = (first_ts - timestamp) & 0xFFFFFFFF
        self._needs_rebase = False
        self._needs_keyframe = False

    # -- feedback from the subscriber ---------------------------------------------------------

    def on_nack(self, lost: list[int]) -> None:
        """Resend what the subscriber lists, each packet at most once per round trip: a NACK
        may list again what is already on its way (aiortc's receiver lists every packet still
        missing each time it sees a new gap), and answering every listing floods a lossy link
        with copies, which it loses, which are listed again (mediasoup and libwebrtc skip a
        packet resent within the RTT too)."""
        sink = self._sink
        if sink is None:
            return
        now = self._clock()
        interval = max(self.stats.rtt_seconds or 0.0, RESEND_MIN_INTERVAL)
        resent = self._resent_at
        if len(resent) > HISTORY_SIZE:
            self._resent_at = resent = {s: t for s, t in resent.items() if now - t < interval}
        for seq in lost:
            seq &= 0xFFFF
            packet = self._history[seq % HISTORY_SIZE]
            if packet is None or (packet[2] << 8 | packet[3]) != seq:
                continue  # never sent or already overwritten: the producer's own NACK covers it
            last = resent.get(seq)
            if last is not None and now - last < interval:
                continue  # its copy is still on its way
            if self._rtx_pt is not None:
                packet = self._rtx_packet(packet)
            if sink.send_rtp(packet):
                self.stats.retransmits += 1
                self.stats.retransmit_bytes += len(packet)
                resent[seq] = now

    def _rtx_packet(self, packet: bytes) -> bytes:
        rtx_seq = self._rtx_seq
        self._rtx_seq = (rtx_seq + 1) & 0xFFFF
        size = self._header_size
        header = FIXED_HEADER.pack(
            packet[0],
            (packet[1] & 0x80) | (self._rtx_pt or 0),
            rtx_seq,
            int.from_bytes(packet[4:8], "big"),
            self.rtx_ssrc,
        )
        return b"".join((header, packet[12:size], packet[2:4], packet[size:]))

    def on_keyframe_request(self) -> None:
        self.stats.keyframe_requests += 1
        if self.producer is not None:
            self.producer.request_keyframe()

    def on_remb(self, bitrate: int) -> None:
        self.stats.remb_bps = bitrate
        if self.producer is not None:
            self.producer.update_bandwidth()

    def on_receiver_report(self, report: RtcpReceiverInfo) -> None:
        now = self._clock()
        self.reported_at = now
        stats = self.stats
        stats.packets_lost = report.packets_lost
        stats.fraction_lost = report.fraction_lost / 256
        stats.jitter_seconds = report.jitter / self.codec.clock_rate
        sent_at = self._sr_sent.get(report.lsr)
        if report.lsr and sent_at is not None:
            stats.rtt_seconds = max(now - sent_at - report.dlsr / 65536, 0.0)
        if self.kind == "video":
            self._follow_loss(now)

    def _follow_loss(self, now: float) -> None:
        """GCC's loss-based control (draft-ietf-rmcat-gcc-02 §6), the relay being this leg's
        sender: above 10 % loss the limit drops to (1 - loss/2) x what the leg carried, below
        2 % it climbs 5 % a report back up to the REMB, in between it holds. A receive-side
        REMB is delay-based only: once a bottleneck's queue stays full and drops (a tbf, a
        router's queue) the delay stops rising and the REMB stays above the link, which a
        browser's own send side would have corrected from the loss its reports show. The loss
        the publisher's uplink caused is taken out (the relay forwards its gaps)."""
        stats, producer = self.stats, self.producer
        elapsed = now - self._loss_checked_at
        sent_bps = (stats.bytes - self._loss_checked_bytes) * 8 / elapsed if elapsed > 0 else 0.0
        self._loss_checked_at, self._loss_checked_bytes = now, stats.bytes
        remb = stats.remb_bps
        if remb is None or producer is None or self._paused:
            stats.loss_limit_bps = None
            return
        upstream = min(producer.recent_loss, 0.99)
        loss = max(1 - (1 - stats.fraction_lost) / (1 - upstream), 0.0)
        limit = float(stats.loss_limit_bps or remb)
        if loss > LOSS_DECREASE_ABOVE:
            limit = min(limit, sent_bps) * (1 - loss / 2)
        elif loss < LOSS_INCREASE_BELOW:
            limit *= 1.05
        # With audio first the leg holds the publisher at what video needs at worst: lower,
        # the leg's video is the gate's to pause (a limit below the floor would count for
        # nothing, and the publisher would go on flooding the leg).
        limit = max(min(limit, remb), LOSS_LIMIT_FLOOR_BPS, self.remb_floor)
        previous, stats.loss_limit_bps = stats.loss_limit_bps, round(limit)
        if previous != stats.loss_limit_bps:
            producer.update_bandwidth()

    def on_padding_report(self, report: RtcpReceiverInfo) -> None:
        """The subscriber's receiver report on this slot's RTX stream (the probe's padding)."""
        self.padding_loss = report.fraction_lost / 256
        self.padding_reported_at = self._clock()

    def sender_report(self) -> RtcpSrPacket | None:
        """The periodic RTCP sender report, mapping this stream's RTP clock to wall-clock time.

        Derived from the publisher's own sender report when there is one, so audio and video of
        one publisher stay in sync at the subscriber.
        """
        if self._last_seq is None:
            return None
        now_wall = self._wall_clock()
        producer = self.producer
        rate = self.codec.clock_rate
        source_ts = producer.source_rtp_time(now_wall) if producer is not None else None
        if source_ts is not None:
            rtp_ts = (source_ts + self._ts_offset) & 0xFFFFFFFF
        else:
            elapsed = self._clock() - self._last_sent_at
            rtp_ts = (self._last_ts + int(elapsed * rate)) & 0xFFFFFFFF
        seconds = now_wall + NTP_EPOCH_OFFSET
        ntp = (int(seconds) << 32) | int((seconds % 1) * (1 << 32))
        middle = (ntp >> 16) & 0xFFFFFFFF
        self._sr_sent[middle] = self._clock()
        if len(self._sr_sent) > 8:
            del self._sr_sent[next(iter(self._sr_sent))]
        return RtcpSrPacket(
            ssrc=self.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=rtp_ts,
                packet_count=self.stats.packets & 0xFFFFFFFF,
                octet_count=self.stats.bytes & 0xFFFFFFFF,
            ),
        )
