"""How a relay is set up: ICE servers and host candidates of its own, room size, feedback timing."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer

from relay.adaptation import GateSettings
from relay.candidates import PeerPolicy


@dataclass(frozen=True)
class RelaySettings:
    # STUN/TURN servers the relay itself gathers candidates with. Empty by default: a relay on a
    # public address needs none, and aiortc's default would contact a public STUN server.
    ice_servers: tuple[RTCIceServer, ...] = field(default_factory=tuple)
    max_participants: int = 4
    keyframe_interval: float = 0.5  # at most one PLI per publisher track per interval
    rtcp_interval: float = 1.0  # receiver/sender reports and REMB refresh
    # Host candidates (relay/_aiortc/gathering.py): the address advertised instead of the bound
    # one (1:1 NAT), the local addresses to gather on (empty: every interface), a UDP port range.
    announced_ip: str | None = None
    bind_ips: tuple[str, ...] = ()
    udp_ports: tuple[int, int] | None = None
    # A client whose media connections carried no RTCP for this long is gone (crashed tab, lost
    # network) even if ICE consent, which takes ~30 s to fail, has not noticed yet.
    silence_timeout: float = 15.0
    # A participant whose connection went away (socket closed, ICE failed, silence) keeps its
    # seat this long: the others see "reconnecting", the same user joining again takes it back.
    seat_grace: float = 60.0
    # Trickled candidates: which addresses the relay sends connectivity checks to
    # (relay/candidates.py), and how many one peer connection may trickle.
    peer_policy: PeerPolicy = field(default_factory=PeerPolicy)
    max_remote_candidates: int = 50
    # A subscriber offer the client has not answered after `offer_timeout` seconds is sent
    # again, `offer_resends` times; then the client is told NEGOTIATION_FAILED.
    offer_timeout: float = 3.0
    offer_resends: int = 3
    # Read the ICE sockets in batches, one readiness event draining each (relay/_aiortc/reader.py);
    # False keeps asyncio's one-datagram-per-iteration transport (also the automatic fallback).
    batched_receive: bool = True
    # Audio first (relay/adaptation.py): pause video on a link whose estimate is too low for it.
    audio_first: bool = True
    video_gate: GateSettings = field(default_factory=GateSettings)

    def rtc_configuration(self) -> RTCConfiguration:
        return RTCConfiguration(
            iceServers=list(self.ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
        )
