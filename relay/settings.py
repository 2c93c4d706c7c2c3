"""How a relay is set up: ICE servers for its own gathering, room size, feedback timing."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer


@dataclass(frozen=True)
class RelaySettings:
    # STUN/TURN servers the relay itself gathers candidates with. Empty by default: a relay on a
    # public address needs none, and aiortc's default would contact a public STUN server.
    ice_servers: tuple[RTCIceServer, ...] = field(default_factory=tuple)
    max_participants: int = 4
    keyframe_interval: float = 0.5  # at most one PLI per publisher track per interval
    rtcp_interval: float = 1.0  # receiver/sender reports and REMB refresh

    def rtc_configuration(self) -> RTCConfiguration:
        return RTCConfiguration(
            iceServers=list(self.ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
        )
