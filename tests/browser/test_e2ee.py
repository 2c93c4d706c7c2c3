"""End-to-end encryption through the relay (docs/e2ee.md), with real Chromium pages on the call
page: the pages decode each other, the relay's own view of the same media does not decode."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import pytest

from tests.browser import e2ee_helpers as e2ee
from tests.browser import pages
from tests.browser.conftest import Browsers, Server, ServerFactory, launch_browsers
from tests.helpers import Booking, BookingFactory

if TYPE_CHECKING:
    from playwright.async_api import Page

    from storage.base import Storage

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]


async def _join(
    browsers: Browsers, server: Server, booking: Booking, label: str, token: str, **params: str
) -> Page:
    page = await browsers.page(label)
    await page.goto(pages.call_url(server.base_url, booking.session.id, token, **params))
    await pages.wait_phase(page, "connected")
    return page


async def _room_id(storage: Storage, booking: Booking) -> str:
    stored = await storage.get_session(booking.session.id)
    assert stored is not None and stored.meeting_link
    return stored.meeting_link


async def test_two_pages_decode_each_other_and_the_relay_cannot(
    browsers: Browsers, server: Server, storage: Storage, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    psychologist = await _join(
        browsers, server, booking, "psychologist", booking.psychologist_token, e2eeTestKeys="1"
    )
    client = await _join(browsers, server, booking, "client", booking.client_token)

    # Both encrypt, both show the same four-word code.
    a = await e2ee.wait_e2ee(client, "s.mode === 'e2ee' && s.code")
    b = await e2ee.wait_e2ee(psychologist, "s.mode === 'e2ee' && s.code")
    assert a["code"] == b["code"] and len(a["code"].split()) == 4
    assert a["policy"] == "preferred"
    for page in (client, psychologist):
        await pages.wait_frames_rising(page, 15)
        await e2ee.wait_samples_rising(page)
        assert await page.locator("#encryption-label").inner_text() == "End-to-end encrypted"
        assert a["code"] in await page.locator("#security-code").inner_text()
    # Every frame went through the cipher: none passed in the clear, none failed.
    stats = (await e2ee.wait_e2ee(client, "s.frames && s.frames.decrypted > 100"))["frames"]
    assert stats["passedClear"] == 0 and stats["encrypted"] > 100, stats

    # The relay's own view of the psychologist's camera: keyframes still recognised from the
    # clear prefix, but libvpx gets no picture that looks like the camera's.
    producer = e2ee.video_producer(server, await _room_id(storage, booking), booking.psychologist.id)
    tap = await e2ee.tap_frames(producer, 60)
    assert tap.keyframes >= 1
    assert all(f[-1] == e2ee.MAGIC for f in tap.frames)
    errors, pictures = e2ee.decode_vp8(tap.frames)
    assert errors > 0 and not pictures, (errors, len(pictures))

    # The psychologist's own key opens the same frames (this is the frame format of
    # docs/e2ee.md, in Python): they are the camera's pictures.
    keys = await psychologist.evaluate("window.smilingCall.e2eeTestKeys()")
    secret = base64.b64decode(keys["send"]["secret"])
    opened = [e2ee.decrypt_frame(f, secret) for f in tap.frames if f[-2] == keys["send"]["keyId"]]
    assert len(opened) >= 30 and all(opened)
    errors, pictures = e2ee.decode_vp8([f for f in opened if f])
    assert errors == 0 and len(pictures) == len(opened)
    # A page not asked to (no ?e2eeTestKeys=1) exports nothing.
    assert await client.evaluate("window.smilingCall.e2eeTestKeys()") is None


async def test_without_e2ee_the_relay_view_decodes(
    serve: ServerFactory,
    storage: Storage,
    booking_factory: BookingFactory,
    request: pytest.FixtureRequest,
) -> None:
    """The control of the test above: the same tap on a call with E2EE=off decodes."""
    server = await serve(e2ee="off")
    booking = await booking_factory()
    async with launch_browsers(server.base_url, request.node.name) as browsers:
        psychologist = await _join(
            browsers, server, booking, "psychologist", booking.psychologist_token
        )
        client = await _join(browsers, server, booking, "client", booking.client_token)
        await pages.wait_frames_rising(client, 15)
        for page in (client, psychologist):
            assert (await e2ee.e2ee_state(page))["mode"] == "off"
            assert await page.locator("#encryption-label").inner_text() == "Encrypted to the server"
        producer = e2ee.video_producer(
            server, await _room_id(storage, booking), booking.psychologist.id
        )
        tap = await e2ee.tap_frames(producer, 60)
        errors, pictures = e2ee.decode_vp8(tap.frames)
        print(f"clear: {errors} errors, {len(pictures)} pictures")
        assert errors == 0 and len(pictures) >= 50
