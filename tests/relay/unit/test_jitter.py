"""The QA tool's patient video jitter buffer (relay/_aiortc/jitter.py): a lost packet costs the
frames up to the next keyframe, not every frame until 512 more packets have arrived."""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from relay._aiortc.jitter import GIVE_UP_SECONDS, PatientJitterBuffer, starts_keyframe

PICTURE_ID = bytes((0x90, 0x80, 0x80, 0x05))  # X, S, partition 0; I; 15-bit picture id


def vp8(seq: int, ts: int, *, keyframe: bool = False, start: bool = True) -> RtpPacket:
    """One VP8 packet: the first of its frame (`start`) or a continuation."""
    if start:
        payload = PICTURE_ID + bytes((0x10 if keyframe else 0x11,)) + bytes(20)
    else:
        payload = bytes((0x80, 0x80, 0x80, 0x05)) + bytes(20)
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, payload=payload)
    packet._data = payload  # type: ignore[attr-defined]  # what aiortc's depayloader sets
    return packet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> tuple[list[JitterFrame], int]:
    """(frames handed out, keyframe requests)"""
    frames, asked = [], 0
    for packet in packets:
        pli, frame = buffer.add(packet)
        asked += pli
        if frame is not None:
            frames.append(frame)
    return frames, asked


def frames_of(count: int, first_seq: int, *, keyframe_at: int | None = None) -> list[RtpPacket]:
    """`count` two-packet frames, 3000 ticks apart."""
    packets = []
    for i in range(count):
        seq, ts = first_seq + 2 * i, 3000 * (first_seq + i)
        packets += [vp8(seq, ts, keyframe=i == keyframe_at), vp8(seq + 1, ts, start=False)]
    return packets


def test_starts_keyframe_reads_the_descriptor_and_the_vp8_header() -> None:
    assert starts_keyframe(vp8(1, 0, keyframe=True).payload)
    assert not starts_keyframe(vp8(1, 0).payload)  # an interframe's P bit is set
    assert not starts_keyframe(vp8(1, 0, start=False).payload)  # S bit clear
    assert starts_keyframe(bytes((0x10, 0x10)))  # no extension bits at all
    assert starts_keyframe(bytes((0x90, 0x80, 0x05, 0x10)))  # a 7-bit picture id
    assert not starts_keyframe(bytes((0x11, 0x10)))  # partition 1
    assert not starts_keyframe(bytes((0x90, 0x80, 0x85)))  # truncated
    assert not starts_keyframe(b"")


def test_without_a_hole_it_hands_out_what_aiortc_does() -> None:
    packets = frames_of(10, 1000, keyframe_at=0)
    mine, _ = feed(PatientJitterBuffer(Clock()), packets)
    theirs, _ = feed(JitterBuffer(capacity=512, is_video=True), packets)
    assert [f.timestamp for f in mine] == [f.timestamp for f in theirs]
    assert [f.data for f in mine] == [f.data for f in theirs]
    assert len(mine) == 9  # the last frame waits for the next one's first packet


def test_a_hole_filled_in_time_loses_nothing() -> None:
    clock = Clock()
    buffer = PatientJitterBuffer(clock)
    packets = frames_of(12, 1000, keyframe_at=0)
    lost = packets.pop(5)  # the second packet of the third frame
    late = [*packets[:10], lost, *packets[10:]]  # its retransmission, within the time
    frames, _ = feed(buffer, late[:10])
    assert len(frames) == 2  # the third frame blocks the rest
    clock.now += GIVE_UP_SECONDS / 2
    frames, asked = feed(buffer, late[10:])
    theirs, _ = feed(JitterBuffer(capacity=512, is_video=True), late)
    assert [f.timestamp for f in frames] == [f.timestamp for f in theirs[2:]]
    assert asked == 0 and buffer.holes_given_up == 0


def test_a_hole_given_up_skips_to_the_next_keyframe_and_asks_for_one() -> None:
    clock = Clock()
    buffer = PatientJitterBuffer(clock)
    packets = frames_of(8, 1000, keyframe_at=0)
    del packets[5]  # never comes
    frames, _ = feed(buffer, packets[:8])
    assert [f.timestamp for f in frames] == [3000 * 1000, 3000 * 1001]
    clock.now += GIVE_UP_SECONDS
    # the hole is given up: the interframes after it are not decodable, and are not handed out
    frames, asked = feed(buffer, packets[8:])
    assert frames == [] and asked >= 1 and buffer.holes_given_up == 1
    # the keyframe that the request brings is handed out, and what follows it
    after = frames_of(4, 1020, keyframe_at=0)
    frames, _ = feed(buffer, after)
    assert [f.timestamp for f in frames] == [3000 * 1020, 3000 * 1021, 3000 * 1022]
    assert frames[0].keyframe  # type: ignore[attr-defined]


def test_after_a_pause_the_first_keyframe_decodes_at_once() -> None:
    """Audio first paused the video: a hole from the congested seconds before the pause is
    still in the buffer when the video comes back, starting on a keyframe."""
    clock = Clock()
    buffer = PatientJitterBuffer(clock)
    packets = frames_of(6, 1000, keyframe_at=0)
    del packets[3]
    feed(buffer, packets)
    clock.now += 30.0  # nothing arrives while paused
    frames, asked = feed(buffer, frames_of(3, 1012, keyframe_at=0))
    assert [f.timestamp for f in frames] == [3000 * 1012, 3000 * 1013]
    assert asked == 0  # the keyframe was already there: nothing to ask for


def test_aiortc_alone_would_still_be_stalled() -> None:
    """The behaviour the patient buffer exists for (if aiortc changes it, this says so)."""
    buffer = JitterBuffer(capacity=512, is_video=True)
    packets = frames_of(6, 1000, keyframe_at=0)
    del packets[3]
    feed(buffer, packets)
    frames, _ = feed(buffer, frames_of(30, 1012, keyframe_at=0))
    assert len(frames) == 0
