"""After a real Chromium call, each participant rates it on the summary with one click; the
ratings are found through the admin endpoints, joined with the call's quality summary."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from calls.identity import mint_token
from storage.base import Storage
from tests.browser import pages
from tests.browser.conftest import Browsers, Server
from tests.helpers import ADMIN_ID, TEST_JWT_SECRET, BookingFactory, FakeClock, TokenFactory

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]


async def _admin_get(server: Server, path: str) -> tuple[int, Any]:
    token = mint_token(ADMIN_ID, "admin", TEST_JWT_SECRET)
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.base_url + path, headers={"x-auth-token": token}) as resp,
    ):
        return resp.status, await resp.json()


async def test_participants_rate_the_call_on_the_summary(
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
    sid = session.id
    client = await browsers.page("client")
    psychologist = await browsers.page("psychologist")
    await psychologist.goto(
        pages.call_url(server.base_url, sid, make_token(therapist.id, "psychologist"))
    )
    await client.goto(pages.call_url(server.base_url, sid, make_token(client_user.id, "client")))
    await pages.wait_phase(psychologist, "connected")
    await pages.wait_phase(client, "connected")
    await pages.wait_video_decoding(client)
    await pages.wait_video_decoding(psychologist)

    await psychologist.click("#btn-end")
    await psychologist.click("#confirm-end")
    await pages.wait_phase(psychologist, "ended")
    # ending is for everyone: the client's page goes to its summary by itself
    await pages.wait_phase(client, "ended")

    # The psychologist ticks "Video" then clicks 4; the client just clicks 2.
    await psychologist.locator("#rating-form").wait_for(state="visible")
    await psychologist.check("input[name=rating-reason][value=video]")
    await psychologist.click("#rate-4")
    await psychologist.locator("#rating-form[data-rated='4']").wait_for()
    assert "4 of 5" in await psychologist.locator("#rating-status").inner_text()
    await client.click("#rate-2")
    await client.locator("#rating-form[data-rated='2']").wait_for()
    # One rating each: the buttons are disabled after the click.
    assert await client.locator("#rate-5").is_disabled()
    await browsers.screenshot(psychologist, "rated-summary")

    status, body = await _admin_get(server, f"/api/admin/metrics/ratings/{sid}")
    assert status == 200, body
    got = sorted((r["role"], r["rating"], r["reasons"]) for r in body["data"]["ratings"])
    assert got == [("client", 2, []), ("psychologist", 4, ["video"])]

    # The relay's quality summary of the call is written when the room closes; the admin
    # view of the room's calls carries the ratings with it (bounded wait for the write).
    stored = await storage.get_session(sid)
    assert stored is not None and stored.meeting_link
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        status, body = await _admin_get(server, f"/api/admin/metrics/calls/{stored.meeting_link}")
        if status == 200 and not body["data"]["active"]:
            break
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.2)
    (call,) = body["data"]["calls"]
    assert sorted(r["rating"] for r in call["ratings"]) == [2, 4]
    assert call.get("audioMos") is not None
