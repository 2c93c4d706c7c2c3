"""Audio first: on a link too weak for video, stop the video and keep the voice.

One `VideoGate` watches one link's bandwidth estimate: a participant's downlink (the REMB its
subscriber connection reports) or its uplink (the relay's own delay-based estimate of what it
publishes). The gate is a pure state machine on an injected clock; the participant feeds it
once per RTCP interval and applies what it decides (no work per packet).

    FLOWING ──estimate < pause_below, with loss, for pause_after──▶ PAUSED
    PAUSED  ──probe_interval elapsed──▶ PROBING  (video flows again, silently)
    PROBING ──fresh estimate > resume_above, no loss, for resume_after──▶ FLOWING
    PROBING ──loss, with a fresh estimate low or falling; or probe_for elapsed──▶ PAUSED
              (and the next probe waits twice as long)

Why loss as well: a receive-side estimate is no verdict on its own. aiortc's starts at 0.85 x
what arrived in the first second (30 kbit/s is common on a link that carries megabits) and
climbs slowly; any delay-based estimate also drops when the receiver's own event loop lags. A
link too weak for the video it is sent drops packets (a tbf, a full router queue), which the
subscriber's receiver reports (or the relay's own receive statistics, uplink) say.

Why a probe: a delay-based estimator (aiortc's `RemoteBitrateEstimator`, Chromium's receive-side
REMB estimator, the relay's own) only updates from video packets carrying abs-send-time, and
its AIMD rate control caps the estimate at 1.5 × the rate it receives + 10 kbit/s. With the
video paused it gets no samples (REMB stops, or repeats its last low value), so the estimate
cannot grow however much the link recovers: the gate has to let video through for a while to
learn. While probing it ignores the stale pre-probe value and judges only fresh estimates. A
fresh estimate that falls is the estimator reporting overuse (its AIMD only lowers the rate on
overuse); with loss beside it the link still cannot carry the video, so the probe ends at once,
before the queue costs the audio much. Probes back off (10 s, 20 s, 40 s, then every 60 s)
while the link stays weak, and start again from the shortest interval after a resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class GateState(StrEnum):
    FLOWING = "flowing"
    PAUSED = "paused"
    PROBING = "probing"  # paused as far as the UIs know; video flows so the estimate can grow


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
        self._high_since: float | None = None
        self._previous: int | None = None  # last fresh estimate while probing
        self._interval = settings.probe_interval

    @property
    def video_flows(self) -> bool:
        return self.state is not GateState.PAUSED

    def update(self, estimate_bps: int | None, loss: float = 0.0) -> Transition | None:
        """Called once per RTCP interval with the link's current estimate (None: none yet, or
        none since the probe began) and its loss over the last report interval (0..1); returns
        the state change to apply, if any."""
        now = self._clock()
        s = self.settings
        lossy = loss >= s.loss_evidence
        if self.state is GateState.FLOWING:
            if estimate_bps is not None and estimate_bps < s.pause_below_bps and lossy:
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
        return self._judge_probe(estimate_bps, lossy, now)

    def _judge_probe(self, estimate_bps: int | None, lossy: bool, now: float) -> Transition | None:
        s = self.settings
        if estimate_bps is not None:
            previous, self._previous = self._previous, estimate_bps
            falling = previous is not None and estimate_bps < previous * (1 - s.overuse_drop)
            if lossy and (falling or estimate_bps < s.pause_below_bps):
                return self._fail_probe(now)
            if estimate_bps > s.resume_above_bps and not lossy:
                self._high_since = now if self._high_since is None else self._high_since
                if now - self._high_since >= s.resume_after:
                    self._interval = s.probe_interval
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
        self._low_since = self._high_since = self._previous = None
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
