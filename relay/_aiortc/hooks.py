"""Small reaches into aiortc objects: SSRCs, decoder threads, idle senders, keyframe flags.

Used by the relay's participants and by the QA tool's clients (`synth/`), so that no code outside
`relay/_aiortc/` names a private aiortc attribute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport


def dtls_transport_of(pc: RTCPeerConnection) -> RTCDtlsTransport | None:
    """The (bundled) DTLS transport of a connection, once it has a transceiver."""
    for transceiver in pc.getTransceivers():
        transport: RTCDtlsTransport = transceiver.receiver.transport
        return transport
    return None


def consent_expired(pc: RTCPeerConnection) -> bool:
    """Whether aioice gave this connection's ICE up because consent lapsed (RFC 7675).

    aioice then closes the ICE connection itself, and aiortc follows by closing the whole peer
    connection (state `closed`, not `failed`). It clears its consent task just before; a close
    for any other reason (ours, or the peer's DTLS shutdown) cancels the task and keeps it.
    """
    dtls = dtls_transport_of(pc)
    connection = getattr(dtls.transport, "_connection", None) if dtls is not None else None
    return connection is not None and connection._query_consent_task is None


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """(media SSRC, RTX SSRC) aiortc put into the SDP for this sender."""
    return sender._ssrc, sender._rtx_ssrc


def keep_decoder_stopped(receiver: RTCRtpReceiver) -> None:
    """Stop the decoder thread aiortc starts in `receive()`: the relay never decodes."""
    original = receiver.receive

    async def receive(parameters: Any) -> None:
        await original(parameters)
        receiver._RTCRtpReceiver__stop_decoder()  # type: ignore[attr-defined]

    receiver.receive = receive  # type: ignore[method-assign]


def codec_work(pc: RTCPeerConnection) -> tuple[int, int]:
    """(running decoder threads, live encoders) among a connection's transceivers."""
    decoders = encoders = 0
    for transceiver in pc.getTransceivers():
        thread = getattr(transceiver.receiver, "_RTCRtpReceiver__decoder_thread", None)
        decoders += thread is not None and thread.is_alive()
        encoders += getattr(transceiver.sender, "_RTCRtpSender__encoder", None) is not None
    return decoders, encoders


class IdleTrack(MediaStreamTrack):
    """A track whose `recv()` never returns: keeps aiortc's sender loop parked at no cost.

    The relay writes the sender's RTP itself; aiortc's sender only owns the SSRC and the SDP.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._parked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        await self._parked
        raise asyncio.CancelledError

    def stop(self) -> None:
        if not self._parked.done():
            self._parked.cancel()
        super().stop()


def take_keyframe_request(sender: RTCRtpSender) -> bool:
    """True once per keyframe the subscriber asked this sender for (PLI/FIR), then cleared.

    For tracks that deliver pre-encoded packets: aiortc's encoder would read the flag itself.
    """
    flag = "_RTCRtpSender__force_keyframe"
    if getattr(sender, flag, False):
        setattr(sender, flag, False)
        return True
    return False


def receiver_codecs(receiver: RTCRtpReceiver) -> dict[int, Any]:
    """Payload type → RTCRtpCodecParameters the receiver was configured with."""
    codecs: dict[int, Any] = getattr(receiver, "_RTCRtpReceiver__codecs", {})
    return codecs


RtpPacketHandler = Callable[[Any, int], Awaitable[None]]


def wrap_rtp_handler(
    receiver: RTCRtpReceiver, wrap: Callable[[RtpPacketHandler], RtpPacketHandler]
) -> None:
    """Replace the receiver's per-packet handler with `wrap(original)`."""
    receiver._handle_rtp_packet = wrap(receiver._handle_rtp_packet)  # type: ignore[method-assign,assignment]


def preset_voice_bitrate(sender: RTCRtpSender, bitrate: int) -> None:
    """Encode this audio sender's Opus at `bitrate` (aiortc's own is 96 kbit/s, stereo, three
    times a browser's voice): its encoder is made here, before the first frame opens it."""
    from aiortc.codecs.opus import OpusEncoder

    encoder = OpusEncoder()
    encoder.codec.bit_rate = bitrate
    sender._RTCRtpSender__encoder = encoder  # type: ignore[attr-defined]
