"""The keep-alive verdict (signaling/liveness.py) on an injected clock."""

from __future__ import annotations

from signaling.liveness import PING_AFTER, PONG_WAIT, STALE_AFTER, TICK, Liveness, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(
    liveness: Liveness, clock: Clock, seconds: float, media: object
) -> list[tuple[float, Verdict]]:
    """Check every TICK for `seconds`; `media(t)` gives the counters' snapshot at t."""
    start, seen = clock.now, []
    for _ in range(round(seconds / TICK)):
        clock.now += TICK
        verdict = liveness.check(media(clock.now - start) if callable(media) else media)
        if verdict is not None:
            seen.append((round(clock.now - start, 1), verdict))
        if verdict is Verdict.DEAD:
            break
    return seen


def test_a_silent_socket_without_media_is_pinged_then_dead() -> None:
    clock = Clock()
    seen = watch(Liveness(clock), clock, 10, None)
    assert seen == [(PING_AFTER, Verdict.PING), (PING_AFTER + PONG_WAIT, Verdict.DEAD)]


def test_a_socket_that_answers_stays() -> None:
    clock = Clock()
    liveness = Liveness(clock)
    for _ in range(10):
        assert watch(liveness, clock, PING_AFTER, None) == [(PING_AFTER, Verdict.PING)]
        liveness.heard()  # the pong
    assert watch(liveness, clock, PING_AFTER - TICK, None) == []


def test_media_that_stopped_with_the_socket_is_no_excuse() -> None:
    """A dead link: the counters stop when the socket does; noticed as without media."""
    clock = Clock()
    seen = watch(Liveness(clock), clock, 10, (1234, 99.0))
    assert seen[-1] == (PING_AFTER + PONG_WAIT, Verdict.DEAD)


def test_a_silent_socket_whose_media_still_arrives_is_alive_until_stale() -> None:
    clock = Clock()
    seen = watch(Liveness(clock), clock, 60, lambda t: (int(t * 50), 0.0))
    pings = [t for t, v in seen if v is Verdict.PING]
    assert pings[:3] == [PING_AFTER, 2 * PING_AFTER, 3 * PING_AFTER]  # pinged every 3 s
    assert seen[-1] == (STALE_AFTER, Verdict.DEAD)


def test_media_stopping_later_ends_it_as_soon_as_it_has_been_silent_long_enough() -> None:
    clock = Clock()
    seen = watch(Liveness(clock), clock, 60, lambda t: (min(int(t * 50), 500), 0.0))  # to 10 s
    assert seen[-1] == (10 + PING_AFTER + PONG_WAIT, Verdict.DEAD)


def test_the_reports_of_a_receive_only_participant_count_as_media() -> None:
    clock = Clock()
    seen = watch(Liveness(clock), clock, 12, lambda t: (0, float(int(t))))  # one report a second
    assert all(v is Verdict.PING for _, v in seen)


def test_a_signaling_socket_is_marked_a_thin_stream() -> None:
    """Linear retransmission timeouts: an event lost while video flooded a weak link is resent
    within a few hundred ms once the link is free, not after a doubled-up RTO of seconds."""
    import socket
    from types import SimpleNamespace

    from signaling.setup import TCP_THIN_LINEAR_TIMEOUTS, thin_stream

    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as client:
        accepted, _ = server.accept()
        with accepted:
            transport = SimpleNamespace(get_extra_info=lambda name: accepted)
            thin_stream(SimpleNamespace(transport=transport))  # type: ignore[arg-type]
            assert accepted.getsockopt(socket.IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS) == 1
            assert client.getsockopt(socket.IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS) == 0
