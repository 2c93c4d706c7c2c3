"""Audio first: on a link too weak for video, stop the video and keep the voice.

One `VideoGate` watches one link's bandwidth estimate: a participant's downlink (the REMB its
subscriber connection reports) or its uplink (the relay's own delay-based estimate of what it
publishes). The gate is a pure state machine on an injected clock; the participant feeds it
once per RTCP interval and applies what it decides (no work per packet).

    FLOWING ──estimate < pause_below, with loss, for pause_after──▶ PAUSED
    FLOWING ──heavy loss, the link delivering < pause_below, for heavy_after──▶ PAUSED
    PAUSED  ──probe_interval elapsed──▶ PROBING  (the link is tried, silently: see below)
    PROBING ──fresh estimate > resume_above without loss, or what the probe delivered
              (after its loss) > resume_above, for resume_after──▶ FLOWING
    PROBING ──loss ≥ probe_loss; or loss with a fresh estimate falling;
              or probe_for elapsed──▶ PAUSED  (and the next probe waits twice as long)

Why heavy loss: a delay-based estimate takes seconds to fall below `pause_below` on a link far
too weak for the video, seconds in which the video floods the link and the audio queued behind
it is lost. When a report interval loses a fifth or more of what was sent and what got through
(sent x (1 - loss): the link's real throughput) is below what video needs, the link has said so
itself: with the estimate falling beside it (overuse) the video pauses at once; otherwise
after two such reports in a row (`heavy_after`). An estimate is still required (the
participant passes none that is no verdict on this link, e.g. a receive-side estimate of a
publisher that sends little), so loss that is not this link's own cannot pause it.

Why loss as well: a receive-side estimate is no verdict on its own. aiortc's starts at 0.85 x
what arrived in the first second (30 kbit/s is common on a link that carries megabits) and
climbs slowly; any delay-based estimate also drops when the receiver's own event loop lags. A
link too weak for the video it is sent drops packets (a tbf, a full router queue), which the
subscriber's receiver reports (or the relay's own receive statistics, uplink) say.

Why a probe: a delay-based estimator (aiortc's `RemoteBitrateEstimator`, Chromium's receive-side
REMB estimator, the relay's own) only updates from video packets carrying abs-send-time, and
its AIMD rate control caps the estimate at 1.5 × the rate it receives + 10 kbit/s. With the
video paused it gets no samples (REMB stops, or repeats its last low value), so the estimate
cannot grow however much the link recovers: the gate has to send something for a while to
learn. What it sends is the participant's business (relay/participant.py): downlink, RTP padding
on the video's RTX stream at a rate ramped up to a little more than `resume_above`
(relay/probe.py), not the video itself (its bursts and keyframes would flood a weak link at
once); uplink, the publisher's video again, under a REMB ramped the same way. While probing
the gate ignores the stale pre-probe value and judges only fresh estimates. A fresh estimate
that falls is the estimator reporting overuse (its AIMD only lowers the rate on overuse); with
loss beside it the link still cannot carry the video, so the probe ends at once, before the
queue costs the audio much; so does loss of `probe_loss` or more on its own (the probe sends no
more than video needs: a link that loses that much of it cannot carry video). Probes back off
(10 s, 20 s, 40 s, then every 60 s) while the link stays weak, and start again from the
shortest interval after a resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class GateState(StrEnum):
    FLOWING = "flowing"
    PAUSED = "paused"
    # paused as far as the UIs know; the link is tried so the estimate can grow (downlink: the
    # relay sends padding, relay/probe.py; uplink: the publisher sends its video again)
    PROBING = "probing"


@dataclass(frozen=True)
class GateSettings:
    pause_below_bps: int = 150_000
    pause_after: float = 2.0
    resume_above_bps: int = 250_000
    resume_after: float = 3.0
    probe_interval: float = 10.0  # first probe this long after pausing; doubles per failure
    max_probe_interval: float = 60.0
    probe_for: float = 25.0  # give up a probe that neither fails nor succeeds by then
    # A fresh estimate this much below the previous one, while probing, is an overuse verdict.
    overuse_drop: float = 0.05
    # Loss (fraction of the last report interval) that says the link is the bottleneck.
    loss_evidence: float = 0.05
    # Loss that, with the link delivering less than `pause_below_bps`, pauses without waiting
    # for the estimate to fall that low: at once if it is falling, else once it has lasted
    # `heavy_after` (two report intervals of ~1 s).
    heavy_loss: float = 0.2
    heavy_after: float = 0.9
    # Loss that ends a probe on its own (the probe sends about what video needs, no more).
    probe_loss: float = 0.1
    # What a probe sends: downlink padding ramped from `probe_start_bps` to `probe_target_bps`
    # over `probe_ramp` s (relay/probe.py); uplink, the publisher's video under a REMB ramped
    # the same way.
    # The target lets an estimator (at most 1.5 x what it receives + 10 kbit/s) pass
    # `resume_above_bps` with some room, and not much more.
    probe_start_bps: int = 50_000
    probe_target_bps: int = 320_000
    probe_ramp: float = 8.0
    # After a resume on what a probe got through (not on the estimate), the estimate is left
    # this long to climb (8 %/s: ~30 kbit/s to 250 in half a minute) before a low one counts.
    estimate_catch_up: float = 40.0


@dataclass(frozen=True)
class Transition:
    before: GateState
    after: GateState

    @property
    def paused(self) -> bool:
        """The UIs must be told the video paused (it was flowing)."""
        return self.before is GateState.FLOWING

    @property
    def resumed(self) -> bool:
        """The UIs must be told the video is back (it was paused or on probation)."""
        return self.after is GateState.FLOWING

    @property
    def video_flows(self) -> bool:
        return self.after is not GateState.PAUSED


class VideoGate:
    def __init__(self, settings: GateSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self.state = GateState.FLOWING
        self._since = clock()  # when the current state began
        self._low_since: float | None = None
        self._heavy_since: float | None = None
        self._estimate_trusted_at = 0.0  # a low estimate pauses nothing before then
        self._high_since: float | None = None
        self._previous: int | None = None  # last fresh estimate while probing
        self._interval = settings.probe_interval

    @property
    def video_flows(self) -> bool:
        return self.state is not GateState.PAUSED

    def update(
        self, estimate_bps: int | None, loss: float = 0.0, delivered_bps: float | None = None
    ) -> Transition | None:
        """Called once per RTCP interval with the link's current estimate (None: none yet, or
        none since the probe began), its loss over the last report interval (0..1) and, when
        known, what it delivered over that interval (bit/s, after the loss: of the video, or
        while probing of the probe, when a fresh report says how much of it was lost);
        returns the state change to apply, if any."""
        now = self._clock()
        s = self.settings
        lossy = loss >= s.loss_evidence
        if self.state is GateState.FLOWING:
            previous, self._previous = self._previous, estimate_bps
            if (
                loss >= s.heavy_loss
                and estimate_bps is not None
                and delivered_bps is not None
                and delivered_bps < s.pause_below_bps
            ):
                self._heavy_since = now if self._heavy_since is None else self._heavy_since
                falling = previous is not None and estimate_bps < previous * (1 - s.overuse_drop)
                if falling or now - self._heavy_since >= s.heavy_after:
                    return self._enter(GateState.PAUSED, now)
            else:
                self._heavy_since = None
            trusted = now >= self._estimate_trusted_at
            if trusted and estimate_bps is not None and estimate_bps < s.pause_below_bps and lossy:
                self._low_since = now if self._low_since is None else self._low_since
                if now - self._low_since >= s.pause_after:
                    return self._enter(GateState.PAUSED, now)
            else:
                self._low_since = None
            return None
        if self.state is GateState.PAUSED:
            if now - self._since >= self._interval:
                return self._enter(GateState.PROBING, now)
            return None
        if loss >= s.probe_loss:
            return self._fail_probe(now)
        return self._judge_probe(estimate_bps, lossy, now, delivered_bps)

    def _judge_probe(
        self, estimate_bps: int | None, lossy: bool, now: float, delivered_bps: float | None
    ) -> Transition | None:
        s = self.settings
        if estimate_bps is not None:
            previous, self._previous = self._previous, estimate_bps
            falling = previous is not None and estimate_bps < previous * (1 - s.overuse_drop)
            if lossy and falling:  # overuse (the estimator only lowers on it) with loss
                return self._fail_probe(now)
        # What the link carried (its loss taken out) is a measure of its own; the estimate,
        # which climbs no faster than 8 %/s from its old low value, may take half a minute to
        # agree, and counts only without loss. Some loss beside a delivered rate that is
        # enough is no verdict against the link: a link that loses a few percent at random
        # (Wi-Fi) but carries the rate must get its video back (`probe_loss` ends a probe).
        by_estimate = (estimate_bps or 0) > s.resume_above_bps and not lossy
        if by_estimate or (delivered_bps or 0) > s.resume_above_bps:
            self._high_since = now if self._high_since is None else self._high_since
            if now - self._high_since >= s.resume_after:
                self._interval = s.probe_interval
                if (estimate_bps or 0) <= s.resume_above_bps:
                    # resumed on what got through: the estimate is still climbing from its low
                    # value and says nothing about the link for a while (heavy loss still does)
                    self._estimate_trusted_at = now + s.estimate_catch_up
                return self._enter(GateState.FLOWING, now)
        else:
            self._high_since = None
        if now - self._since >= s.probe_for:
            return self._fail_probe(now)
        return None

    def _fail_probe(self, now: float) -> Transition:
        self._interval = min(self._interval * 2, self.settings.max_probe_interval)
        return self._enter(GateState.PAUSED, now)

    def _enter(self, state: GateState, now: float) -> Transition:
        transition = Transition(self.state, state)
        self.state, self._since = state, now
        self._low_since = self._heavy_since = self._high_since = self._previous = None
        return transition


class Direction(StrEnum):
    """Which link of a participant a gate watches (the wire's `direction`)."""

    DOWN = "down"  # relay → participant: the relay stops forwarding video to them
    UP = "up"  # participant → relay: the participant is asked to stop sending video


class GateReason(StrEnum):
    """Why a video paused or came back (the wire's `reason`)."""

    WEAK = "weak-connection"  # paused: the estimate stayed below what video needs
    RECOVERED = "recovered"  # resumed: the estimate recovered (to everyone)
    PROBE = "probe"  # uplink only, to the publisher alone: send video again, on probation
