"""The page itself: phone-sized layout, accessibility of the controls, the quality rating."""

from __future__ import annotations

import pytest

from tests.browser import pages
from tests.browser.conftest import Browsers, Server
from tests.helpers import BookingFactory

pytestmark = [pytest.mark.browser, pytest.mark.netns]

PHONE = {"width": 390, "height": 844}


async def test_phone_sized_screen_keeps_everything_reachable(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    page = await browsers.page("phone", viewport=PHONE, is_mobile=True, has_touch=True)
    await page.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    await pages.wait_phase(page, "connected")
    # No horizontal scrolling; every control is inside the viewport and big enough to tap.
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    for control in ("#btn-mic", "#btn-camera", "#btn-participants", "#btn-end"):
        box = await page.locator(control).bounding_box()
        assert box is not None, control
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], control
        assert box["y"] + box["height"] <= PHONE["height"], control
        assert box["height"] >= 44, control
    # The participant list is a drawer on a phone: closed at first, opened by its button,
    # closed with Escape (focus returns to the button).
    assert not await page.locator("#participants").is_visible()
    await page.click("#btn-participants")
    await page.locator("#participants").wait_for(state="visible")
    assert await page.get_attribute("#btn-participants", "aria-expanded") == "true"
    await page.keyboard.press("Escape")
    await page.locator("#participants").wait_for(state="hidden")
    assert await page.evaluate("document.activeElement.id") == "btn-participants"
    await browsers.screenshot(page, "phone")


async def test_controls_are_labelled_and_keyboard_operable(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    page = await browsers.page("keyboard")
    await page.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    await pages.wait_phase(page, "connected")
    unlabelled = await page.evaluate(
        """() => [...document.querySelectorAll('button, [role=button], summary, input, textarea')]
              .filter((el) => el.offsetParent !== null)
              .filter((el) => !(el.getAttribute('aria-label') || el.textContent.trim()
                                || (el.id && document.querySelector(`label[for="${el.id}"]`))))
              .map((el) => el.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == []
    # Tab reaches the controls; Enter toggles the camera; the state is announced.
    await page.focus("#btn-camera")
    await page.keyboard.press("Enter")
    await page.wait_for_function(
        "document.getElementById('btn-camera').getAttribute('aria-label') === 'Turn camera on'"
    )
    assert await page.evaluate("window.smilingCall.local.media.video") is False
    await page.keyboard.press("Enter")
    await page.wait_for_function("window.smilingCall.local.media.video === true")
    # The end-call confirmation is a modal dialog that Escape cancels.
    await page.focus("#btn-end")
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.getElementById('end-dialog').open") is True
    assert await page.evaluate("document.activeElement.id") == "confirm-end"
    await page.keyboard.press("Escape")
    # the dialog closed without ending anything: the call is still on
    await page.wait_for_function("!document.getElementById('end-dialog').open")
    assert not await page.locator("#confirm-end").is_visible()
    assert await pages.phase(page) == "connected"
    # A live region exists for announcements; the status pill reads "Connected".
    assert await page.get_attribute("#live", "aria-live") == "polite"
    assert (await page.locator("#connection-status").inner_text()).strip() == "Connected"


async def test_network_quality_rating(browsers: Browsers, server: Server) -> None:
    """quality.js's pure rating function, run in the browser the way the page runs it."""
    page = await browsers.page("quality")
    await page.goto(server.base_url + "/")
    results = await page.evaluate(
        """async () => {
            const q = await import('/static/js/quality.js');
            const r = (m) => q.rateQuality(m);
            return {
              unknown: r({}),
              good: r({ rttMs: 40, lossPct: 0.2, inboundVideoKbps: 900, expectingVideo: true }),
              fairRtt: r({ rttMs: 300, lossPct: 0 }),
              fairLoss: r({ rttMs: 40, lossPct: 4 }),
              fairRate: r({ rttMs: 40, lossPct: 0, inboundVideoKbps: 100, expectingVideo: true }),
              cameraOff: r({ rttMs: 40, lossPct: 0, inboundVideoKbps: 0, expectingVideo: false }),
              poorRtt: r({ rttMs: 800, lossPct: 0 }),
              poorLoss: r({ rttMs: 40, lossPct: 15 }),
              summary: q.summarize(new Map([
                ['t', { type: 'transport', selectedCandidatePairId: 'p' }],
                ['p', { id: 'p', type: 'candidate-pair', currentRoundTripTime: 0.025 }],
                ['v', { type: 'inbound-rtp', kind: 'video', bytesReceived: 1000,
                        packetsReceived: 90, packetsLost: 10, framesDecoded: 30 }],
              ])),
            };
        }"""
    )
    assert results["unknown"] == "unknown"
    assert results["good"] == "good"
    assert results["fairRtt"] == results["fairLoss"] == results["fairRate"] == "fair"
    assert results["cameraOff"] == "good"
    assert results["poorRtt"] == results["poorLoss"] == "poor"
    summary = results["summary"]
    assert summary["rttMs"] == 25
    assert summary["packetsLost"] == 10 and summary["framesDecoded"] == 30


async def test_live_call_reports_good_quality(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    """On the namespace's veth link the indicator settles on "good" from real getStats()."""
    booking = await booking_factory()
    client = await browsers.page("client")
    psychologist = await browsers.page("psychologist")
    await client.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    await psychologist.goto(
        pages.call_url(server.base_url, booking.session.id, booking.psychologist_token)
    )
    await pages.wait_remote_count(client, 1)
    await client.wait_for_function(
        """(() => {
            const q = window.smilingCall.quality;
            return Boolean(q) && q.level === 'good' && q.downKbps > 0 && q.upKbps > 0;
        })()""",
        # "good" needs >= 150 kbit/s of inbound video: Chromium's ramp-up on a loaded machine
        timeout=30000,
    )
    quality = await client.evaluate("window.smilingCall.quality")
    # an RTT was measured (its size on a loaded machine is a benchmark figure: "good" above
    # already says it is within quality.js's good range)
    assert quality["rttMs"] is not None and quality["rttMs"] >= 0
    assert quality["downKbps"] > 0 and quality["upKbps"] > 0
    assert await client.get_attribute("#network-quality", "data-level") == "good"
