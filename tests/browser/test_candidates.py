"""Chromium through a relay that contacts none of the addresses Chromium trickles (issue 14,
item 5): the namespace's 10.77.0.x addresses are private and the relay's own, so with the
default policy every trickled candidate is dropped, and the call still connects on the
peer-reflexive candidates the relay learns from Chromium's own connectivity checks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from relay._aiortc import selected_pair
from relay.candidates import Ignored
from relay.sfu import Relay
from smiling_relay.app import RELAY_KEY
from storage.base import Storage
from tests.browser import pages
from tests.browser.conftest import ServerFactory, launch_browsers
from tests.helpers import FakeClock, TokenFactory

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]


async def test_chromium_connects_when_every_trickled_candidate_is_refused(
    serve: ServerFactory,
    storage: Storage,
    make_token: TokenFactory,
    clock: FakeClock,
) -> None:
    server = await serve(relay_allowed_peer_ranges=())
    client_user = await storage.create_user(name="C", email="c@example.test", role="client")
    therapist = await storage.create_user(name="P", email="p@example.test", role="psychologist")
    session = await storage.create_session(
        client_id=client_user.id,
        psychologist_id=therapist.id,
        session_date=clock() + timedelta(minutes=5),
        status="Confirmed",
        payment_status="Paid",
    )
    async with launch_browsers(server.base_url, "peer-reflexive") as browsers:
        client = await browsers.page("client")
        psychologist = await browsers.page("psychologist")
        for page, user, role in (
            (psychologist, therapist, "psychologist"),
            (client, client_user, "client"),
        ):
            await page.goto(pages.call_url(server.base_url, session.id, make_token(user.id, role)))
            await pages.wait_phase(page, "connected")
        await pages.wait_video_decoding(client)
        await pages.wait_video_decoding(psychologist)
        await pages.wait_frames_rising(client, 10)
        await pages.wait_frames_rising(psychologist, 10)
        check_peer_reflexive(server.app[RELAY_KEY])


def check_peer_reflexive(relay: Relay) -> None:
    participants = [p for room in relay.rooms.values() for p in room.participants.values()]
    assert len(participants) == 2
    for participant in participants:
        assert participant.candidates_ignored[Ignored.ADDRESS] > 0  # Chromium did trickle
        for pc in (participant._publisher_pc, participant._subscriber_pc):
            assert pc is not None
            pair = selected_pair(pc)
            assert pair is not None and pair.remote_type == "prflx", pair
