"""Pre-encoded clips and the packet track (aiortc pack() path)."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
import pytest
from aiortc.codecs.h264 import H264Decoder, H264Encoder, h264_depayload
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from synth.clip import EncodedFrame, PacketVideoTrack, encode_clip
from synth.pattern import read_pattern


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_encode_clip_structure(codec: str) -> None:
    frames = encode_clip(
        codec,  # type: ignore[arg-type]
        320,
        240,
        fps=15,
        seconds=2.0,
        bitrate=300_000,
        source_id=3,
        keyframe_interval_s=1.0,
    )
    assert len(frames) == 30
    assert [f.frame_index for f in frames] == list(range(30))
    assert [f.pts for f in frames] == [i * 6000 for i in range(30)]
    assert [i for i, f in enumerate(frames) if f.keyframe] == [0, 15]
    total_bits = sum(len(f.data) for f in frames) * 8
    assert total_bits / 2.0 < 450_000  # roughly the requested bitrate
    if codec == "h264":
        assert frames[0].data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))


def test_encode_clip_rejects_unknown_codec() -> None:
    with pytest.raises(ValueError, match="unsupported codec"):
        encode_clip("vp9", 160, 120, 15, 1.0, 300_000)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_packet_track_through_aiortc_pack(codec: str) -> None:
    fps = 30
    clip = encode_clip(codec, 320, 240, fps=fps, seconds=0.5, bitrate=300_000, source_id=21)  # type: ignore[arg-type]
    assert len(clip) == 15
    track = PacketVideoTrack(clip, fps=fps)
    encoder: Vp8Encoder | H264Encoder
    decoder: Vp8Decoder | H264Decoder
    if codec == "vp8":
        encoder, decoder, depayload = Vp8Encoder(), Vp8Decoder(), vp8_depayload
    else:
        encoder, decoder, depayload = H264Encoder(), H264Decoder(), h264_depayload
    timestamps: list[int] = []
    indices: list[int] = []
    t0 = time.monotonic()
    for _ in range(20):  # more than one loop
        packet = await asyncio.wait_for(track.recv(), 2.0)
        assert isinstance(packet, av.Packet)
        assert packet.time_base == Fraction(1, 90000)
        payloads, timestamp = encoder.pack(packet)
        timestamps.append(timestamp)
        data = b"".join(depayload(p) for p in payloads)
        for frame in decoder.decode(JitterFrame(data, timestamp)):
            assert isinstance(frame, av.VideoFrame)
            info = read_pattern(frame)
            assert info is not None
            assert info.source_id == 21
            indices.append(info.frame_index)
    elapsed = time.monotonic() - t0
    track.stop()
    assert timestamps == [i * 3000 for i in range(20)]
    assert indices == list(range(15)) + list(range(5))
    assert track.loops_completed == 1
    assert 19 / fps - 0.02 <= elapsed < 19 / fps + 0.5
    with pytest.raises(MediaStreamError):
        await track.recv()


@pytest.mark.asyncio
async def test_packet_track_without_loop_ends() -> None:
    clip = [EncodedFrame(b"\x00", i * 3000, i == 0, i) for i in range(3)]
    track = PacketVideoTrack(clip, fps=100, loop=False)
    for _ in range(3):
        await track.recv()
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.readyState == "ended"
