"""Human error messages for what goes wrong on the person's side: devices, network, sign-in."""

from __future__ import annotations

import pytest

from tests.browser import pages
from tests.browser.conftest import Browsers, Server
from tests.helpers import BookingFactory

pytestmark = [pytest.mark.browser, pytest.mark.netns]

# Stand-ins for a browser whose permission prompt was refused / that has no devices. (The suite's
# Chromium auto-accepts with fake devices, so these replace getUserMedia before the page runs.)
REJECT_MEDIA = """
navigator.mediaDevices.getUserMedia = async () => {
  throw new DOMException("%s", "%s");
};
"""


@pytest.mark.parametrize(
    ("error_name", "code", "phrase"),
    [
        ("NotAllowedError", "CAMERA_DENIED", "isn't allowing this page to use your camera"),
        ("NotFoundError", "NO_DEVICE", "couldn't find a camera or microphone"),
        ("NotReadableError", "DEVICE_IN_USE", "Another app is using your camera"),
    ],
)
async def test_device_problems_are_explained(
    browsers: Browsers,
    server: Server,
    booking_factory: BookingFactory,
    error_name: str,
    code: str,
    phrase: str,
) -> None:
    booking = await booking_factory()
    page = await browsers.page(
        code.lower(), init_script=REJECT_MEDIA % ("refused in test", error_name)
    )
    await page.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    card = page.locator(f'.error-card[data-code="{code}"]')
    await card.wait_for(state="visible")
    assert phrase in await card.inner_text()
    # "Try again" is offered and focusable.
    await page.locator("#error-action").focus()
    assert await page.evaluate("document.activeElement.id") == "error-action"
    if code == "CAMERA_DENIED":
        await browsers.screenshot(page, "camera-denied")


async def test_server_unreachable_is_explained_and_retry_recovers(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    page = await browsers.page("offline")
    await page.route("**/api/**", lambda route: route.abort("connectionrefused"))
    await page.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    card = page.locator('.error-card[data-code="SERVER_UNREACHABLE"]')
    await card.wait_for(state="visible")
    assert "couldn't connect to the Smiling Steps video server" in await card.inner_text()
    await page.unroute("**/api/**")
    await page.click("#error-action")
    await pages.wait_phase(page, "connected")


async def test_missing_or_invalid_token_asks_to_sign_in(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    page = await browsers.page("signin")
    await page.goto(pages.call_url(server.base_url, booking.session.id))
    form = page.locator("#signin-form")
    await form.wait_for(state="visible")
    assert await page.input_value("#session-input") == booking.session.id
    await page.fill("#token-input", "not-a-token")
    await page.click("#signin-submit")
    assert "doesn't look like" in await page.locator("#token-error").inner_text()
    await page.fill("#token-input", booking.client_token)
    await page.click("#signin-submit")
    await pages.wait_phase(page, "connected")
    # The token is not left in the address bar.
    assert "token" not in page.url
