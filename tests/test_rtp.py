"""RTP header helpers and keyframe detection of relay/rtp.py (pure functions, no network)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from relay.rtp import (
    build_extension_block,
    find_extension,
    h264_keyframe,
    payload_bounds,
    vp8_keyframe,
)


def test_vp8_keyframe_detection() -> None:
    assert vp8_keyframe(bytes([0x90, 0x80, 0x12, 0x00]))[0]  # X, I (7-bit picture id), keyframe
    assert not vp8_keyframe(bytes([0x90, 0x80, 0x12, 0x01]))[0]  # inter frame
    assert not vp8_keyframe(bytes([0x00, 0x00]))[0]  # not the start of a partition
    keyframe = bytes([0x10, 0x00, 0x00, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01])
    assert vp8_keyframe(keyframe) == (True, 640, 480)


def test_h264_keyframe_detection() -> None:
    assert h264_keyframe(bytes([0x65]))  # IDR
    assert h264_keyframe(bytes([0x78, 0x00, 0x02, 0x67, 0x42]))  # STAP-A with an SPS
    assert h264_keyframe(bytes([0x7C, 0x85]))  # FU-A start of an IDR
    assert not h264_keyframe(bytes([0x7C, 0x05]))  # FU-A continuation
    assert not h264_keyframe(bytes([0x41]))  # non-IDR slice
    assert not h264_keyframe(b"")


def test_extension_block_round_trip() -> None:
    block = build_extension_block([(1, b"0"), (3, b"\x01\x02\x03")])
    header = struct.pack("!BBHII", 0x90, 96, 1, 2, 3)
    packet = header + block + b"payload"
    start, end, ext_start, ext_end = payload_bounds(packet) or (0, 0, 0, 0)
    assert packet[start:end] == b"payload"
    assert find_extension(packet, ext_start, ext_end, 1) == b"0"
    assert find_extension(packet, ext_start, ext_end, 3) == b"\x01\x02\x03"
    assert find_extension(packet, ext_start, ext_end, 2) is None


def test_padding_and_malformed_packets() -> None:
    padded = struct.pack("!BBHII", 0xA0, 96, 1, 2, 3) + b"data" + b"\x00\x00\x03"
    start, end, _, _ = payload_bounds(padded) or (0, 0, 0, 0)
    assert padded[start:end] == b"data"
    assert payload_bounds(b"\x80\x60") is None  # shorter than a header
    assert payload_bounds(struct.pack("!BBHII", 0xA0, 96, 1, 2, 3) + b"\xff") is None


@given(st.binary(max_size=64))
def test_parsers_never_raise_on_garbage(data: bytes) -> None:
    bounds = payload_bounds(data)
    if bounds is not None:
        find_extension(data, bounds[2], bounds[3], 1)
    vp8_keyframe(data)
    h264_keyframe(data)


def test_the_extension_template_leaves_room_for_abs_send_time_alone() -> None:
    from relay.rtp import extension_template, find_extension

    assert extension_template([], 0) == (b"", b"")
    block, rest = extension_template([(4, b"1")], 0)
    assert rest == b"" and len(block) % 4 == 0
    head, tail = extension_template([(4, b"12")], 2)
    packet = bytes(12) + head + b"\xab\xcd\xef" + tail
    packet = bytes([0x90]) + packet[1:]
    bounds = payload_bounds(packet)
    assert bounds is not None and bounds[0] == len(packet)  # the block is whole, padded
    assert find_extension(packet, bounds[2], bounds[3], 4) == b"12"
    assert find_extension(packet, bounds[2], bounds[3], 2) == b"\xab\xcd\xef"
