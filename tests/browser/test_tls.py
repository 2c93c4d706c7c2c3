"""A real call over the server's own TLS: two Chromium pages load the client over HTTPS, talk
signaling over WSS and see each other's video (smiling_relay/server.py, TLS_CERT_FILE)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from smiling_relay import server
from smiling_relay.app import create_app
from smiling_relay.config import Config
from storage.base import Storage
from synth import netns
from tests.browser import pages
from tests.browser.conftest import launch_browsers
from tests.helpers import BookingFactory
from tests.tls_cert import make_self_signed

pytestmark = [pytest.mark.browser, pytest.mark.netns]

# Records the URL of every WebSocket the page opens.
RECORD_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__socketUrls = [];
  window.WebSocket = function (url, ...rest) {
    window.__socketUrls.push(String(url));
    return new Native(url, ...rest);
  };
  window.WebSocket.prototype = Native.prototype;
  Object.setPrototypeOf(window.WebSocket, Native);
})();
"""


async def test_a_call_over_https_and_wss(
    config: Config,
    storage: Storage,
    browser_netns: netns.Netns,
    booking_factory: BookingFactory,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    host = browser_netns.addresses[0]
    cert = make_self_signed(tmp_path, ips=(host,))
    cfg = dataclasses.replace(
        config, host=host, tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file)
    )
    running = await server.start(create_app(cfg, storage), cfg)
    base_url = f"https://{host}:{running.port}"
    try:
        booking = await booking_factory()
        async with launch_browsers(base_url, request.node.name) as browsers:
            client = await browsers.page(
                "client", init_script=RECORD_SOCKETS, ignore_https_errors=True
            )
            psychologist = await browsers.page("psychologist", ignore_https_errors=True)
            for page, token in (
                (client, booking.client_token),
                (psychologist, booking.psychologist_token),
            ):
                await page.goto(pages.call_url(base_url, booking.session.id, token))
            for page in (client, psychologist):
                await pages.wait_phase(page, "connected")
                assert page.url.startswith("https://")
                assert await page.evaluate("window.isSecureContext") is True
                await pages.wait_remote_count(page, 1)
            assert await pages.wait_video_decoding(client) > 0
            assert await pages.wait_video_decoding(psychologist) > 0
            sockets = await client.evaluate("window.__socketUrls")
            assert sockets and all(u.startswith(f"wss://{host}:{running.port}/") for u in sockets)
    finally:
        await running.stop()
