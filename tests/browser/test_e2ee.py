"""End-to-end encryption through the relay (docs/e2ee.md), with real Chromium pages on the call
page: the pages decode each other, the relay's own view of the same media does not decode."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.participant import Participant
from signaling.connection import SignalingConnection
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
    producer = e2ee.video_producer(
        server, await _room_id(storage, booking), booking.psychologist.id
    )
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


async def test_a_replaced_public_key_makes_the_codes_differ_and_the_pages_say_so(
    browsers: Browsers,
    server: Server,
    booking_factory: BookingFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A malicious server swaps the client's public key on its way to the psychologist."""
    booking = await booking_factory()
    fake = ec.generate_private_key(ec.SECP256R1()).public_key()
    fake_b64 = base64.b64encode(
        fake.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    ).decode()
    forward = SignalingConnection._forward_e2ee_key

    def tampering(self: SignalingConnection, participant: Participant, key: dict[str, Any]) -> None:
        if participant.info.user_id == booking.client.id and key.get("capable"):
            key = {**key, "publicKey": fake_b64}
        forward(self, participant, key)

    monkeypatch.setattr(SignalingConnection, "_forward_e2ee_key", tampering)
    psychologist = await _join(
        browsers, server, booking, "psychologist", booking.psychologist_token
    )
    client = await _join(browsers, server, booking, "client", booking.client_token)
    a = await e2ee.wait_e2ee(client, "s.mismatch && s.code")
    b = await e2ee.wait_e2ee(psychologist, "s.mismatch && s.code")
    assert a["code"] != b["code"]
    for page in (client, psychologist):
        note = page.locator("#encryption-note")
        assert "Keys don't match" in await note.inner_text()
        assert await page.get_attribute("#encryption-status", "data-warning") == "mismatch"
        # Nothing is played that the other side could not have encrypted for us.
        assert (await e2ee.e2ee_state(page))["mode"] != "e2ee"
        assert (await pages.inbound(page))["video"]["framesDecoded"] == 0


async def test_an_admin_joining_and_leaving_rekeys_and_keeps_no_key_to_what_follows(
    browsers: Browsers, server: Server, storage: Storage, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    psychologist = await _join(
        browsers, server, booking, "psychologist", booking.psychologist_token, e2eeTestKeys="1"
    )
    client = await _join(browsers, server, booking, "client", booking.client_token)
    two = await e2ee.wait_e2ee(psychologist, "s.mode === 'e2ee' && s.code")
    await e2ee.wait_e2ee(client, f"s.mode === 'e2ee' && s.code === {two['code']!r}")

    admin = await _join(browsers, server, booking, "admin", booking.admin_token, e2eeTestKeys="1")
    three = await e2ee.wait_e2ee(
        admin, "s.mode === 'e2ee' && s.code && s.peers.length === 2 && s.peers.every(p => p.hasKey)"
    )
    assert three["code"] != two["code"]
    for page in (client, psychologist):
        state = await e2ee.wait_e2ee(page, f"s.code === {three['code']!r} && s.mode === 'e2ee'")
        assert state["codeChanges"] >= 1
        assert await page.get_attribute("#encryption-status", "data-warning") == "code-changed"
    psych_key_with_admin = (await e2ee.e2ee_state(psychologist))["keyId"]
    assert psych_key_with_admin != two["keyId"]
    await pages.wait_video_decoding(admin, 10)  # the admin sees the call: it got the keys

    held_by_admin = e2ee.secrets_of(await admin.evaluate("window.smilingCall.e2eeTestKeys()"))
    await admin.close()
    after = await e2ee.wait_e2ee(
        psychologist, f"s.keyId !== {psych_key_with_admin} && s.peers.length === 1"
    )
    await e2ee.wait_e2ee(client, f"s.code === {two['code']!r}")
    # The psychologist's frames from now on: not one opens with anything the admin held, all
    # open with the psychologist's new key.
    producer = e2ee.video_producer(
        server, await _room_id(storage, booking), booking.psychologist.id
    )
    tap = await e2ee.tap_frames(producer, 60)
    later = [f for f in tap.frames if f[-2] == after["keyId"]]
    assert len(later) >= 30
    assert not any(e2ee.decrypt_frame(f, s) for f in later for s in held_by_admin)
    secret = base64.b64decode(
        (await psychologist.evaluate("window.smilingCall.e2eeTestKeys()"))["send"]["secret"]
    )
    assert all(e2ee.decrypt_frame(f, secret) for f in later)
    await pages.wait_frames_rising(client, 15)


async def test_a_late_joiner_decodes_video_within_a_second(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    psychologist = await _join(
        browsers, server, booking, "psychologist", booking.psychologist_token
    )
    await e2ee.wait_e2ee(psychologist, "s.frames && s.frames.encrypted > 60")
    client = await browsers.page("client")
    await client.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    # From the moment the page's first peer connection is up (its publisher, which comes up no
    # later than its subscriber) to the first decoded frame, measured in the page: the keys and
    # a keyframe must both arrive in that time.
    waited_ms = await client.evaluate(
        """async () => {
            const receiving = () => window.__testPeerConnections.filter(
              (pc) => pc.getReceivers().some((r) => r.track.kind === "video"));
            const decoded = async () => {
              let frames = 0;
              for (const pc of receiving()) {
                (await pc.getStats()).forEach((s) => {
                  if (s.type === "inbound-rtp" && s.kind === "video") {
                    frames += s.framesDecoded || 0;
                  }
                });
              }
              return frames;
            };
            const deadline = performance.now() + 20000;
            let first = null;
            while (performance.now() < deadline) {
              if (first === null && receiving().some((pc) => pc.connectionState === "connected")) {
                first = performance.now();
              }
              if (first !== null && (await decoded()) > 0) return performance.now() - first;
              await new Promise((r) => setTimeout(r, 20));
            }
            return null;
        }"""
    )
    assert waited_ms is not None
    print(f"late joiner: first decoded frame {waited_ms:.0f} ms after connecting")
    assert waited_ms < 1000
    assert (await e2ee.e2ee_state(client))["mode"] == "e2ee"


NO_TRANSFORM = "delete window.RTCRtpScriptTransform;"


async def test_preferred_falls_back_for_a_browser_that_cannot_encrypt(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    psychologist = await _join(
        browsers, server, booking, "psychologist", booking.psychologist_token
    )
    client = await browsers.page("client", init_script=NO_TRANSFORM)
    await client.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    await pages.wait_phase(client, "connected")
    mine = await e2ee.wait_e2ee(client, "s.mode === 'relay'")
    assert mine["capable"] is False and mine["code"] is None
    theirs = await e2ee.wait_e2ee(psychologist, "s.mode === 'relay'")
    assert theirs["capable"] is True and theirs["code"] is None
    for page in (client, psychologist):
        await pages.wait_frames_rising(page, 15)
        await e2ee.wait_samples_rising(page)
        assert await page.locator("#encryption-label").inner_text() == "Encrypted to the server"
        assert await page.locator("#security-code").count() == 0
    assert "This browser can't" in await client.locator("#encryption-note").inner_text()
    assert (
        "Someone in the call can't" in await psychologist.locator("#encryption-note").inner_text()
    )


async def test_required_refuses_a_browser_that_cannot_encrypt(
    serve: ServerFactory, booking_factory: BookingFactory, request: pytest.FixtureRequest
) -> None:
    server = await serve(e2ee="required")
    booking = await booking_factory()
    async with launch_browsers(server.base_url, request.node.name) as browsers:
        client = await browsers.page("client", init_script=NO_TRANSFORM)
        await client.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
        await pages.wait_phase(client, "error")
        error = await client.evaluate("window.smilingCall.error")
        assert error["code"] == "E2EE_UNSUPPORTED"
        card = client.locator(".error-card")
        assert "can't encrypt the call end to end" in await card.inner_text()
        assert (await pages.inbound(client))["open"] == 0  # it never connected any media
        # A browser that can encrypt joins as usual.
        psychologist = await _join(
            browsers, server, booking, "psychologist", booking.psychologist_token
        )
        state = await e2ee.wait_e2ee(psychologist, "s.policy === 'required'")
        assert state["mode"] in ("e2ee", "pending")


async def test_a_qa_participant_and_a_page_share_an_e2ee_call(
    browsers: Browsers, server: Server, storage: Storage, booking_factory: BookingFactory
) -> None:
    """The QA tool's Python implementation (synth/e2ee.py) speaks the page's key exchange and
    frame format: the page shows "end-to-end encrypted" with the same code, and each side
    decodes the other's pictures."""
    from synth.client import CallClient
    from synth.tracks import PatternVideoTrack, ToneAudioTrack

    booking = await booking_factory()
    page = await browsers.page("psychologist", camera="blue")
    await page.goto(pages.call_url(server.base_url, booking.session.id, booking.psychologist_token))
    await pages.wait_phase(page, "connected")
    bot = CallClient(server.base_url, booking.client_token, e2ee=True)
    try:
        await bot.connect()
        await bot.join(await _room_id(storage, booking))
        await bot.publish(PatternVideoTrack(source_id=5), ToneAudioTrack(source_id=5))
        state = await e2ee.wait_e2ee(page, "s.mode === 'e2ee' && s.code")
        assert bot.e2ee is not None and bot.e2ee.mode == "e2ee"
        assert state["code"] == bot.e2ee.code
        await pages.wait_frames_rising(page, 15)  # the page decodes the bot's frames
        stats = (await e2ee.wait_e2ee(page, "s.frames && s.frames.decrypted > 30"))["frames"]
        assert stats["passedClear"] == 0, stats
        await bot.wait_until(lambda: bool(bot.video_probes), "the page's video", 20)
        probe = next(iter(bot.video_probes.values()))
        await probe.wait_for_frames(30, 20)
        assert probe.last_frame is not None
        rgb = probe.last_frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
        assert pages.colour_name([round(float(x)) for x in rgb]) == "blue"
        assert bot.e2ee.cipher.stats.decrypted > 30 and bot.e2ee.cipher.stats.passed_clear == 0
    finally:
        await bot.close()
