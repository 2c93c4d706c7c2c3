"""A forwarder packet by packet: rewriting, source switches, the keyframe gate, NACK → RTX, SRs.

Modelled on LiveKit's pkg/sfu/rtpmunger_test.go and mediasoup's TestSeqManager.cpp: feed a
producer real RTP bytes, read what the forwarder hands its sink.
"""

from __future__ import annotations

import itertools

from aiortc.rtp import RtcpReceiverInfo, RtcpSenderInfo, RtcpSrPacket

from relay.forwarder import HISTORY_SIZE, NTP_EPOCH_OFFSET, RESEND_MIN_INTERVAL
from relay.producer import Producer
from tests.relay.unit.conftest import (
    OPUS,
    OPUS_ANSWERED,
    PUBLISHER_SSRC,
    RELAY_RTCP_SSRC,
    SLOT_RTX_SSRC,
    SLOT_SSRC,
    VP8,
    VP8_ANSWERED,
    VP8_CONTINUATION,
    VP8_DELTA,
    VP8_KEYFRAME,
    Bench,
    CaptureSink,
    Rtp,
    Upstream,
    rtp,
)

AUDIO_STEP = 960  # 20 ms of Opus at 48 kHz
VIDEO_STEP = 3000  # one frame at 30 fps, 90 kHz


def send_audio(
    bench: Bench, producer: Producer, seqs: list[int], ts0: int, *, first: int | None = None
) -> None:
    """Packets `seqs` 20 ms apart; timestamps follow the sequence numbers from `first`."""
    base = seqs[0] if first is None else first
    for seq in seqs:
        producer.on_rtp(rtp(seq, ts0 + ((seq - base) & 0xFFFF) * AUDIO_STEP), bench.clock())
        bench.tick(0.02)


def video(seq: int, ts: int, payload: bytes = VP8_DELTA, marker: int = 1) -> bytes:
    return rtp(seq, ts, payload, pt=VP8.payload_type, marker=marker)


def diff16(a: int, b: int) -> int:
    return (a - b) & 0xFFFF


def diff32(a: int, b: int) -> int:
    return (a - b) & 0xFFFFFFFF


# -- rewriting and rebasing -------------------------------------------------------------------


def test_packets_are_rewritten_into_the_slots_stream(bench: Bench, sink: CaptureSink) -> None:
    producer = bench.producer(OPUS)
    bench.forwarder(producer, sink, answered=OPUS_ANSWERED)
    for i in range(5):
        producer.on_rtp(
            rtp(100 + i, 5000 + i * AUDIO_STEP, bytes([i]) * 7, marker=i == 0), bench.clock()
        )
    out = sink.take()

    assert [p.ssrc for p in out] == [SLOT_SSRC] * 5
    assert [p.pt for p in out] == [OPUS_ANSWERED.payload_type] * 5  # the subscriber's PT
    assert [p.marker for p in out] == [1, 0, 0, 0, 0]
    assert [p.payload for p in out] == [bytes([i]) * 7 for i in range(5)]
    assert [diff16(p.seq, out[0].seq) for p in out] == [0, 1, 2, 3, 4]
    assert [diff32(p.ts, out[0].ts) for p in out] == [i * AUDIO_STEP for i in range(5)]


def test_a_new_source_continues_the_numbering_and_time_moves_by_the_pause(
    bench: Bench, sink: CaptureSink
) -> None:
    first = bench.producer(OPUS, owner="alice")
    forwarder = bench.forwarder(first, sink)
    send_audio(bench, first, list(range(100, 110)), ts0=5000)
    before = sink.take()
    assert first.forwarders == (forwarder,)

    # alice reloads: her new track numbers from elsewhere entirely, 2.5 s later
    second = bench.producer(OPUS, owner="alice-again")
    forwarder.attach(second)
    assert not first.forwarders
    assert second.forwarders == (forwarder,)
    bench.tick(2.5 - 0.02)  # send_audio already moved 20 ms past the last packet
    send_audio(bench, second, [40_000, 40_001, 40_002], ts0=3_000_000_000)
    after = sink.take()

    assert diff16(after[0].seq, before[-1].seq) == 1
    assert diff32(after[0].ts, before[-1].ts) == int(2.5 * 48_000)
    assert [diff16(p.seq, after[0].seq) for p in after] == [0, 1, 2]
    assert [diff32(p.ts, after[0].ts) for p in after] == [0, AUDIO_STEP, 2 * AUDIO_STEP]
    assert {p.ssrc for p in before + after} == {SLOT_SSRC}
    # the old source no longer reaches this slot
    send_audio(bench, first, [110], ts0=5000 + 10 * AUDIO_STEP)
    assert sink.take() == []


def test_gaps_late_packets_and_duplicates_keep_their_distance(
    bench: Bench, sink: CaptureSink
) -> None:
    producer = bench.producer(OPUS)
    forwarder = bench.forwarder(producer, sink)
    order = [10, 11, 13, 12, 13, 16]  # 12 late, 13 twice, 14 and 15 lost
    send_audio(bench, producer, order, ts0=0, first=10)
    out = sink.take()

    base = out[0].seq
    assert [diff16(p.seq, base) for p in out] == [0, 1, 3, 2, 3, 6]
    assert [diff32(p.ts, out[0].ts) for p in out] == [n * AUDIO_STEP for n in (0, 1, 3, 2, 3, 6)]
    # a late packet does not move the stream's end back: a new source continues after 16
    second = bench.producer(OPUS)
    forwarder.attach(second)
    send_audio(bench, second, [500], ts0=0)
    assert diff16(sink.take()[0].seq, base) == 7


def test_sequence_numbers_and_timestamps_wrap_around(bench: Bench, sink: CaptureSink) -> None:
    producer = bench.producer(OPUS)
    bench.forwarder(producer, sink)
    seqs = [65533, 65534, 65535, 0, 1, 2]
    send_audio(bench, producer, seqs, ts0=0xFFFFFFFF - 2 * AUDIO_STEP)
    out = sink.take()

    assert [diff16(p.seq, out[0].seq) for p in out] == [0, 1, 2, 3, 4, 5]
    assert [diff32(p.ts, out[0].ts) for p in out] == [i * AUDIO_STEP for i in range(6)]
    assert all(0 <= p.seq <= 0xFFFF and 0 <= p.ts <= 0xFFFFFFFF for p in out)


# -- the keyframe gate ------------------------------------------------------------------------


def test_video_waits_for_a_keyframe_and_asks_for_one_meanwhile(
    bench: Bench, sink: CaptureSink
) -> None:
    upstream = Upstream()
    producer = bench.producer(VP8, upstream=upstream)
    forwarder = bench.forwarder(producer, sink)
    for seq in (1, 2):
        producer.on_rtp(video(seq, seq * VIDEO_STEP), bench.clock())
    assert sink.take() == []  # inter frames are useless to a decoder that has none yet
    assert len(upstream.plis()) == 1  # asked once, not once per packet
    assert upstream.plis()[0].media_ssrc == PUBLISHER_SSRC
    assert upstream.plis()[0].ssrc == RELAY_RTCP_SSRC

    bench.tick(0.5)
    producer.on_rtp(video(3, 3 * VIDEO_STEP), bench.clock())
    assert sink.take() == [] and len(upstream.plis()) == 2  # still none: ask again
    producer.on_rtp(video(4, 4 * VIDEO_STEP, VP8_KEYFRAME, marker=0), bench.clock())
    producer.on_rtp(video(5, 4 * VIDEO_STEP, VP8_CONTINUATION), bench.clock())
    producer.on_rtp(video(6, 5 * VIDEO_STEP), bench.clock())
    out = sink.take()
    assert [p.payload for p in out] == [VP8_KEYFRAME, VP8_CONTINUATION, VP8_DELTA]
    assert [diff16(p.seq, out[0].seq) for p in out] == [0, 1, 2]
    assert forwarder.stats.keyframes == 1
    assert forwarder.stats.frames == 2  # marker bits
    assert len(upstream.plis()) == 2


def test_a_subscriber_ready_after_the_keyframe_went_by_asks_again_at_once(
    bench: Bench, sink: CaptureSink
) -> None:
    """A new subscriber asks for a keyframe when it subscribes; if that keyframe arrives before
    its DTLS is done, it asks again the moment it is ready, not half a second later."""
    upstream = Upstream()
    producer = bench.producer(VP8, upstream=upstream)
    producer.on_rtp(video(1, VIDEO_STEP), bench.clock())  # the publisher is sending
    sink.ready = False
    bench.forwarder(producer, sink)
    assert len(upstream.plis()) == 1  # asked when it subscribed
    producer.on_rtp(video(2, 2 * VIDEO_STEP, VP8_KEYFRAME), bench.clock())  # goes by, unsent
    bench.tick(0.1)
    sink.ready = True
    producer.on_rtp(video(3, 3 * VIDEO_STEP), bench.clock())
    assert len(upstream.plis()) == 2  # at once, within the half-second interval
    producer.on_rtp(video(4, 4 * VIDEO_STEP), bench.clock())
    assert len(upstream.plis()) == 2  # and only once: then the interval holds again
    producer.on_rtp(video(5, 5 * VIDEO_STEP, VP8_KEYFRAME), bench.clock())
    assert [p.payload for p in sink.take()] == [VP8_KEYFRAME]


def test_a_switched_video_source_starts_on_its_keyframe(bench: Bench, sink: CaptureSink) -> None:
    first = bench.producer(VP8)
    forwarder = bench.forwarder(first, sink)
    first.on_rtp(video(1, 0, VP8_KEYFRAME), bench.clock())
    first.on_rtp(video(2, VIDEO_STEP), bench.clock())
    before = sink.take()

    upstream = Upstream()
    second = bench.producer(VP8, upstream=upstream)
    forwarder.attach(second)
    bench.tick(1.0)
    second.on_rtp(video(900, 77_000), bench.clock())
    assert sink.take() == [] and len(upstream.plis()) == 1
    bench.tick(0.1)
    second.on_rtp(video(901, 77_000 + VIDEO_STEP, VP8_KEYFRAME), bench.clock())
    after = sink.take()
    assert len(after) == 1 and after[0].payload == VP8_KEYFRAME
    assert diff16(after[0].seq, before[-1].seq) == 1
    assert diff32(after[0].ts, before[-1].ts) == int(1.1 * 90_000)


def test_a_failed_send_restarts_the_stream_on_the_next_keyframe(
    bench: Bench, sink: CaptureSink
) -> None:
    upstream = Upstream()
    producer = bench.producer(VP8, upstream=upstream)
    bench.forwarder(producer, sink)
    producer.on_rtp(video(1, 0, VP8_KEYFRAME), bench.clock())
    sent = sink.take()
    sink.up = False
    producer.on_rtp(video(2, VIDEO_STEP), bench.clock())
    sink.up = True
    bench.tick(0.6)
    producer.on_rtp(video(3, 2 * VIDEO_STEP), bench.clock())  # dropped: no keyframe since
    assert sink.take() == []
    producer.on_rtp(video(4, 3 * VIDEO_STEP, VP8_KEYFRAME), bench.clock())
    out = sink.take()
    assert [p.payload for p in out] == [VP8_KEYFRAME]
    assert diff16(out[0].seq, sent[-1].seq) == 1


def test_nothing_is_sent_before_the_sink_is_ready(bench: Bench, sink: CaptureSink) -> None:
    producer = bench.producer(OPUS)
    bench.forwarder(producer, sink)
    sink.ready = False
    send_audio(bench, producer, [1, 2], ts0=0)
    assert sink.packets == []
    sink.ready = True
    send_audio(bench, producer, [3], ts0=2 * AUDIO_STEP, first=3)
    assert len(sink.take()) == 1


# -- NACK → retransmission --------------------------------------------------------------------


def test_a_nack_is_answered_over_rtx(bench: Bench, sink: CaptureSink) -> None:
    producer = bench.producer(VP8)
    forwarder = bench.forwarder(producer, sink, answered=VP8_ANSWERED)
    producer.on_rtp(video(1, 0, VP8_KEYFRAME), bench.clock())
    for seq in range(2, 7):
        producer.on_rtp(
            video(seq, seq * VIDEO_STEP, bytes([seq]) * 5, marker=seq % 2), bench.clock()
        )
    sent = sink.take()

    forwarder.on_nack([sent[2].seq, sent[5].seq])
    resent = sink.take()
    assert [p.pt for p in resent] == [VP8_ANSWERED.rtx_payload_type] * 2
    assert [p.ssrc for p in resent] == [SLOT_RTX_SSRC] * 2
    assert diff16(resent[1].seq, resent[0].seq) == 1  # RTX numbering of its own
    for original, copy in zip((sent[2], sent[5]), resent, strict=True):
        assert copy.ts == original.ts and copy.marker == original.marker
        assert copy.payload[:2] == original.seq.to_bytes(2, "big")  # OSN (RFC 4588)
        assert copy.payload[2:] == original.payload
    assert forwarder.stats.retransmits == 2

    forwarder.on_nack([sent[0].seq])
    assert diff16(sink.take()[0].seq, resent[1].seq) == 1


def test_a_packet_listed_again_while_its_copy_is_on_its_way_is_not_resent_again(
    bench: Bench, sink: CaptureSink
) -> None:
    """aiortc's receiver lists every packet still missing at each new gap: answering each
    listing would flood the lossy link with copies."""
    producer = bench.producer(VP8)
    forwarder = bench.forwarder(producer, sink, answered=VP8_ANSWERED)
    producer.on_rtp(video(1, 0, VP8_KEYFRAME), bench.clock())
    for seq in range(2, 7):
        producer.on_rtp(video(seq, seq * VIDEO_STEP, bytes([seq]) * 5), bench.clock())
    sent = sink.take()
    forwarder.on_nack([sent[2].seq])
    bench.tick(RESEND_MIN_INTERVAL / 2)
    forwarder.on_nack([sent[2].seq, sent[3].seq])  # the first again, and a new one
    assert [p.payload[:2] for p in sink.take()] == [
        sent[2].seq.to_bytes(2, "big"),
        sent[3].seq.to_bytes(2, "big"),
    ]
    bench.tick(RESEND_MIN_INTERVAL)  # that copy was lost too: listed again, resent again
    forwarder.on_nack([sent[2].seq])
    assert [p.payload[:2] for p in sink.take()] == [sent[2].seq.to_bytes(2, "big")]
    assert forwarder.stats.retransmits == 3
    forwarder.stats.rtt_seconds = 0.5  # a long round trip: a copy takes that long to tell
    bench.tick(0.3)
    forwarder.on_nack([sent[2].seq])
    assert sink.take() == []


def test_without_rtx_the_packet_is_resent_as_it_was(bench: Bench, sink: CaptureSink) -> None:
    producer = bench.producer(OPUS)
    forwarder = bench.forwarder(producer, sink)
    send_audio(bench, producer, [1, 2, 3], ts0=0)
    sent = list(sink.packets)
    sink.packets.clear()
    forwarder.on_nack([Rtp.parse(sent[1]).seq])
    assert sink.packets == [sent[1]]


def test_the_history_holds_the_last_512_packets(bench: Bench, sink: CaptureSink) -> None:
    assert HISTORY_SIZE == 512
    producer = bench.producer(OPUS)
    forwarder = bench.forwarder(producer, sink)
    count = 600
    send_audio(bench, producer, [(65_000 + i) & 0xFFFF for i in range(count)], ts0=0)
    sent = sink.take()
    oldest_kept = count - HISTORY_SIZE

    forwarder.on_nack([sent[0].seq, sent[oldest_kept - 1].seq])  # overwritten
    forwarder.on_nack([(sent[-1].seq + 1) & 0xFFFF])  # never sent
    assert sink.take() == []
    forwarder.on_nack([sent[oldest_kept].seq, sent[-1].seq])
    assert [p.seq for p in sink.take()] == [sent[oldest_kept].seq, sent[-1].seq]
    assert forwarder.stats.retransmits == 2


# -- sender reports ---------------------------------------------------------------------------


def sender_report(ssrc: int, rtp_timestamp: int) -> RtcpSrPacket:
    return RtcpSrPacket(
        ssrc=ssrc,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=0xE000_0000_8000_0000,
            rtp_timestamp=rtp_timestamp,
            packet_count=0,
            octet_count=0,
        ),
    )


def ntp_seconds(ntp: int) -> float:
    return (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


def subscriber_wall_time(sr: RtcpSrPacket, rtp_ts: int, rate: int) -> float:
    """When the subscriber thinks a packet with `rtp_ts` was captured, from this SR."""
    delta = (rtp_ts - sr.sender_info.rtp_timestamp) & 0xFFFFFFFF
    if delta >= 1 << 31:
        delta -= 1 << 32
    return ntp_seconds(sr.sender_info.ntp_timestamp) + delta / rate


def test_sender_reports_follow_the_publishers_clock_so_audio_and_video_stay_in_sync(
    bench: Bench,
) -> None:
    audio, camera = bench.producer(OPUS), bench.producer(VP8)
    audio_sink, video_sink = CaptureSink(), CaptureSink()
    audio_out = bench.forwarder(audio, audio_sink)
    video_out = bench.forwarder(camera, video_sink)
    # one capture instant in the publisher's two RTP clocks, reported as its SRs say
    audio_at, video_at = 4_000_000_000, 123_456
    audio.on_sender_report(sender_report(PUBLISHER_SSRC, audio_at), bench.clock())
    camera.on_sender_report(sender_report(PUBLISHER_SSRC + 2, video_at), bench.clock())
    reported_at = bench.wall()

    # media captured 2 s after that instant, forwarded 0.3 s apart
    bench.tick(2.0)
    audio.on_rtp(rtp(7, audio_at + 2 * 48_000), bench.clock())
    bench.tick(0.3)
    camera.on_rtp(video(9, video_at + 2 * 90_000, VP8_KEYFRAME), bench.clock())
    (sent_audio,), (sent_video,) = audio_sink.take(), video_sink.take()

    bench.tick(0.7)
    audio_sr = audio_out.sender_report()
    bench.tick(0.45)
    video_sr = video_out.sender_report()
    assert audio_sr is not None and video_sr is not None
    assert (audio_sr.ssrc, video_sr.ssrc) == (SLOT_SSRC, SLOT_SSRC)
    heard = subscriber_wall_time(audio_sr, sent_audio.ts, 48_000)
    seen = subscriber_wall_time(video_sr, sent_video.ts, 90_000)
    assert abs(heard - seen) < 1e-4  # lip sync: one capture instant for both
    assert abs(heard - (reported_at + 2.0)) < 1e-4
    assert video_sr.sender_info.packet_count == 1
    assert video_sr.sender_info.octet_count == video_out.stats.bytes > 0


def test_without_a_publisher_report_the_sender_report_extrapolates(
    bench: Bench, sink: CaptureSink
) -> None:
    producer = bench.producer(OPUS)
    forwarder = bench.forwarder(producer, sink)
    assert forwarder.sender_report() is None  # nothing sent yet: nothing to map
    send_audio(bench, producer, [1, 2, 3], ts0=0)
    last = sink.take()[-1]
    bench.tick(0.25 - 0.02)
    report = forwarder.sender_report()
    assert report is not None
    assert diff32(report.sender_info.rtp_timestamp, last.ts) == int(0.25 * 48_000)
    assert abs(ntp_seconds(report.sender_info.ntp_timestamp) - bench.wall()) < 1e-6
    assert report.sender_info.packet_count == 3
    assert report.sender_info.octet_count == forwarder.stats.bytes


def test_receiver_reports_give_loss_jitter_and_round_trip_time(
    bench: Bench, sink: CaptureSink
) -> None:
    producer = bench.producer(OPUS)
    forwarder = bench.forwarder(producer, sink)
    send_audio(bench, producer, [1, 2], ts0=0)
    report = forwarder.sender_report()
    assert report is not None
    lsr = (report.sender_info.ntp_timestamp >> 16) & 0xFFFFFFFF
    bench.tick(0.35)
    forwarder.on_receiver_report(
        RtcpReceiverInfo(
            ssrc=SLOT_SSRC,
            fraction_lost=64,
            packets_lost=3,
            highest_sequence=2,
            jitter=480,
            lsr=lsr,
            dlsr=int(0.1 * 65536),
        )
    )
    stats = forwarder.stats
    assert (stats.packets_lost, stats.fraction_lost, stats.jitter_seconds) == (3, 0.25, 0.01)
    assert stats.rtt_seconds is not None and abs(stats.rtt_seconds - 0.25) < 1e-4


def video_second(bench: Bench, producer: Producer, first_seq: int, packets: int = 50) -> int:
    """One second of video (`packets` packets of 1000 payload bytes: 400 kbit/s); the next seq."""
    for i in range(packets):
        payload = (VP8_KEYFRAME if first_seq + i == 1 else VP8_DELTA) + bytes(1000)
        producer.on_rtp(
            rtp(first_seq + i, 3000 * (first_seq + i), payload, pt=VP8.payload_type, marker=1),
            bench.clock(),
        )
    bench.tick(1.0)
    return first_seq + packets


def report(lost: float) -> RtcpReceiverInfo:
    return RtcpReceiverInfo(
        ssrc=SLOT_SSRC, fraction_lost=round(lost * 256), packets_lost=0, highest_sequence=0,
        jitter=0, lsr=0, dlsr=0,
    )  # fmt: skip


def test_loss_the_remb_misses_lowers_what_the_leg_lets_the_publisher_send(
    bench: Bench, sink: CaptureSink
) -> None:
    """A bottleneck whose queue stays full drops 30 % while the delay-based REMB stays at
    430 kbit/s: the relay's loss-based limit takes the publisher below what the leg carried."""
    upstream = Upstream()
    producer = bench.producer(VP8, upstream=upstream)
    forwarder = bench.forwarder(producer, sink)
    forwarder.on_remb(430_000)
    seq, limits = 1, []
    for _ in range(4):
        seq = video_second(bench, producer, seq)
        forwarder.on_receiver_report(report(0.3))
        limits.append(forwarder.remb_bps)
    carried = 50 * (1000 + len(VP8_DELTA) + 12) * 8  # what one second of the leg carried
    assert limits[0] is not None and limits[0] < 0.86 * carried
    for before, after in itertools.pairwise(limits):  # 15 % less a report
        assert before is not None and after is not None and after <= 0.86 * before
    assert upstream.rembs()[-1] == limits[-1]  # the publisher is told
    assert forwarder.stats.remb_bps == 430_000  # the subscriber's own figure, kept apart


def test_moderate_loss_holds_the_limit_and_a_clean_link_climbs_back_to_the_remb(
    bench: Bench, sink: CaptureSink
) -> None:
    producer = bench.producer(VP8)
    forwarder = bench.forwarder(producer, sink)
    forwarder.on_remb(430_000)
    seq = video_second(bench, producer, 1)
    forwarder.on_receiver_report(report(0.3))
    lowered = forwarder.remb_bps
    assert lowered is not None and lowered < 430_000
    for _ in range(3):  # 5 %: the band where GCC holds
        seq = video_second(bench, producer, seq)
        forwarder.on_receiver_report(report(0.05))
        assert forwarder.remb_bps == lowered
    seen = []
    for _ in range(40):
        seq = video_second(bench, producer, seq)
        forwarder.on_receiver_report(report(0.0))
        seen.append(forwarder.remb_bps)
    assert seen[0] == round(lowered * 1.05)
    assert seen[-1] == 430_000 and max(s or 0 for s in seen) == 430_000  # never above the REMB


def test_loss_the_publisher_caused_is_not_the_legs(bench: Bench, sink: CaptureSink) -> None:
    """The relay forwards the publisher's gaps; a subscriber reporting them is not congested."""
    producer = bench.producer(VP8)
    forwarder = bench.forwarder(producer, sink)
    forwarder.on_remb(430_000)
    producer.recent_loss = 0.3  # what the relay itself missed from the publisher
    for seq in (1, 51, 101):
        video_second(bench, producer, seq)
        forwarder.on_receiver_report(report(0.3))
    assert forwarder.remb_bps == 430_000


def test_with_audio_first_the_loss_limit_stops_at_what_video_needs(
    bench: Bench, sink: CaptureSink
) -> None:
    """Below it the leg would count for nothing (its video is the gate's to pause), and the
    publisher would go on flooding it: the leg holds the publisher there instead."""
    producer = bench.producer(VP8)
    forwarder = bench.forwarder(producer, sink)
    forwarder.remb_floor = 150_000
    forwarder.on_remb(430_000)
    seq = 1
    for _ in range(10):
        seq = video_second(bench, producer, seq)
        forwarder.on_receiver_report(report(0.6))
    assert forwarder.remb_bps == 150_000
