"""Every touch of aiortc's and aioice's private internals, in one place.

aiortc terminates ICE, DTLS and SRTP for us, but its media path decodes every received track and
encodes every sent one, through several layers of coroutines and queues per packet. The relay
keeps aiortc for connection setup and takes over the media path below it:

* inbound: the ICE connection's `data_received` is replaced, so SRTP/SRTCP datagrams are decrypted
  and handed to the relay synchronously, without aiortc's receive queue, parser and jitter buffer
  (DTLS and STUN still go to aiortc);
* outbound: packets are SRTP-protected and written straight to the nominated candidate pair's
  datagram transport;
* aiortc's own RTCP (sender reports from idle senders) is discarded, because the relay writes
  the RTCP for the streams it forwards;
* receivers' decoder threads are stopped as soon as aiortc starts them.

aiortc is pinned to the version below; `self_test()` runs at relay start-up and fails loudly when
these internals are not where this module expects them.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport

from relay import ice as relay_ice

SUPPORTED_AIORTC = "1.16.0"
SUPPORTED_AIOICE = "0.13.0"

RtpHandler = Callable[[bytes, float], None]
RtcpHandler = Callable[[bytes], None]


class AiortcInternalsChanged(RuntimeError):
    """The installed aiortc/aioice no longer look the way the relay's media path needs."""


def self_test() -> None:
    """Check versions and every private attribute the relay relies on; raise if anything moved."""
    problems: list[str] = []
    for package, wanted in (("aiortc", SUPPORTED_AIORTC), ("aioice", SUPPORTED_AIOICE)):
        installed = importlib.metadata.version(package)
        if installed != wanted:
            problems.append(f"{package} {installed} is installed, the relay is built for {wanted}")
    for owner, names in (
        (RTCDtlsTransport, ("_send_rtp", "_get_stats")),
        (RTCRtpReceiver, ("receive", "_RTCRtpReceiver__stop_decoder")),
        (RTCRtpSender, ("send", "_run_rtp")),
        (RTCIceTransport, ("iceGatherer",)),
    ):
        problems += [f"{owner.__name__}.{n} is missing" for n in names if not hasattr(owner, n)]
    problems += _instance_problems()
    problems += relay_ice.internals_problems()
    if problems:
        raise AiortcInternalsChanged(
            "the relay's aiortc adapter does not match the installed aiortc: " + "; ".join(problems)
        )


def _instance_problems() -> list[str]:
    """Attributes that exist only on instances; an unconnected connection opens no sockets."""
    problems: list[str] = []
    transceiver = RTCPeerConnection().addTransceiver("video", direction="sendonly")
    dtls = transceiver.sender.transport
    problems += [
        f"RTCDtlsTransport has no {n}" for n in ("_rx_srtp", "_tx_srtp") if not hasattr(dtls, n)
    ]
    connection = getattr(dtls.transport, "_connection", None)
    if not hasattr(connection, "_nominated") or not hasattr(connection, "data_received"):
        problems.append("aioice Connection has no _nominated / data_received")
    for name in ("_ssrc", "_rtx_ssrc"):
        if not isinstance(getattr(transceiver.sender, name, None), int):
            problems.append(f"RTCRtpSender has no integer {name}")
    if not hasattr(transceiver.receiver, "_RTCRtpReceiver__decoder_thread"):
        problems.append("RTCRtpReceiver has no __decoder_thread")
    if not hasattr(transceiver.sender, "_RTCRtpSender__encoder"):
        problems.append("RTCRtpSender has no __encoder")
    return problems


class MediaTransport:
    """The relay's media path over one bundled aiortc DTLS transport.

    `send_rtp`/`send_rtcp` protect and send synchronously; inbound SRTP/SRTCP is decrypted and
    handed to `on_rtp`/`on_rtcp` from the socket callback.
    """

    __slots__ = (
        "_connection",
        "_now",
        "_original_data_received",
        "created_at",
        "dtls",
        "last_rtcp_at",
        "on_rtcp",
        "on_rtp",
    )

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        self._connection: Any = dtls.transport._connection
        self.on_rtp: RtpHandler | None = None
        self.on_rtcp: RtcpHandler | None = None
        self.last_rtcp_at: float | None = None  # a live client sends RTCP every second or so
        self._now = asyncio.get_running_loop().time
        self.created_at = self._now()
        self._original_data_received = self._connection.data_received
        self._connection.data_received = self._data_received  # type: ignore[method-assign]
        for protocol in self._connection._protocols:
            self._tap(protocol)
        # aiortc's idle senders must not send their own (empty) sender reports
        dtls._send_rtp = _discard  # type: ignore[method-assign]

    @property
    def ready(self) -> bool:
        return self.dtls._tx_srtp is not None and 1 in self._connection._nominated

    def send_rtp(self, packet: bytes) -> bool:
        srtp = self.dtls._tx_srtp
        pair = self._connection._nominated.get(1)
        if srtp is None or pair is None:
            return False
        pair.protocol.transport.sendto(srtp.protect(packet), pair.remote_addr)
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        srtp = self.dtls._tx_srtp
        pair = self._connection._nominated.get(1)
        if srtp is None or pair is None:
            return False
        pair.protocol.transport.sendto(srtp.protect_rtcp(packet), pair.remote_addr)
        return True

    def _tap(self, protocol: Any) -> None:
        """Hand media datagrams over before aioice tries (and fails) to parse them as STUN."""
        original = protocol.datagram_received
        data_received = self._data_received

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            if data and 127 < data[0] < 192:  # RTP/RTCP; STUN starts with 0 or 1
                data_received(data, 1)
            else:
                original(data, addr)

        protocol.datagram_received = datagram_received

    def _data_received(self, data: bytes, component: int) -> None:
        first = data[0] if data else 0
        srtp = self.dtls._rx_srtp
        if 127 < first < 192 and srtp is not None:
            arrival = self._now()
            try:
                if 191 < data[1] < 224:  # RTCP packet types 192..223 (RFC 5761)
                    self.last_rtcp_at = arrival
                    if self.on_rtcp is not None:
                        self.on_rtcp(srtp.unprotect_rtcp(data))
                elif self.on_rtp is not None:
                    self.on_rtp(srtp.unprotect(data), arrival)
            except Exception:  # pylibsrtp.Error, malformed packets: drop, never crash the socket
                return
            return
        self._original_data_received(data, component)

    def detach(self) -> None:
        self.on_rtp = None
        self.on_rtcp = None


async def _discard(data: bytes) -> None:
    return None


def dtls_transport_of(pc: RTCPeerConnection) -> RTCDtlsTransport | None:
    """The (bundled) DTLS transport of a connection, once it has a transceiver."""
    for transceiver in pc.getTransceivers():
        transport: RTCDtlsTransport = transceiver.receiver.transport
        return transport
    return None


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
