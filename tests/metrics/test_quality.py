"""End-of-call summary arithmetic: bitrate, loss, jitter, RTT, freezes, E-model MOS."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from metrics.quality import (
    FREEZE_MAX_GAP_SECONDS,
    QualitySampler,
    audio_mos,
    delay_impairment,
    effective_equipment_impairment,
    mos_from_r,
    r_factor,
)
from relay.stats import CallClosed, StreamStats
from tests.metrics.conftest import FakeRelay

T0 = 100.0
WALL0 = 1_750_000_000.0


def observe(sampler: QualitySampler, relay: FakeRelay, t: float) -> None:
    sampler.observe(relay.stream_samples(), t, WALL0 + (t - T0))


def close(
    sampler: QualitySampler, relay: FakeRelay, call: str, t: float, setup: tuple[float, ...] = ()
) -> dict:
    final = tuple(s for s in relay.samples if s.call == call)
    relay.samples = [s for s in relay.samples if s.call != call]
    event = CallClosed(
        call=call,
        opened_at_wall=WALL0,
        closed_at_wall=WALL0 + (t - T0),
        participants=len({s.participant for s in final}),
        setup_times=setup,
        samples=final,
    )
    summary = sampler.finish(event, t)
    assert summary is not None
    return summary


# -- E-model ---------------------------------------------------------------------------------


def test_e_model_reference_values() -> None:
    assert delay_impairment(0) == 0
    assert delay_impairment(100) == pytest.approx(2.4)
    assert delay_impairment(200) == pytest.approx(0.024 * 200 + 0.11 * (200 - 177.3))
    assert effective_equipment_impairment(0) == 0
    # Opus Ie = 0, Bpl = 20: 5 % random loss → 95 × 5 / 25.
    assert effective_equipment_impairment(5) == pytest.approx(19.0)
    assert effective_equipment_impairment(100) == pytest.approx(95 * 100 / 120)
    assert mos_from_r(-5) == 1.0
    assert mos_from_r(0) == 1.0
    assert mos_from_r(100) == 4.5
    assert mos_from_r(93.2) == pytest.approx(4.41, abs=0.005)
    assert mos_from_r(50) == pytest.approx(2.58, abs=0.005)
    assert r_factor(0, 0) == pytest.approx(93.2)


def test_audio_mos_of_a_good_and_a_bad_path() -> None:
    mos, r, delay = audio_mos(rtt_seconds=0.04, jitter_seconds=0.005, loss_ratio=0.0)
    assert delay == pytest.approx(20 + 10 + 26.5)
    assert r == pytest.approx(93.2 - 0.024 * 56.5)
    assert mos > 4.3
    bad, _, _ = audio_mos(rtt_seconds=0.6, jitter_seconds=0.05, loss_ratio=0.1)
    assert 1.0 <= bad < 2.5
    assert mos_from_r(r) == mos


# -- a two-party call ------------------------------------------------------------------------

VIDEO_BPS = 62_500  # bytes per second (500 kbit/s)
AUDIO_BPS = 4_000  # 32 kbit/s


class Call:
    """Two participants, A (client) and B (psychologist), each sending audio + video."""

    def __init__(self, relay: FakeRelay) -> None:
        self.relay = relay
        common: dict[str, Any] = {"started_at": T0, "rtt_seconds": 0.04}
        self.a_in_v = relay.add("room-q", "A", "video", "in", codec="VP8", **common)
        self.a_in_a = relay.add(
            "room-q", "A", "audio", "in", codec="opus", jitter_seconds=0.005, **common
        )
        self.b_in_v = relay.add(
            "room-q", "B", "video", "in", role="psychologist", codec="VP8", **common
        )
        self.b_in_a = relay.add(
            "room-q",
            "B",
            "audio",
            "in",
            role="psychologist",
            codec="opus",
            jitter_seconds=0.005,
            **common,
        )
        self.b_out_v = relay.add(
            "room-q", "B", "video", "out", source="A", role="psychologist", **common
        )
        self.b_out_a = relay.add(
            "room-q",
            "B",
            "audio",
            "out",
            source="A",
            role="psychologist",
            jitter_seconds=0.005,
            **common,
        )
        self.a_out_v = relay.add("room-q", "A", "video", "out", source="B", **common)
        self.a_out_a = relay.add(
            "room-q", "A", "audio", "out", source="B", jitter_seconds=0.005, **common
        )

    @staticmethod
    def push(stats: StreamStats, nbytes: int, packets: int, frames: int) -> None:
        stats.bytes += nbytes
        stats.packets += packets
        stats.frames += frames

    def second(self, *, a_video_bytes: int = VIDEO_BPS, a_video_frames: int = 30) -> None:
        """One second of media in every stream."""
        for v in (self.a_in_v, self.b_out_v):
            self.push(v, a_video_bytes, 60, a_video_frames)
        for v in (self.b_in_v, self.a_out_v):
            self.push(v, VIDEO_BPS, 60, 30)
        for a in (self.a_in_a, self.b_out_a, self.b_in_a, self.a_out_a):
            self.push(a, AUDIO_BPS, 50, 50)


def test_summary_of_a_two_party_call(fake_relay: FakeRelay) -> None:
    sampler = QualitySampler()
    call = Call(fake_relay)
    observe(sampler, fake_relay, T0)  # nothing flowing yet
    for i in range(1, 11):
        if i == 6:  # A's video stalls for one interval: packets but no complete frame
            call.second(a_video_bytes=30_000, a_video_frames=0)
        else:
            call.second()
        observe(sampler, fake_relay, T0 + i)
    # Loss: the relay missed 10 of A's audio packets; B reported 5 lost of A's audio.
    call.a_in_a.packets_lost = 10
    call.b_out_a.packets_lost = 5
    call.second()  # the last second, only seen in the final counters
    summary = close(sampler, fake_relay, "room-q", T0 + 11, setup=(0.4, 0.6))

    assert summary["roomId"] == "room-q"
    assert summary["startedAt"] == datetime.fromtimestamp(WALL0, UTC)
    assert summary["durationSeconds"] == 11.0
    assert summary["participants"] == 2
    assert summary["participantsWithMedia"] == 2
    assert summary["completed"] is True
    assert summary["setupTimeSeconds"] == {"avg": 0.5, "max": 0.6, "total": 1.0, "count": 2}
    assert summary["samplingIntervals"] == 11

    # Media flowed from T0 to T0 + 11 (the final counters grew within one interval).
    full = (VIDEO_BPS + AUDIO_BPS) * 8
    a_total = (11 * (VIDEO_BPS + AUDIO_BPS) - (VIDEO_BPS - 30_000)) * 8 / 11
    assert summary["bitrate"]["in"]["avgBps"] == pytest.approx((a_total + full) / 2, rel=1e-6)
    assert summary["bitrate"]["in"]["minBps"] == pytest.approx((30_000 + AUDIO_BPS) * 8)
    assert summary["bitrate"]["out"]["minBps"] == pytest.approx((30_000 + AUDIO_BPS) * 8)

    in_packets = 11 * (60 + 50) * 2
    assert summary["packetLossPercent"]["in"] == pytest.approx(
        10 / (in_packets + 10) * 100, abs=1e-3
    )
    assert summary["packetLossPercent"]["out"] == pytest.approx(5 / in_packets * 100, abs=1e-3)
    # Jitter: audio streams 5 ms, video 0 → mean over the samples of all "in" streams.
    assert summary["jitterSeconds"]["in"] == {"avg": 0.0025, "max": 0.005}
    assert summary["rttSeconds"] == {"avg": 0.04, "max": 0.04}
    assert summary["freezes"] == {"count": 1, "totalSeconds": 1.0}

    mos = summary["audioMos"]
    assert len(mos["paths"]) == 2
    a_to_b = next(p for p in mos["paths"] if p["from"] == "A")
    loss = 1 - (1 - 10 / (550 + 10)) * (1 - 5 / 550)
    expected, _, delay = audio_mos(rtt_seconds=0.08, jitter_seconds=0.01, loss_ratio=loss)
    assert a_to_b["mos"] == round(expected, 2)
    assert a_to_b["oneWayDelayMs"] == round(delay, 1)
    assert a_to_b["lossPercent"] == pytest.approx(loss * 100, abs=1e-3)
    b_to_a = next(p for p in mos["paths"] if p["from"] == "B")
    assert b_to_a["mos"] > a_to_b["mos"]
    assert mos["min"] == a_to_b["mos"]

    streams = {(s["participant"], s["kind"], s["direction"]): s for s in summary["streams"]}
    b_view = streams[("B", "video", "out")]
    assert b_view["freezes"] == 1
    assert b_view["minFps"] == 0
    assert b_view["avgFps"] == pytest.approx(300 / 11, abs=0.01)
    assert streams[("A", "audio", "in")]["packetsLost"] == 10
    # No personal data in the document: ids and roles only.
    assert {s["role"] for s in summary["streams"]} == {"client", "psychologist"}
    assert sampler.calls == []


def test_a_call_closed_before_any_sample_still_has_a_summary(fake_relay: FakeRelay) -> None:
    sampler = QualitySampler()
    fake_relay.add("room-s", "A", "audio", "in", started_at=T0, bytes=4000, packets=50)
    summary = close(sampler, fake_relay, "room-s", T0 + 0.8)
    assert summary["participants"] == 1
    assert summary["completed"] is False
    assert summary["setupTimeSeconds"] is None
    assert summary["audioMos"] is None
    assert summary["bitrate"]["in"]["avgBps"] == pytest.approx(4000 * 8 / 0.8)
    assert summary["bitrate"]["in"]["minBps"] is None
    assert summary["bitrate"]["out"] == {"avgBps": None, "minBps": None}


def test_an_early_leaver_is_averaged_over_their_own_time(fake_relay: FakeRelay) -> None:
    sampler = QualitySampler()
    a = fake_relay.add("room-l", "A", "audio", "in", started_at=T0)
    b = fake_relay.add("room-l", "B", "audio", "in", started_at=T0)
    observe(sampler, fake_relay, T0)
    for i in range(1, 5):
        for s in (a, b):
            s.bytes += 1000
            s.packets += 50
        observe(sampler, fake_relay, T0 + i)
    # A leaves: the relay keeps A's final counters; B stays alone for a long time.
    a.bytes += 1000
    a.packets += 50
    left = [s for s in fake_relay.samples if s.participant == "A"]
    fake_relay.samples = [s for s in fake_relay.samples if s.participant != "A"]
    for i in range(5, 60):
        b.bytes += 1000
        b.packets += 50
        observe(sampler, fake_relay, T0 + i)
    fake_relay.samples.extend(left)
    summary = close(sampler, fake_relay, "room-l", T0 + 60)
    streams = {s["participant"]: s for s in summary["streams"]}
    assert streams["A"]["avgBps"] == pytest.approx(5000 * 8 / 5)
    assert streams["B"]["avgBps"] == pytest.approx(8000, rel=0.02)


def test_a_reused_transceiver_counts_from_where_the_previous_source_stopped(
    fake_relay: FakeRelay,
) -> None:
    sampler = QualitySampler()
    slot = fake_relay.add("room-r", "B", "video", "out", source="A1", started_at=T0)
    observe(sampler, fake_relay, T0)
    for i in range(1, 4):
        slot.bytes += 10_000
        slot.packets += 10
        observe(sampler, fake_relay, T0 + i)
    # A1 reloaded the page and came back as A2: the relay reuses B's transceiver and counters.
    sample = fake_relay.samples.pop()
    fake_relay.samples.append(type(sample)("room-r", "B", "client", "A2", slot))
    for i in range(4, 6):
        slot.bytes += 5_000
        slot.packets += 5
        observe(sampler, fake_relay, T0 + i)
    summary = close(sampler, fake_relay, "room-r", T0 + 6)
    streams = {s["source"]: s for s in summary["streams"]}
    assert streams["A1"]["bytes"] == 30_000
    assert streams["A2"]["bytes"] == 10_000
    assert streams["A2"]["minBps"] == pytest.approx(40_000)


@pytest.mark.parametrize(
    ("pattern", "freezes", "seconds"),
    [
        # frames per interval; None = no packets at all in that interval
        ([30, 30, 0, 0, 30, 30], 1, 2.0),  # stall with packets
        ([30, None, None, 30], 1, 2.0),  # short silence: a freeze
        ([30] + [None] * int(FREEZE_MAX_GAP_SECONDS + 2) + [30], 0, 0.0),  # camera off
        ([30, 30, 0, 0], 1, 2.0),  # stalled until the end, packets still coming
        ([30, 30, None, None], 0, 0.0),  # stopped sending at the end: left, not frozen
        ([None, None, 30, 0, 30, 0, 30], 2, 2.0),  # nothing before the first frame counts
    ],
)
def test_freeze_definition(
    fake_relay: FakeRelay, pattern: list[int | None], freezes: int, seconds: float
) -> None:
    sampler = QualitySampler()
    v = fake_relay.add("room-f", "B", "video", "out", source="A", started_at=T0)
    observe(sampler, fake_relay, T0)
    for i, frames in enumerate(pattern, start=1):
        if frames is not None:
            v.packets += 40
            v.bytes += 40_000
            v.frames += frames
        observe(sampler, fake_relay, T0 + i)
    summary = close(sampler, fake_relay, "room-f", T0 + len(pattern) + 0.2)
    assert summary["freezes"] == {"count": freezes, "totalSeconds": seconds}


def test_calls_without_a_close_event_are_forgotten(fake_relay: FakeRelay) -> None:
    sampler = QualitySampler()
    fake_relay.add("room-z", "A", "audio", "in", started_at=T0)
    observe(sampler, fake_relay, T0)
    assert sampler.calls == ["room-z"]
    fake_relay.samples.clear()
    observe(sampler, fake_relay, T0 + 1000)
    assert sampler.calls == []


def test_interrupted_call_summary(fake_relay: FakeRelay) -> None:
    sampler = QualitySampler()
    s = fake_relay.add("room-i", "A", "audio", "in", started_at=T0)
    observe(sampler, fake_relay, T0)
    s.bytes, s.packets = 8000, 100
    observe(sampler, fake_relay, T0 + 2)
    summary = sampler.finish_interrupted("room-i", T0 + 2, WALL0 + 2)
    assert summary is not None
    assert summary["endReason"] == "shutdown"
    assert summary["completed"] is None
    assert summary["durationSeconds"] == pytest.approx(2.0)
    assert sampler.finish_interrupted("room-i", T0 + 3, WALL0 + 3) is None
    # The relay's own close event after shutdown must not produce a second summary.
    closed = CallClosed("room-i", WALL0, WALL0 + 3, 1, (), tuple(fake_relay.samples))
    assert sampler.finish(closed, T0 + 3) is None


def test_a_room_used_again_gets_a_second_summary(fake_relay: FakeRelay) -> None:
    sampler = QualitySampler()
    for start in (T0, T0 + 100):
        s = fake_relay.add("room-again", "A", "audio", "in", started_at=start)
        observe(sampler, fake_relay, start)
        s.bytes, s.packets = 4000, 50
        observe(sampler, fake_relay, start + 1)
        summary = close(sampler, fake_relay, "room-again", start + 2)
        assert summary["bitrate"]["in"]["avgBps"] == pytest.approx(4000 * 8)
