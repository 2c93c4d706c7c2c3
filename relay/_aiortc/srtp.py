"""SRTP for the per-packet path: pylibsrtp's `Session` calls without their per-call overhead.

pylibsrtp's `protect`/`unprotect` allocate a length cell (`ffi.new`), check the argument's type
and call a helper per packet. `FastSrtp` calls the same libsrtp functions on the same context
(the session's, which aiortc set up from the DTLS keys) with one preallocated buffer and length
cell: 2.7 µs instead of 4.0 µs for a 1 kB packet here, twice per forwarded packet. Same
limits and errors: a packet longer than the buffer allows raises `ValueError("packet is too
long")`, a failed check raises `pylibsrtp.Error` with libsrtp's reason.

pylibsrtp is pinned with aiortc; `internals_problems()` (part of the start-up self-test) checks
the session's context and the libsrtp functions are where this module expects them.
"""

from __future__ import annotations

from typing import Any

import pylibsrtp
from pylibsrtp import Session, _srtp_assert
from pylibsrtp._binding import ffi, lib

BUFFER = 1500  # pylibsrtp's own buffer size, so the same packets fit
TRAILER = pylibsrtp.SRTP_MAX_TRAILER_LEN  # what protect may add: tag (and MKI)


class FastSrtp:
    __slots__ = ("_buffer", "_cdata", "_ctx", "_length", "session")

    def __init__(self, session: Session) -> None:
        self.session = session  # owns the libsrtp context (freed with it)
        self._ctx: Any = session._srtp[0]
        self._cdata: Any = ffi.new("char[]", BUFFER)
        self._buffer: Any = ffi.buffer(self._cdata)
        self._length: Any = ffi.new("int *")

    # protect and unprotect repeat each other on purpose: a shared helper is one more call per
    # packet, which is what this class exists to save.
    def protect(self, packet: bytes) -> bytes:
        size = len(packet)
        if size > BUFFER - TRAILER:
            raise ValueError("packet is too long")
        self._buffer[0:size] = packet
        length = self._length
        length[0] = size
        status = lib.srtp_protect(self._ctx, self._cdata, length)
        if status:
            _srtp_assert(status)  # raises pylibsrtp.Error with libsrtp's reason
        data: bytes = self._buffer[0 : length[0]]
        return data

    def unprotect(self, packet: bytes) -> bytes:
        size = len(packet)
        if size > BUFFER:
            raise ValueError("packet is too long")
        self._buffer[0:size] = packet
        length = self._length
        length[0] = size
        status = lib.srtp_unprotect(self._ctx, self._cdata, length)
        if status:
            _srtp_assert(status)
        data: bytes = self._buffer[0 : length[0]]
        return data


def internals_problems() -> list[str]:
    """What of pylibsrtp's internals this module relies on is missing (empty: all there)."""
    needed = ("srtp_protect", "srtp_unprotect")
    problems = [f"libsrtp has no {n}" for n in needed if not hasattr(lib, n)]
    if not callable(getattr(pylibsrtp, "_srtp_assert", None)):
        problems.append("pylibsrtp has no _srtp_assert")
    session = Session()
    if not hasattr(session, "_srtp"):
        problems.append("pylibsrtp Session has no _srtp")
    return problems
