"""Audio first: the video gate's hysteresis and probes on an injected clock, and a paused
forwarder (no video out, its REMB no longer holds the publisher back, back on a keyframe)."""

from __future__ import annotations

import asyncio

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from relay.adaptation import GateSettings, GateState, VideoGate
from relay.forwarder import Forwarder, SendParameters
from relay.participant import Participant, ParticipantInfo
from relay.probe import PaddingProbe, ramped_rate
from relay.settings import RelaySettings
from relay.stats import RelayStats
from tests.relay.unit.conftest import (
    OPUS,
    VP8,
    VP8_DELTA,
    VP8_KEYFRAME,
    Bench,
    CaptureSink,
    FakeClock,
    Upstream,
    rtp,
)

SETTINGS = GateSettings()  # 150 kbit/s for 2 s, 250 kbit/s for 3 s, probes after 10 s …
WEAK, MIDDLE, STRONG = 90_000, 200_000, 600_000


def run(
    gate: VideoGate,
    clock: FakeClock,
    estimate: int | None,
    seconds: float,
    loss: float | None = None,
) -> list[str]:
    """Feed `estimate` once a second (as the RTCP tick does) for `seconds`; the transitions.

    `loss` by default as on a real weak link: 30 % below 150 kbit/s, none above."""
    if loss is None:
        loss = 0.3 if estimate is not None and estimate < SETTINGS.pause_below_bps else 0.0
    seen = []
    for _ in range(round(seconds)):
        clock.advance(1.0)
        change = gate.update(estimate, loss)
        if change is not None:
            seen.append(f"{change.before}>{change.after}")
    return seen


def paused_gate() -> tuple[VideoGate, FakeClock]:
    clock = FakeClock()
    gate = VideoGate(SETTINGS, clock)
    gate.update(WEAK, 0.3)
    assert run(gate, clock, WEAK, 2) == ["flowing>paused"]
    return gate, clock


def test_a_short_dip_does_not_pause_and_a_steady_low_estimate_does() -> None:
    clock = FakeClock()
    gate = VideoGate(SETTINGS, clock)
    assert run(gate, clock, STRONG, 5) == []
    assert run(gate, clock, WEAK, 1) == []  # below for 1 s only: a dip
    assert run(gate, clock, STRONG, 1) == []  # and it is over: the clock starts again
    assert run(gate, clock, WEAK, 2) == []  # first seen low, then 1 s later
    assert gate.state is GateState.FLOWING
    assert run(gate, clock, WEAK, 1) == ["flowing>paused"]  # low for 2 s: 150 kbit/s
    assert not gate.video_flows


def test_a_low_estimate_without_loss_is_no_verdict() -> None:
    """aiortc's estimate starts at 0.85 x the first second's rate (often ~30 kbit/s) on links
    that carry megabits: without loss beside it, a low estimate pauses nothing."""
    clock = FakeClock()
    gate = VideoGate(SETTINGS, clock)
    assert run(gate, clock, 30_000, 30, loss=0.0) == []
    assert run(gate, clock, 30_000, 2, loss=0.01) == []  # a little loss is not a weak link
    assert run(gate, clock, 30_000, 3, loss=0.2) == ["flowing>paused"]


def test_between_the_thresholds_nothing_changes() -> None:
    clock = FakeClock()
    gate = VideoGate(SETTINGS, clock)
    assert run(gate, clock, MIDDLE, 30) == []  # above 150: video keeps flowing
    assert run(gate, clock, None, 30) == []  # no estimate (no REMB yet) is not a weak link


def test_paused_video_is_probed_and_resumes_after_3_s_above_250() -> None:
    gate, clock = paused_gate()
    # while paused the estimate cannot grow: what is fed then is ignored
    assert run(gate, clock, STRONG, 9) == []
    assert gate.state is GateState.PAUSED
    assert run(gate, clock, None, 1) == ["paused>probing"]  # 10 s after the pause
    assert gate.video_flows
    # a recovering estimator ramps up (8 %/s from its old value): it must not end the probe
    ramp = [100_000, 108_000, 117_000, 126_000, 180_000, 260_000, 280_000, 300_000]
    seen = []
    for bps in ramp:
        clock.advance(1.0)
        change = gate.update(bps, 0.0)
        seen.append(change and f"{change.before}>{change.after}")
    # 260 at t, 280 at t+1, 300 at t+2: above 250 for 2 s so far, not yet 3
    assert seen == [None] * 8
    clock.advance(1.0)
    change = gate.update(310_000, 0.0)
    assert change is not None and change.resumed and not change.paused
    assert change.after is GateState.FLOWING and gate.video_flows


def test_a_probe_on_a_still_weak_link_fails_at_the_first_drop_and_backs_off() -> None:
    gate, clock = paused_gate()
    assert run(gate, clock, None, 10) == ["paused>probing"]
    clock.advance(1.0)
    assert gate.update(97_000, 0.0) is None  # the queue is still filling: no loss yet
    clock.advance(1.0)
    change = gate.update(85_000, 0.4)  # overuse: the estimator cut its rate, packets lost
    assert change is not None and change.after is GateState.PAUSED
    assert not change.paused and not change.resumed  # the UIs already show it paused
    # the next probe waits twice as long, then four times, capped at a minute
    assert run(gate, clock, None, 19) == []
    assert run(gate, clock, None, 1) == ["paused>probing"]
    assert run(gate, clock, 80_000, 1, loss=0.0) == []
    assert run(gate, clock, 70_000, 1) == ["probing>paused"]  # low, falling, packets lost
    assert run(gate, clock, None, 39) == []
    assert run(gate, clock, None, 1) == ["paused>probing"]


def test_a_probe_on_a_recovered_link_survives_a_dip_without_loss() -> None:
    """A loaded receiver's estimator may see overuse that is its own event loop lagging: a
    falling estimate without loss does not end the probe."""
    gate, clock = paused_gate()
    assert run(gate, clock, None, 10) == ["paused>probing"]
    assert run(gate, clock, 240_000, 1) == []
    assert run(gate, clock, 200_000, 1, loss=0.0) == []
    assert run(gate, clock, 120_000, 1, loss=0.0) == []
    assert run(gate, clock, 300_000, 3) == []  # 3 samples above 250: 2 s so far
    assert run(gate, clock, 300_000, 1) == ["probing>flowing"]
    assert run(gate, clock, 300_000, 1, loss=0.3) == []  # loss alone, estimate high: no verdict


def test_a_probe_that_never_gets_an_estimate_gives_up() -> None:
    gate, clock = paused_gate()
    assert run(gate, clock, None, 10) == ["paused>probing"]
    assert run(gate, clock, None, SETTINGS.probe_for - 1) == []
    assert run(gate, clock, None, 1) == ["probing>paused"]


def test_after_a_resume_the_probe_interval_starts_short_again() -> None:
    gate, clock = paused_gate()
    run(gate, clock, None, 10)
    assert run(gate, clock, 80_000, 1) == [
        "probing>paused"
    ]  # low with loss: at once  # failed: next after 20 s
    assert run(gate, clock, None, 20) == ["paused>probing"]
    assert run(gate, clock, STRONG, 4) == ["probing>flowing"]
    assert run(gate, clock, WEAK, 3) == ["flowing>paused"]
    assert run(gate, clock, None, 10) == ["paused>probing"]  # 10 s again, not 40


def test_heavy_loss_with_a_falling_estimate_pauses_at_once() -> None:
    """A link far too weak for the video: the estimate is still above 150 kbit/s, but a fifth of
    what was sent is lost and what got through is below what video needs: no 2 s wait for the
    estimate to fall that low while the video floods the link."""
    clock = FakeClock()
    gate = VideoGate(SETTINGS, clock)
    clock.advance(1.0)
    assert gate.update(400_000, 0.0, 450_000) is None
    clock.advance(1.0)
    change = gate.update(300_000, 0.6, 120_000)  # falling, 60 % lost, 120 kbit/s got through
    assert change is not None and change.paused and change.after is GateState.PAUSED


def test_heavy_loss_without_a_falling_estimate_pauses_after_two_reports() -> None:
    clock = FakeClock()
    gate = VideoGate(SETTINGS, clock)
    clock.advance(1.0)
    assert gate.update(300_000, 0.5, 100_000) is None  # the first report: not yet
    clock.advance(1.0)
    assert gate.update(300_000, 0.1, 100_000) is None  # 10 %: not heavy, the clock restarts
    clock.advance(1.0)
    assert gate.update(300_000, 0.5, 100_000) is None
    clock.advance(1.0)
    change = gate.update(300_000, 0.5, 100_000)
    assert change is not None and change.after is GateState.PAUSED


def test_heavy_loss_is_no_verdict_when_the_link_delivers_enough_or_without_an_estimate() -> None:
    """Losing a fifth of 800 kbit/s still delivers what video needs; and loss with no estimate
    that speaks for this link (a publisher that sends little, its own uplink's loss) is not
    this link's weakness."""
    clock = FakeClock()
    gate = VideoGate(SETTINGS, clock)
    for _ in range(5):
        clock.advance(1.0)
        assert gate.update(600_000, 0.25, 600_000) is None
    for _ in range(5):
        clock.advance(1.0)
        assert gate.update(None, 0.6, 40_000) is None
    assert gate.state is GateState.FLOWING


def test_loss_alone_ends_a_probe_at_once() -> None:
    """The probe sends about what video needs and no more: a tenth of it lost, with or without
    a fresh estimate yet, says the link cannot carry video; the probe does not run on."""
    gate, clock = paused_gate()
    assert run(gate, clock, None, 10) == ["paused>probing"]
    clock.advance(1.0)
    change = gate.update(None, SETTINGS.probe_loss)
    assert change is not None and change.after is GateState.PAUSED


def test_a_probe_that_delivers_enough_without_loss_resumes_before_the_estimate_agrees() -> None:
    """The estimate climbs no faster than 8 %/s from its old low value (30 kbit/s to 250 takes
    half a minute); what the probe got through without loss measures the link directly."""
    gate, clock = paused_gate()
    assert run(gate, clock, None, 10) == ["paused>probing"]
    seen = []
    for estimate in (30_000, 32_000, 35_000, 38_000):
        clock.advance(1.0)
        change = gate.update(estimate, 0.0, 300_000)
        seen.append(change and f"{change.before}>{change.after}")
    assert seen == [None, None, None, "probing>flowing"]  # above 250 for 3 s, then resumed
    # the estimate still climbs from 38 kbit/s: low with some loss, it pauses nothing for a
    # while; heavy loss with little getting through still does
    assert run(gate, clock, 40_000, 10, loss=0.06) == []
    clock.advance(1.0)
    assert gate.update(40_000, 0.5, 60_000) is None
    clock.advance(1.0)
    change = gate.update(40_000, 0.5, 60_000)
    assert change is not None and change.after is GateState.PAUSED
    # and a probe that got only 200 kbit/s through, or lost some of it, resumes nothing
    gate, clock = paused_gate()
    assert run(gate, clock, None, 10) == ["paused>probing"]
    for _ in range(10):
        clock.advance(1.0)
        assert gate.update(None, 0.0, 200_000) is None
        clock.advance(1.0)
        assert gate.update(None, 0.06, 300_000) is None


def test_a_link_that_loses_a_few_percent_at_random_but_carries_the_rate_gets_its_video_back() -> (
    None
):
    """Wi-Fi: 5-8 % lost whatever the rate. Neither the loss beside a fresh (still low)
    estimate nor the loss within what got through keeps the video paused; 10 % still ends a
    probe, and so does loss with a falling estimate (overuse)."""
    gate, clock = paused_gate()
    assert run(gate, clock, None, 10) == ["paused>probing"]
    seen = []
    for estimate, loss in ((45_000, 0.06), (60_000, 0.08), (75_000, 0.05), (90_000, 0.07)):
        clock.advance(1.0)
        change = gate.update(estimate, loss, 290_000)
        seen.append(change and f"{change.before}>{change.after}")
    assert seen == [None, None, None, "probing>flowing"]
    gate, clock = paused_gate()
    assert run(gate, clock, None, 10) == ["paused>probing"]
    clock.advance(1.0)
    assert gate.update(90_000, 0.06, 290_000) is None
    clock.advance(1.0)
    change = gate.update(70_000, 0.06, 290_000)  # falling, with loss: the link is full
    assert change is not None and change.after is GateState.PAUSED


# -- the downlink's probe: padding on the RTX stream ---------------------------------------------


def started_video_slot(bench: Bench, sink: CaptureSink, abs_send_time_id: int) -> Forwarder:
    producer = bench.producer(VP8, upstream=Upstream())
    forwarder = Forwarder(
        kind="video", ssrc=1111, rtx_ssrc=2222, codec=VP8, clock=bench.clock, wall_clock=bench.wall
    )
    forwarder.attach(producer)
    parameters = SendParameters(codec=VP8, mid="1", mid_id=4, abs_send_time_id=abs_send_time_id)
    forwarder.start(sink, parameters)
    return forwarder


def test_a_padding_packet_is_counted_by_aiortcs_estimator_and_carries_no_media(
    bench: Bench, sink: CaptureSink
) -> None:
    forwarder = started_video_slot(bench, sink, abs_send_time_id=3)
    assert forwarder.can_pad
    first = forwarder.padding_packet(240)
    second = forwarder.padding_packet(240)
    assert first is not None and second is not None
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=4, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
                RTCRtpHeaderExtensionParameters(
                    id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
                ),
            ]
        )
    )
    a, b = RtpPacket.parse(first, extensions), RtpPacket.parse(second, extensions)
    # what aiortc's receiver feeds its RemoteBitrateEstimator: len(payload) + padding_size,
    # for a packet with abs-send-time; the RTX depacketizer then drops an empty payload
    assert a.extensions.abs_send_time is not None and a.extensions.mid == "1"
    assert a.payload == b"" and a.padding_size == 240
    assert (a.ssrc, a.payload_type) == (2222, VP8.rtx_payload_type)
    assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF  # no gap: no loss to report
    assert forwarder.stats.packets == 0  # no media was counted as sent


def test_a_slot_without_abs_send_time_cannot_carry_a_probe(bench: Bench, sink: CaptureSink) -> None:
    forwarder = started_video_slot(bench, sink, abs_send_time_id=0)
    assert not forwarder.can_pad and forwarder.padding_packet(240) is None
    assert forwarder.send_padding(240) == 0 and sink.packets == []


async def test_the_probe_ramps_its_rate_and_stops_at_the_first_sign_of_loss(
    bench: Bench, sink: CaptureSink
) -> None:
    forwarder = started_video_slot(bench, sink, abs_send_time_id=3)
    loop = asyncio.get_running_loop()
    full = False
    probe = PaddingProbe(
        forwarder,
        start_bps=50_000,
        target_bps=320_000,
        ramp_seconds=8.0,
        clock=loop.time,
        overused=lambda: full,
    )
    assert probe.rate_at(0) == 50_000 and probe.rate_at(4) == 185_000
    assert probe.rate_at(8) == probe.rate_at(60) == 320_000
    probe.start()
    began = loop.time()
    for _ in range(100):  # bounded: 2 s
        if len(sink.packets) >= 20:
            break
        await asyncio.sleep(0.02)
    sent = sum(len(p) for p in sink.packets)
    elapsed = loop.time() - began
    # ~50 kbit/s at first: 20 packets of ~270 bytes take ~0.9 s, not a burst
    assert sent * 8 / elapsed < 120_000, (sent, elapsed)
    full = True
    for _ in range(50):  # bounded: 1 s
        if probe.stopped_early:
            break
        await asyncio.sleep(0.02)
    assert probe.stopped_early
    count = len(sink.packets)
    await asyncio.sleep(0.1)  # a measurement window: nothing more is sent
    assert len(sink.packets) == count
    probe.stop()


# -- a paused forwarder -------------------------------------------------------------------------


def test_a_paused_forwarder_sends_no_video_and_resumes_on_a_keyframe(
    bench: Bench, sink: CaptureSink
) -> None:
    upstream = Upstream()
    producer = bench.producer(VP8, upstream=upstream)
    forwarder = bench.forwarder(producer, sink)
    pt = VP8.payload_type
    producer.on_rtp(rtp(1, 0, VP8_KEYFRAME, pt=pt, marker=1), bench.clock())
    producer.on_rtp(rtp(2, 3000, VP8_DELTA, pt=pt, marker=1), bench.clock())
    before = sink.take()
    assert len(before) == 2
    forwarder.on_remb(90_000)
    assert forwarder.remb_bps == 90_000

    forwarder.pause()
    assert forwarder.paused and forwarder.remb_bps is None  # the publisher is not held back
    for seq in range(3, 10):
        producer.on_rtp(rtp(seq, seq * 3000, VP8_DELTA, pt=pt, marker=1), bench.clock())
    producer.on_rtp(rtp(10, 30_000, VP8_KEYFRAME, pt=pt, marker=1), bench.clock())
    assert sink.take() == []  # not even a keyframe while paused
    assert forwarder.stats.packets == 2

    upstream.clear()
    bench.tick(1.0)
    forwarder.resume(probing=True)
    assert upstream.plis(), "resuming asks the publisher for a keyframe"
    assert forwarder.stats.remb_bps is None  # the stale estimate is forgotten
    forwarder.on_remb(120_000)
    assert forwarder.remb_bps is None  # on probation: not yet counted for the publisher
    producer.on_rtp(rtp(11, 33_000, VP8_DELTA, pt=pt, marker=1), bench.clock())
    assert sink.take() == []  # a delta frame cannot start the picture
    producer.on_rtp(rtp(12, 36_000, VP8_KEYFRAME, pt=pt, marker=1), bench.clock())
    producer.on_rtp(rtp(13, 39_000, VP8_DELTA, pt=pt, marker=1), bench.clock())
    after = sink.take()
    assert len(after) == 2
    # one stream for the subscriber's decoder: numbering continues where it stopped
    assert after[0].seq == (before[-1].seq + 1) & 0xFFFF
    forwarder.resume()
    assert forwarder.remb_bps == 120_000


def test_with_audio_first_a_remb_below_video_needs_does_not_hold_the_publisher_back(
    bench: Bench, sink: CaptureSink
) -> None:
    """Such a link gets its video paused rather than the publisher slowed down for everyone."""
    producer = bench.producer(VP8)
    forwarder = bench.forwarder(producer, sink)
    forwarder.remb_floor = SETTINGS.pause_below_bps
    forwarder.on_remb(90_000)
    assert forwarder.remb_bps is None
    forwarder.on_remb(160_000)
    assert forwarder.remb_bps == 160_000


def test_a_paused_uplink_is_probed_at_the_ramps_rate_whatever_the_estimates(
    bench: Bench, sink: CaptureSink
) -> None:
    """While audio first has the uplink paused or probing, REMB is the probe's rate: not the
    relay's stale estimate of the weak uplink (Chromium keeps the last REMB as its limit, which
    would keep the probe from showing the link again), nor a subscriber's (a higher one would
    let the publisher flood the weak link at once)."""
    upstream = Upstream()
    producer = bench.producer(VP8, upstream=upstream)
    forwarder = bench.forwarder(producer, sink)
    producer.on_rtp(rtp(1, 0, VP8_KEYFRAME, pt=VP8.payload_type, marker=1), bench.clock())
    forwarder.on_remb(300_000)
    producer.stats.estimate_bps = 60_000  # what the relay saw while the uplink was weak
    producer.update_bandwidth(force=True)
    assert upstream.rembs()[-1] == 60_000
    for rate in (SETTINGS.probe_start_bps, 140_000, SETTINGS.probe_target_bps):
        producer.probe_bps = rate
        producer.update_bandwidth()
        assert upstream.rembs()[-1] == rate
    forwarder.on_remb(900_000)
    producer.update_bandwidth(force=True)
    assert upstream.rembs()[-1] == SETTINGS.probe_target_bps
    producer.probe_bps = None  # flowing again: the estimates decide
    producer.update_bandwidth(force=True)
    assert upstream.rembs()[-1] == 60_000


def test_a_probes_rate_ramps_from_its_start_to_its_target() -> None:
    start, target, ramp = SETTINGS.probe_start_bps, SETTINGS.probe_target_bps, SETTINGS.probe_ramp
    assert ramped_rate(0.0, start, target, ramp) == start
    assert ramped_rate(ramp / 2, start, target, ramp) == (start + target) / 2
    assert ramped_rate(ramp * 3, start, target, ramp) == target
    assert ramped_rate(-1.0, start, target, ramp) == start
    assert ramped_rate(0.0, start, target, 0.0) == target


# -- the uplink's probe: what it costs the voice ------------------------------------------------


def test_an_uplink_probe_that_costs_the_voice_ends_and_one_on_a_lossy_link_does_not(
    bench: Bench,
) -> None:
    """A browser adapts its video to the loss in the relay's reports and can hold a probe in
    GCC's 2-10 % band for its whole 25 s: what the voice loses beyond what it lost while the
    video was paused ends the probe; the link's own random loss does not."""
    info = ParticipantInfo("s1", "user-1", "A. Person", "client")
    participant = Participant(
        info,
        None,  # type: ignore[arg-type]  # neither is called here
        settings=RelaySettings(),
        stats=RelayStats(),
        clock=bench.clock,
        owner=None,  # type: ignore[arg-type]
    )
    voice = bench.producer(OPUS)
    participant.producers["0"] = voice
    gate = participant.uplink_gate
    gate.state = GateState.PAUSED
    for loss in (0.06, 0.08, 0.07):  # what the link loses anyway (Wi-Fi), video paused
        voice.stats.fraction_lost = loss
        assert participant._uplink_voice_cost() == 0.0
    gate.state = GateState.PROBING
    voice.stats.fraction_lost = 0.09  # no worse than without the video: the probe goes on
    assert participant._uplink_voice_cost() == 0.0
    voice.stats.fraction_lost = 0.13  # 6 % more: the probe costs the voice, it ends
    assert participant._uplink_voice_cost() == SETTINGS.probe_loss
    gate.state = GateState.FLOWING  # resumed: the next pause measures afresh
    assert participant._uplink_voice_cost() == 0.0
    gate.state = GateState.PAUSED
    voice.stats.fraction_lost = 0.0
    participant._uplink_voice_cost()
    gate.state = GateState.PROBING
    voice.stats.fraction_lost = 0.05
    assert participant._uplink_voice_cost() == SETTINGS.probe_loss


def test_a_subscribers_loss_on_a_lossy_publishers_stream_is_no_verdict_on_its_link(
    bench: Bench, sink: CaptureSink
) -> None:
    """The relay forwards the publisher's gaps; with a starved uplink they come in bursts that
    the subtraction cannot line up with the subscriber's report interval."""
    producer = bench.producer(VP8)
    forwarder = bench.forwarder(producer, sink)
    forwarder.reported_at = bench.clock()
    forwarder.stats.fraction_lost = 0.5
    producer.recent_loss = 0.3  # the publisher's own uplink loses
    assert Participant._fresh_loss([forwarder], bench.clock() - 1) == 0.0
    producer.recent_loss = 0.02  # a clean uplink: the rest is this link's
    loss = Participant._fresh_loss([forwarder], bench.clock() - 1)
    assert abs(loss - (1 - 0.5 / 0.98)) < 1e-9
