"""The relay's media path over an aiortc DTLS transport, below aiortc's own.

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

aiortc and aioice are pinned (`selftest.py`); `self_test()` runs at relay start-up and fails
loudly when these internals are not where this module expects them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiortc.rtcdtlstransport import RTCDtlsTransport

RtpHandler = Callable[[bytes, float], None]
RtcpHandler = Callable[[bytes], None]


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
