"""Tone + timing marks, through Opus."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from synth.tone import (
    MARK_MS,
    MarkDetector,
    ToneGenerator,
    audio_frame_to_mono,
    tone_hz_for_source,
)

START = 1_732_170_000.137  # not aligned to a mark on purpose
SR = 48000


def opus_roundtrip(gen: ToneGenerator, first_sample: int, frames: int) -> list[av.AudioFrame]:
    """Encode/decode ``frames`` 20 ms frames with libopus configured like aiortc."""
    enc = av.CodecContext.create("libopus", "w")
    assert isinstance(enc, av.AudioCodecContext)
    enc.bit_rate = 96000
    enc.format = "s16"
    enc.layout = "stereo"
    enc.sample_rate = SR
    enc.time_base = fractions.Fraction(1, SR)
    enc.options = {"application": "voip"}
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=SR, frame_size=960)
    dec = av.CodecContext.create("libopus", "r")
    assert isinstance(dec, av.AudioCodecContext)
    dec.format = "s16"
    dec.layout = "stereo"
    dec.sample_rate = SR
    out: list[av.AudioFrame] = []
    for k in range(frames):
        frame = gen.render_frame(first_sample + k * 960, 960)
        frame.pts = k * 960
        frame.time_base = fractions.Fraction(1, SR)
        for rf in resampler.resample(frame):
            for packet in enc.encode(rf):
                out.extend(dec.decode(packet))
    return out


def feed_with_delay(
    det: MarkDetector, frames: list[av.AudioFrame], first: int, delay: float
) -> None:
    received = 0
    for frame in frames:
        received += frame.samples
        det.feed(frame, (first + received) / SR + delay)


def test_tone_frequencies_are_distinct() -> None:
    freqs = {tone_hz_for_source(i) for i in range(40)}
    assert len(freqs) == 40
    assert all(300 <= f <= 1080 for f in freqs)


def test_generator_marks_are_wall_clock_aligned() -> None:
    gen = ToneGenerator(3)
    first = gen.sample_index(START)
    x = gen.render_float(first, SR * 2)
    loud = np.flatnonzero(np.abs(x) > 0.2)
    onsets = loud[np.insert(np.diff(loud) > SR // 10, 0, True)]
    onset_times_ms = [(first + int(i)) * 1000 / SR for i in onsets]
    assert len(onset_times_ms) == 4
    for t in onset_times_ms:
        # first loud sample is within the 1 ms ramp after a multiple of 500 ms
        assert 0 <= t % 500 < 1.0
    assert gen.mark_times_ms(int(START * 1000), int(START * 1000) + 2000) == [
        round(t - t % 500) for t in onset_times_ms
    ]


def test_chunks_join_seamlessly() -> None:
    gen = ToneGenerator(9, channels=2)
    first = gen.sample_index(START)
    whole = gen.render(first, 4800)
    parts = np.concatenate([gen.render(first + i, 480) for i in range(0, 4800, 480)])
    assert whole.shape == (4800, 2)
    assert np.array_equal(whole, parts)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("delay_ms", [0, 120, 380])
def test_opus_roundtrip_latency(channels: int, delay_ms: int) -> None:
    gen = ToneGenerator(5, channels=channels)
    first = gen.sample_index(START)
    frames = opus_roundtrip(gen, first, 100)  # 2 s
    det = MarkDetector(source_id=5)
    feed_with_delay(det, frames, first, delay_ms / 1000)
    lat = det.latencies_ms
    assert len(lat) == 4
    # Opus adds its 6.5 ms look-ahead
    for v in lat:
        assert v == pytest.approx(delay_ms, abs=15)
    assert {round(m.mark_time * 1000) % 500 for m in det.marks} == {0}
    assert det.tone_present
    other = MarkDetector(source_id=6)
    feed_with_delay(other, frames, first, delay_ms / 1000)
    assert not other.tone_present
    assert len(other.marks) == 4  # marks are the same for every source


def test_small_negative_latency_is_reported_as_such() -> None:
    gen = ToneGenerator(1)
    first = gen.sample_index(START)
    det = MarkDetector(source_id=1)
    for k in range(100):
        det.feed_samples(gen.render(first + k * 960, 960), (first + (k + 1) * 960) / SR - 0.02)
    assert len(det.latencies_ms) == 4
    assert all(v == pytest.approx(-20, abs=3) for v in det.latencies_ms)


def test_irregular_chunk_sizes() -> None:
    gen = ToneGenerator(2)
    first = gen.sample_index(START)
    det = MarkDetector(source_id=2)
    rng = np.random.default_rng(0)
    pos = 0
    while pos < 2 * SR:
        n = int(rng.integers(100, 3000))
        det.feed_samples(gen.render(first + pos, n), (first + pos + n) / SR + 0.05)
        pos += n
    assert len(det.latencies_ms) == 4
    assert all(v == pytest.approx(50, abs=2) for v in det.latencies_ms)


def test_no_marks_in_tone_or_silence() -> None:
    gen = ToneGenerator(4, mark_amplitude=0.0)
    first = gen.sample_index(START)
    det = MarkDetector(source_id=4)
    for k in range(100):
        det.feed_samples(gen.render(first + k * 960, 960), (first + k * 960) / SR)
    assert det.marks == type(det.marks)()
    assert det.tone_present
    silent = MarkDetector(source_id=4)
    for k in range(100):
        silent.feed_samples(np.zeros(960, dtype=np.int16), k * 0.02)
    assert not silent.marks
    assert not silent.tone_present


def test_audio_frame_to_mono_formats() -> None:
    gen = ToneGenerator(0, channels=2)
    frame = gen.render_frame(0, 960)
    mono = audio_frame_to_mono(frame)
    assert mono.shape == (960,)
    planar = av.AudioResampler(format="fltp", layout="stereo", rate=SR).resample(frame)[0]
    assert np.allclose(audio_frame_to_mono(planar)[:900], mono[:900], atol=1e-3)


def test_mark_shorter_than_half_interval() -> None:
    with pytest.raises(ValueError, match="mark_ms"):
        ToneGenerator(0, mark_interval_ms=60, mark_ms=MARK_MS)


def test_stream_starting_inside_a_mark_is_not_an_onset() -> None:
    gen = ToneGenerator(2)
    first = gen.sample_index(1_732_170_000.010)  # 10 ms into a mark
    det = MarkDetector(source_id=2)
    for k in range(60):
        det.feed_samples(gen.render(first + k * 960, 960), (first + (k + 1) * 960) / SR)
    # only the marks at +0.5 s and +1.0 s, both with ~0 latency
    assert len(det.marks) == 2
    assert all(v == pytest.approx(0, abs=2) for v in det.latencies_ms)


def test_any_source_tone_when_no_source_given() -> None:
    gen = ToneGenerator(47)  # slot 7
    first = gen.sample_index(START)
    det = MarkDetector()
    for k in range(50):
        det.feed_samples(gen.render(first + k * 960, 960), (first + (k + 1) * 960) / SR)
    assert det.tone_present
    assert det.heard_source_slot == 7
    assert det.tone_amplitude == pytest.approx(0.06, abs=0.01)
    # 50 x 20 ms = 1 s = ten 100 ms windows, every one heard as slot 7 and nobody else
    assert det.heard_slots == {7: 10}


def test_heard_slots_tell_who_spoke() -> None:
    """A listener that gets another source after the first counts both: identity, not presence."""
    first = ToneGenerator(3).sample_index(START)
    det = MarkDetector()
    for k, gen in enumerate([ToneGenerator(3)] * 25 + [ToneGenerator(12)] * 25):
        det.feed_samples(gen.render(first + k * 960, 960), (first + (k + 1) * 960) / SR)
    assert det.heard_slots == {3: 5, 12: 5}
