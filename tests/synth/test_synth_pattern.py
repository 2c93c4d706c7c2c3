"""Pattern paint/read, including round trips through real VP8/H.264 codecs."""

from __future__ import annotations

import time
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264Decoder, H264Encoder, h264_depayload
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame

from synth.clip import encode_clip
from synth.pattern import (
    GRID_ROWS,
    PatternInfo,
    PatternPainter,
    paint_pattern,
    paint_pattern_planes,
    read_pattern,
    read_pattern_luma,
)

CAPTURE_BASE = 1_732_170_000_000
RESOLUTIONS = [(160, 120), (176, 144), (320, 240), (640, 480), (1280, 720)]


def expected(source_id: int, index: int, fps: int) -> tuple[int, int, int]:
    return source_id, index, CAPTURE_BASE + index * 1000 // fps


def key(info: PatternInfo) -> tuple[int, int, int]:
    return info.source_id, info.frame_index, info.capture_ms


@pytest.mark.parametrize(("width", "height"), RESOLUTIONS)
def test_paint_read_exact(width: int, height: int) -> None:
    for source_id, index, ms in [
        (0, 0, 0),
        (255, 0xFFFFFFFF, (1 << 48) - 1),
        (7, 12345, CAPTURE_BASE + 123),
    ]:
        frame = paint_pattern(width, height, index, ms, source_id)
        assert (frame.width, frame.height, frame.format.name) == (width, height, "yuv420p")
        assert read_pattern(frame) == PatternInfo(source_id, index, ms, intact=True)


def test_planes_and_frame_agree() -> None:
    planes = paint_pattern_planes(320, 240, 5, CAPTURE_BASE, 3)
    assert planes.shape == (360, 320)
    assert planes.dtype == np.uint8
    info = read_pattern_luma(planes[:240])
    assert info == PatternInfo(3, 5, CAPTURE_BASE, True)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="even"):
        PatternPainter(321, 240, 0)
    with pytest.raises(ValueError, match="source_id"):
        PatternPainter(320, 240, 256)


def test_background_colour_and_motion_differ() -> None:
    a = paint_pattern_planes(320, 240, 10, CAPTURE_BASE, 1)
    b = paint_pattern_planes(320, 240, 10, CAPTURE_BASE, 2)
    # chroma (background colour) differs between sources
    assert not np.array_equal(a[240:], b[240:])
    # the moving block moves between consecutive frames (outside the code rows)
    body = slice(240 * 6 // GRID_ROWS, 240 * 23 // GRID_ROWS)
    c = paint_pattern_planes(320, 240, 11, CAPTURE_BASE, 1)
    assert not np.array_equal(a[body], c[body])


def test_garbage_is_not_read() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        noise = rng.integers(0, 256, size=(240, 320), dtype=np.uint8)
        assert read_pattern_luma(noise) is None
    assert read_pattern_luma(np.full((240, 320), 16, dtype=np.uint8)) is None
    # binary noise at cell scale (worst case: looks like code cells)
    for _ in range(200):
        cells = rng.integers(0, 2, size=(GRID_ROWS, 32)).astype(np.uint8) * 219 + 16
        img = np.repeat(np.repeat(cells, 10, axis=0), 10, axis=1)
        assert read_pattern_luma(img) is None
    assert read_pattern_luma(np.zeros((10, 10), dtype=np.uint8)) is None


def test_corruption_is_detected_not_misread() -> None:
    rng = np.random.default_rng(2)
    planes = paint_pattern_planes(640, 480, 77, CAPTURE_BASE, 9)
    y = planes[:480]
    # noise over the code rows -> no value at all
    bad = y.copy()
    bad[20:100, 200:440] = rng.integers(0, 256, size=(80, 240), dtype=np.uint8)
    assert read_pattern_luma(bad) is None
    # a single flipped code cell -> CRC mismatch
    bad = y.copy()
    cell = bad[20:40, 300:320]
    bad[20:40, 300:320] = np.where(cell > 128, 16, 235).astype(np.uint8)
    assert read_pattern_luma(bad) is None
    # damage in the picture body only -> correct values, but not intact
    bad = y.copy()
    bad[300:380, 400:520] = rng.integers(0, 256, size=(80, 120), dtype=np.uint8)
    info = read_pattern_luma(bad)
    assert info == PatternInfo(9, 77, CAPTURE_BASE, intact=False)
    # damaged reference gradient -> not intact
    bad = y.copy()
    bad[100:120, :] = 128
    info = read_pattern_luma(bad)
    assert info is not None
    assert not info.intact
    assert key(info) == (9, 77, CAPTURE_BASE)


def _roundtrip_pyav(codec: str, width: int, height: int, bitrate: int) -> tuple[int, int, int]:
    fps = 15
    frames = encode_clip(
        codec,  # type: ignore[arg-type]
        width,
        height,
        fps,
        seconds=3.0,
        bitrate=bitrate,
        source_id=42,
        capture_ms_base=CAPTURE_BASE,
    )
    assert frames[0].keyframe
    decoder = av.CodecContext.create(codec, "r")
    assert isinstance(decoder, av.VideoCodecContext)
    ok = wrong = total = 0
    for ef in frames:
        for frame in decoder.decode(av.Packet(ef.data)):
            total += 1
            info = read_pattern(frame)
            if info is None:
                continue
            if key(info) == expected(42, ef.frame_index, fps):
                ok += 1
            else:
                wrong += 1
    return ok, wrong, total


@pytest.mark.parametrize("codec", ["vp8", "h264"])
@pytest.mark.parametrize(
    ("width", "height", "bitrate"),
    [(320, 240, 300_000), (640, 480, 300_000), (160, 120, 150_000), (1280, 720, 150_000)],
)
def test_roundtrip_pyav(codec: str, width: int, height: int, bitrate: int) -> None:
    ok, wrong, total = _roundtrip_pyav(codec, width, height, bitrate)
    assert total >= 40
    assert wrong == 0
    assert ok >= 0.95 * total


def _aiortc_roundtrip(codec: str, width: int, height: int) -> tuple[int, int, int, int]:
    """Through aiortc's own encoder, RTP packetizer, depayloader and decoder."""
    encoder: Vp8Encoder | H264Encoder
    decoder: Vp8Decoder | H264Decoder
    if codec == "vp8":
        encoder, decoder, depayload = Vp8Encoder(), Vp8Decoder(), vp8_depayload
        encoder.target_bitrate = 250_000  # aiortc's minimum for VP8
    else:
        encoder, decoder, depayload = H264Encoder(), H264Decoder(), h264_depayload
        encoder.target_bitrate = 500_000  # aiortc's minimum for H.264
    painter = PatternPainter(width, height, 17)
    ok = wrong = intact = total = 0
    for i in range(30):
        frame = painter.paint(i, CAPTURE_BASE + i * 66)
        frame.pts = i * 6000
        frame.time_base = Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=(i == 0))
        data = b"".join(depayload(p) for p in payloads)
        if not data:
            continue
        for out in decoder.decode(JitterFrame(data, timestamp)):
            assert isinstance(out, av.VideoFrame)
            total += 1
            info = read_pattern(out)
            if info is None:
                continue
            if key(info) == (17, i, CAPTURE_BASE + i * 66):
                ok += 1
                intact += info.intact
            else:
                wrong += 1
    return ok, wrong, intact, total


@pytest.mark.parametrize("codec", ["vp8", "h264"])
@pytest.mark.parametrize(("width", "height"), [(320, 240), (640, 480)])
def test_roundtrip_aiortc_codecs(codec: str, width: int, height: int) -> None:
    ok, wrong, intact, total = _aiortc_roundtrip(codec, width, height)
    assert total >= 28
    assert wrong == 0
    assert ok >= 0.95 * total
    assert intact >= 0.9 * total


def test_damaged_stream_never_misreads() -> None:
    """Corrupt some inter frames: damage must show up as None / not intact, never wrong."""
    rng = np.random.default_rng(3)
    fps = 15
    frames = encode_clip(
        "vp8", 320, 240, fps, 4.0, 300_000, source_id=5, capture_ms_base=CAPTURE_BASE
    )
    decoder = av.CodecContext.create("vp8", "r")
    wrong = not_intact = 0
    for ef in frames:
        data = bytearray(ef.data)
        if not ef.keyframe and rng.random() < 0.2:
            for _ in range(5):
                j = int(rng.integers(len(data) // 2, len(data)))
                data[j] ^= 0xFF
        try:
            decoded = decoder.decode(av.Packet(bytes(data)))
        except av.error.FFmpegError:
            continue
        for frame in decoded:
            info = read_pattern(frame)
            if info is None:
                continue
            if key(info) != expected(5, ef.frame_index, fps):
                wrong += 1
            not_intact += not info.intact
    assert wrong == 0
    assert not_intact > 0  # the damage was noticed


def test_cost_640x480() -> None:
    painter = PatternPainter(640, 480, 1)
    n = 50
    t0 = time.perf_counter()
    frames = [painter.paint(i, CAPTURE_BASE + i) for i in range(n)]
    t1 = time.perf_counter()
    for f in frames:
        assert read_pattern(f) is not None
    t2 = time.perf_counter()
    paint_ms = (t1 - t0) / n * 1000
    read_ms = (t2 - t1) / n * 1000
    # generous bounds (shared CI machine); typical: paint ~0.2 ms, read ~0.3 ms
    assert paint_ms < 5.0
    assert read_ms < 5.0
