"""Real-time synthetic tracks: pacing, timestamps, stamps, controls."""

from __future__ import annotations

import asyncio
import itertools
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from synth.pattern import read_pattern
from synth.tone import SAMPLE_RATE, audio_frame_to_mono
from synth.tracks import PatternVideoTrack, ToneAudioTrack


@pytest.mark.asyncio
async def test_video_track_paced_and_stamped() -> None:
    track = PatternVideoTrack(source_id=11, width=320, height=240, fps=30)
    frames: list[av.VideoFrame] = []
    stamps: list[float] = []
    t0 = time.monotonic()
    for _ in range(10):
        frame = await asyncio.wait_for(track.recv(), 2.0)
        frames.append(frame)
        stamps.append(time.time() * 1000)
    elapsed = time.monotonic() - t0
    track.stop()
    # paced: never faster than 30 fps (how late a loaded machine makes it is not a property)
    assert elapsed >= 9 / 30 - 0.02
    pts = [f.pts or 0 for f in frames]
    assert pts[0] == 0
    assert all(b - a == 3000 for a, b in itertools.pairwise(pts))
    assert all(f.time_base == Fraction(1, 90000) for f in frames)
    infos = [read_pattern(f) for f in frames]
    assert all(i is not None and i.intact and i.source_id == 11 for i in infos)
    assert [i.frame_index for i in infos if i] == list(range(10))
    caps = [i.capture_ms for i in infos if i]
    assert caps == sorted(caps)
    # stamped when produced: never after the consumer got the frame, and in production order
    for cap, seen in zip(caps, stamps, strict=True):
        assert cap <= seen + 1
    assert track.frames_sent == 10
    with pytest.raises(MediaStreamError):
        await track.recv()


@pytest.mark.asyncio
async def test_video_track_pause_and_freeze() -> None:
    track = PatternVideoTrack(source_id=1, width=160, height=120, fps=50)
    first = read_pattern(await track.recv())
    track.freeze()
    frozen = [read_pattern(await track.recv()) for _ in range(2)]
    track.unfreeze()
    track.pause()
    paused = read_pattern(await track.recv())
    track.resume()
    after = read_pattern(await track.recv())
    track.stop()
    assert first is not None
    assert first.frame_index == 0
    assert [f.frame_index for f in frozen if f] == [0, 0]
    assert paused is None
    assert after is not None
    assert after.frame_index == 1


@pytest.mark.asyncio
async def test_audio_track_paced_and_wall_clock_aligned() -> None:
    track = ToneAudioTrack(source_id=3)
    frames: list[av.AudioFrame] = []
    arrivals: list[float] = []
    for _ in range(10):
        frame = await asyncio.wait_for(track.recv(), 2.0)
        frames.append(frame)
        arrivals.append(time.time())
    track.stop()
    assert all(f.samples == 960 and f.sample_rate == SAMPLE_RATE for f in frames)
    assert all(f.format.name == "s16" and f.layout.name == "mono" for f in frames)
    assert [f.pts for f in frames] == [k * 960 for k in range(10)]
    # paced in real time: at least 9 frame periods between the first and last frame
    assert arrivals[-1] - arrivals[0] >= 0.18 - 0.02
    # content equals the wall-clock-addressed generator output
    origin = track.origin_sample
    assert origin is not None
    for k, frame in enumerate(frames):
        expected = track.generator.render(origin + k * 960, 960)
        assert np.array_equal(frame.to_ndarray().ravel(), expected)
        # frame k is returned once its last sample is "captured", never before (the 5 ms
        # cover the wall and monotonic clocks' disagreement; lateness is load, not asserted)
        end_time = (origin + (k + 1) * 960) / SAMPLE_RATE
        assert arrivals[k] >= end_time - 0.005
    with pytest.raises(MediaStreamError):
        await track.recv()


@pytest.mark.asyncio
async def test_audio_track_pause_stereo() -> None:
    track = ToneAudioTrack(source_id=3, channels=2, ptime_ms=10)
    f1 = await track.recv()
    track.pause()
    f2 = await track.recv()
    track.resume()
    f3 = await track.recv()
    track.stop()
    assert f1.samples == 480
    assert f1.layout.name == "stereo"
    assert np.abs(audio_frame_to_mono(f1)).max() > 0.01
    assert np.abs(audio_frame_to_mono(f2)).max() == 0
    assert np.abs(audio_frame_to_mono(f3)).max() > 0.01
    assert [f1.pts, f2.pts, f3.pts] == [0, 480, 960]
