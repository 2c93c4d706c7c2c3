"""A browser's patience for the QA tool's video receiver: a lost packet stalls it for a moment,
not for 512 packets.

aiortc's video jitter buffer hands a frame to the decoder only when every packet from its
oldest one on has arrived. A packet that never comes (lost, its one NACK or the retransmission
lost too: aiortc NACKs a packet once) blocks every later frame until 512 more packets have
arrived and the buffer overflows: 15 s or more at 300 kbit/s, longer still after audio first
paused the video (the hole stays while nothing arrives, and the publisher restarts slowly).
A browser (libwebrtc's packet and frame buffers) does not wait for it: once the hole is given
up it asks for a keyframe and decodes from there, dropping the frames that referred to it.

`PatientJitterBuffer` does the same: a hole the buffer has waited on for `GIVE_UP_SECONDS`
(time enough for a NACK and its retransmission to come back) is dropped, with the rest of the
broken frame; frames are then skipped until one that starts a VP8 keyframe, and a keyframe is
asked for. Only the QA tool's decoding receivers use it (`patient_video`, synth/client.py): what
they measure is then the relay's stream, not aiortc's buffer. Costs one clock read per packet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

GIVE_UP_SECONDS = 1.0
CAPACITY = 512  # aiortc's own for video


def starts_keyframe(payload: bytes) -> bool:
    """Whether an RTP payload (VP8, RFC 7741) begins a keyframe: the first packet of partition
    0, its VP8 header's P bit clear."""
    if not payload:
        return False
    first = payload[0]
    if not first & 0x10 or first & 0x0F:  # S bit, partition index 0
        return False
    pos = 1
    if first & 0x80:  # X: extension bits
        if len(payload) < 2:
            return False
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= pos:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: one byte
            pos += 1
    return len(payload) > pos and not payload[pos] & 0x01


class PatientJitterBuffer(JitterBuffer):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(capacity=CAPACITY, is_video=True)
        self._clock = clock
        self._origin_seen: int | None = None
        self._origin_since = clock()
        self._await_keyframe = False
        self._asked_at = 0.0  # the last keyframe request of our own
        self.holes_given_up = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        now = self._clock()
        if self._origin != self._origin_seen:
            self._origin_seen, self._origin_since = self._origin, now
        if frame is None and (self._await_keyframe or now - self._origin_since >= GIVE_UP_SECONDS):
            frame = self._skip_to_keyframe(packet)
        if self._await_keyframe:
            if frame is not None and frame.keyframe:  # type: ignore[attr-defined]
                self._await_keyframe = False
            else:
                frame = None  # it refers to what was given up: the decoder would show garbage
                if now - self._asked_at >= GIVE_UP_SECONDS:  # ask again if no keyframe came
                    self._asked_at, pli = now, True
        return pli, frame

    def _skip_to_keyframe(self, packet: RtpPacket) -> JitterFrame | None:
        """Drop everything before the newest keyframe start in the buffer (when there is none,
        all but the newest packet's frame), then hand out what is complete."""
        packets = self._in_order()
        if all(p is not None for p in packets):
            return None  # no hole: the oldest frame is only still arriving
        keep = next(
            (i for i in range(len(packets) - 1, -1, -1) if _starts_keyframe(packets[i])), None
        )
        if not self._await_keyframe:
            self.holes_given_up += 1
            self._await_keyframe = True
            # ask for a keyframe now, unless one is already arriving
            self._asked_at = self._clock() if keep is not None else 0.0
        if keep is None:
            keep = len(packets) - 1
            while keep > 0 and _same_frame(packets[keep - 1], packet):
                keep -= 1
        if keep == 0:
            return None
        self.remove(keep)
        self._origin_seen, self._origin_since = self._origin, self._clock()
        return self._remove_frame(packet.sequence_number)

    def _in_order(self) -> list[RtpPacket | None]:
        """The buffer from its oldest slot to its newest packet, holes as None."""
        assert self._origin is not None
        slots = [self._packets[(self._origin + i) % self._capacity] for i in range(self._capacity)]
        last = max((i for i, p in enumerate(slots) if p is not None), default=-1)
        return slots[: last + 1]

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        # note whether the frame handed out starts a keyframe (from its first packet)
        assert self._origin is not None
        first = self._packets[self._origin % self._capacity]
        frame = super()._remove_frame(sequence_number)
        if frame is not None:
            frame.keyframe = _starts_keyframe(first)  # type: ignore[attr-defined]
        return frame


def _starts_keyframe(packet: RtpPacket | None) -> bool:
    return packet is not None and starts_keyframe(packet.payload)


def _same_frame(a: RtpPacket | None, b: RtpPacket) -> bool:
    return a is not None and a.timestamp == b.timestamp


def patient_video(receiver: Any) -> None:
    """Give an aiortc video receiver (VP8) a `PatientJitterBuffer` (before it has a packet)."""
    receiver._RTCRtpReceiver__jitter_buffer = PatientJitterBuffer()
