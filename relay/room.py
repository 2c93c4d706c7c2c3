"""A call: its participants, and which producer is forwarded to whom."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Protocol

from relay.adaptation import Direction, GateReason
from relay.participant import Participant, ParticipantInfo, ParticipantListener
from relay.producer import Producer
from relay.reasons import LeaveReason
from relay.settings import RelaySettings
from relay.stats import RelayStats, StreamSample

logger = logging.getLogger(__name__)


class RoomClosed(Exception):
    """The room was torn down while a join was in progress: join the relay's current room."""


class RoomFull(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the room already has {limit} participants")
        self.limit = limit


# Why a participant's seat is held rather than freed: its connection went away, not the person.
HOLDS_SEAT = frozenset({LeaveReason.DISCONNECTED, LeaveReason.ICE_FAILED, LeaveReason.TIMEOUT})


@dataclass
class HeldSeat:
    """A participant whose connection went away, kept in the call for `seat_grace` seconds:
    the same user joining again takes it back; when it expires the others are told `timeout`."""

    participant: Participant
    expiry: asyncio.TimerHandle


class RoomOwner(Protocol):
    """What a room needs from the relay that opened it (`relay.sfu.Relay` implements it)."""

    async def close_room(self, room: Room, reason: LeaveReason = LeaveReason.SHUTDOWN) -> None:
        """The room emptied: forget it, tear it down and report the call closed."""
        ...


class Room:
    def __init__(
        self,
        room_id: str,
        *,
        settings: RelaySettings,
        stats: RelayStats,
        clock: Callable[[], float],
        owner: RoomOwner,
    ) -> None:
        self.room_id = room_id
        self.settings = settings
        self._stats = stats
        self._clock = clock
        self._owner = owner
        self.participants: dict[str, Participant] = {}
        # Seats held for participants whose connection went away, by user id.
        self.held: dict[str, HeldSeat] = {}
        self.opened_at_wall = time.time()
        self.closed = False
        self._ever_joined: set[str] = set()
        self._setup_times: dict[str, float] = {}  # by user: their first connection's
        self._final_samples: list[StreamSample] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._rtcp_task = asyncio.create_task(self._rtcp_loop())

    async def join(self, info: ParticipantInfo, listener: ParticipantListener) -> Participant:
        """Add a participant; a second connection of the same user replaces the first."""
        if self.closed:
            raise RoomClosed
        replaced = [p for p in self.participants.values() if p.info.user_id == info.user_id]
        # A held seat counts as taken, by its own user only: they take it back.
        held = self.held.pop(info.user_id, None)
        taken = len(self.participants) + len(self.held)
        if not replaced and held is None and taken >= self.settings.max_participants:
            raise RoomFull(self.settings.max_participants)
        if held is not None:
            held.expiry.cancel()
        for old in replaced:
            # a reload must not close the room when the reloading user was alone in it
            await self._remove(old, LeaveReason.REPLACED, tell_them=True, close_if_empty=False)
        if self.closed:
            raise RoomClosed
        participant = Participant(
            info,
            listener,
            settings=self.settings,
            stats=self._stats,
            clock=self._clock,
            owner=self,
        )
        if held is not None:
            participant.rejoined_from = held.participant.socket_id
        others = list(self.participants.values())
        self.participants[info.socket_id] = participant
        self._ever_joined.add(info.user_id)
        self._stats.participants_joined += 1
        for other in others:
            other.listener.user_joined(participant)
            for producer in other.producers.values():
                participant.subscribe(producer, other.info)
        return participant

    async def leave(
        self, participant: Participant, reason: LeaveReason, *, hold_seat: bool = False
    ) -> None:
        """`hold_seat`: the participant's connection went away (`reason` one of `HOLDS_SEAT`)
        rather than the person: its media is closed, but the others are told
        `user-reconnecting` and its seat is kept for `seat_grace` seconds (0: it leaves)."""
        await self._remove(participant, reason, tell_them=False, hold_seat=hold_seat)

    def drop(self, participant: Participant, reason: LeaveReason) -> None:
        """Remove a participant from a callback that cannot wait (connection failed)."""
        self._spawn(self._remove(participant, reason, tell_them=True, hold_seat=True))

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _hold_seat(self, participant: Participant) -> None:
        user_id = participant.info.user_id
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(self.settings.seat_grace, self._seat_expired, user_id)
        self.held[user_id] = HeldSeat(participant, expiry)
        for other in self.participants.values():
            other.listener.user_reconnecting(participant)

    def _seat_expired(self, user_id: str) -> None:
        held = self.held.pop(user_id, None)
        if held is None or self.closed:
            return
        for other in self.participants.values():
            other.listener.user_left(held.participant, LeaveReason.TIMEOUT)
        if not self.participants and not self.held:
            self._spawn(self._owner.close_room(self))

    async def _remove(
        self,
        participant: Participant,
        reason: LeaveReason,
        tell_them: bool,
        close_if_empty: bool = True,
        hold_seat: bool = False,
    ) -> None:
        if self.participants.get(participant.socket_id) is not participant:
            return
        # Membership first, connections last: however long aiortc takes to close (or if it
        # never finishes), the others are told at once and an empty room does not linger.
        del self.participants[participant.socket_id]
        self._stats.participants_left += 1
        self._remember(participant)
        for other in self.participants.values():
            for producer in participant.producers.values():
                other.unsubscribe(producer)
        if tell_them:
            participant.listener.closed_by_relay(reason)
        if hold_seat and reason in HOLDS_SEAT and self.settings.seat_grace > 0:
            self._hold_seat(participant)
        else:
            for other in self.participants.values():
                other.listener.user_left(participant, reason)
        if close_if_empty and not self.participants and not self.held:
            await self._owner.close_room(self)
        await participant.close()

    def _remember(self, participant: Participant) -> None:
        """Keep what a leaving participant's streams counted, for the end-of-call summary."""
        self._final_samples.extend(self._samples_of(participant))
        if participant.first_media_at is not None:  # a reconnect's setup is not a new person's
            setup = participant.first_media_at - participant.joined_at
            self._setup_times.setdefault(participant.info.user_id, setup)

    def producers_added(self, participant: Participant, producers: list[Producer]) -> None:
        for other in self.participants.values():
            if other is participant:
                continue
            for producer in producers:
                other.subscribe(producer, participant.info)

    def participant_info(self, socket_id: str) -> ParticipantInfo | None:
        participant = self.participants.get(socket_id)
        return participant.info if participant is not None else None

    def video_changed(
        self, participant: Participant, direction: Direction, paused: bool, reason: GateReason
    ) -> None:
        for member in self.participants.values():
            member.listener.video_changed(participant, direction, paused, reason)

    def set_media_state(
        self, participant: Participant, audio: bool, video: bool, screen: bool
    ) -> None:
        participant.media.audio, participant.media.video = audio, video
        participant.media.screen = screen
        for other in self.participants.values():
            if other is not participant:
                other.listener.media_state_changed(participant)

    def stream_samples(self) -> list[StreamSample]:
        return [s for p in self.participants.values() for s in self._samples_of(p)]

    def _samples_of(self, participant: Participant) -> list[StreamSample]:
        info = participant.info
        samples = [
            StreamSample(self.room_id, info.socket_id, info.role, info.socket_id, p.stats)
            for p in participant.producers.values()
        ]
        for slot in participant.slots:
            producer = slot.forwarder.producer
            if slot.forwarder.stats.packets or producer is not None:
                source = producer.owner if producer else ""
                samples.append(
                    StreamSample(
                        self.room_id, info.socket_id, info.role, source, slot.forwarder.stats
                    )
                )
        return samples

    @property
    def setup_times(self) -> tuple[float, ...]:
        return tuple(self._setup_times.values())

    @property
    def final_samples(self) -> tuple[StreamSample, ...]:
        return tuple(self._final_samples)

    @property
    def participant_count_ever(self) -> int:
        return len(self._ever_joined)

    async def _rtcp_loop(self) -> None:
        interval = self.settings.rtcp_interval
        while True:
            await asyncio.sleep(interval)
            for participant in list(self.participants.values()):
                try:
                    participant.rtcp_tick()
                except Exception:
                    logger.exception(
                        "RTCP for %s failed",
                        participant.socket_id,
                        extra={"call_id": self.room_id, "connection_id": participant.socket_id},
                    )

    async def close(self, reason: LeaveReason = LeaveReason.SHUTDOWN) -> None:
        """Tear the room down (relay shutdown, call ended); each participant is told `reason`."""
        self.closed = True
        self._rtcp_task.cancel()
        for held in self.held.values():
            held.expiry.cancel()
        self.held.clear()
        for participant in list(self.participants.values()):
            self._remember(participant)
            await participant.close()
            participant.listener.closed_by_relay(reason)
        self.participants.clear()
