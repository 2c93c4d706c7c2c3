"""The strict Content-Security-Policy does not break the call page: a real Chromium joins a call
and reports no CSP violation (every script and style is a file from /static/)."""

from __future__ import annotations

import pytest

from tests.browser import pages
from tests.browser.conftest import Browsers, Server
from tests.helpers import BookingFactory

pytestmark = [pytest.mark.browser, pytest.mark.netns]

COLLECT_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) =>
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


async def test_the_call_page_runs_under_the_policy(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    page = await browsers.page("csp", init_script=COLLECT_VIOLATIONS, bypass_csp=False)
    response = await page.goto(
        pages.call_url(server.base_url, booking.session.id, booking.client_token)
    )
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    await pages.wait_phase(page, "connected")
    assert await page.evaluate("window.__cspViolations") == []
    refused = [line for line in browsers.console["csp"] if "Content Security Policy" in line]
    assert refused == []
