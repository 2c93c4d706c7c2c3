"""The other side ends the call through REST: the page shows its end-of-call summary."""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import pytest

from storage.base import Storage
from tests.browser import pages
from tests.browser.conftest import Browsers, Server
from tests.helpers import BookingFactory, FakeClock, TokenFactory, auth_headers, data_of

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]


async def test_the_page_shows_the_summary_when_the_other_side_ends_the_call(
    browsers: Browsers,
    server: Server,
    storage: Storage,
    make_token: TokenFactory,
    clock: FakeClock,
    booking_factory: BookingFactory,
) -> None:
    # the users' names are the factory's: the test reads none
    booking = await booking_factory()
    client_user, therapist, session = booking.client, booking.psychologist, booking.session
    client = await browsers.page("client", camera="red")
    await client.goto(
        pages.call_url(server.base_url, session.id, make_token(client_user.id, "client"))
    )
    await pages.wait_phase(client, "connected")
    # the call has been going for 3 minutes (the psychologist's page started it)
    await storage.mark_started(session.id, clock() - timedelta(minutes=3))

    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{server.base_url}/api/video-calls/end/{session.id}",
            headers=auth_headers(make_token(therapist.id, "psychologist")),
        )
        ended = await data_of(resp)
    assert ended["alreadyEnded"] is False

    await pages.wait_phase(client, "ended", within_ms=10000)
    await client.locator("#call-summary").wait_for(state="visible")
    summary = await client.evaluate("window.smilingCall.summary")
    assert summary["endedBy"] == {"userId": therapist.id, "role": "psychologist"}, summary
    assert summary["minutes"] == 3
    assert summary["error"] is None
    assert await client.locator("#summary-ended-by").inner_text() == "the psychologist"
    assert await client.locator("#summary-minutes").inner_text() == "3 min"
    # it stays ended: the relay's close does not send the page back to reconnecting
    assert await pages.phase(client) == "ended"
    await browsers.screenshot(client, "summary-ended-elsewhere")
