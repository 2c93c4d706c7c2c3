"""relay/estimator.py computes what aiortc's estimator computes, with shorter loops."""

from __future__ import annotations

import random

import pytest
from aiortc import rate

from relay.estimator import OveruseEstimator, RemoteBitrateEstimator, WindowRate


@pytest.mark.parametrize("seed", range(5))
def test_the_window_rate_equals_aiortcs_rate_counter(seed: int) -> None:
    rng = random.Random(seed)
    ours, theirs = WindowRate(1000, 8000), rate.RateCounter(1000, 8000)
    now = rng.randrange(10**6)
    for step in range(3000):
        # frames 0-50 ms apart, now and then a silence longer than the window
        now += rng.choice((0, 1, 16, 33, 50, rng.randrange(2000)))
        if rng.random() < 0.6:
            value = rng.randrange(1, 5000)
            ours.add(value, now)
            theirs.add(value, now)
        assert ours.rate(now) == theirs.rate(now), step
        if rng.random() < 0.005:
            ours.reset()
            theirs.reset()


def test_the_minimum_frame_period_equals_aiortcs() -> None:
    rng = random.Random(7)
    ours, theirs = OveruseEstimator(), rate.OveruseEstimator()
    for step in range(2000):
        period = rng.choice((33.0, 33.3, 66.7, rng.uniform(0, 200)))
        assert ours.update_min_frame_period(period) == theirs.update_min_frame_period(period), step


@pytest.mark.parametrize("seed", range(3))
def test_the_estimates_equal_aiortcs(seed: int) -> None:
    """Frames of a 30 fps video whose delay grows and shrinks: every estimate aiortc's estimator
    gives, ours gives, at the same frame."""
    rng = random.Random(seed)
    ours, theirs = RemoteBitrateEstimator(), rate.RemoteBitrateEstimator()
    send_ms, delay, updates = 0.0, 20.0, 0
    for frame in range(3000):
        send_ms += 1000 / 30
        delay = max(delay + rng.uniform(-3, 3.5 if (frame // 300) % 2 else -2.5), 5.0)
        arrival_ms = int(send_ms + delay)
        abs_send_time = int(send_ms / 1000 * (1 << 18)) & 0xFFFFFF
        size = rng.randrange(800, 6000)
        a = ours.add(arrival_ms, abs_send_time, size, 1234)
        b = theirs.add(arrival_ms, abs_send_time, size, 1234)
        assert a == b, frame
        updates += a is not None
    assert updates > 10  # the sequence did produce estimates to compare
