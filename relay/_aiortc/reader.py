"""Batched reads of an ICE socket: one readiness event drains up to `MAX_BATCH` datagrams.

asyncio's `_SelectorDatagramTransport` delivers one datagram per event-loop iteration: a video
frame of four packets costs four `epoll` wake-ups, four loop iterations and four callbacks, and
aioice then tries each RTP packet as STUN before handing it over. This reader takes the socket's
read side over from the transport (same file descriptor, same selector key): on each readiness
event it reads with `recvfrom_into` into one preallocated buffer until the socket would block or
`MAX_BATCH` datagrams were read, so one busy socket cannot starve the loop (the selector is
level-triggered: what is left is read on the next iteration, after the other ready callbacks).

Each datagram goes where aioice's protocol would have sent it, demultiplexed as RFC 7983 does:
RTP/RTCP (first byte 128..191) to the media handler, with one arrival time per batch (the
datagrams of a batch were all in the kernel's queue when it started); anything else (STUN, DTLS)
to the aioice protocol's own `datagram_received`, so ICE checks, consent and DTLS work unchanged.
The transport keeps everything else: sending, and closing, whose `_remove_reader(fd)` removes this
reader before the socket is closed. (Its `resume_reading()` would put asyncio's own reader back;
nothing calls it on a datagram transport.)

`install` returns False (and changes nothing) when the transport is not asyncio's selector
datagram transport (uvloop, TURN relays): aioice's path then stays in place.
"""

from __future__ import annotations

import socket
import threading
from asyncio import selector_events
from collections.abc import Callable
from typing import Any

MAX_BATCH = 64  # datagrams per readiness event and socket
# Large enough for any UDP datagram: a shorter buffer would silently truncate a large one.
BUFFER_SIZE = 65536

MediaHandler = Callable[[bytes, float], None]
ErrorHandler = Callable[[], None]

_buffers = threading.local()  # one buffer per thread (an event loop runs in one thread)


def _buffer() -> tuple[bytearray, memoryview]:
    pair: tuple[bytearray, memoryview] | None = getattr(_buffers, "pair", None)
    if pair is None:
        buffer = bytearray(BUFFER_SIZE)
        pair = _buffers.pair = (buffer, memoryview(buffer))
    return pair


# None if asyncio ever renames it: every transport then keeps its own reads (`available`).
_SELECTOR_DATAGRAM = getattr(selector_events, "_SelectorDatagramTransport", None)


def available(transport: Any) -> bool:
    """Whether `install` can take this transport's reads over: asyncio's own selector datagram
    transport, with the private attributes it had in 3.11 and 3.12."""
    return (
        _SELECTOR_DATAGRAM is not None
        and type(transport) is _SELECTOR_DATAGRAM
        and hasattr(transport, "_sock_fd")
        and hasattr(transport, "_sock")
        and hasattr(getattr(transport, "_loop", None), "_add_reader")
    )


def install(
    protocol: Any,
    on_media: MediaHandler,
    on_error: ErrorHandler,
    clock: Callable[[], float],
    max_batch: int = MAX_BATCH,
) -> bool:
    """Read `protocol`'s socket in batches from now on; False if its transport cannot."""
    transport = protocol.transport
    if not available(transport) or transport.is_closing():
        return False
    sock: socket.socket = transport._sock
    reader = make_reader(sock, protocol, on_media, on_error, clock, max_batch)
    # Replaces asyncio's `_read_ready` in the same selector key. (The public `add_reader`
    # refuses an fd a transport owns, and the transport must stay: it sends and closes.)
    transport._loop._add_reader(transport._sock_fd, reader)
    return True


def make_reader(
    sock: socket.socket,
    protocol: Any,
    on_media: MediaHandler,
    on_error: ErrorHandler,
    clock: Callable[[], float],
    max_batch: int = MAX_BATCH,
) -> Callable[[], None]:
    """The readiness callback for `sock`."""
    buffer, view = _buffer()
    recvfrom_into = sock.recvfrom_into

    def read_ready() -> None:
        arrival = 0.0
        for _ in range(max_batch):
            try:
                size, addr = recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP error: as asyncio does
                protocol.error_received(exc)
                continue
            first = buffer[0] if size else 0
            try:
                if 127 < first < 192:  # RTP/RTCP; STUN starts with 0 or 1, DTLS with 20..63
                    if not arrival:
                        arrival = clock()
                    on_media(bytes(view[:size]), arrival)
                else:
                    protocol.datagram_received(bytes(view[:size]), addr)
            except Exception:
                on_error()  # a bug, not the packet's fault: the next datagram is still served

    return read_ready
