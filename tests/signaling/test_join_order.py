"""`room-joined` comes before anything else of the room, however long the join's audit takes."""

from __future__ import annotations

import asyncio

import pytest

from relay.sfu import Relay
from smiling_relay.app import RELAY_KEY
from storage.base import AuditEntry, Storage
from tests.helpers import BookingFactory
from tests.relay.helpers import open_room
from tests.signaling.helpers import Client, join, offer_without_candidates, publish, receive
from tests.waiting import eventually


class SlowJoinAudit:
    """Holds the audit write of a successful join until `release` is set."""

    def __init__(self, storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = asyncio.Event()
        self.waiting = 0
        write = storage.add_audit

        async def add_audit(entry: AuditEntry) -> str:
            if entry.action == "join_success":
                self.waiting += 1
                await asyncio.wait_for(self.release.wait(), 10)
            return await write(entry)

        monkeypatch.setattr(storage, "add_audit", add_audit)


async def test_room_joined_precedes_the_subscriber_offer_sent_during_the_audit(
    client: Client,
    booking_factory: BookingFactory,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The room subscribes a late joiner to the others' tracks as soon as it is seated, while
    the join is still being audited: that offer (and any other room event) waits for
    `room-joined`."""
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    relay: Relay = client.app[RELAY_KEY]
    first = await join(client, booking.psychologist_token, room_id)
    await publish(first, await offer_without_candidates())
    slow = SlowJoinAudit(storage, monkeypatch)

    late = await client.ws_connect(f"/ws?token={booking.client_token}")
    assert (await receive(late))["event"] == "authenticated"
    await late.send_json({"event": "join-room", "data": {"roomId": room_id}})
    await eventually(lambda: slow.waiting == 1, "the late joiner's audit write")
    by_user = {p.info.user_id: p for p in relay.rooms[room_id].participants.values()}
    newcomer, already = by_user[booking.client.id], by_user[booking.psychologist.id]
    # the relay has already made its subscriber offer for the newcomer (handed it to the
    # connection: `_awaiting_answer` is set before the offer is created, on a loaded machine
    # long enough before for the media-state below to come first)...
    await eventually(lambda: newcomer._told_tracks is not None, "the relay's subscriber offer")
    # ...and the one already in the room changes its media state meanwhile
    await first.send_json({"event": "media-state", "data": {"audio": False, "video": True}})
    assert (await receive(first))["event"] == "user-joined"
    await eventually(lambda: not already.media.audio, "the media-state")
    slow.release.set()

    order = [(await receive(late))["event"] for _ in range(3)]
    assert order == ["room-joined", "offer", "media-state"], order
    await late.close()
    await first.close()
