"""A producer packet by packet: receive statistics, NACK upstream, RTX unwrapping, PLI, REMB."""

from __future__ import annotations

import itertools

from relay.producer import REMB_CHANGE_THRESHOLD, REMB_FLOOR_BPS
from tests.relay.unit.conftest import (
    OPUS,
    PUBLISHER_SSRC,
    VP8,
    VP8_DELTA,
    VP8_KEYFRAME,
    Bench,
    CaptureSink,
    Upstream,
    rtp,
    rtx,
)

AUDIO_STEP = 960


def video(seq: int, ts: int = 0, payload: bytes = VP8_DELTA) -> bytes:
    return rtp(seq, ts, payload, pt=VP8.payload_type, marker=1)


# -- receive statistics → receiver reports ----------------------------------------------------


def test_receiver_report_counts_loss_and_the_fraction_per_interval(bench: Bench) -> None:
    producer = bench.producer(OPUS)
    assert producer.receiver_report(bench.clock()) is None  # nothing received yet
    for seq in (0, 1, 2, 5, 6, 7, 8, 9):  # 3 and 4 lost
        producer.on_rtp(rtp(seq, seq * AUDIO_STEP), bench.clock())
    report = producer.receiver_report(bench.clock())
    assert report is not None
    assert report.ssrc == PUBLISHER_SSRC
    assert (report.packets_lost, report.highest_sequence) == (2, 9)
    assert report.fraction_lost == (2 << 8) // 10
    assert producer.stats.packets_lost == 2
    assert producer.stats.fraction_lost == report.fraction_lost / 256

    for seq in range(10, 20):  # a clean interval
        producer.on_rtp(rtp(seq, seq * AUDIO_STEP), bench.clock())
    report = producer.receiver_report(bench.clock())
    assert report is not None
    assert (report.packets_lost, report.fraction_lost, report.highest_sequence) == (2, 0, 19)

    producer.on_rtp(rtp(3, 3 * AUDIO_STEP), bench.clock())  # a late packet makes good a loss
    report = producer.receiver_report(bench.clock())
    assert report is not None and (report.packets_lost, report.fraction_lost) == (1, 0)


def test_the_highest_sequence_is_extended_across_a_wraparound(bench: Bench) -> None:
    producer = bench.producer(OPUS)
    for seq in (65534, 65535, 0, 1):
        producer.on_rtp(rtp(seq, 0), bench.clock())
    report = producer.receiver_report(bench.clock())
    assert report is not None
    assert (report.highest_sequence, report.packets_lost) == (0x10000 + 1, 0)


def test_jitter_is_the_rfc_3550_estimate(bench: Bench) -> None:
    producer = bench.producer(OPUS)
    late = [0.0, 0.004, 0.0, 0.010, 0.002, 0.0, 0.007, 0.001]  # seconds behind schedule
    start = bench.clock()
    for seq, delay in enumerate(late):
        producer.on_rtp(rtp(seq, seq * AUDIO_STEP), start + seq * 0.02 + delay)
    expected = 0.0
    for previous, current in itertools.pairwise(late):
        expected += (abs(current - previous) * 48_000 - expected) / 16
    report = producer.receiver_report(bench.clock())
    assert report is not None
    assert report.jitter == int(expected) > 0
    assert abs(producer.stats.jitter_seconds - expected / 48_000) < 1e-9


# -- loss → NACK upstream, retransmissions unwrapped ------------------------------------------


def test_a_gap_is_nacked_upstream_at_once(bench: Bench) -> None:
    upstream = Upstream()
    producer = bench.producer(VP8, upstream=upstream)
    for seq in (10, 11, 14):
        producer.on_rtp(video(seq), bench.clock())
    assert upstream.nacks() == [[12, 13]]
    assert producer.stats.nacks == 2

    producer.on_rtp(rtx(12, rtx_seq=500, ts=0, payload=VP8_DELTA), bench.clock())
    producer.on_rtp(video(16), bench.clock())  # 12 came back; 13 and now 15 are missing
    assert upstream.nacks()[-1] == [13, 15]

    bench.tick(1.1)
    producer.receiver_report(bench.clock())  # gives up on what is older than a second
    producer.on_rtp(video(18), bench.clock())
    assert upstream.nacks()[-1] == [17]


def test_a_gap_across_the_wraparound_is_nacked(bench: Bench) -> None:
    upstream = Upstream()
    producer = bench.producer(VP8, upstream=upstream)
    for seq in (65534, 65535, 2):
        producer.on_rtp(video(seq), bench.clock())
    assert upstream.nacks() == [[0, 1]]


def test_without_nack_negotiated_nothing_is_asked(bench: Bench) -> None:
    upstream = Upstream()
    producer = bench.producer(OPUS, upstream=upstream)
    for seq in (1, 2, 9):
        producer.on_rtp(rtp(seq, 0), bench.clock())
    assert upstream.nacks() == []
    report = producer.receiver_report(bench.clock())
    assert report is not None and report.packets_lost == 6


def test_a_retransmission_is_forwarded_as_the_original_packet(
    bench: Bench, sink: CaptureSink
) -> None:
    producer = bench.producer(VP8)
    bench.forwarder(producer, sink)
    producer.on_rtp(video(20, 0, VP8_KEYFRAME), bench.clock())
    producer.on_rtp(video(22, 6000), bench.clock())
    producer.on_rtp(rtx(21, rtx_seq=7, ts=3000, payload=b"\x10\x01resent"), bench.clock())
    producer.on_rtp(rtx(0, rtx_seq=8, ts=3000, payload=b""), bench.clock())  # padding probe
    first, after_gap, resent = sink.take()

    assert (resent.seq - first.seq) & 0xFFFF == 1
    assert (resent.ts - first.ts) & 0xFFFFFFFF == 3000
    assert resent.pt == VP8.payload_type and resent.payload == b"\x10\x01resent"
    assert (after_gap.seq - first.seq) & 0xFFFF == 2
    assert producer.stats.packets == 3  # the padding probe is not media
    assert producer.media_ssrc == PUBLISHER_SSRC  # the RTX SSRC never becomes the media SSRC


# -- keyframe requests ------------------------------------------------------------------------


def test_keyframe_requests_go_upstream_at_most_once_per_half_second(bench: Bench) -> None:
    upstream = Upstream()
    producer = bench.producer(VP8, upstream=upstream)
    viewers = [bench.forwarder(producer, CaptureSink()) for _ in range(2)]
    producer.on_rtp(video(1, 0, VP8_KEYFRAME), bench.clock())
    assert upstream.plis() == []  # the keyframe came by itself

    for viewer in viewers:  # both subscribers lose their picture at once
        viewer.on_keyframe_request()
    assert len(upstream.plis()) == 1
    bench.tick(0.3)
    viewers[0].on_keyframe_request()
    assert len(upstream.plis()) == 1
    bench.tick(0.2)
    viewers[1].on_keyframe_request()
    assert len(upstream.plis()) == 2
    assert [v.stats.keyframe_requests for v in viewers] == [2, 2]
    assert producer.stats.keyframe_requests == 2

    audio_upstream = Upstream()
    audio = bench.producer(OPUS, upstream=audio_upstream)
    audio.on_rtp(rtp(1, 0), bench.clock())
    audio.request_keyframe()
    assert audio_upstream.plis() == []


# -- REMB -------------------------------------------------------------------------------------


def test_remb_is_the_weakest_estimate_sent_on_a_5_percent_change(bench: Bench) -> None:
    assert REMB_CHANGE_THRESHOLD == 0.05
    upstream = Upstream()
    producer = bench.producer(VP8, upstream=upstream)
    fast, slow = (bench.forwarder(producer, CaptureSink()) for _ in range(2))
    producer.on_rtp(video(1, 0, VP8_KEYFRAME), bench.clock())

    fast.on_remb(1_000_000)
    slow.on_remb(800_000)
    assert upstream.rembs() == [1_000_000, 800_000]
    slow.on_remb(780_000)  # 2.5 % below what was sent: not worth a packet
    fast.on_remb(2_000_000)  # not the minimum: nothing changes
    assert upstream.rembs() == [1_000_000, 800_000]
    producer.update_bandwidth(force=True)  # the periodic refresh sends the current minimum
    assert upstream.rembs()[-1] == 780_000
    slow.on_remb(700_000)
    assert upstream.rembs()[-1] == 700_000
    assert producer.stats.remb_bps == 700_000

    producer.stats.estimate_bps = 500_000  # the relay's own estimate of the uplink
    producer.update_bandwidth()
    assert upstream.rembs()[-1] == 500_000
    producer.stats.estimate_bps = None

    slow.on_remb(10_000)
    assert upstream.rembs()[-1] == REMB_FLOOR_BPS == 30_000
    slow.detach()  # the weakest subscriber leaves: the publisher may speed up again
    assert upstream.rembs()[-1] == 2_000_000
    assert producer.forwarders == (fast,)

    audio_upstream = Upstream()
    audio = bench.producer(OPUS, upstream=audio_upstream)
    audio_viewer = bench.forwarder(audio, CaptureSink())
    audio.on_rtp(rtp(1, 0), bench.clock())
    audio_viewer.on_remb(100_000)
    assert audio_upstream.rembs() == []


def test_closing_a_producer_detaches_its_forwarders(bench: Bench) -> None:
    producer = bench.producer(OPUS)
    sinks = [CaptureSink(), CaptureSink()]
    forwarders = [bench.forwarder(producer, s) for s in sinks]
    producer.close()
    assert producer.forwarders == ()
    assert all(f.idle for f in forwarders)
    producer.on_rtp(rtp(1, 0), bench.clock())
    assert [s.packets for s in sinks] == [[], []]
