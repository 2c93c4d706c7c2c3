"""Two real Chromium participants (client and psychologist) in one session through the relay."""

from __future__ import annotations

from datetime import timedelta

import pytest

from storage.base import Storage
from tests.browser import pages
from tests.browser.conftest import Browsers, Server, copy_for_readme
from tests.helpers import FakeClock, TokenFactory

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]


async def test_client_and_psychologist_call_end_to_end(
    browsers: Browsers,
    server: Server,
    storage: Storage,
    make_token: TokenFactory,
    clock: FakeClock,
) -> None:
    client_user = await storage.create_user(
        name="Jordan Lee", email="jordan.lee@example.test", role="client"
    )
    therapist = await storage.create_user(
        name="Dr. Amina Odhiambo", email="amina.odhiambo@example.test", role="psychologist"
    )
    session = await storage.create_session(
        client_id=client_user.id,
        psychologist_id=therapist.id,
        session_date=clock() + timedelta(minutes=5),
        status="Confirmed",
        payment_status="Paid",
    )
    session_id = session.id
    # each participant's camera shows its own colour: the pictures say who sent them
    client = await browsers.page("client", camera="red")
    psychologist = await browsers.page("psychologist", camera="blue")

    await psychologist.goto(
        pages.call_url(server.base_url, session_id, make_token(therapist.id, "psychologist"))
    )
    await pages.wait_phase(psychologist, "connected")
    await client.goto(
        pages.call_url(server.base_url, session_id, make_token(client_user.id, "client"))
    )
    await pages.wait_phase(client, "connected")
    await pages.wait_remote_count(client, 1)
    await pages.wait_remote_count(psychologist, 1)

    # Each side decodes the other's video, and keeps decoding; audio packets arrive.
    await pages.wait_video_decoding(client)
    await pages.wait_video_decoding(psychologist)
    await pages.wait_frames_rising(client, 15)
    await pages.wait_frames_rising(psychologist, 15)
    await pages.wait_audio_flowing(client)
    await pages.wait_audio_flowing(psychologist)
    # ... and the picture each one shows is the other's camera, not its own
    await pages.wait_remote_colours(client, ["blue"])
    await pages.wait_remote_colours(psychologist, ["red"])
    await browsers.screenshot(client, "call-client")
    await browsers.screenshot(psychologist, "call-psychologist")

    # Mute (by keyboard) on the client: the psychologist sees it, and hears nothing, then the
    # unmute. (Chromium's fake microphone beeps: energy arrives whenever it is not muted.)
    heard = await pages.audio_energy_over(psychologist, 100)  # ~2 s: several beeps
    assert heard > 0, heard
    await client.focus("#btn-mic")
    await client.keyboard.press("Space")
    await pages.wait_remote_media(psychologist, "audio", False)
    remote_tile = psychologist.locator(".tile-remote").first
    await remote_tile.locator(".badge-muted").wait_for(state="visible")
    assert await client.get_attribute("#btn-mic", "aria-label") == "Unmute microphone"
    await pages.audio_packets_pass(psychologist, 25)  # what was in flight at the click
    muted = await pages.audio_energy_over(psychologist, 100)
    assert muted <= heard / 1000, (muted, heard)
    await client.click("#btn-mic")
    await pages.wait_remote_media(psychologist, "audio", True)
    await remote_tile.locator(".badge-muted").wait_for(state="hidden")
    assert await pages.audio_energy_over(psychologist, 100) > heard / 10

    # Camera off on the psychologist: the client sees the avatar instead of video; back on,
    # frames flow again.
    # While it is off the psychologist sends no video at all (a privacy promise of media.js)
    # and the client decodes none, while the psychologist's audio keeps arriving.
    await psychologist.click("#btn-camera")
    await pages.wait_remote_media(client, "video", False)
    await client.locator(".tile-remote.video-off").wait_for(state="attached")
    await pages.audio_packets_pass(client, 25)  # what was in flight at the click
    sent = (await pages.inbound(psychologist))["outbound"]["video"]
    decoded = (await pages.inbound(client))["video"]["framesDecoded"]
    await pages.audio_packets_pass(client, 50)
    assert (await pages.inbound(psychologist))["outbound"]["video"] == sent
    assert (await pages.inbound(client))["video"]["framesDecoded"] == decoded
    await psychologist.click("#btn-camera")
    await pages.wait_remote_media(client, "video", True)
    await client.locator(".tile-remote:not(.video-off)").wait_for(state="attached")
    await pages.wait_frames_rising(client, 10)
    await pages.wait_remote_colours(client, ["blue"])

    # Screen share on the client replaces the camera track on the same sender: the
    # psychologist sees the "presenting" state and the picture's size change, frames keep coming.
    await client.click("#btn-screen")
    await pages.wait_remote_media(psychologist, "screen", True)
    await psychologist.locator(".tile-remote .badge-screen").wait_for(state="visible")
    # The captured screen's size, from the client's own preview (screen content is sent at
    # full resolution: the page asks the encoder to maintain resolution for it).
    handle = await client.wait_for_function(
        """() => {
            const v = document.querySelector('.tile-local.is-screen video');
            return v && v.videoWidth ? [v.videoWidth, v.videoHeight] : null;
        }"""
    )
    width, height = await handle.json_value()
    screen_size = (int(width), int(height))
    await pages.wait_remote_frame_size(psychologist, lambda size: size == screen_size)
    await pages.wait_frames_rising(psychologist, 10)
    await browsers.screenshot(psychologist, "screen-share-seen-by-psychologist")
    await client.click("#btn-screen")
    await pages.wait_remote_media(psychologist, "screen", False)
    # Back to the camera (its size may differ from before: the encoder adapts to CPU load).
    await pages.wait_remote_frame_size(psychologist, lambda size: size != screen_size)
    await pages.wait_frames_rising(psychologist, 10)

    # The picture for the README: names, roles, timer and a measured network quality.
    await client.wait_for_function(
        "['good', 'fair', 'poor'].includes(window.smilingCall.quality?.level)", timeout=10000
    )
    shot = await browsers.screenshot(client, "call-client-later")
    copy_for_readme(shot)

    # The psychologist ends the call: summary with the duration; the session is Completed.
    await psychologist.click("#btn-end")
    await psychologist.click("#confirm-end")
    await pages.wait_phase(psychologist, "ended")
    await psychologist.locator("#call-summary").wait_for(state="visible")
    summary = await psychologist.evaluate("window.smilingCall.summary")
    assert summary["error"] is None, summary
    assert summary["status"] == "Completed"
    assert summary["seconds"] >= 1
    assert await psychologist.locator("#summary-duration").inner_text() != ""
    await browsers.screenshot(psychologist, "summary")
    stored = await storage.get_session(session_id)
    assert stored is not None
    assert stored.status == "Completed"
    assert stored.call_duration is not None
    assert stored.video_call_started is not None and stored.video_call_ended is not None

    # The call ended for everyone: the client's page shows its summary too.
    await pages.wait_phase(client, "ended")
    await client.locator("#call-summary").wait_for(state="visible")
    told = await client.evaluate("window.smilingCall.summary")
    assert told["endedBy"] == {"userId": therapist.id, "role": "psychologist"}, told
    assert told["minutes"] == stored.call_duration
