"""RTP header reading and writing on raw bytes, and codec-specific keyframe detection.

The relay forwards packets without aiortc's `RtpPacket` objects: these helpers read the few header
fields it needs with one `struct` call and build the rewritten header the same way.
"""

from __future__ import annotations

import struct
import time

FIXED_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
ONE_BYTE_PROFILE = 0xBEDE
ABS_SEND_TIME_SCALE = 1 << 18  # abs-send-time is 6.18 fixed-point seconds


def payload_bounds(data: bytes) -> tuple[int, int, int, int] | None:
    """(payload start, payload end, extension start, extension end) or None when malformed.

    The extension range is empty when the packet has no header extension.
    """
    size = len(data)
    if size < 12:
        return None
    first = data[0]
    start = 12 + (first & 0x0F) * 4
    ext_start = ext_end = start
    if first & 0x10:
        if start + 4 > size:
            return None
        ext_end = start + 4 + ((data[start + 2] << 8) | data[start + 3]) * 4
        ext_start = start + 4
        start = ext_end
    end = size
    if first & 0x20:
        end -= data[-1]
    if start > end:
        return None
    return start, end, ext_start, ext_end


def find_extension(data: bytes, ext_start: int, ext_end: int, ext_id: int) -> bytes | None:
    """The value of one-byte-header extension `ext_id`, if present."""
    if ext_start == ext_end or ext_id <= 0:
        return None
    if (data[ext_start - 4] << 8 | data[ext_start - 3]) != ONE_BYTE_PROFILE:
        return None
    pos = ext_start
    while pos < ext_end:
        byte = data[pos]
        if byte == 0:  # padding between elements
            pos += 1
            continue
        element_id = byte >> 4
        length = (byte & 0x0F) + 1
        if element_id == 15:
            return None
        if element_id == ext_id:
            return data[pos + 1 : pos + 1 + length]
        pos += 1 + length
    return None


def abs_send_time_now() -> bytes:
    return (int(time.monotonic() * ABS_SEND_TIME_SCALE) & 0xFFFFFF).to_bytes(3, "big")


def build_extension_block(elements: list[tuple[int, bytes]]) -> bytes:
    """A one-byte-header extension block (RFC 8285) carrying `elements`, padded to 32 bits."""
    body = b"".join(bytes([(ext_id << 4) | (len(value) - 1)]) + value for ext_id, value in elements)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", ONE_BYTE_PROFILE, len(body) // 4) + body


def extension_template(
    elements: list[tuple[int, bytes]], abs_send_time_id: int = 0
) -> tuple[bytes, bytes]:
    """A sender's header extension block cut around abs-send-time's value: (what goes before
    the 3 value bytes, what goes after). `elements` are written as given; abs-send-time, when
    its id is given, is the last element, its value written per packet between the two parts.
    Without abs-send-time the block is all prefix; without any element both are empty."""
    if abs_send_time_id:
        elements = [*elements, (abs_send_time_id, b"\x00\x00\x00")]
    if not elements:
        return b"", b""
    block = build_extension_block(elements)
    if not abs_send_time_id:
        return block, b""
    cut = 4 + sum(1 + len(value) for _, value in elements[:-1]) + 1
    return block[:cut], block[cut + 3 :]


def vp8_keyframe(payload: bytes) -> tuple[bool, int, int]:
    """(is the start of a keyframe, width, height) for a VP8 RTP payload (RFC 7741)."""
    size = len(payload)
    if size < 1:
        return False, 0, 0
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # not the start of partition 0
        return False, 0, 0
    pos = 1
    if first & 0x80:  # extended control bits
        if size < 2:
            return False, 0, 0
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # picture id, 7 or 15 bits
            if pos >= size:
                return False, 0, 0
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # TL0PICIDX
            pos += 1
        if ext & 0x30:  # TID / KEYIDX
            pos += 1
    if pos >= size or payload[pos] & 0x01:  # inverse key frame flag
        return False, 0, 0
    if size >= pos + 10 and payload[pos + 3 : pos + 6] == b"\x9d\x01\x2a":
        width = (payload[pos + 6] | payload[pos + 7] << 8) & 0x3FFF
        height = (payload[pos + 8] | payload[pos + 9] << 8) & 0x3FFF
        return True, width, height
    return True, 0, 0


H264_IDR = 5
H264_SPS = 7
H264_STAP_A = 24
H264_FU_A = 28


def h264_keyframe(payload: bytes) -> bool:
    """Whether an H.264 RTP payload (RFC 6184) starts an IDR picture or carries its SPS."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (H264_IDR, H264_SPS):
        return True
    if nal_type == H264_FU_A:
        return len(payload) > 1 and bool(payload[1] & 0x80) and payload[1] & 0x1F == H264_IDR
    if nal_type == H264_STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            nal_size = payload[pos] << 8 | payload[pos + 1]
            if payload[pos + 2] & 0x1F in (H264_IDR, H264_SPS):
                return True
            pos += 2 + nal_size
    return False
