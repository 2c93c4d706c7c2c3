"""The scrape-time collector: what it reads from the relay and how it names it."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from metrics.collector import RelayCollector
from tests.metrics.conftest import FakeRelay

T0 = 1000.0


def scrape(collector: RelayCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def series(text: str, name: str) -> list[dict[str, str]]:
    return [
        s.labels
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def make_collector(relay: FakeRelay | None, max_calls: int = 200) -> RelayCollector:
    return RelayCollector(lambda: relay, max_calls=max_calls, clock=lambda: T0 + 30)


def test_relay_wide_gauges_counters_and_histograms(fake_relay: FakeRelay) -> None:
    stats = fake_relay.stats
    stats.rooms_opened, stats.rooms_closed = 5, 3
    stats.participants_joined, stats.participants_left = 9, 6
    stats.connection_failures.update({"ice-failed": 2, "dtls failed!": 1})
    for v in (0.2, 0.4, 0.4, 7.0, 12.0):
        stats.setup_time.observe(v)
    for v in (0.0002, 0.003):
        stats.forwarding_delay.observe(v)
    fake_relay.add("room-a", "p1", "audio", "in", started_at=T0)
    fake_relay.add("room-a", "p2", "audio", "in", started_at=T0)
    text = scrape(make_collector(fake_relay))

    assert value(text, "smiling_relay_active_calls") == 1
    assert value(text, "smiling_relay_active_participants") == 2
    assert value(text, "smiling_relay_active_tracks") == 2
    assert value(text, "smiling_relay_calls_started_total") == 5
    assert value(text, "smiling_relay_calls_ended_total") == 3
    assert value(text, "smiling_relay_participants_joined_total") == 9
    assert value(text, "smiling_relay_participants_left_total") == 6
    assert value(text, "smiling_relay_connection_failures_total", reason="ice-failed") == 2
    # Reasons are sanitised into label-safe text.
    assert value(text, "smiling_relay_connection_failures_total", reason="dtls_failed_") == 1

    h = "smiling_relay_connection_setup_seconds"
    assert value(text, f"{h}_bucket", le="0.25") == 1
    assert value(text, f"{h}_bucket", le="0.5") == 3
    assert value(text, f"{h}_bucket", le="10.0") == 4
    assert value(text, f"{h}_bucket", le="+Inf") == 5
    assert value(text, f"{h}_count") == 5
    assert value(text, f"{h}_sum") == pytest.approx(20.0)
    f = "smiling_relay_forwarding_delay_seconds"
    assert value(text, f"{f}_bucket", le="0.00025") == 1
    assert value(text, f"{f}_bucket", le="+Inf") == 2


def test_media_path_errors_are_exported_as_a_counter(fake_relay: FakeRelay) -> None:
    assert value(scrape(make_collector(fake_relay)), "smiling_relay_media_path_errors_total") == 0
    fake_relay.stats.media_path_errors = 3
    text = scrape(make_collector(fake_relay))
    assert value(text, "smiling_relay_media_path_errors_total") == 3
    family = next(f for f in text_string_to_metric_families(text) if f.name.endswith("errors"))
    assert (family.name, family.type) == ("smiling_relay_media_path_errors", "counter")


def test_per_stream_series_carry_labels_and_values(fake_relay: FakeRelay) -> None:
    fake_relay.add(
        "room-a",
        "sockA",
        "video",
        "in",
        role="psychologist",
        codec="VP8",
        packets=1000,
        bytes=900_000,
        packets_lost=7,
        fraction_lost=0.02,
        jitter_seconds=0.004,
        rtt_seconds=0.05,
        nacks=11,
        keyframe_requests=3,
        keyframes=4,
        frames=300,
        frame_width=640,
        frame_height=480,
        remb_bps=800_000,
        estimate_bps=1_200_000,
        started_at=T0,
    )
    fake_relay.add(
        "room-a",
        "sockB",
        "video",
        "out",
        source="sockA",
        codec="VP8",
        packets=990,
        bytes=890_000,
        retransmits=5,
        keyframe_requests=2,
        started_at=T0 + 10,
    )
    text = scrape(make_collector(fake_relay))
    labels_in = {
        "call": "room-a",
        "participant": "sockA",
        "role": "psychologist",
        "source": "sockA",
        "kind": "video",
        "direction": "in",
    }
    assert value(text, "smiling_relay_stream_bytes_total", **labels_in) == 900_000
    assert value(text, "smiling_relay_stream_packets_total", **labels_in) == 1000
    assert value(text, "smiling_relay_stream_packets_lost_total", **labels_in) == 7
    assert value(text, "smiling_relay_stream_loss_ratio", **labels_in) == 0.02
    assert value(text, "smiling_relay_stream_jitter_seconds", **labels_in) == 0.004
    assert value(text, "smiling_relay_stream_round_trip_time_seconds", **labels_in) == 0.05
    assert value(text, "smiling_relay_stream_frames_total", **labels_in) == 300
    assert value(text, "smiling_relay_stream_frame_width_pixels", **labels_in) == 640
    assert value(text, "smiling_relay_stream_frame_height_pixels", **labels_in) == 480
    assert value(text, "smiling_relay_stream_nacks_total", **labels_in) == 11
    assert value(text, "smiling_relay_stream_keyframe_requests_total", **labels_in) == 3
    assert value(text, "smiling_relay_stream_keyframes_total", **labels_in) == 4
    assert value(text, "smiling_relay_stream_remb_bytes_per_second", **labels_in) == 100_000
    assert (
        value(text, "smiling_relay_stream_bandwidth_estimate_bytes_per_second", **labels_in)
        == 150_000
    )
    assert value(text, "smiling_relay_stream_age_seconds", **labels_in) == 30
    assert value(text, "smiling_relay_stream_info", codec="VP8", **labels_in) == 1
    assert value(text, "smiling_relay_call_participants", call="room-a") == 2

    labels_out = {"participant": "sockB", "source": "sockA", "direction": "out"}
    assert value(text, "smiling_relay_stream_bytes_total", **labels_out) == 890_000
    assert value(text, "smiling_relay_stream_retransmitted_packets_total", **labels_out) == 5
    # No RTT yet → no series rather than a misleading 0; no REMB either.
    assert value(text, "smiling_relay_stream_round_trip_time_seconds", **labels_out) is None
    assert value(text, "smiling_relay_stream_remb_bytes_per_second", **labels_out) is None
    # NACKs only exist on "in", retransmissions only on "out".
    assert value(text, "smiling_relay_stream_nacks_total", **labels_out) is None
    assert value(text, "smiling_relay_stream_retransmitted_packets_total", **labels_in) is None


def test_audio_streams_have_no_video_only_series(fake_relay: FakeRelay) -> None:
    fake_relay.add("room-a", "s1", "audio", "in", codec="opus", packets=50, frames=50)
    text = scrape(make_collector(fake_relay))
    assert value(text, "smiling_relay_stream_frames_total", kind="audio") == 50
    assert series(text, "smiling_relay_stream_keyframes_total") == []
    assert series(text, "smiling_relay_stream_frame_width_pixels") == []


def test_streams_with_identical_labels_are_summed(fake_relay: FakeRelay) -> None:
    fake_relay.add("room-a", "s1", "video", "in", packets=10, bytes=1000, jitter_seconds=0.01)
    fake_relay.add("room-a", "s1", "video", "in", packets=5, bytes=500, jitter_seconds=0.03)
    text = scrape(make_collector(fake_relay))
    assert series(text, "smiling_relay_stream_bytes_total") == [
        {
            "call": "room-a",
            "participant": "s1",
            "role": "client",
            "source": "s1",
            "kind": "video",
            "direction": "in",
        }
    ]
    assert value(text, "smiling_relay_stream_bytes_total") == 1500
    assert value(text, "smiling_relay_stream_jitter_seconds") == 0.03


def test_call_series_disappear_when_the_call_ends(fake_relay: FakeRelay) -> None:
    collector = make_collector(fake_relay)
    fake_relay.add("room-a", "s1", "audio", "in", bytes=10)
    fake_relay.add("room-b", "s2", "audio", "in", bytes=20)
    text = scrape(collector)
    assert {s["call"] for s in series(text, "smiling_relay_stream_bytes_total")} == {
        "room-a",
        "room-b",
    }
    fake_relay.close("room-a", opened_at_wall=0.0)
    text = scrape(collector)
    assert {s["call"] for s in series(text, "smiling_relay_stream_bytes_total")} == {"room-b"}
    assert "room-a" not in text


def test_cap_keeps_the_oldest_calls_and_counts_the_rest(fake_relay: FakeRelay) -> None:
    collector = make_collector(fake_relay, max_calls=2)
    fake_relay.add("room-new", "s3", "audio", "in", started_at=T0 + 20)
    fake_relay.add("room-old", "s1", "audio", "in", started_at=T0)
    fake_relay.add("room-old", "s1", "video", "in", started_at=T0)
    fake_relay.add("room-mid", "s2", "audio", "in", started_at=T0 + 10)
    text = scrape(collector)
    calls = {s["call"] for s in series(text, "smiling_relay_stream_bytes_total")}
    assert calls == {"room-old", "room-mid"}
    assert value(text, "smiling_relay_metrics_calls_over_cap") == 1
    assert value(text, "smiling_relay_metrics_dropped_calls_total") == 1
    assert value(text, "smiling_relay_metrics_dropped_series") == 1
    assert value(text, "smiling_relay_metrics_max_calls") == 2
    # Relay-wide figures still count every call.
    assert value(text, "smiling_relay_active_calls") == 3

    # Admission is sticky: a call that got series keeps them even if an older one shows up.
    fake_relay.add("room-older", "s4", "audio", "in", started_at=T0 - 100)
    text = scrape(collector)
    calls = {s["call"] for s in series(text, "smiling_relay_stream_bytes_total")}
    assert calls == {"room-old", "room-mid"}
    assert value(text, "smiling_relay_metrics_calls_over_cap") == 2
    assert value(text, "smiling_relay_metrics_dropped_calls_total") == 2

    # A freed slot goes to the oldest waiting call.
    fake_relay.close("room-mid", opened_at_wall=0.0)
    text = scrape(collector)
    calls = {s["call"] for s in series(text, "smiling_relay_stream_bytes_total")}
    assert calls == {"room-old", "room-older"}
    assert value(text, "smiling_relay_metrics_calls_over_cap") == 1
    assert value(text, "smiling_relay_metrics_dropped_calls_total") == 2  # counts calls, once


def test_cap_zero_disables_per_call_series(fake_relay: FakeRelay) -> None:
    fake_relay.add("room-a", "s1", "audio", "in")
    text = scrape(make_collector(fake_relay, max_calls=0))
    assert series(text, "smiling_relay_stream_bytes_total") == []
    assert value(text, "smiling_relay_active_calls") == 1


def test_no_relay_yet_gives_only_self_metrics() -> None:
    text = scrape(make_collector(None))
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == {
        "smiling_relay_metrics_max_calls",
        "smiling_relay_metrics_calls_over_cap",
        "smiling_relay_metrics_dropped_calls",
        "smiling_relay_metrics_collect_duration_seconds",
    }


def test_a_failing_relay_does_not_break_the_scrape(fake_relay: FakeRelay) -> None:
    def boom() -> int:
        raise RuntimeError("relay bug")

    fake_relay.active_calls = boom  # type: ignore[method-assign]
    text = scrape(make_collector(fake_relay))
    assert value(text, "smiling_relay_metrics_max_calls") == 200


def test_naming_conventions(fake_relay: FakeRelay) -> None:
    fake_relay.add("room-a", "s1", "video", "in", rtt_seconds=0.1, remb_bps=1, estimate_bps=1)
    fake_relay.add("room-a", "s1", "video", "in", frame_width=2, frame_height=2)
    fake_relay.stats.connection_failures["ice"] += 1
    text = scrape(make_collector(fake_relay))
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("smiling_relay_")
        for sample in family.samples:
            assert not math.isnan(sample.value)
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created"))
        if "seconds" in family.name or "bytes" in family.name:
            assert not family.name.endswith(("_ms", "_milliseconds", "_bits"))
        # No personal data: labels are ids, roles, kinds, directions, codecs, reasons.
        for sample in family.samples:
            assert set(sample.labels) <= {
                "call",
                "participant",
                "role",
                "source",
                "kind",
                "direction",
                "codec",
                "reason",
                "le",
            }
