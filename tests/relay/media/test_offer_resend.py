"""An unanswered subscriber offer is sent again: a client that dropped the first one still gets
the others' media; one that never answers is told NEGOTIATION_FAILED, with a reason."""

from __future__ import annotations

import dataclasses
from typing import Any

from relay.sfu import Relay
from synth.client import CallClient
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.helpers import Booking
from tests.relay.helpers import sees
from tests.relay.media.conftest import ClientMaker


class DropsOffers(CallClient):
    """A client that ignores the relay's first `drop` subscriber offers (as a client that
    received one before it was ready for it would)."""

    def __init__(self, *args: Any, drop: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drop = drop

    async def _react(self, message: dict[str, Any]) -> None:
        subscriber_offer = (
            message.get("event") == "offer" and message["data"].get("target") == "subscriber"
        )
        if subscriber_offer and self.drop > 0:
            self.drop -= 1
            return
        await super()._react(message)


def subscriber_offers(client: CallClient) -> list[dict[str, Any]]:
    return [
        m
        for m in client.history
        if m["event"] == "offer" and m["data"].get("target") == "subscriber"
    ]


async def test_a_dropped_subscriber_offer_is_sent_again_and_media_flows(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    relay.settings = dataclasses.replace(relay.settings, offer_timeout=1.0)
    booking, room_id = booked_room
    sender = await make_client(booking.client_token)
    await sender.join(room_id)
    await sender.publish(PatternVideoTrack(source_id=3), ToneAudioTrack(source_id=3))
    viewer = await make_client(booking.psychologist_token, client_class=DropsOffers, drop=1)
    await viewer.join(room_id)

    await sees(viewer, sender, source_id=3, frames=10)
    offers = subscriber_offers(viewer)
    assert len(offers) == 2, offers
    assert offers[0]["data"] == offers[1]["data"]  # the same offer, sent again
    assert not [m for m in viewer.history if m["event"] == "error"], viewer.history


async def test_a_subscriber_offer_never_answered_ends_in_negotiation_failed(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    relay.settings = dataclasses.replace(relay.settings, offer_timeout=0.5, offer_resends=2)
    booking, room_id = booked_room
    sender = await make_client(booking.client_token)
    await sender.join(room_id)
    await sender.publish(PatternVideoTrack(source_id=4))
    viewer = await make_client(booking.psychologist_token, client_class=DropsOffers, drop=99)
    await viewer.join(room_id)

    failed = await viewer.wait_for("error", timeout=10)
    assert failed["data"]["code"] == "NEGOTIATION_FAILED", failed
    assert failed["data"]["details"]["target"] == "subscriber"
    assert "not answered" in failed["data"]["details"]["reason"]
    assert len(subscriber_offers(viewer)) == 3  # the first and two copies


async def test_a_leave_tells_the_others_one_track_map_then_user_left(
    booked_room: tuple[Booking, str], make_client: ClientMaker
) -> None:
    """The leaver's tracks are detached one by one; the others get the idle map once."""
    booking, room_id = booked_room
    sender = await make_client(booking.client_token)
    await sender.join(room_id)
    await sender.publish(PatternVideoTrack(source_id=5), ToneAudioTrack(source_id=5))
    viewer = await make_client(booking.psychologist_token)
    await viewer.join(room_id)
    await sees(viewer, sender, source_id=5, frames=5)
    mark = len(viewer.history)
    await sender.leave()
    await viewer.wait_for("user-left", after=mark)
    told = [m["event"] for m in viewer.history[mark:]]
    assert told == ["tracks", "user-left"], told
    idle = viewer.history[mark]["data"]["tracks"]
    assert len(idle) == 2 and all(t["socketId"] is None for t in idle), idle
