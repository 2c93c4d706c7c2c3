"""Pre-encoded pattern clips and a track that publishes them without an encoder.

:func:`encode_clip` encodes pattern frames (see :mod:`synth.pattern`) once with
PyAV (``libvpx`` for VP8, ``libx264`` for H.264, both shipped with PyAV's
wheels). :class:`PacketVideoTrack` then loops the clip in real time, returning
:class:`av.Packet` objects from ``recv()``: aiortc's ``RTCRtpSender`` detects
packets and calls ``encoder.pack(packet)`` (RTP packetization only, no
encoding), using ``packet.pts`` / ``packet.time_base`` for the RTP timestamp.

The sender must negotiate the clip's codec (e.g. with
``transceiver.setCodecPreferences`` restricted to ``video/VP8`` or
``video/H264``); aiortc does not transcode packets. PLIs cannot force a
keyframe on this path, so clips carry a keyframe every ``keyframe_interval_s``
(late subscribers see video within that time).

Limitation: the pattern painted into a looped clip repeats every loop, and its
``capture_ms`` is the (fake) encode-time stamp ``capture_ms_base + t``. Probes
on such streams can count frames, measure fps/freezes and check
``source_id``/``intact``, but must not use ``capture_ms`` for latency and
should expect ``frame_index`` to wrap to 0 at each loop.
"""

from __future__ import annotations

import fractions
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from synth.pacing import Pacer
from synth.pattern import PatternPainter

__all__ = ["VIDEO_TIME_BASE", "EncodedFrame", "PacketVideoTrack", "encode_clip", "make_encoder"]

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)

Codec = Literal["vp8", "h264"]


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded picture.

    Attributes:
        data: VP8 frame, or H.264 Annex-B access unit (start codes, SPS/PPS on keyframes).
        pts: presentation time in 90 kHz units from the clip start.
        keyframe: whether the frame is independently decodable.
        frame_index: pattern frame_index painted into the picture.
    """

    data: bytes
    pts: int
    keyframe: bool
    frame_index: int


def make_encoder(
    codec: Codec, width: int, height: int, fps: int, bitrate: int, keyframe_interval: int
) -> av.VideoCodecContext:
    """A PyAV encoder configured roughly like aiortc's real-time encoders."""
    if codec == "vp8":
        ctx = av.CodecContext.create("libvpx", "w")
        ctx.options = {
            "bufsize": str(bitrate),
            "cpu-used": "-6",
            "deadline": "realtime",
            "lag-in-frames": "0",
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "static-thresh": "1",
            "undershoot-pct": "100",
            "overshoot-pct": "15",
        }
        ctx.qmin = 2
        ctx.qmax = 56
    elif codec == "h264":
        ctx = av.CodecContext.create("libx264", "w")
        ctx.options = {
            "level": "31",
            "tune": "zerolatency",
            "preset": "veryfast",
            "bufsize": str(bitrate),
            "maxrate": str(bitrate),
        }
        ctx.profile = "Baseline"
    else:
        raise ValueError(f"unsupported codec {codec!r} (use 'vp8' or 'h264')")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = "yuv420p"
    ctx.bit_rate = bitrate
    ctx.framerate = fractions.Fraction(fps, 1)
    ctx.time_base = fractions.Fraction(1, fps)
    ctx.gop_size = keyframe_interval
    ctx.thread_count = 1
    return ctx


def encode_clip(
    codec: Codec = "vp8",
    width: int = 320,
    height: int = 240,
    fps: int = 15,
    seconds: float = 4.0,
    bitrate: int = 300_000,
    *,
    source_id: int = 0,
    keyframe_interval_s: float = 2.0,
    capture_ms_base: int = 0,
) -> list[EncodedFrame]:
    """Encode ``round(fps * seconds)`` pattern frames (frame_index 0..n-1).

    Frame ``i`` is painted with ``capture_ms = capture_ms_base + i * 1000 // fps``.
    ``bitrate`` is in bits per second. The first frame is a keyframe, then one
    every ``keyframe_interval_s``. CPU cost: ~2-5 ms per frame at 640x480.
    """
    n = max(1, round(fps * seconds))
    keyint = max(1, round(fps * keyframe_interval_s))
    enc = make_encoder(codec, width, height, fps, bitrate, keyint)
    painter = PatternPainter(width, height, source_id)
    ticks = VIDEO_CLOCK_RATE // fps if VIDEO_CLOCK_RATE % fps == 0 else None
    out: list[EncodedFrame] = []

    def collect(packets: Sequence[av.Packet]) -> None:
        for p in packets:
            idx = int(p.pts) if p.pts is not None else len(out)
            pts = idx * ticks if ticks is not None else round(idx * VIDEO_CLOCK_RATE / fps)
            out.append(
                EncodedFrame(data=bytes(p), pts=pts, keyframe=bool(p.is_keyframe), frame_index=idx)
            )

    for i in range(n):
        frame = painter.paint(i, capture_ms_base + i * 1000 // fps)
        frame.pts = i
        frame.time_base = fractions.Fraction(1, fps)
        if i % keyint == 0:
            frame.pict_type = av.video.frame.PictureType.I
        collect(enc.encode(frame))
    collect(enc.encode(None))
    return out


def start_positions(
    keyframes: Sequence[bool], audio_packets: int, source_id: int
) -> tuple[int, int]:
    """Where a clip publisher starts its loop: (a keyframe of the clip, an Opus packet), chosen
    by ``source_id`` so that the keyframes (and audio) of different publishers do not align."""
    starts = [i for i, key in enumerate(keyframes) if key] or [0]
    return starts[source_id % len(starts)], (source_id * 7) % audio_packets


class PacketVideoTrack(MediaStreamTrack):
    """Loops pre-encoded frames in real time; ``recv()`` returns :class:`av.Packet`.

    Each packet has ``pts`` in 90 kHz units (monotonic across loops) and
    ``time_base = 1/90000``, as aiortc's ``Vp8Encoder.pack``/``H264Encoder.pack``
    expect. ``loops_completed`` counts finished passes over the clip.
    """

    kind = "video"

    def __init__(self, frames: Sequence[EncodedFrame], fps: int = 15, *, loop: bool = True) -> None:
        super().__init__()
        if not frames:
            raise ValueError("empty clip")
        self._frames = list(frames)
        self._fps = fps
        self._looping = loop
        self._pos = 0
        self._count = 0
        self._pacer = Pacer(1 / fps, max_lag=1.0)
        self.loops_completed = 0

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._pos >= len(self._frames):
            if not self._looping:
                self.stop()
                raise MediaStreamError
            self._pos = 0
            self.loops_completed += 1
        await self._pacer.wait(self._count)
        ef = self._frames[self._pos]
        packet = av.Packet(ef.data)
        packet.pts = self._count * VIDEO_CLOCK_RATE // self._fps
        packet.time_base = VIDEO_TIME_BASE
        self._pos += 1
        self._count += 1
        return packet
