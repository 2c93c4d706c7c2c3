"""Automatic reconnection: the page comes back into the call after its WebSocket drops."""

from __future__ import annotations

import pytest

from tests.browser import pages
from tests.browser.conftest import Browsers, Server
from tests.helpers import BookingFactory

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]


async def test_dropped_websocket_reconnects_and_media_resumes(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    client = await browsers.page("client")
    psychologist = await browsers.page("psychologist")
    await psychologist.goto(
        pages.call_url(server.base_url, booking.session.id, booking.psychologist_token)
    )
    await client.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    await pages.wait_phase(client, "connected")
    await pages.wait_remote_count(psychologist, 1)
    await pages.wait_video_decoding(psychologist)

    # The network drops the client's WebSocket: it shows "reconnecting", then is back in.
    await client.evaluate("window.smilingCall.dropConnection()")
    await client.wait_for_function(
        "window.smilingCall.log.some((e) => e.event === 'phase' && e.phase === 'reconnecting')",
        timeout=5000,
    )
    await pages.wait_phase(client, "connected")
    assert await client.evaluate("window.smilingCall.reconnects") == 1
    status = await client.locator("#connection-status").inner_text()
    assert status.strip() == "Connected"

    # Both directions flow again: the psychologist decodes the client's new publisher, the
    # client's new subscriber decodes the psychologist.
    await pages.wait_remote_count(psychologist, 1)
    await pages.wait_remote_count(client, 1)
    await pages.wait_frames_rising(psychologist, 15)
    await pages.wait_frames_rising(client, 15)
    await pages.wait_audio_flowing(client)
