"""Probe bookkeeping, fed directly (no network)."""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import pytest

from synth.pattern import PatternPainter
from synth.probe import AudioProbe, VideoProbe, percentile
from synth.tone import ToneGenerator
from synth.tracks import PatternVideoTrack, ToneAudioTrack

T0 = 1_732_170_000.0


def video_frame(painter: PatternPainter, index: int, capture_s: float) -> av.VideoFrame:
    return painter.paint(index, int(capture_s * 1000))


def test_video_probe_counts_latency_fps_freezes() -> None:
    painter = PatternPainter(320, 240, 4)
    probe = VideoProbe(expected_source_id=4)
    # 30 frames at 15 fps, 80 ms transit
    for i in range(30):
        cap = T0 + i / 15
        probe.feed(video_frame(painter, i, cap), arrival=cap + 0.080)
    # the same picture again (a repeated frame) + a non-pattern frame
    probe.feed(video_frame(painter, 29, T0 + 29 / 15), arrival=T0 + 2.2)
    black = av.VideoFrame.from_ndarray(np.zeros((360, 320), dtype=np.uint8), format="yuv420p")
    probe.feed(black, arrival=T0 + 2.3)
    # 500 ms stall, then resume
    cap = T0 + 2.5
    probe.feed(video_frame(painter, 30, cap), arrival=cap + 0.080)

    assert probe.frames_received == 33
    assert probe.frames_decoded == 32
    assert probe.frames_intact == 32
    assert probe.new_frames == 31
    assert probe.source_ids_seen == {4}
    assert probe.frames_wrong_source == 0
    assert probe.last_info is not None
    assert probe.last_info.frame_index == 30
    assert probe.first_frame_at == pytest.approx(T0 + 0.080)
    assert probe.first_pattern_at == probe.first_frame_at
    assert len(probe.latencies_ms) == 31
    # capture_ms is truncated to whole ms: latency within 1 ms of 80
    assert all(79.99 <= v < 81.01 for v in probe.latencies_ms)
    assert probe.latency_stats()["p50"] == pytest.approx(80, abs=1)
    assert probe.fps(window_s=1.0, now=T0 + 29 / 15 + 0.081) == pytest.approx(15, abs=1)
    assert len(probe.freezes) == 1
    freeze = probe.freezes[0]
    assert freeze.frame_index == 29
    assert freeze.duration_ms == pytest.approx((2.5 - 29 / 15) * 1000, abs=1)
    assert probe.resolutions_seen == {(320, 240)}
    assert probe.current_freeze_ms(now=T0 + 2.58 + 0.3) == pytest.approx(300, abs=1)


def test_video_probe_wrong_source_and_no_capture_ms() -> None:
    probe = VideoProbe(expected_source_id=1, use_capture_ms=False)
    probe.feed(video_frame(PatternPainter(160, 120, 2), 0, T0), arrival=T0)
    assert probe.frames_wrong_source == 1
    assert not probe.latencies_ms


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


@pytest.mark.asyncio
async def test_wait_for_success_and_timeout_message() -> None:
    painter = PatternPainter(160, 120, 8)
    probe = VideoProbe()

    async def feeder() -> None:
        for i in range(5):
            await asyncio.sleep(0.01)
            probe.feed(video_frame(painter, i, T0), arrival=T0 + i)

    task = asyncio.create_task(feeder())
    await probe.wait_for_frames(5, timeout=2.0, intact=True)
    await task
    await probe.wait_for_source(8, timeout=0.1)
    with pytest.raises(TimeoutError, match=r"10 frames.*frames_received=5.*sources=\[8\]"):
        await probe.wait_for_frames(10, timeout=0.05)


@pytest.mark.asyncio
async def test_probe_consumes_track_until_it_ends() -> None:
    track = PatternVideoTrack(source_id=6, width=160, height=120, fps=30)
    probe = VideoProbe()
    probe.start(track)
    await probe.wait_for_frames(5, timeout=3.0, intact=True)
    assert probe.source_ids_seen == {6}
    assert probe.latencies_ms
    # same host, in-process: never negative (capture is stamped before the probe sees it);
    # how large under load is scheduling, not the probe
    assert all(v >= -1 for v in probe.latencies_ms)
    track.stop()
    with pytest.raises(TimeoutError, match="track ended"):
        await probe.wait_for_frames(1000, timeout=3.0)
    assert probe.ended
    await probe.stop()


@pytest.mark.asyncio
async def test_probe_stop_cancels() -> None:
    track = PatternVideoTrack(source_id=6, width=160, height=120, fps=30)
    probe = VideoProbe()
    probe.start(track)
    await probe.wait_for_frames(1, timeout=3.0)
    await probe.stop()
    n = probe.frames_received
    await asyncio.sleep(0.1)
    assert probe.frames_received == n
    track.stop()


def test_audio_probe_fed_directly() -> None:
    gen = ToneGenerator(12, channels=2)
    sr = 48000
    first = gen.sample_index(T0 + 0.3)
    probe = AudioProbe(source_id=12)
    for k in range(75):  # 1.5 s
        frame = gen.render_frame(first + k * 960, 960)
        frame.pts = k * 960
        frame.time_base = fractions.Fraction(1, sr)
        probe.feed(frame, arrival=(first + (k + 1) * 960) / sr + 0.045)
    assert probe.frames_received == 75
    assert probe.samples_received == 75 * 960
    assert probe.first_audio_at == pytest.approx(T0 + 0.3 + 0.02 + 0.045, abs=0.001)
    assert len(probe.marks) == 3
    assert all(v == pytest.approx(45, abs=2) for v in probe.mark_latencies_ms)
    assert probe.tone_present
    assert probe.tone_amplitude == pytest.approx(0.06, abs=0.01)
    assert probe.sample_rates_seen == {48000}
    assert probe.channels_seen == {2}
    assert "marks=3" in probe.summary()


@pytest.mark.asyncio
async def test_audio_probe_on_live_track() -> None:
    track = ToneAudioTrack(source_id=2)
    probe = AudioProbe(source_id=2)
    probe.start(track)
    await probe.wait_for_marks(1, timeout=3.0)
    await probe.wait_for_tone(timeout=3.0)
    assert probe.first_audio_at is not None
    # in-process: only scheduling delay, which is never negative (a mark is never heard early)
    assert all(v >= -5 for v in probe.mark_latencies_ms)
    await probe.stop()
    track.stop()
