"""The relay's media path over an aiortc DTLS transport, below aiortc's own.

aiortc terminates ICE, DTLS and SRTP for us, but its media path decodes every received track and
encodes every sent one, through several layers of coroutines and queues per packet. The relay
keeps aiortc for connection setup and takes over the media path below it:

* inbound: the ICE sockets are read in batches (`reader.py`: one readiness event drains the
  socket), SRTP/SRTCP datagrams are decrypted and handed to the relay synchronously, without
  aioice's STUN-first parse and aiortc's receive queue, parser and jitter buffer (DTLS and STUN
  still go to aioice and aiortc). Where the batched reader cannot be installed (another event
  loop, a TURN relay) or is turned off (`batched=False`), aioice's protocol stays the reader and
  media datagrams are taken from it before its STUN parse;
* outbound: packets are SRTP-protected and written straight to the nominated candidate pair's
  datagram transport (SRTP of RTP through `srtp.py`'s `FastSrtp`: pylibsrtp's libsrtp calls
  without their per-call overhead);
* aiortc's own RTCP (sender reports from idle senders) is discarded, because the relay writes
  the RTCP for the streams it forwards;
* receivers' decoder threads are stopped as soon as aiortc starts them.

A datagram that fails SRTP authentication (forged, replayed, garbled) is dropped silently: that
is the network's doing. Any other exception raised by the relay's handlers is a bug: it goes to
`on_error` (the relay counts and logs it) and the socket keeps serving the next packet.

aiortc and aioice are pinned (`selftest.py`); `self_test()` runs at relay start-up and fails
loudly when these internals are not where this module expects them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc.rtcdtlstransport import RTCDtlsTransport
from pylibsrtp import Error as SrtpError

from relay._aiortc import reader
from relay._aiortc.srtp import FastSrtp

RtpHandler = Callable[[bytes, float], None]
RtcpHandler = Callable[[bytes], None]
# Called from inside the `except` block of a handler's exception (logging.exception works there).
ErrorHandler = Callable[[], None]

# What unprotecting a bad datagram raises: pylibsrtp.Error (authentication or replay check
# failed, …) and ValueError ("packet is too long": over pylibsrtp's 1500-byte buffer); IndexError
# is a one-byte datagram, which has no packet-type byte.
BAD_PACKET = (SrtpError, ValueError, IndexError)

logger = logging.getLogger(__name__)


def log_media_path_error() -> None:
    """The default `on_error`, for transports nobody counts the errors of (QA clients)."""
    logger.exception("a received packet broke the media path")


class MediaTransport:
    """The relay's media path over one bundled aiortc DTLS transport.

    `send_rtp`/`send_rtcp` protect and send synchronously; inbound SRTP/SRTCP is decrypted and
    handed to `on_rtp`/`on_rtcp` from the socket callback.
    """

    __slots__ = (
        "_connection",
        "_now",
        "_on_error",
        "_original_data_received",
        "_rx",
        "_tx",
        "batched_sockets",
        "created_at",
        "dtls",
        "last_rtcp_at",
        "on_rtcp",
        "on_rtp",
    )

    def __init__(
        self,
        dtls: RTCDtlsTransport,
        on_error: ErrorHandler = log_media_path_error,
        *,
        batched: bool = True,
    ) -> None:
        self.dtls = dtls
        self._on_error = on_error
        # the DTLS transport's SRTP sessions, called the fast way (srtp.py); made when they appear
        self._tx: FastSrtp | None = None
        self._rx: FastSrtp | None = None
        self._connection: Any = dtls.transport._connection
        self.on_rtp: RtpHandler | None = None
        self.on_rtcp: RtcpHandler | None = None
        self.last_rtcp_at: float | None = None  # a live client sends RTCP every second or so
        self._now = time.monotonic  # the relay's clock (relay/sfu.py), read once per batch
        self.created_at = self._now()
        self._original_data_received = self._connection.data_received
        self._connection.data_received = self._data_received  # type: ignore[method-assign]
        self.batched_sockets = 0  # sockets read by the batched reader (the others: tapped)
        for protocol in self._connection._protocols:
            if batched and reader.install(protocol, self._media_received, on_error, self._now):
                self.batched_sockets += 1
            else:
                self._tap(protocol)
        # aiortc's idle senders must not send their own (empty) sender reports
        dtls._send_rtp = _discard  # type: ignore[method-assign]

    @property
    def ready(self) -> bool:
        return self.dtls._tx_srtp is not None and 1 in self._connection._nominated

    def send_rtp(self, packet: bytes) -> bool:
        tx = self._tx
        if tx is None or tx.session is not self.dtls._tx_srtp:
            tx = self._tx = _fast(self.dtls._tx_srtp)
        pair = self._connection._nominated.get(1)
        if tx is None or pair is None:
            return False
        pair.protocol.transport.sendto(tx.protect(packet), pair.remote_addr)
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
        media_received, now = self._media_received, self._now

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            if data and 127 < data[0] < 192:  # RTP/RTCP; STUN starts with 0 or 1
                media_received(data, now())
            else:
                original(data, addr)

        protocol.datagram_received = datagram_received

    def _data_received(self, data: bytes, component: int) -> None:
        if data and 127 < data[0] < 192:
            self._media_received(data, self._now())
        else:
            self._original_data_received(data, component)

    def _media_received(self, data: bytes, arrival: float) -> None:
        """One RTP/RTCP datagram (first byte 128..191), received at `arrival`."""
        srtp = self.dtls._rx_srtp
        if srtp is not None:
            rx = self._rx
            if rx is None or rx.session is not srtp:
                rx = self._rx = FastSrtp(srtp)
            # Two `try` blocks, free in CPython 3.11 until something raises: a bad datagram is
            # dropped without a word, a bug in the handlers is reported and the socket lives on.
            try:
                rtcp = 191 < data[1] < 224  # RTCP packet types 192..223 (RFC 5761)
                plain = srtp.unprotect_rtcp(data) if rtcp else rx.unprotect(data)
            except BAD_PACKET:
                return
            try:
                if rtcp:
                    self.last_rtcp_at = arrival
                    if self.on_rtcp is not None:
                        self.on_rtcp(plain)
                elif self.on_rtp is not None:
                    self.on_rtp(plain, arrival)
            except Exception:
                self._on_error()
            return
        self._original_data_received(data, 1)  # no keys yet: aiortc's own path, as before

    def detach(self) -> None:
        self.on_rtp = None
        self.on_rtcp = None


class SampledTransport(MediaTransport):
    """MediaTransport for the QA tool's lean subscribers (synth/lean.py): RTP goes to
    `on_srtp` still encrypted (its header is clear text), and `unprotect` decrypts the datagrams
    the caller chooses to look into; RTCP, and RTP before the keys, take MediaTransport's path.

    libsrtp accepts a stream's packets decrypted out of a sample: it estimates each packet's index
    from the highest seen, as long as the sample moves forward by fewer than 2**15 packets.
    """

    __slots__ = ("on_srtp",)

    def __init__(
        self, dtls: RTCDtlsTransport, on_error: ErrorHandler = log_media_path_error
    ) -> None:
        self.on_srtp: RtpHandler | None = None
        super().__init__(dtls, on_error)

    def _media_received(self, data: bytes, arrival: float) -> None:
        on_srtp = self.on_srtp
        if on_srtp is None or self.dtls._rx_srtp is None or len(data) < 12 or 191 < data[1] < 224:
            MediaTransport._media_received(self, data, arrival)
            return
        try:
            on_srtp(data, arrival)
        except Exception:
            self._on_error()

    def unprotect(self, data: bytes) -> bytes | None:
        """The plain RTP packet, or None when it fails authentication (or there are no keys)."""
        rx = self._rx
        if rx is None or rx.session is not self.dtls._rx_srtp:
            rx = self._rx = _fast(self.dtls._rx_srtp)
        if rx is None:
            return None
        try:
            return rx.unprotect(data)
        except BAD_PACKET:
            return None


def _fast(session: Any) -> FastSrtp | None:
    """The fast calls on a DTLS transport's SRTP session (None until the keys are there); made
    again when the session is replaced."""
    return FastSrtp(session) if session is not None else None


async def _discard(data: bytes) -> None:
    return None
