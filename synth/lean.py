"""Lean load clients: many participants per process, at a fraction of aiortc's per-packet cost.

A lean participant connects like every other one: the real REST + WebSocket signaling (or
Janus'), aiortc's ICE and DTLS, SDP offer and answer. Its connections' media path is then taken
over below aiortc, the way the relay takes its own over (relay/_aiortc/transport.py):

* **sending** (:class:`LeanPublisher`, :class:`Replayer`): aiortc's senders get idle tracks (they
  only own the SSRCs and the SDP); one replayer per process sends a pre-packetized clip
  (:class:`LeanClip`: VP8 or H.264 and Opus) for every lean publisher. One wake-up every
  :data:`TICK` sends the frames then due across all publishers, each packet's header written from
  the negotiated parameters (payload type, SSRC, sequence, timestamp, mid and abs-send-time),
  SRTP-protected and sent. It answers PLI/FIR by jumping to the clip's next keyframe, as an
  encoder would, NACK with RTX from a short history, and sends a sender report a second;
* **receiving** (:class:`LeanReceiver`): RTP is counted from its clear-text header into a
  :class:`~synth.measure.StreamCounter` (packets, bytes, sequence gaps, frames) without being
  decrypted. A stream's packets are decrypted until its first keyframe (join → first frame),
  every RTX packet (the original sequence number it repairs), and one in :data:`SAMPLE_EVERY`
  after that; every decrypted payload is checked against the clip's (:attr:`LeanClip.fingerprints`),
  so a run shows the media arrived intact and decryptable. A gap in a video stream is asked for
  once (NACK), as a browser would; receiver reports go out about once a second (the relay's
  liveness and audio first read them). No REMB: the relay's own estimate of its uplink stands.

Audio first's ``video-paused`` is not followed by lean publishers: they stand for load, not for a
weak participant.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import heapq
import itertools
import random
import struct
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc.clock import current_ntp_time
from aiortc.rtp import (
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
)

from relay._aiortc import MediaTransport, SampledTransport, dtls_transport_of
from relay.negotiation import ABS_SEND_TIME_URI, MID_URI, MediaSection, parse_sections
from relay.rtp import FIXED_HEADER, abs_send_time_now, extension_template, payload_bounds
from synth.clip import start_positions
from synth.measure import StreamCounter

TICK = 0.001  # the replayer's wake-up period: frames due within it go out together
MAX_LAG = 0.5  # a replayer this far behind (a saturated machine) skips frames, as an encoder does
SAMPLE_EVERY = 32  # after its first keyframe, a stream's packets decrypted: one in this many
HISTORY = 512  # video packets kept per stream for NACK (a power of two)
KEYFRAME_REQUESTS = (1, 4)  # payload-specific feedback: PLI, FIR
RTCP_RTPFB_NACK = 1
AUDIO_PTIME = 0.02
MAX_NACK = 64  # packets asked for at one gap (a longer hole: a keyframe is the better repair)
DEFAULT_TAG = 10  # SRTP_AES128_CM_HMAC_SHA1_80; learned from the first decrypted packet
_SEQ_TS_SSRC = struct.Struct("!HII")


# -- the clip --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeanClip:
    """Pre-packetized media: video frames as RTP payloads (with their keyframe flag), Opus
    packets, and a fingerprint of every payload."""

    codec: str
    fps: int
    video: tuple[tuple[tuple[bytes, ...], bool], ...]
    audio: tuple[bytes, ...]
    fingerprints: frozenset[int]

    @classmethod
    def from_cheap(cls, cheap: dict[str, Any], fps: int, codec: str = "vp8") -> LeanClip:
        """From :func:`synth.load.prepare_cheap_media`'s media, packetized by aiortc's own
        payloaders (VP8 picture IDs or H.264 FU-A/STAP-A as a live sender would make them)."""
        import av
        from aiortc.codecs.h264 import H264Encoder
        from aiortc.codecs.vpx import Vp8Encoder

        packer = Vp8Encoder() if codec.lower() == "vp8" else H264Encoder()
        video = []
        for frame in cheap["video"]:
            packet = av.Packet(frame.data)
            packet.pts, packet.time_base = 0, fractions.Fraction(1, 90000)  # pack() reads them
            payloads, _ = packer.pack(packet)
            video.append((tuple(payloads), bool(frame.keyframe)))
        audio = tuple(cheap["audio"])
        if not video or not audio:
            raise ValueError("the clip needs video frames and audio packets")
        fingerprints = frozenset(
            hash(p) for p in itertools.chain(audio, *(payloads for payloads, _ in video))
        )
        return cls(codec.lower(), fps, tuple(video), audio, fingerprints)


# -- sending ---------------------------------------------------------------------------------------


class _OutStream:
    """One published stream: the clip's frames (or Opus packets) as RTP on one SSRC."""

    def __init__(
        self,
        transport: MediaTransport,
        section: MediaSection,
        ssrc: int,
        rtx_ssrc: int | None,
        frames: Sequence[tuple[tuple[bytes, ...], bool]],
        start: int,
        interval: float,
    ) -> None:
        codec = section.codec
        assert codec is not None
        self.transport = transport
        self.kind = section.kind
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.pt = codec.payload_type
        self.rtx_pt = codec.rtx_payload_type if rtx_ssrc is not None else None
        self.frames = frames
        self.keyframes = [i for i, (_, key) in enumerate(frames) if key] or [0]
        self.pos = start % len(frames)
        self.interval = interval
        self.step = round(interval * codec.clock_rate)
        self.seq = random.randrange(1 << 16)
        self.ts = random.randrange(1 << 32)
        self.rtx_seq = random.randrange(1 << 16)
        self.history: list[tuple[int, int, bytes] | None] = [None] * HISTORY
        self.keyframe_wanted = False
        self.closed = False
        self.packets = self.octets = 0
        self.keyframes_forced = self.resent = self.skipped = 0
        self.next_report = 0.0
        mid_id = section.extensions.get(MID_URI, 0)
        ast_id = section.extensions.get(ABS_SEND_TIME_URI, 0)
        # abs-send-time's value is written per frame between the two parts
        self._ast = bool(ast_id)
        self._ext_head, self._ext_tail = extension_template(
            [(mid_id, section.mid.encode())] if mid_id else [], ast_id
        )

    def send_frame(self, now: float) -> None:
        """Send the next frame; every packet of it, back to back (as a browser's pacer would not,
        but the relay sees the same burst a frame of a live encoder gives)."""
        if not self.transport.ready:
            return
        if self.keyframe_wanted and not self.frames[self.pos][1]:
            self.pos = next((k for k in self.keyframes if k > self.pos), self.keyframes[0])
            self.keyframes_forced += 1
        self.keyframe_wanted = False
        payloads, _ = self.frames[self.pos]
        ext = self._ext_head
        if self._ast:
            ext += abs_send_time_now() + self._ext_tail
        first = 0x90 if ext else 0x80
        last = len(payloads) - 1
        send_rtp, pack, ts, ssrc = self.transport.send_rtp, FIXED_HEADER.pack, self.ts, self.ssrc
        video = self.kind == "video"
        for i, payload in enumerate(payloads):
            seq = self.seq
            marker = 0x80 if i == last and video else 0
            send_rtp(pack(first, marker | self.pt, seq, ts, ssrc) + ext + payload)
            if video:
                self.history[seq & (HISTORY - 1)] = (seq, marker, payload)
            self.seq = (seq + 1) & 0xFFFF
            self.octets += len(payload)
        self.packets += len(payloads)
        if now >= self.next_report:
            self.next_report = now + 0.8 + 0.4 * random.random()
            self._send_sender_report()
        self.ts = (ts + self.step) & 0xFFFFFFFF
        self.pos = (self.pos + 1) % len(self.frames)

    def _send_sender_report(self) -> None:
        info = RtcpSenderInfo(
            ntp_timestamp=current_ntp_time(),
            rtp_timestamp=self.ts,  # the frame being sent is captured now
            packet_count=self.packets & 0xFFFFFFFF,
            octet_count=self.octets & 0xFFFFFFFF,
        )
        self.transport.send_rtcp(bytes(RtcpSrPacket(ssrc=self.ssrc, sender_info=info)))

    def resend(self, lost: Sequence[int]) -> None:
        """RTX for the packets a NACK lists, those still in the history."""
        if self.rtx_pt is None or self.rtx_ssrc is None:
            return
        for seq in lost:
            kept = self.history[seq & (HISTORY - 1)]
            if kept is None or kept[0] != seq:
                continue
            _, marker, payload = kept
            header = FIXED_HEADER.pack(
                0x80, marker | self.rtx_pt, self.rtx_seq, self.ts, self.rtx_ssrc
            )
            self.transport.send_rtp(header + seq.to_bytes(2, "big") + payload)
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            self.resent += 1


class Replayer:
    """Sends every lean publisher's frames of this process: one wake-up per :data:`TICK` serves
    all the frames then due (a heap of (due time, stream)), so the cost per frame is a header
    and an SRTP call, not an event-loop iteration."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, _OutStream]] = []
        self._order = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self.wakeups = 0
        self.frames = 0

    def add(self, stream: _OutStream) -> None:
        # a random phase: publishers' frames do not line up (as browsers' would not)
        due = self._clock() + random.random() * stream.interval
        heapq.heappush(self._heap, (due, next(self._order), stream))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        heap, clock = self._heap, self._clock
        while heap:
            now = clock()
            self.wakeups += 1
            while heap and heap[0][0] <= now:
                due, order, stream = heapq.heappop(heap)
                if stream.closed:
                    continue
                stream.send_frame(now)
                self.frames += 1
                due += stream.interval
                if due < now - MAX_LAG:
                    stream.skipped += int((now - due) / stream.interval)
                    due = now + stream.interval
                heapq.heappush(heap, (due, order, stream))
            if heap:
                await asyncio.sleep(max(heap[0][0] - clock(), TICK))


_replayers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Replayer] = (
    weakref.WeakKeyDictionary()
)


def replayer() -> Replayer:
    """This event loop's replayer."""
    loop = asyncio.get_running_loop()
    found = _replayers.get(loop)
    if found is None:
        found = _replayers[loop] = Replayer()
    return found


class LeanPublisher:
    """Takes a negotiated publisher connection's media over and replays the clip on it.

    The connection must have been offered by this side with idle tracks (``IdleTrack``): its
    local description names the SSRCs, its remote description (the answer) the payload types and
    header extension ids.
    """

    def __init__(self, pc: Any, clip: LeanClip, source_id: int, replay: Replayer | None = None):
        dtls = dtls_transport_of(pc)
        if dtls is None or pc.localDescription is None or pc.remoteDescription is None:
            raise ValueError("a lean publisher needs a negotiated connection")
        self.transport = MediaTransport(dtls)
        self.transport.on_rtcp = self._on_rtcp
        offered = {s.mid: s for s in parse_sections(pc.localDescription.sdp)}
        video_start, audio_start = start_positions(
            [key for _, key in clip.video], len(clip.audio), source_id
        )
        self.streams: dict[int, _OutStream] = {}
        for section in parse_sections(pc.remoteDescription.sdp):
            mine = offered.get(section.mid)
            if section.codec is None or mine is None or not mine.ssrcs:
                continue
            ssrc = mine.ssrcs[0]
            rtx = next((r for r, media in mine.rtx_ssrcs.items() if media == ssrc), None)
            if section.kind == "video":
                frames: Sequence[tuple[tuple[bytes, ...], bool]] = clip.video
                start, interval = video_start, 1 / clip.fps
            else:
                frames = tuple(((p,), False) for p in clip.audio)
                start, interval = audio_start, AUDIO_PTIME
            self.streams[ssrc] = _OutStream(
                self.transport, section, ssrc, rtx, frames, start, interval
            )
        self._replayer = replay or replayer()
        for stream in self.streams.values():
            self._replayer.add(stream)

    def _on_rtcp(self, data: bytes) -> None:
        with contextlib.suppress(ValueError):  # a compound packet aiortc cannot parse: ignored
            for packet in RtcpPacket.parse(data):
                if isinstance(packet, RtcpPsfbPacket) and packet.fmt in KEYFRAME_REQUESTS:
                    stream = self.streams.get(packet.media_ssrc)
                    if stream is not None and stream.kind == "video":
                        stream.keyframe_wanted = True
                elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                    stream = self.streams.get(packet.media_ssrc)
                    if stream is not None:
                        stream.resend(packet.lost)

    def stats(self) -> dict[str, int]:
        out = {"packets": 0, "keyframes_forced": 0, "resent": 0, "skipped": 0}
        for s in self.streams.values():
            out["packets"] += s.packets
            out["keyframes_forced"] += s.keyframes_forced
            out["resent"] += s.resent
            out["skipped"] += s.skipped
        return out

    def close(self) -> None:
        for stream in self.streams.values():
            stream.closed = True
        self.transport.detach()


# -- receiving -------------------------------------------------------------------------------------

CounterLookup = Callable[[str, str], StreamCounter | None]  # (mid, kind) → the counter, if any


class _Route:
    __slots__ = ("counter", "nack", "packets", "rtx", "ssrc")

    def __init__(self, ssrc: int, counter: StreamCounter, rtx: bool, nack: bool) -> None:
        self.ssrc = ssrc
        self.counter = counter
        self.rtx = rtx
        self.nack = nack  # a video stream whose codec was negotiated with NACK
        self.packets = 0


class LeanReceiver:
    """Counts a subscriber connection's RTP at the socket, decrypting only a sample
    (module docstring); sends its receiver reports."""

    def __init__(self, pc: Any, counter_for: CounterLookup, fingerprints: frozenset[int]) -> None:
        dtls = dtls_transport_of(pc)
        if dtls is None:
            raise ValueError("a lean receiver needs a connection with transceivers")
        self._pc = pc
        self._counter_for = counter_for
        self._fingerprints = fingerprints
        self._routes: dict[int, _Route | None] = {}
        self._learned_at = -1.0
        self._to_wall = time.time() - time.monotonic()  # StreamCounter counts wall-clock seconds
        self._tag = DEFAULT_TAG
        self.decrypted = self.matched = self.mismatched = self.undecryptable = self.nacked = 0
        self._own_ssrc = random.randrange(1, 1 << 32)
        self.transport = SampledTransport(dtls)
        self.transport.on_srtp = self._on_srtp
        self._reports = asyncio.ensure_future(self._send_receiver_reports())

    def _on_srtp(self, data: bytes, arrival: float) -> None:
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
        route = self._routes.get(ssrc)
        if route is None:
            route = self._learn(ssrc, arrival)
            if route is None:
                return
        route.packets += 1
        counter = route.counter
        lost = counter.lost
        self._count(route, data, seq, ts, ssrc, arrival + self._to_wall)
        if counter.lost > lost and route.nack:
            self._nack(route, counter.highest_sequence or 0, counter.lost - lost)

    def _count(self, route: _Route, data: bytes, seq: int, ts: int, ssrc: int, wall: float) -> None:
        counter = route.counter
        pt = data[1] & 0x7F
        if not (
            route.rtx
            or route.packets % SAMPLE_EVERY == 0
            or (counter.kind == "video" and counter.first_keyframe_at is None)
        ):
            bounds = payload_bounds(data)
            size = len(data) - self._tag - (bounds[0] if bounds else 12)
            counter.on_packet(pt, ssrc, seq, ts, b"", wall, size=max(size, 0))
            return
        plain = self.transport.unprotect(data)
        if plain is None:
            self.undecryptable += 1
            return
        self._tag = len(data) - len(plain)
        bounds = payload_bounds(plain)
        if bounds is None:
            return
        payload = plain[bounds[0] : bounds[1]]
        self.decrypted += 1
        if hash(payload[2:] if route.rtx else payload) in self._fingerprints:
            self.matched += 1
        else:
            self.mismatched += 1
        counter.on_packet(pt, ssrc, seq, ts, payload, wall)

    def _nack(self, route: _Route, highest: int, missing: int) -> None:
        """Ask for the packets just found missing below `highest`, as a browser would (once;
        the relay answers from its history)."""
        lost = [(highest - i) & 0xFFFF for i in range(min(missing, MAX_NACK), 0, -1)]
        packet = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=self._own_ssrc, media_ssrc=route.ssrc)
        packet.lost = lost
        self.transport.send_rtcp(bytes(packet))
        self.nacked += len(lost)

    def _learn(self, ssrc: int, now: float) -> _Route | None:
        """Map SSRCs to counters from the remote description (again at most twice a second: an
        unknown SSRC before its renegotiation, or one nobody counts)."""
        if ssrc in self._routes and now - self._learned_at < 0.5:
            return None
        self._learned_at = now
        description = self._pc.remoteDescription
        if description is not None:
            for section in parse_sections(description.sdp):
                counter = self._counter_for(section.mid, section.kind)
                codec = section.codec
                if counter is None or codec is None:
                    continue
                names = {codec.payload_type: codec.name}
                if codec.rtx_payload_type is not None:
                    names[codec.rtx_payload_type] = "rtx"
                counter.codec_of = names.get
                nack = section.kind == "video" and codec.nack
                for media in section.ssrcs:
                    self._routes[media] = _Route(media, counter, rtx=False, nack=nack)
                for rtx in section.rtx_ssrcs:
                    self._routes[rtx] = _Route(rtx, counter, rtx=True, nack=False)
        route = self._routes.get(ssrc)
        if route is None:
            self._routes[ssrc] = None
        return route

    async def _send_receiver_reports(self) -> None:
        """About once a second, as a browser: fraction lost since the last report, cumulative
        loss, highest sequence number (the relay's liveness and audio first read them)."""
        last: dict[int, tuple[int, int]] = {}
        while True:
            await asyncio.sleep(0.5 + random.random())
            reports = []
            for route in list(self._routes.values()):
                if route is None or route.rtx or route.counter.highest_sequence is None:
                    continue
                counter = route.counter
                packets, lost = counter.media_packets, max(counter.lost, 0)
                before = last.get(route.ssrc, (0, 0))
                last[route.ssrc] = (packets, lost)
                expected = packets - before[0] + lost - before[1]
                fraction = (lost - before[1]) * 256 // expected if expected > 0 else 0
                reports.append(
                    RtcpReceiverInfo(
                        ssrc=route.ssrc,
                        fraction_lost=min(max(fraction, 0), 255),
                        packets_lost=lost,
                        highest_sequence=(counter.highest_sequence or 0) & 0xFFFFFFFF,
                        jitter=0,
                        lsr=0,
                        dlsr=0,
                    )
                )
            if reports:
                report = RtcpRrPacket(ssrc=self._own_ssrc, reports=reports)
                self.transport.send_rtcp(bytes(report))

    def stats(self) -> dict[str, int]:
        return {
            "decrypted": self.decrypted,
            "matched": self.matched,
            "mismatched": self.mismatched,
            "undecryptable": self.undecryptable,
            "nacked": self.nacked,
        }

    def close(self) -> None:
        self._reports.cancel()
        self.transport.on_srtp = None
        self.transport.detach()
