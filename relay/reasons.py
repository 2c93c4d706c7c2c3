"""Why a participant left a room: a closed set of values.

A `StrEnum` whose values are the strings the wire protocol has always used ("left",
"ice-failed", …); what each one means on the wire is decided in `signaling/protocol.py`.
"""

from __future__ import annotations

from enum import StrEnum


class LeaveReason(StrEnum):
    LEFT = "left"  # the client sent leave-room
    DISCONNECTED = "disconnected"  # its signaling connection closed
    REPLACED = "replaced"  # the same user joined again (a reload, a second tab)
    ICE_FAILED = "ice-failed"  # a media connection failed (ICE or DTLS)
    TIMEOUT = "timeout"  # no RTCP for `silence_timeout` although ICE still looked alive
    SHUTDOWN = "shutdown"  # the relay is closing
    CALL_ENDED = "call-ended"  # the call was ended (through the API, or by the server)
