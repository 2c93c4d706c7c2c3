"""A track one participant publishes, as the relay receives it, and its fan-out to forwarders.

The producer sees every RTP packet of its track once, straight from the socket callback: it
unwraps retransmissions, keeps the receive statistics that go back to the publisher in RTCP
receiver reports, asks for lost packets (NACK) and keyframes (PLI), estimates the publisher's
uplink, and hands the packet to every forwarder at once. Nothing is buffered or reordered here: a
packet leaves the relay in the same callback that brought it in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    pack_remb_fci,
)

from relay.estimator import RemoteBitrateEstimator
from relay.negotiation import Codec
from relay.rtp import find_extension, h264_keyframe, payload_bounds, vp8_keyframe
from relay.stats import Histogram, StreamStats

MAX_TRACKED_MISSING = 256  # sequence numbers the relay is still hoping to get resent
MISSING_GIVE_UP_SECONDS = 1.0
REMB_CHANGE_THRESHOLD = 0.05  # resend REMB at once when the target moves by more than 5 %
REMB_FLOOR_BPS = 30_000

SendRtcp = Callable[[list[AnyRtcpPacket]], None]


class TrackSender(Protocol):
    """What a producer needs from each forwarder it feeds (LiveKit's `TrackSender`).

    The producer knows its forwarders only through this: one call per packet, and the
    subscriber's bandwidth estimate when it computes REMB.
    """

    def forward(
        self, seq: int, timestamp: int, marker: int, payload: bytes, keyframe: bool
    ) -> None: ...

    @property
    def remb_bps(self) -> int | None:
        """The subscriber's last REMB for this stream, None before the first."""
        ...

    def detach(self) -> None:
        """The producer is closing: stop forwarding it (and call `remove_forwarder`)."""
        ...


class Producer:
    """One published audio or video track."""

    def __init__(
        self,
        *,
        owner: str,
        mid: str,
        kind: str,
        codec: Codec,
        rtcp_ssrc: int,
        send_rtcp: SendRtcp,
        abs_send_time_id: int,
        forwarding_delay: Histogram,
        keyframe_interval: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.owner = owner
        self.mid = mid
        self.kind = kind
        self.codec = codec
        self.media_ssrc: int | None = None
        self._forwarders: list[TrackSender] = []
        self.stats = StreamStats(kind=kind, direction="in", codec=codec.name)
        self.first_packet_at: float | None = None
        self.closed = False
        self._rtcp_ssrc = rtcp_ssrc
        self._send_rtcp = send_rtcp
        self._clock = clock
        self._wall_clock = wall_clock
        self._delay = forwarding_delay
        self._is_video = kind == "video"
        self._is_vp8 = codec.name == "VP8"
        self._pt = codec.payload_type
        self._rtx_pt = codec.rtx_payload_type
        self._clock_rate = codec.clock_rate
        self._keyframe_interval = keyframe_interval
        self._last_keyframe_request = -1e9
        # receive statistics (RFC 3550 appendix A)
        self._base_seq = -1
        self._max_seq = -1
        self._cycles = 0
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter = 0.0
        self._last_transit: float | None = None
        self._missing: dict[int, float] = {}
        # sender report of the publisher: (middle 32 bits of NTP, local receive time, RTP time)
        self._sr_ntp_middle = 0
        self._sr_received_at = 0.0
        self._sr_rtp_timestamp: int | None = None
        self._sr_wall_time = 0.0
        # bandwidth
        self._abs_send_time_id = abs_send_time_id if self._is_video else 0
        self._estimator = RemoteBitrateEstimator() if self._abs_send_time_id else None
        self._frame_bytes = 0
        self._remb_sent: int | None = None
        self.recent_loss = 0.0  # see `receiver_report`
        # Set while audio first has this publisher's video paused or probing: the REMB to send.
        self.probe_bps: int | None = None
        self._remb_sent_at = 0.0

    # -- media path ---------------------------------------------------------------------------

    def on_rtp(self, data: bytes, arrival: float) -> None:
        bounds = payload_bounds(data)
        if bounds is None:
            return
        start, end, ext_start, ext_end = bounds
        payload_type = data[1] & 0x7F
        seq = data[2] << 8 | data[3]
        if payload_type != self._pt:
            if payload_type != self._rtx_pt or end - start <= 2:
                return  # unknown payload type, or an RTX padding probe
            seq = data[start] << 8 | data[start + 1]  # original sequence number (RFC 4588)
            start += 2
        timestamp = int.from_bytes(data[4:8], "big")
        marker = data[1] >> 7
        payload = data[start:end]
        stats = self.stats
        stats.packets += 1
        stats.bytes += len(data)
        if self.media_ssrc is None and payload_type == self._pt:
            self.first_packet_at = arrival
            self.media_ssrc = int.from_bytes(data[8:12], "big")
        self._count_sequence(seq, timestamp, arrival)

        keyframe = False
        if self._is_video:
            if marker:
                stats.frames += 1
            if self._is_vp8:
                if payload and payload[0] & 0x10:
                    keyframe, width, height = vp8_keyframe(payload)
                    if width:
                        stats.frame_width, stats.frame_height = width, height
            else:
                keyframe = h264_keyframe(payload)
            if keyframe:
                stats.keyframes += 1
            if self._estimator is not None:
                # The delay-based estimator compares packet *groups*: one sample per frame,
                # carrying the whole frame's size, costs a fifth of one per packet.
                self._frame_bytes += len(payload)
                if marker:
                    self._estimate(data, ext_start, ext_end, arrival, self._frame_bytes)
                    self._frame_bytes = 0
        else:
            stats.frames += 1

        for forwarder in self._forwarders:
            forwarder.forward(seq, timestamp, marker, payload, keyframe)
        if not stats.packets & 7:  # one packet in eight is plenty for the delay histogram
            self._delay.observe(self._clock() - arrival)

    def _count_sequence(self, seq: int, timestamp: int, arrival: float) -> None:
        self._received += 1
        if self._max_seq < 0:
            self._base_seq = self._max_seq = seq
            self._last_transit = arrival * self._clock_rate - timestamp  # jitter from packet 2
            return
        delta = (seq - self._max_seq) & 0xFFFF
        if delta == 0:
            return
        if delta >= 0x8000:  # older than the newest: late, or resent after our NACK
            self._missing.pop(seq, None)
            return
        if seq < self._max_seq:
            self._cycles += 0x10000
        if delta > 1:
            self._note_missing(seq, delta, arrival)
        self._max_seq = seq
        transit = arrival * self._clock_rate - timestamp
        if self._last_transit is not None:
            self._jitter += (abs(transit - self._last_transit) - self._jitter) / 16
        self._last_transit = transit

    def _note_missing(self, seq: int, delta: int, arrival: float) -> None:
        for gap in range(min(delta - 1, MAX_TRACKED_MISSING), 0, -1):
            self._missing[(seq - gap) & 0xFFFF] = arrival
        while len(self._missing) > MAX_TRACKED_MISSING:
            del self._missing[next(iter(self._missing))]
        # (not while audio first has the video paused or probing: the resends would load the
        # weak uplink, and the video they would repair is being given up)
        if self.codec.nack and self.media_ssrc is not None and self.probe_bps is None:
            nack = RtcpRtpfbPacket(
                fmt=RTCP_RTPFB_NACK, ssrc=self._rtcp_ssrc, media_ssrc=self.media_ssrc
            )
            nack.lost = sorted(self._missing)
            self.stats.nacks += len(nack.lost)
            self._send_rtcp([nack])

    def _estimate(
        self, data: bytes, ext_start: int, ext_end: int, arrival: float, size: int
    ) -> None:
        value = find_extension(data, ext_start, ext_end, self._abs_send_time_id)
        if value is None or len(value) != 3 or self._estimator is None:
            return
        update = self._estimator.add(
            abs_send_time=int.from_bytes(value, "big"),
            arrival_time_ms=int(arrival * 1000),
            payload_size=size,
            ssrc=self.media_ssrc or 0,
        )
        if update is not None:
            self.stats.estimate_bps = update[0]
            self.update_bandwidth()

    def restart_estimate(self) -> None:
        """Start the uplink estimate afresh (audio first's probe, relay/adaptation.py): the old
        estimator's rate control would climb from the value it had when the video paused."""
        if self._estimator is not None:
            self._estimator = RemoteBitrateEstimator()
        self._frame_bytes = 0
        self.stats.estimate_bps = None

    # -- forwarders ---------------------------------------------------------------------------

    @property
    def forwarders(self) -> tuple[TrackSender, ...]:
        """The forwarders this producer feeds, in attach order."""
        return tuple(self._forwarders)

    def add_forwarder(self, forwarder: TrackSender) -> None:
        if forwarder not in self._forwarders:
            self._forwarders.append(forwarder)

    def remove_forwarder(self, forwarder: TrackSender) -> None:
        """Stop feeding `forwarder`, and recompute REMB without its subscriber's estimate."""
        if forwarder in self._forwarders:
            self._forwarders.remove(forwarder)
            self.update_bandwidth()

    # -- feedback to the publisher ------------------------------------------------------------

    def request_keyframe(self, *, now_ready: bool = False) -> None:
        """Ask the publisher for a keyframe, at most once per keyframe interval; `now_ready`:
        a subscriber whose connection just became ready asks at once (the keyframe asked for
        when it subscribed went by while its DTLS was not done: waiting out the interval would
        cost it half a second of black picture). Once per subscriber start: no storm."""
        if not self._is_video or self.media_ssrc is None or self.closed:
            return
        now = self._clock()
        if not now_ready and now - self._last_keyframe_request < self._keyframe_interval:
            return
        self._last_keyframe_request = now
        self.stats.keyframe_requests += 1
        self._send_rtcp(
            [RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self._rtcp_ssrc, media_ssrc=self.media_ssrc)]
        )

    def update_bandwidth(self, force: bool = False) -> None:
        """Send REMB = min(every subscriber's estimate, the relay's own uplink estimate)."""
        if not self._is_video or self.media_ssrc is None or not self.codec.remb:
            return
        candidates = [bps for f in self._forwarders if (bps := f.remb_bps)]
        if self.probe_bps is not None:
            # Audio first's uplink paused or on probation (relay/adaptation.py): the probe's
            # rate, ramped by the participant. The relay's own estimate is stale or still
            # ramping, and the subscribers' would keep the probe from showing the link again.
            candidates = [self.probe_bps]
        elif self.stats.estimate_bps:
            candidates.append(self.stats.estimate_bps)
        if not candidates:
            return
        target = max(min(candidates), REMB_FLOOR_BPS)
        previous = self._remb_sent
        now = self._clock()
        changed = previous is None or abs(target - previous) > previous * REMB_CHANGE_THRESHOLD
        if not (changed or force):
            return
        self._remb_sent, self._remb_sent_at = target, now
        self.stats.remb_bps = target
        remb = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=self._rtcp_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(target, [self.media_ssrc]),
        )
        self._send_rtcp([remb])

    def on_sender_report(self, report: RtcpSrPacket, now: float) -> None:
        ntp = report.sender_info.ntp_timestamp
        self._sr_ntp_middle = (ntp >> 16) & 0xFFFFFFFF
        self._sr_received_at = now
        self._sr_rtp_timestamp = report.sender_info.rtp_timestamp
        self._sr_wall_time = self._wall_clock()

    def source_rtp_time(self, wall: float) -> int | None:
        """The publisher's RTP clock at wall-clock time `wall` (seconds since 1970), as its last
        sender report maps it; None before the first sender report. Not wrapped to 32 bits."""
        if self._sr_rtp_timestamp is None:
            return None
        return self._sr_rtp_timestamp + int((wall - self._sr_wall_time) * self._clock_rate)

    def receiver_report(self, now: float) -> RtcpReceiverInfo | None:
        """This track's block for the periodic RTCP receiver report to the publisher."""
        if self.media_ssrc is None or self._max_seq < 0:
            return None
        self._forget_old_missing(now)
        extended_max = self._cycles + self._max_seq
        expected = extended_max - self._base_seq + 1
        lost = max(expected - self._received, 0)
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior, self._received_prior = expected, self._received
        lost_interval = expected_interval - received_interval
        fraction = (lost_interval << 8) // expected_interval if expected_interval > 0 else 0
        fraction = min(max(fraction, 0), 255)
        self.stats.packets_lost = lost
        # the worse of this interval and the one before: a subscriber's report interval spans
        # parts of both (audio first takes this out of what the subscriber reports lost)
        self.recent_loss = max(fraction / 256, self.stats.fraction_lost)
        self.stats.fraction_lost = fraction / 256
        self.stats.jitter_seconds = self._jitter / self._clock_rate
        dlsr = int((now - self._sr_received_at) * 65536) if self._sr_ntp_middle else 0
        return RtcpReceiverInfo(
            ssrc=self.media_ssrc,
            fraction_lost=fraction,
            packets_lost=min(lost, 0x7FFFFF),
            highest_sequence=extended_max & 0xFFFFFFFF,
            jitter=int(self._jitter),
            lsr=self._sr_ntp_middle,
            dlsr=dlsr,
        )

    def _forget_old_missing(self, now: float) -> None:
        stale = [seq for seq, at in self._missing.items() if now - at > MISSING_GIVE_UP_SECONDS]
        for seq in stale:
            del self._missing[seq]

    def close(self) -> None:
        self.closed = True
        for forwarder in list(self._forwarders):
            forwarder.detach()
