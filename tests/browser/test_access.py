"""Who may join, and what the page says when someone may not (real app, real Chromium)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from storage.base import Storage
from synth.client import CallClient
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.browser import pages
from tests.browser.conftest import Browsers, Server, ServerFactory, launch_browsers
from tests.helpers import BookingFactory, FakeClock, TokenFactory, UserFactory

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.netns]


async def error_shown(page: Page, code: str) -> str:
    """Wait for the blocking error card with `code`; return its visible text."""
    card = page.locator(f'.error-card[data-code="{code}"]')
    await card.wait_for(state="visible", timeout=15000)
    assert await page.evaluate("window.smilingCall.lastErrorCode") == code
    return await card.inner_text()


async def test_another_client_is_told_they_are_not_a_participant(
    browsers: Browsers,
    server: Server,
    booking_factory: BookingFactory,
    user_factory: UserFactory,
    make_token: TokenFactory,
) -> None:
    booking = await booking_factory()
    outsider = await user_factory("client")
    page = await browsers.page("outsider")
    await page.goto(
        pages.call_url(server.base_url, booking.session.id, make_token(outsider.id, "client"))
    )
    text = await error_shown(page, "FORBIDDEN")
    assert "You are not a participant of this session" in text
    # Refused before any media or WebSocket: no camera was opened, no connection was made.
    assert await page.evaluate("window.__testPeerConnections.length") == 0
    await browsers.screenshot(page, "not-a-participant")


async def test_too_early_shows_the_waiting_room_then_lets_in(
    browsers: Browsers,
    server: Server,
    booking_factory: BookingFactory,
    storage: Storage,
    clock: FakeClock,
) -> None:
    booking = await booking_factory(starts_in=timedelta(minutes=40))
    page = await browsers.page("early-client")
    await page.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    await pages.wait_phase(page, "waiting")
    room = page.locator("#waiting-room")
    await room.wait_for(state="visible")
    assert "Your session hasn't started yet" in await room.inner_text()
    # Joining opens 15 minutes before the start: about 25 minutes to go, counting down.
    first = await page.locator("#waiting-countdown").inner_text()
    minutes, _ = first.split(":")
    assert 24 <= int(minutes) <= 25, first
    await page.wait_for_function(
        "(first) => document.getElementById('waiting-countdown').textContent !== first",
        arg=first,
        timeout=5000,
    )
    await browsers.screenshot(page, "waiting-room")

    # The psychologist moves the session forward; the re-check lets the client in.
    await storage.update_session(booking.session.id, session_date=clock() + timedelta(minutes=5))
    await page.click("#check-now")
    await pages.wait_phase(page, "connected")


async def test_room_full_is_refused_with_its_message(
    serve: ServerFactory,
    booking_factory: BookingFactory,
    storage: Storage,
) -> None:
    server = await serve(room_max_participants=2)
    booking = await booking_factory()
    room = await storage.set_meeting_link(booking.session.id, "room-full-test-0001")
    assert room is not None and room.meeting_link is not None
    clients = [
        CallClient(server.base_url, booking.client_token, probe_media=False),
        CallClient(server.base_url, booking.psychologist_token, probe_media=False),
    ]
    try:
        for n, c in enumerate(clients, start=1):
            await c.connect()
            await c.join(room.meeting_link)
            await c.publish(PatternVideoTrack(source_id=n), ToneAudioTrack(source_id=n))
        async with launch_browsers(server.base_url, "room-full") as browsers:
            page = await browsers.page("admin")
            await page.goto(
                pages.call_url(server.base_url, booking.session.id, booking.admin_token)
            )
            text = await error_shown(page, "ROOM_FULL")
            assert "This call is full" in text
            await browsers.screenshot(page, "room-full")
    finally:
        for c in clients:
            await c.close()


async def test_payment_pending_is_explained(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory(payment_status="Pending")
    page = await browsers.page("unpaid")
    await page.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    text = await error_shown(page, "PAYMENT_PENDING")
    assert "payment for this session hasn't been confirmed" in text
