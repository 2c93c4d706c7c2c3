"""A call: its participants, and which producer is forwarded to whom."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
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
        self.opened_at_wall = time.time()
        self.closed = False
        self._ever_joined: set[str] = set()
        self._setup_times: list[float] = []
        self._final_samples: list[StreamSample] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._rtcp_task = asyncio.create_task(self._rtcp_loop())

    async def join(self, info: ParticipantInfo, listener: ParticipantListener) -> Participant:
        """Add a participant; a second connection of the same user replaces the first."""
        if self.closed:
            raise RoomClosed
        replaced = [p for p in self.participants.values() if p.info.user_id == info.user_id]
        if not replaced and len(self.participants) >= self.settings.max_participants:
            raise RoomFull(self.settings.max_participants)
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
        others = list(self.participants.values())
        self.participants[info.socket_id] = participant
        self._ever_joined.add(info.socket_id)
        self._stats.participants_joined += 1
        for other in others:
            other.listener.user_joined(participant)
            for producer in other.producers.values():
                participant.subscribe(producer, other.info)
        return participant

    async def leave(self, participant: Participant, reason: LeaveReason) -> None:
        await self._remove(participant, reason, tell_them=False)

    def drop(self, participant: Participant, reason: LeaveReason) -> None:
        """Remove a participant from a callback that cannot wait (connection failed)."""
        task = asyncio.create_task(self._remove(participant, reason, tell_them=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(
        self,
        participant: Participant,
        reason: LeaveReason,
        tell_them: bool,
        close_if_empty: bool = True,
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
        for other in self.participants.values():
            other.listener.user_left(participant, reason)
        if close_if_empty and not self.participants:
            await self._owner.close_room(self)
        await participant.close()

    def _remember(self, participant: Participant) -> None:
        """Keep what a leaving participant's streams counted, for the end-of-call summary."""
        self._final_samples.extend(self._samples_of(participant))
        if participant.first_media_at is not None:
            self._setup_times.append(participant.first_media_at - participant.joined_at)

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
        return tuple(self._setup_times)

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
        for participant in list(self.participants.values()):
            self._remember(participant)
            await participant.close()
            participant.listener.closed_by_relay(reason)
        self.participants.clear()
