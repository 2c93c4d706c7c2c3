"""The pieces of the WebSocket limits and the Origin check, without an app."""

from __future__ import annotations

import pytest

from signaling.limits import NO_PLACE, Occupancy, TokenBucket
from signaling.origins import OriginPolicy


def test_a_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.5)
    now[0] = 0.5
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] = 100.0
    assert sum(bucket.take() for _ in range(10)) == 3  # never more than the burst


def test_places_are_counted_per_key_and_released_once() -> None:
    occupancy = Occupancy(limit=2)
    first, second = occupancy.take("a"), occupancy.take("a")
    assert first is not None and second is not None
    assert occupancy.take("a") is None
    assert occupancy.take("b") is not None
    first.release()
    first.release()  # idempotent: the second call frees nothing more
    assert occupancy.held("a") == 1
    second.release()
    assert occupancy.held("a") == 0
    NO_PLACE.release()


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "relay.example.org", True),
        ("https://relay.example.org", "relay.example.org", True),
        ("https://relay.example.org:443", "relay.example.org", True),
        ("http://10.77.0.1:8080", "10.77.0.1:8080", True),
        ("http://10.77.0.1:8081", "10.77.0.1:8080", False),
        ("https://app.example.org/", "relay.internal:8080", True),  # CORS_ORIGIN
        ("https://public.example.org", "relay.internal:8080", True),  # PUBLIC_URL
        ("https://evil.example", "relay.example.org", False),
        ("null", "relay.example.org", False),
        ("http://[::1", "relay.example.org", False),
    ],
)
def test_the_origin_policy(origin: str | None, host: str, allowed: bool) -> None:
    policy = OriginPolicy.of(("https://app.example.org",), "https://public.example.org/call")
    assert (policy.refusal(origin, host) is None) is allowed
    assert OriginPolicy.of(("*",), None).refusal("https://evil.example", host) is None
