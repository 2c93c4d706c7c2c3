"""A participant's two peer connections with the relay and the tracks on them.

publisher connection: the client offers its camera and microphone; each received track becomes a
`Producer`. subscriber connection: the relay offers one send-only transceiver (a `Forwarder`) per
track of the other participants. Each connection has one fixed offerer, so offers never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioice.ice import get_host_addresses
from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)

from relay import _aiortc
from relay._aiortc import IdleTrack, MediaTransport
from relay.adaptation import Direction, GateReason, GateState, Transition, VideoGate
from relay.candidates import Candidate, CandidateError, Ignored, IpAddress, parse_candidate
from relay.forwarder import Forwarder, SendParameters
from relay.negotiation import (
    ABS_SEND_TIME_URI,
    MID_URI,
    MediaSection,
    NegotiationError,
    check_renegotiation,
    check_supported,
    parse_sections,
)
from relay.probe import PaddingProbe, ramped_rate
from relay.producer import REMB_FLOOR_BPS, Producer
from relay.reasons import LeaveReason
from relay.rtp import find_extension, payload_bounds
from relay.settings import RelaySettings
from relay.stats import ConnectionFailure, RelayStats

logger = logging.getLogger(__name__)

# Media-path exceptions logged with a traceback per relay; after that they are only counted
# (RelayStats.media_path_errors), so a bug hit by every packet cannot flood the log.
LOGGED_MEDIA_PATH_ERRORS = 5
# A receiver report this recent says something about the link now (they come every ~1 s; a
# stream paused or a browser's 5 s audio interval leaves older ones standing).
FRESH_REPORT = 2.5
# Audio first: an uplink probe that makes the relay lose this much more of the voice than it
# did while the video was paused ends (`Participant._uplink_voice_cost`).
PROBE_VOICE_COST = 0.05
# A publisher's uplink losing this much: what its subscribers report lost is no verdict on
# their own links (`Participant._fresh_loss`).
LOSSY_UPSTREAM = 0.05


@dataclass(frozen=True)
class ParticipantInfo:
    socket_id: str  # this connection; what the others and the metrics call the participant
    user_id: str
    user_name: str
    role: str


@dataclass(frozen=True)
class TrackInfo:
    mid: str
    kind: str
    socket_id: str | None  # whose media arrives on this transceiver; None while it is idle
    user_id: str | None


class ParticipantOwner(Protocol):
    """What a participant needs from the room it is in (`relay.room.Room` implements it)."""

    def drop(self, participant: Participant, reason: LeaveReason) -> None:
        """Remove the participant from a callback that cannot wait (its connection failed)."""
        ...

    def producers_added(self, participant: Participant, producers: list[Producer]) -> None:
        """The participant published new tracks: forward them to the others."""
        ...

    def participant_info(self, socket_id: str) -> ParticipantInfo | None:
        """Who the participant with this connection id is, while they are in the room."""
        ...

    def video_changed(
        self, participant: Participant, direction: Direction, paused: bool, reason: GateReason
    ) -> None:
        """Audio first paused or resumed a video of the participant: tell everyone in the room."""
        ...


class ParticipantListener(Protocol):
    """What the relay tells the participant's signaling connection. Calls must not block."""

    def user_joined(self, other: Participant) -> None: ...
    def user_left(self, other: Participant, reason: LeaveReason) -> None: ...
    def user_reconnecting(self, other: Participant) -> None: ...
    def media_state_changed(self, other: Participant) -> None: ...
    def subscriber_offer(self, sdp: str, tracks: list[TrackInfo]) -> None: ...
    def tracks_changed(self, tracks: list[TrackInfo]) -> None: ...
    def closed_by_relay(self, reason: LeaveReason) -> None: ...
    def negotiation_failed(self, message: str) -> None: ...
    def video_changed(
        self, subject: Participant, direction: Direction, paused: bool, reason: GateReason
    ) -> None: ...


@dataclass
class Slot:
    transceiver: RTCRtpTransceiver
    forwarder: Forwarder
    started: bool = False
    last_user_id: str | None = None  # a reloading user gets their old slot back


@dataclass
class MediaState:
    audio: bool = True
    video: bool = True
    screen: bool = False


@dataclass
class _PublisherRouting:
    by_ssrc: dict[int, Producer] = field(default_factory=dict)
    announced: dict[int, Producer] = field(default_factory=dict)  # SSRCs named in the offer
    mid_ext_id: int = 0


class Participant:
    def __init__(
        self,
        info: ParticipantInfo,
        listener: ParticipantListener,
        *,
        settings: RelaySettings,
        stats: RelayStats,
        clock: Callable[[], float],
        owner: ParticipantOwner,
    ) -> None:
        self.info = info
        self.listener = listener
        self.media = MediaState()
        self.joined_at = clock()
        self.joined_at_wall = time.time()
        self.first_media_at: float | None = None
        self.producers: dict[str, Producer] = {}
        self.slots: list[Slot] = []
        self.closed = False
        # The socket id of the held seat this participant took back (a reconnect), if any.
        self.rejoined_from: str | None = None
        self._settings = settings
        self._stats = stats
        self._clock = clock
        self._owner = owner
        self._publisher_pc: RTCPeerConnection | None = None
        self._subscriber_pc: RTCPeerConnection | None = None
        self._publisher_transport: MediaTransport | None = None
        self._subscriber_transport: MediaTransport | None = None
        self._routing = _PublisherRouting()
        self._offered: list[MediaSection] = []  # the sections of the last answered offer
        self._forwarders_by_ssrc: dict[int, Forwarder] = {}
        self._forwarders_by_rtx_ssrc: dict[int, Forwarder] = {}  # REMB of a probe, its reports
        self._publisher_lock = asyncio.Lock()
        self._pending_subscriptions: list[Producer] = []
        self._awaiting_answer = False
        self._negotiation: asyncio.Task[None] | None = None
        # Re-sends the subscriber offer while it is unanswered; answers still due to copies.
        self._offer_watch: asyncio.Task[None] | None = None
        self._spare_answers = 0
        self._told_tracks: list[TrackInfo] | None = None  # the track map the client last got
        # Remote candidates (trickled or in an SDP) per connection, as (transport, host, port).
        self._remote_candidates: dict[str, set[tuple[str, str, int]]] = {
            "publisher": set(),
            "subscriber": set(),
        }
        self.candidates_ignored: dict[Ignored, int] = dict.fromkeys(Ignored, 0)
        self._host_addresses: tuple[str, ...] | None = None
        # Audio first (relay/adaptation.py): this participant's downlink and uplink for video.
        self.downlink_gate = VideoGate(settings.video_gate, clock)
        self.uplink_gate = VideoGate(settings.video_gate, clock)
        self._video_sent = 0  # video bytes forwarded to this participant, at the last tick
        self._video_sent_at = clock()
        self._video_received = 0  # video bytes received from this participant, at the last tick
        self._video_received_at = clock()
        self._probe: PaddingProbe | None = None  # the downlink's probe while one runs
        self._probe_began = 0.0
        self._probe_counted = 0  # its bytes sent, and when, at the last tick
        self._probe_counted_at = 0.0
        self._uplink_probe_began = 0.0  # when the uplink's probe (its REMB ramp) began
        self._paused_voice_loss = (0.0, 0)  # the voice's loss while paused: (sum, reports)

    @property
    def socket_id(self) -> str:
        return self.info.socket_id

    def media_progress(self) -> tuple[int, float]:
        """Counters that move while this participant's media arrives: the packets it publishes,
        and when its subscriber connection's last receiver report came. Signaling's keep-alive
        reads them twice a second (a weak link whose socket stalls is alive while they move);
        nothing is added per packet."""
        packets = sum(p.stats.packets for p in self.producers.values())
        reported = max((s.forwarder.reported_at or 0.0 for s in self.slots), default=0.0)
        return packets, reported

    # -- publisher connection -----------------------------------------------------------------

    async def handle_publisher_offer(self, sdp: str) -> str:
        """Apply the client's offer for its own media; return the relay's answer."""
        offered = parse_sections(sdp)
        if not offered:
            raise NegotiationError("the offer has no audio or video section")
        async with self._publisher_lock:
            if self.closed:
                raise NegotiationError("the participant has left")
            pc = self._publisher_pc or self._new_connection("publisher")
            self._publisher_pc = pc
            check_renegotiation(self._offered, offered)
            sdp = self._screen_candidates(pc, "publisher", sdp)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:
                raise NegotiationError(f"the offer was refused: {exc}") from exc
            for transceiver in pc.getTransceivers():
                _aiortc.keep_decoder_stopped(transceiver.receiver)
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except ValueError as exc:  # an offer aiortc accepted but cannot answer
                raise NegotiationError(f"the offer cannot be answered: {exc}") from exc
            answer = pc.localDescription.sdp
            self._offered = offered
            new_producers = self._add_producers(pc, offered, parse_sections(answer))
        if new_producers:
            self._owner.producers_added(self, new_producers)
        return answer

    def _add_producers(
        self, pc: RTCPeerConnection, offered: list[MediaSection], answered: list[MediaSection]
    ) -> list[Producer]:
        transport = self._publisher_transport
        if transport is None:
            dtls = _aiortc.dtls_transport_of(pc)
            if dtls is None:
                return []
            transport = self._publisher_transport = MediaTransport(
                dtls, self._media_path_failed, batched=self._settings.batched_receive
            )
            transport.on_rtp = self._route_publisher_rtp
            transport.on_rtcp = self._on_publisher_rtcp
        by_mid = {t.mid: t for t in pc.getTransceivers()}
        offers = {s.mid: s for s in offered}
        added: list[Producer] = []
        for section in answered:
            transceiver = by_mid.get(section.mid)
            offer = offers.get(section.mid)
            if section.direction != "recvonly" or section.codec is None or transceiver is None:
                continue
            if offer is None or section.mid in self.producers:
                continue
            check_supported(section)
            producer = Producer(
                owner=self.socket_id,
                mid=section.mid,
                kind=section.kind,
                codec=section.codec,
                rtcp_ssrc=_aiortc.sender_ssrcs(transceiver.sender)[0],
                send_rtcp=self._send_publisher_rtcp,
                abs_send_time_id=section.extensions.get(ABS_SEND_TIME_URI, 0),
                forwarding_delay=self._stats.forwarding_delay,
                keyframe_interval=self._settings.keyframe_interval,
                clock=self._clock,
            )
            self.producers[section.mid] = producer
            for ssrc in (*offer.ssrcs, *offer.rtx_ssrcs):
                self._routing.announced[ssrc] = producer
            self._routing.mid_ext_id = section.extensions.get(MID_URI, 0)
            added.append(producer)
        return added

    def _route_publisher_rtp(self, data: bytes, arrival: float) -> None:
        if len(data) < 12:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        producer = self._routing.by_ssrc.get(ssrc)
        if producer is None:
            producer = self._identify_producer(data, ssrc)
            if producer is None:
                return
            self._routing.by_ssrc[ssrc] = producer
        producer.on_rtp(data, arrival)

    def _identify_producer(self, data: bytes, ssrc: int) -> Producer | None:
        """The producer of a stream not seen before: by SDP SSRC, then MID extension, then PT."""
        producer = self._routing.announced.get(ssrc)
        if producer is not None:
            return producer
        bounds = payload_bounds(data)
        if bounds is not None and self._routing.mid_ext_id:
            mid = find_extension(data, bounds[2], bounds[3], self._routing.mid_ext_id)
            if mid is not None and mid.decode(errors="replace") in self.producers:
                return self.producers[mid.decode()]
        payload_type = data[1] & 0x7F
        matches = [
            p
            for p in self.producers.values()
            if payload_type in (p.codec.payload_type, p.codec.rtx_payload_type)
        ]
        return matches[0] if len(matches) == 1 else None

    def _on_publisher_rtcp(self, data: bytes) -> None:
        now = self._clock()
        for packet in _parse_rtcp(data):
            if isinstance(packet, RtcpSrPacket):
                producer = self._routing.by_ssrc.get(packet.ssrc)
                if producer is not None:
                    producer.on_sender_report(packet, now)

    def _send_publisher_rtcp(self, packets: list[AnyRtcpPacket]) -> None:
        if self._publisher_transport is not None:
            self._publisher_transport.send_rtcp(b"".join(bytes(p) for p in packets))

    # -- subscriber connection ----------------------------------------------------------------

    def subscribe(self, producer: Producer, owner: ParticipantInfo) -> None:
        """Forward `producer` to this participant: on an idle slot if one fits, else a new one."""
        if self.closed:
            return
        slot = self._idle_slot_for(producer, owner.user_id)
        if slot is None:
            self._pending_subscriptions.append(producer)
            self._schedule_negotiation()
            return
        slot.forwarder.attach(producer)
        slot.last_user_id = owner.user_id
        self._tell_tracks()

    def _idle_slot_for(self, producer: Producer, user_id: str) -> Slot | None:
        fitting = [
            s
            for s in self.slots
            if s.started
            and s.forwarder.idle
            and s.forwarder.kind == producer.kind
            and s.forwarder.codec.same_stream_format(producer.codec)
        ]
        fitting.sort(key=lambda s: s.last_user_id != user_id)
        return fitting[0] if fitting else None

    def unsubscribe(self, producer: Producer) -> None:
        changed = False
        for slot in self.slots:
            if slot.forwarder.producer is producer:
                slot.forwarder.detach()
                changed = True
        if producer in self._pending_subscriptions:
            self._pending_subscriptions.remove(producer)
        if changed and not self.closed:
            self._tell_tracks()

    def _tell_tracks(self) -> None:
        """Send the track map if it changed since the client last got it (a leaving
        publisher's tracks are detached one by one, but its owner is gone from the first)."""
        tracks = self.track_map()
        if tracks != self._told_tracks:
            self._told_tracks = tracks
            self.listener.tracks_changed(tracks)

    def track_map(self) -> list[TrackInfo]:
        tracks = []
        for slot in self.slots:
            mid = slot.transceiver.mid
            if mid is None:
                continue
            producer = slot.forwarder.producer
            owner = self._owner.participant_info(producer.owner) if producer else None
            tracks.append(
                TrackInfo(
                    mid=mid,
                    kind=slot.forwarder.kind,
                    socket_id=owner.socket_id if owner else None,
                    user_id=owner.user_id if owner else None,
                )
            )
        return tracks

    def _schedule_negotiation(self) -> None:
        if self._negotiation is None or self._negotiation.done():
            self._negotiation = asyncio.create_task(self._negotiate())

    async def _negotiate(self) -> None:
        if self._awaiting_answer or self.closed:
            return  # the answer handler negotiates again for what is still pending
        pending = [p for p in self._pending_subscriptions if not p.closed]
        self._pending_subscriptions.clear()
        if not pending:
            return
        pc = self._subscriber_pc or self._new_connection("subscriber")
        self._subscriber_pc = pc
        for producer in pending:
            self._add_slot(pc, producer)
        self._awaiting_answer = True
        try:
            await pc.setLocalDescription(await pc.createOffer())
        except Exception as exc:
            logger.exception(
                "creating the subscriber offer for %s failed",
                self.socket_id,
                extra={"connection_id": self.socket_id},
            )
            self._awaiting_answer = False
            self.listener.negotiation_failed(f"the relay could not offer the others' media: {exc}")
            return
        if not self.closed:
            self._send_offer(pc.localDescription.sdp)
            if self._offer_watch is not None:
                self._offer_watch.cancel()
            self._spare_answers = 0
            self._offer_watch = asyncio.create_task(
                self._resend_unanswered(pc.localDescription.sdp)
            )

    def _send_offer(self, sdp: str) -> None:
        self._told_tracks = self.track_map()
        self.listener.subscriber_offer(sdp, self._told_tracks)

    async def _resend_unanswered(self, sdp: str) -> None:
        """Send an unanswered subscriber offer again (lost, or dropped by a client not ready
        for it), a few times; then tell the client the negotiation failed."""
        settings = self._settings
        for attempt in range(settings.offer_resends + 1):
            await asyncio.sleep(settings.offer_timeout)
            if not self._awaiting_answer or self.closed:
                return
            if attempt == settings.offer_resends:
                break
            logger.info(
                "%s did not answer its subscriber offer in %g s; sending it again",
                self.socket_id,
                settings.offer_timeout,
                extra={"connection_id": self.socket_id},
            )
            self._spare_answers += 1
            self._send_offer(sdp)
        self.listener.negotiation_failed(
            f"the subscriber offer was not answered (sent {settings.offer_resends + 1} times, "
            f"{settings.offer_timeout:g} s apart); join again"
        )

    def _add_slot(self, pc: RTCPeerConnection, producer: Producer) -> None:
        transceiver = pc.addTransceiver(IdleTrack(producer.kind), direction="sendonly")
        transceiver.setCodecPreferences(producer.codec.capabilities())
        ssrc, rtx_ssrc = _aiortc.sender_ssrcs(transceiver.sender)
        forwarder = Forwarder(
            kind=producer.kind,
            ssrc=ssrc,
            rtx_ssrc=rtx_ssrc,
            codec=producer.codec,
            clock=self._clock,
            wall_clock=time.time,
        )
        if self._settings.audio_first:
            forwarder.remb_floor = self._settings.video_gate.pause_below_bps
        owner = self._owner.participant_info(producer.owner)
        forwarder.attach(producer)
        self.slots.append(
            Slot(transceiver, forwarder, last_user_id=owner.user_id if owner else None)
        )
        self._forwarders_by_ssrc[ssrc] = forwarder
        if rtx_ssrc:
            self._forwarders_by_rtx_ssrc[rtx_ssrc] = forwarder

    async def handle_subscriber_answer(self, sdp: str) -> None:
        pc = self._subscriber_pc
        if pc is not None and not self._awaiting_answer and self._spare_answers > 0:
            self._spare_answers -= 1  # the answer to a copy of an offer already answered
            return
        if pc is None or not self._awaiting_answer:
            raise NegotiationError("there is no subscriber offer waiting for an answer")
        answered = {s.mid: s for s in parse_sections(sdp)}
        sdp = self._screen_candidates(pc, "subscriber", sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:
            raise NegotiationError(f"the answer was refused: {exc}") from exc
        finally:
            self._awaiting_answer = False
        self._start_slots(pc, answered)
        if self._pending_subscriptions:
            self._schedule_negotiation()

    def _start_slots(self, pc: RTCPeerConnection, answered: dict[str, MediaSection]) -> None:
        transport = self._subscriber_transport
        if transport is None:
            dtls = _aiortc.dtls_transport_of(pc)
            if dtls is None:
                return
            transport = self._subscriber_transport = MediaTransport(
                dtls, self._media_path_failed, batched=self._settings.batched_receive
            )
            transport.on_rtcp = self._on_subscriber_rtcp
        for slot in self.slots:
            mid = slot.transceiver.mid
            section = answered.get(mid) if mid is not None else None
            if slot.started or mid is None:
                continue
            if section is None or section.codec is None:
                slot.forwarder.detach()  # the client refused this track
                continue
            slot.forwarder.start(
                transport,
                SendParameters(
                    codec=section.codec,
                    mid=mid,
                    mid_id=section.extensions.get(MID_URI, 0),
                    abs_send_time_id=section.extensions.get(ABS_SEND_TIME_URI, 0),
                ),
            )
            slot.started = True

    def _on_subscriber_rtcp(self, data: bytes) -> None:
        by_ssrc = self._forwarders_by_ssrc
        for packet in _parse_rtcp(data):
            if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
                for report in packet.reports:
                    forwarder = by_ssrc.get(report.ssrc)
                    if forwarder is not None:
                        forwarder.on_receiver_report(report)
                    elif (forwarder := self._forwarders_by_rtx_ssrc.get(report.ssrc)) is not None:
                        forwarder.on_padding_report(report)
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                forwarder = by_ssrc.get(packet.media_ssrc)
                if forwarder is not None:
                    forwarder.on_nack(packet.lost)
            elif isinstance(packet, RtcpPsfbPacket):
                self._on_payload_feedback(packet)

    def _on_payload_feedback(self, packet: RtcpPsfbPacket) -> None:
        by_ssrc = self._forwarders_by_ssrc
        if packet.fmt == RTCP_PSFB_PLI:
            forwarder = by_ssrc.get(packet.media_ssrc)
            if forwarder is not None:
                forwarder.on_keyframe_request()
        elif packet.fmt == RTCP_PSFB_FIR and len(packet.fci) >= 4:
            forwarder = by_ssrc.get(int.from_bytes(packet.fci[:4], "big"))
            if forwarder is not None:
                forwarder.on_keyframe_request()
        elif packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            video = [by_ssrc[s] for s in ssrcs if s in by_ssrc and by_ssrc[s].kind == "video"]
            if not video:  # only the padding of a probe arrived (its RTX stream): the same link
                by_rtx = self._forwarders_by_rtx_ssrc
                video = list({id(f): f for s in ssrcs if (f := by_rtx.get(s))}.values())
            for forwarder in video:
                forwarder.on_remb(bitrate // len(video))

    # -- shared -------------------------------------------------------------------------------

    def _new_connection(self, role: str) -> RTCPeerConnection:
        pc = RTCPeerConnection(self._settings.rtc_configuration())
        _aiortc.restrict_gathering(pc, self._settings)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            # aiortc closes a connection itself when ICE consent lapses after connecting (its
            # DTLS transport ends, then the whole connection): that close is a failure, not a
            # state to wait out until the silence timeout. (A peer's own DTLS shutdown is not:
            # its socket or the silence timeout tells how it left.)
            failed = state == "failed" or (state == "closed" and _aiortc.consent_expired(pc))
            if failed and not self.closed:
                failure = (
                    ConnectionFailure.DTLS
                    if state == "failed" and pc.iceConnectionState != "failed"
                    else ConnectionFailure.ICE
                )
                self._stats.connection_failures[failure] += 1
                self._owner.drop(self, LeaveReason.ICE_FAILED)

        return pc

    async def add_ice_candidate(
        self, target: str, candidate: dict[str, Any] | None
    ) -> Ignored | None:
        """Add a trickled candidate; `CandidateError` if it is malformed or one too many.

        Returns why a well-formed candidate was dropped quietly, or None once it was added.
        """
        pc = self._publisher_pc if target == "publisher" else self._subscriber_pc
        if pc is None:
            raise NegotiationError(f"there is no {target} connection yet")
        if candidate is None or not candidate.get("candidate"):
            return None  # end of candidates: aiortc needs no marker
        parsed = parse_candidate(str(candidate["candidate"]))
        ignored = self._admit(pc, target, parsed)
        if ignored is not None:
            return ignored
        try:
            await pc.addIceCandidate(
                parsed.to_aiortc(candidate.get("sdpMid"), candidate.get("sdpMLineIndex"))
            )
        except ValueError as exc:  # aiortc/aioice: no such section, after end-of-candidates
            raise CandidateError(f"the connection refused the candidate: {exc}") from None
        return None

    def _screen_candidates(self, pc: RTCPeerConnection, target: str, sdp: str) -> str:
        """`sdp` without the candidates the relay must not contact (as for trickled ones)."""
        kept: list[str] = []
        dropped = False
        for line in sdp.splitlines(keepends=True):  # as aiortc splits it
            if line.startswith("a=candidate:"):
                try:
                    ignored = self._admit(pc, target, parse_candidate(line.strip()))
                except CandidateError as exc:
                    raise NegotiationError(f"a=candidate: {exc.reason}") from None
                if ignored is not None:
                    dropped = True
                    continue
            kept.append(line)
        if dropped:
            # With no pair and no more candidates to come, aioice would fail at once; without
            # the marker it waits for the client's checks (peer-reflexive candidates).
            kept = [line for line in kept if not line.startswith("a=end-of-candidates")]
        return "".join(kept)

    def _admit(self, pc: RTCPeerConnection, target: str, candidate: Candidate) -> Ignored | None:
        """Count a remote candidate of `target`; why it is not to be added, or None."""
        seen = self._remote_candidates[target]
        key = (candidate.transport, candidate.host, candidate.port)
        limit = self._settings.max_remote_candidates
        if key not in seen and len(seen) >= limit:
            raise CandidateError(f"at most {limit} candidates per connection")
        seen.add(key)
        ignored = self._ignored(pc, candidate)
        if ignored is not None:
            self.candidates_ignored[ignored] += 1
        return ignored

    def _ignored(self, pc: RTCPeerConnection, candidate: Candidate) -> Ignored | None:
        if candidate.is_mdns:
            return Ignored.MDNS
        if candidate.transport != "udp":
            return Ignored.TCP
        host = candidate.host
        refusal = self._settings.peer_policy.refusal(host, self._own_addresses(pc))
        if refusal is not None:
            logger.debug("%s: not contacting %s, %s", self.socket_id, host, refusal)
            return Ignored.ADDRESS
        return None

    def _own_addresses(self, pc: RTCPeerConnection) -> frozenset[IpAddress]:
        """The relay's addresses: its interfaces', the configured ones, its candidates'."""
        if self._host_addresses is None:
            self._host_addresses = tuple(get_host_addresses(use_ipv4=True, use_ipv6=True))
        addresses = {self._settings.announced_ip, *self._settings.bind_ips, *self._host_addresses}
        for transceiver in pc.getTransceivers():
            for local in transceiver.receiver.transport.transport.iceGatherer.getLocalCandidates():
                addresses.update((local.ip, local.relatedAddress))
        own = set()
        for address in addresses:
            if address is not None:
                with contextlib.suppress(ValueError):  # an interface's scoped IPv6 address
                    own.add(ipaddress.ip_address(address))
        return frozenset(own)

    def rtcp_tick(self) -> None:
        """Periodic RTCP: receiver reports and REMB to the publisher, sender reports to us."""
        now = self._clock()
        if self._silent_since(now) > self._settings.silence_timeout:
            self._stats.connection_failures[ConnectionFailure.TIMEOUT] += 1
            self._owner.drop(self, LeaveReason.TIMEOUT)
            return
        reports = [r for p in self.producers.values() if (r := p.receiver_report(now))]
        if reports and self._publisher_transport is not None:
            rtcp_ssrc = self._publisher_rtcp_ssrc()
            self._publisher_transport.send_rtcp(
                bytes(RtcpRrPacket(ssrc=rtcp_ssrc, reports=reports))
            )
        for producer in self.producers.values():
            producer.update_bandwidth(force=True)
        if self._settings.audio_first:
            self._gate_downlink()
            self._gate_uplink()
        if self._subscriber_transport is not None:
            sender_reports = [
                bytes(sr) for slot in self.slots if (sr := slot.forwarder.sender_report())
            ]
            if sender_reports:
                self._subscriber_transport.send_rtcp(b"".join(sender_reports))
        if self.first_media_at is None:
            arrivals = [p.first_packet_at for p in self.producers.values() if p.first_packet_at]
            if arrivals:
                self.first_media_at = min(arrivals)
                self._stats.setup_time.observe(max(self.first_media_at - self.joined_at, 0))

    def _gate_downlink(self) -> None:
        """Audio first, relay → participant: forward its incoming video only while its REMB
        (summed over the video it receives) says the link carries it; while paused, probe the
        link with padding (relay/probe.py) rather than with the video."""
        video = [s.forwarder for s in self.slots if s.started and s.forwarder.kind == "video"]
        estimates = [f.stats.remb_bps for f in video if f.producer is not None]
        known = [bps for bps in estimates if bps is not None]
        estimate = sum(known) if known else None
        # what the link was sent: the video, its resends and the audio beside it (what got
        # through, `delivered`, is the link's throughput, whatever it carried)
        audio = self._audio_out()
        sent = sum(f.stats.bytes + f.stats.retransmit_bytes for f in video)
        now, sent = self._clock(), sent + sum(f.stats.bytes for f in audio)
        elapsed = now - self._video_sent_at
        sent_bps = (sent - self._video_sent) * 8 / elapsed if elapsed > 0 else 0.0
        self._video_sent, self._video_sent_at = sent, now
        gate = self.downlink_gate
        flowing = gate.state is GateState.FLOWING
        if flowing and estimate is not None and sent_bps < 1.5 * estimate:
            # A receive-side estimate cannot exceed ~1.5 x what it receives: low, it may only
            # say the publisher sends little (a weak uplink, a still picture), not that this
            # link is weak. It is a verdict only when the relay sends clearly more than that.
            estimate = None
        video_loss = self._fresh_loss(video, now - FRESH_REPORT)
        delivered = sent_bps * (1 - video_loss) if flowing else None
        loss = max(video_loss, self._fresh_loss(audio, now - FRESH_REPORT))
        if gate.state is GateState.PROBING:
            loss = max(loss, self._probe_loss(video))
            delivered = self._probe_delivered(video, now)
            if self._probe is not None and self._probe.stopped_early:
                loss = max(loss, 1.0)  # it saw the link full (a report since replaced)
        change = gate.update(estimate, loss, delivered)
        if change is None:
            if gate.state is not GateState.FLOWING:  # probing too: padding, not the video
                for forwarder in video:
                    forwarder.pause()  # a slot started while paused
            return
        if change.after is GateState.PROBING:
            for forwarder in video:
                forwarder.pause()
                forwarder.stats.remb_bps = None  # judge the probe on fresh estimates only
            self._start_probe(video)
        else:
            self._stop_probe()
            for forwarder in video:
                if change.after is GateState.FLOWING:
                    forwarder.resume()
                else:
                    forwarder.pause()
        self._tell_video_change(Direction.DOWN, change)

    def _audio_out(self) -> list[Forwarder]:
        return [s.forwarder for s in self.slots if s.started and s.forwarder.kind == "audio"]

    @staticmethod
    def _fresh_loss(forwarders: list[Forwarder], since: float) -> float:
        """The worst loss on this link (relay → subscriber) among these streams, from the
        subscriber's reports since `since`. A report counts the publisher's own losses too (the
        relay forwards its sequence numbers): what the relay itself missed from the publisher
        is taken out, so a weak uplink elsewhere is not this link's fault. A stream whose
        publisher's uplink is itself lossy says nothing: its report interval and the relay's
        do not line up, and a starved uplink's loss comes in bursts, so what is left after the
        subtraction can read as this link's heavy loss."""
        worst = 0.0
        for f in forwarders:
            producer = f.producer
            if producer is None or f.reported_at is None or f.reported_at < since:
                continue
            if producer.recent_loss >= LOSSY_UPSTREAM:
                continue
            worst = max(worst, 1 - (1 - f.stats.fraction_lost) / (1 - producer.recent_loss))
        return worst

    def _probe_loss(self, video: list[Forwarder]) -> float:
        """Loss on the probe's padding and the audio beside it, reported since it began."""
        since = self._probe_began
        padding = max(
            (
                f.padding_loss
                for f in video
                if f.padding_reported_at is not None and f.padding_reported_at >= since
            ),
            default=0.0,
        )
        return max(padding, self._fresh_loss(self._audio_out(), since))

    def _probe_delivered(self, video: list[Forwarder], now: float) -> float | None:
        """What the probe's padding delivered since the last tick (bit/s), when a report since
        then says how much of it was lost; None otherwise."""
        probe = self._probe
        if probe is None:
            return None
        sent = probe.sent_bytes - self._probe_counted
        elapsed = now - self._probe_counted_at
        self._probe_counted, self._probe_counted_at = probe.sent_bytes, now
        since = max(self._probe_began, now - FRESH_REPORT)
        reports = [
            f.padding_loss
            for f in video
            if f.padding_reported_at is not None and f.padding_reported_at >= since
        ]
        if not reports or elapsed <= 0:
            return None
        return sent * 8 / elapsed * (1 - max(reports))

    def _start_probe(self, video: list[Forwarder]) -> None:
        self._stop_probe()
        carrier = next((f for f in video if f.can_pad), None)
        if carrier is None:
            return  # no RTX or abs-send-time negotiated: the probe only waits (probe_for)
        settings = self._settings.video_gate
        self._probe_began = self._probe_counted_at = self._clock()
        self._probe_counted = 0
        threshold = settings.probe_loss

        def overused() -> bool:
            return self._probe_loss(video) >= threshold

        self._probe = PaddingProbe(
            carrier,
            start_bps=settings.probe_start_bps,
            target_bps=settings.probe_target_bps,
            ramp_seconds=settings.probe_ramp,
            clock=self._clock,
            overused=overused,
        )
        self._probe.start()

    def _stop_probe(self) -> None:
        if self._probe is not None:
            self._probe.stop()
            self._probe = None

    def _gate_uplink(self) -> None:
        """Audio first, participant → relay: ask the participant to stop sending video while
        the relay's own estimate of its uplink says the link cannot carry it."""
        video = [p for p in self.producers.values() if p.kind == "video"]
        known = [bps for p in video if (bps := p.stats.estimate_bps) is not None]
        # the worse of the last two intervals: a link that lets a video packet through only
        # now and then shows no loss in an interval that got none (nothing was expected)
        loss = max((p.recent_loss for p in video), default=0.0)
        now, received = self._clock(), sum(p.stats.bytes for p in video)
        elapsed = now - self._video_received_at
        delivered = (received - self._video_received) * 8 / elapsed if elapsed > 0 else None
        self._video_received, self._video_received_at = received, now
        loss = max(loss, self._uplink_voice_cost())
        change = self.uplink_gate.update(max(known) if known else None, loss, delivered)
        if change is not None and change.after is GateState.PROBING:
            self._uplink_probe_began = now
        rate = self._uplink_probe_rate(now)
        for producer in video:
            if producer.probe_bps != rate:
                producer.probe_bps = rate
                producer.update_bandwidth()
        if change is None:
            return
        if change.after is GateState.PROBING:
            for producer in video:
                producer.restart_estimate()  # judge the probe on fresh estimates only
            self.listener.video_changed(self, Direction.UP, False, GateReason.PROBE)
        elif change.before is GateState.PROBING and change.after is GateState.PAUSED:
            self.listener.video_changed(self, Direction.UP, True, GateReason.WEAK)
        self._tell_video_change(Direction.UP, change)

    def _uplink_voice_cost(self) -> float:
        """While the uplink probes: how much more of the participant's voice the relay loses
        than it did while the video was paused (0 otherwise). A browser's encoder adapts to
        the loss the relay's receiver reports show and can hold a probe in GCC's 2-10 % band,
        neither failing nor succeeding for its 25 s, the voice beside it losing as much: a
        probe that costs the voice 5 % ends (`probe_loss` of the gate). Loss the link had
        without the video (random, Wi-Fi) is not the probe's."""
        audio = [p.stats.fraction_lost for p in self.producers.values() if p.kind == "audio"]
        voice = max(audio, default=0.0)
        state = self.uplink_gate.state
        if state is GateState.PAUSED:
            total, count = self._paused_voice_loss
            self._paused_voice_loss = (total + voice, count + 1)
            return 0.0
        if state is GateState.FLOWING:
            self._paused_voice_loss = (0.0, 0)
            return 0.0
        total, count = self._paused_voice_loss
        baseline = total / count if count else 0.0
        settings = self._settings.video_gate
        return settings.probe_loss if voice - baseline >= PROBE_VOICE_COST else 0.0

    def _uplink_probe_rate(self, now: float) -> int | None:
        """The REMB audio first sends this participant's publisher: none of its own while the
        video flows; while paused, the floor (the relay's stale estimate does not count:
        Chromium keeps the last REMB as its limit); while probing, ramped up to a
        little more than video needs, as the downlink's padding is: a browser's encoder
        follows it up from a low rate instead of flooding the weak link at once (aiortc's
        never encodes below 250 kbit/s)."""
        settings, state = self._settings.video_gate, self.uplink_gate.state
        if state is GateState.FLOWING:
            return None
        if state is GateState.PAUSED:
            # the lowest a browser encodes at: RTCP gets there while the `video-paused` event
            # may sit for seconds behind the weak link's stalled TCP
            return REMB_FLOOR_BPS
        elapsed = now - self._uplink_probe_began
        return round(
            ramped_rate(
                elapsed, settings.probe_start_bps, settings.probe_target_bps, settings.probe_ramp
            )
        )

    def _tell_video_change(self, direction: Direction, change: Transition) -> None:
        """A pause or a resume the UIs see (probes are not announced to the room)."""
        if change.resumed:
            self._owner.video_changed(self, direction, False, GateReason.RECOVERED)
        elif change.paused:
            self._owner.video_changed(self, direction, True, GateReason.WEAK)

    def _media_path_failed(self) -> None:
        """A bug on the media path (not a bad packet): count it, log the first few in full.

        Called by the transports from inside their `except` block, so the traceback is there.
        """
        stats = self._stats
        stats.media_path_errors += 1
        if stats.media_path_errors <= LOGGED_MEDIA_PATH_ERRORS:
            logger.exception(
                "a packet of %s broke the media path (%d of the first %d logged; the rest are "
                "only counted)",
                self.socket_id,
                stats.media_path_errors,
                LOGGED_MEDIA_PATH_ERRORS,
                extra={"connection_id": self.socket_id},
            )

    def _silent_since(self, now: float) -> float:
        """Seconds since the client last sent RTCP on any media connection (or since the first
        was negotiated, if none has carried RTCP yet); 0 while it has no media connection."""
        heard = [
            t.last_rtcp_at or t.created_at
            for t in (self._publisher_transport, self._subscriber_transport)
            if t is not None
        ]
        return now - max(heard) if heard else 0.0

    def _publisher_rtcp_ssrc(self) -> int:
        pc = self._publisher_pc
        transceivers = pc.getTransceivers() if pc else []
        return _aiortc.sender_ssrcs(transceivers[0].sender)[0] if transceivers else 0

    def codec_work(self) -> tuple[int, int]:
        """(decoders, encoders) running for this participant's tracks: (0, 0) when forwarding."""
        decoders = encoders = 0
        for pc in (self._publisher_pc, self._subscriber_pc):
            if pc is not None:
                d, e = _aiortc.codec_work(pc)
                decoders, encoders = decoders + d, encoders + e
        return decoders, encoders

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_probe()
        for producer in self.producers.values():
            producer.close()
        for slot in self.slots:
            slot.forwarder.detach()
        for transport in (self._publisher_transport, self._subscriber_transport):
            if transport is not None:
                transport.detach()
        for task in (self._negotiation, self._offer_watch):
            if task is not None and not task.done():
                task.cancel()
        for pc in (self._publisher_pc, self._subscriber_pc):
            if pc is not None:
                await _close_quietly(pc)


def _parse_rtcp(data: bytes) -> list[AnyRtcpPacket]:
    try:
        return RtcpPacket.parse(data)
    except ValueError:
        return []


async def _close_quietly(pc: RTCPeerConnection) -> None:
    # aiortc may already be closing this connection itself (the peer closed DTLS); a second
    # close() awaits aiortc's own future, which must not be cancelled by our timeout.
    try:
        await asyncio.wait_for(asyncio.shield(pc.close()), timeout=5)
    except Exception:
        logger.warning("closing a peer connection failed", exc_info=True)
