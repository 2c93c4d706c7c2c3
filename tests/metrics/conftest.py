"""Fixtures of the metrics tests: a fake relay built from the real `relay.stats` dataclasses."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay.stats import CallClosed, RelayStats, StreamSample, StreamStats


@dataclass
class FakeRelay:
    """Exposes exactly what `relay.sfu.Relay` offers the metrics side."""

    stats: RelayStats = field(default_factory=RelayStats)
    samples: list[StreamSample] = field(default_factory=list)
    listeners: list[Callable[[CallClosed], None]] = field(default_factory=list)
    tracks: int = 0
    # call → time.time() it opened (Relay.call_opened_at); unset calls answer None
    opened: dict[str, float] = field(default_factory=dict)

    def call_opened_at(self, call: str) -> float | None:
        return self.opened.get(call)

    def stream_samples(self) -> Iterator[StreamSample]:
        return iter(list(self.samples))

    def active_calls(self) -> int:
        return len({s.call for s in self.samples})

    def active_participants(self) -> int:
        return len({(s.call, s.participant) for s in self.samples})

    def active_tracks(self) -> int:
        return self.tracks or sum(1 for s in self.samples if s.stats.direction == "in")

    def on_call_closed(self, callback: Callable[[CallClosed], None]) -> None:
        self.listeners.append(callback)

    def add(
        self,
        call: str,
        participant: str,
        kind: str,
        direction: str,
        *,
        source: str | None = None,
        role: str = "client",
        **counters: Any,
    ) -> StreamStats:
        stats = StreamStats(kind=kind, direction=direction, **counters)
        self.samples.append(StreamSample(call, participant, role, source or participant, stats))
        return stats

    def close(
        self,
        call: str,
        *,
        opened_at_wall: float,
        setup_times: tuple[float, ...] = (),
        closed_at_wall: float | None = None,
    ) -> CallClosed:
        final = tuple(s for s in self.samples if s.call == call)
        self.samples = [s for s in self.samples if s.call != call]
        event = CallClosed(
            call=call,
            opened_at_wall=opened_at_wall,
            closed_at_wall=time.time() if closed_at_wall is None else closed_at_wall,
            participants=len({s.participant for s in final}),
            setup_times=setup_times,
            samples=final,
        )
        for listener in self.listeners:
            listener(event)
        return event


@pytest.fixture
def fake_relay() -> FakeRelay:
    return FakeRelay()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "metrics.sqlite3"
