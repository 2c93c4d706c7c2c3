"""Audio first's downlink probe: RTP padding at a ramped rate, to learn whether a participant's
link now carries video without sending it any (relay/adaptation.py says when; this says how).

A delay-based estimator (aiortc's `RemoteBitrateEstimator`, Chromium's receive-side REMB) counts
every packet that carries abs-send-time, padding included (aiortc: `len(payload) +
padding_size`, fed before the packet is demultiplexed), and caps its estimate at 1.5 x what it
receives + 10 kbit/s. Padding-only packets on the video's RTX stream are what browsers send to
probe: the receiver's depacketizer drops them, so a probe costs no decoder work and freezes no
picture, and unlike the video (keyframes, bursts of a frame's packets) its rate is the relay's
to choose. The rate starts low and ramps to `target_bps`, a little more than the gate needs to
see; the probe stops sending at the first sign that the link is full (`overused()`: loss in
a fresh receiver report, on the padding or the audio beside it), long before the gate's next
tick, so the audio loses at most what was queued behind a small overshoot.

Not on the media path: one timer callback every `TICK` seconds while a probe runs, none
otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from relay.forwarder import Forwarder

TICK = 0.02  # seconds between bursts: 50 bursts a second keep the rate smooth
PADDING_BYTES = 240  # per packet (at most 255: the last padding byte counts them)


def ramped_rate(elapsed: float, start_bps: int, target_bps: int, ramp_seconds: float) -> float:
    """A probe's rate `elapsed` seconds in: from `start_bps` up to `target_bps`, linearly over
    `ramp_seconds` (the downlink's padding, and the REMB of the uplink's probe)."""
    share = min(max(elapsed / ramp_seconds, 0.0), 1.0) if ramp_seconds > 0 else 1.0
    return start_bps + (target_bps - start_bps) * share


class PaddingProbe:
    def __init__(
        self,
        forwarder: Forwarder,
        *,
        start_bps: int,
        target_bps: int,
        ramp_seconds: float,
        clock: Callable[[], float],
        overused: Callable[[], bool],
    ) -> None:
        self._forwarder = forwarder
        self.start_bps, self.target_bps, self.ramp_seconds = start_bps, target_bps, ramp_seconds
        self._clock = clock
        self._overused = overused
        self._task: asyncio.Task[None] | None = None
        self.sent_bytes = 0
        self.stopped_early = False  # it saw the link full and stopped sending

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def rate_at(self, elapsed: float) -> float:
        """Bit/s after `elapsed` seconds of probing."""
        return ramped_rate(elapsed, self.start_bps, self.target_bps, self.ramp_seconds)

    async def _run(self) -> None:
        began = last = self._clock()
        credit = 0.0  # bytes the rate allows and not yet sent
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(TICK)
                if self._overused():
                    self.stopped_early = True
                    return
                now = self._clock()
                credit = min(credit + self.rate_at(now - began) / 8 * (now - last), 8_000.0)
                last = now
                while credit >= PADDING_BYTES:
                    sent = self._forwarder.send_padding(PADDING_BYTES)
                    if not sent:
                        break
                    credit -= sent
                    self.sent_bytes += sent
