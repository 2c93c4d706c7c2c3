"""The relay: every room this process serves, its settings and its counters."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from relay import _aiortc
from relay.reasons import LeaveReason
from relay.room import Room
from relay.settings import RelaySettings
from relay.stats import CallClosed, RelayStats, StreamSample

logger = logging.getLogger(__name__)

CallClosedListener = Callable[[CallClosed], None]


class Relay:
    """Rooms live wholly inside one process (one core): state stays on this object, never global."""

    def __init__(self, settings: RelaySettings | None = None) -> None:
        _aiortc.self_test()
        self.settings = settings or RelaySettings()
        self.stats = RelayStats()
        self.rooms: dict[str, Room] = {}
        # asyncio's loop.time() is time.monotonic() behind a Python-level call (read per packet),
        # and another loop's (uvloop) may have millisecond resolution: the C function directly.
        self.clock = time.monotonic
        self._call_closed_listeners: list[CallClosedListener] = []

    def room(self, room_id: str) -> Room:
        """The room with this id, opened on first use."""
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = Room(
                room_id, settings=self.settings, stats=self.stats, clock=self.clock, owner=self
            )
            self.stats.rooms_opened += 1
        return room

    async def close_room(self, room: Room, reason: LeaveReason = LeaveReason.SHUTDOWN) -> None:
        if self.rooms.get(room.room_id) is room:
            del self.rooms[room.room_id]
        if room.closed:
            return
        await room.close(reason)
        self.stats.rooms_closed += 1
        event = CallClosed(
            call=room.room_id,
            opened_at_wall=room.opened_at_wall,
            closed_at_wall=time.time(),
            participants=room.participant_count_ever,
            setup_times=room.setup_times,
            samples=room.final_samples,
        )
        for listener in self._call_closed_listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("a call-closed listener failed", extra={"call_id": room.room_id})

    async def end_call(self, room_id: str) -> bool:
        """Close the room with this id, its participants told `CALL_ENDED`; False if none."""
        room = self.rooms.get(room_id)
        if room is None:
            return False
        await self.close_room(room, LeaveReason.CALL_ENDED)
        return True

    def on_call_closed(self, listener: CallClosedListener) -> None:
        self._call_closed_listeners.append(listener)

    def call_opened_at(self, call: str) -> float | None:
        """`time.time()` when the call's room opened (its `CallClosed.opened_at_wall` to be),
        or None if the relay holds no such call."""
        room = self.rooms.get(call)
        return None if room is None else room.opened_at_wall

    def stream_samples(self) -> Iterator[StreamSample]:
        for room in self.rooms.values():
            yield from room.stream_samples()

    def active_calls(self) -> int:
        return len(self.rooms)

    def active_participants(self) -> int:
        return sum(len(room.participants) for room in self.rooms.values())

    def active_tracks(self) -> int:
        return sum(
            len(p.producers) for room in self.rooms.values() for p in room.participants.values()
        )

    async def close(self) -> None:
        for room in list(self.rooms.values()):
            await self.close_room(room)
