"""What an offer/answer settled for each media section: codec, payload types, SSRCs, extensions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from aiortc import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

# What the relay accepts from publishers, best first. Forwarding never transcodes, so subscribers
# are offered exactly the publisher's codec.
VIDEO_CODECS = ("VP8", "H264")
AUDIO_CODECS = ("opus",)


class NegotiationError(ValueError):
    """An SDP the relay cannot use; the message says why."""


@dataclass(frozen=True)
class Codec:
    name: str  # "VP8", "H264", "opus"
    payload_type: int
    clock_rate: int
    channels: int | None
    parameters: dict[str, str | int]
    rtx_payload_type: int | None
    nack: bool
    remb: bool

    @property
    def mime_type(self) -> str:
        return f"{'audio' if self.name == 'opus' else 'video'}/{self.name}"

    def same_stream_format(self, other: Codec) -> bool:
        """Whether packets of `other` can be forwarded on a sender negotiated for `self`."""
        return self.name == other.name and self.parameters == other.parameters

    def capabilities(self) -> list[RTCRtpCodecCapability]:
        """For `setCodecPreferences`: this codec, and RTX when it had RTX."""
        base = RTCRtpCodecCapability(
            mimeType=self.mime_type,
            clockRate=self.clock_rate,
            channels=self.channels,
            parameters=dict(self.parameters),
        )
        if self.rtx_payload_type is None and self.name == "opus":
            return [base]
        rtx = RTCRtpCodecCapability(mimeType="video/rtx", clockRate=self.clock_rate)
        return [base, rtx]


@dataclass(frozen=True)
class MediaSection:
    mid: str
    kind: str
    direction: str  # as written in the SDP it came from
    codec: Codec | None  # None when no common codec was found (section rejected)
    ssrcs: tuple[int, ...] = ()  # media SSRCs announced in the SDP
    rtx_ssrcs: dict[int, int] = field(default_factory=dict)  # RTX SSRC → media SSRC
    extensions: dict[str, int] = field(default_factory=dict)  # URI → id


def parse_sections(sdp: str) -> list[MediaSection]:
    """The audio/video sections of an SDP, with the first (= chosen) codec of each."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises assorted errors on malformed SDP
        raise NegotiationError(f"malformed SDP: {exc}") from exc
    mids = Counter(str(media.rtp.muxId) for media in description.media)
    duplicates = sorted(mid for mid, n in mids.items() if n > 1)
    if duplicates:
        raise NegotiationError(f"media sections share a=mid {', '.join(duplicates)}")
    sections: list[MediaSection] = []
    for media in description.media:
        if media.kind not in ("audio", "video"):
            continue
        sections.append(
            MediaSection(
                mid=str(media.rtp.muxId),
                kind=media.kind,
                direction=media.direction or "sendrecv",
                codec=_chosen_codec(media) if media.port != 0 else None,
                ssrcs=tuple(dict.fromkeys(s.ssrc for s in media.ssrc)),
                rtx_ssrcs={
                    int(group.items[1]): int(group.items[0])
                    for group in media.ssrc_group
                    if group.semantic == "FID" and len(group.items) == 2
                },
                extensions={ext.uri: ext.id for ext in media.rtp.headerExtensions},
            )
        )
    return sections


def _chosen_codec(media: object) -> Codec | None:
    codecs = media.rtp.codecs  # type: ignore[attr-defined]
    primary = next((c for c in codecs if c.name.lower() != "rtx"), None)
    if primary is None:
        return None
    rtx = next(
        (
            c.payloadType
            for c in codecs
            if c.name.lower() == "rtx" and c.parameters.get("apt") == primary.payloadType
        ),
        None,
    )
    feedback = {(fb.type, fb.parameter) for fb in primary.rtcpFeedback}
    return Codec(
        name=primary.name,
        payload_type=primary.payloadType,
        clock_rate=primary.clockRate,
        channels=primary.channels,
        parameters=dict(primary.parameters),
        rtx_payload_type=rtx,
        nack=("nack", None) in feedback,
        remb=("goog-remb", None) in feedback,
    )


def check_supported(section: MediaSection) -> None:
    if section.codec is None:
        raise NegotiationError(f"no codec in common for the {section.kind} section {section.mid}")
    allowed = VIDEO_CODECS if section.kind == "video" else AUDIO_CODECS
    if section.codec.name not in allowed:
        raise NegotiationError(
            f"{section.codec.name} cannot be forwarded; the relay forwards {', '.join(allowed)}"
        )


def check_renegotiation(previous: list[MediaSection], offered: list[MediaSection]) -> None:
    """A new offer keeps every earlier media section, in its place, with its kind (RFC 3264
    §8: sections are added at the end, never removed or reordered). aiortc applies an offer
    that breaks this, then fails to answer it with the connection half-changed."""
    kept = [(s.mid, s.kind) for s in offered[: len(previous)]]
    expected = [(s.mid, s.kind) for s in previous]
    if kept != expected:
        shown = ", ".join(f"{kind} {mid}" for mid, kind in expected)
        raise NegotiationError(
            f"a new offer must keep the earlier media sections in order ({shown}); "
            "add sections at the end"
        )
