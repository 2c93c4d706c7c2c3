"""The waiting room's pre-call check in real Chromium: camera preview (frames decoded), a
microphone level meter that moves with Chromium's fake audio, and a network verdict — over the
test namespace's direct link, and through a real coturn when TURN is configured."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from synth import netns
from tests.browser import pages
from tests.browser.conftest import Browsers, ServerFactory, launch_browsers
from tests.helpers import BookingFactory
from tests.nat.turn_probe import TurnProbe

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]

TURN_PORT = 3478


async def _precheck(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("window.smilingCall.precheck")
    return result


async def _wait_precheck(page: Any, condition: Any, what: str, within_s: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    state = await _precheck(page)
    while not (state and condition(state)):
        assert loop.time() < deadline, f"timed out waiting for {what}; last {state}"
        await asyncio.sleep(0.1)
        state = await _precheck(page)
    return state


async def _preview_frames(page: Any) -> int:
    return int(
        await page.evaluate(
            "document.querySelector('#precheck-preview').getVideoPlaybackQuality().totalVideoFrames"
        )
    )


async def _open_waiting_room(b: Browsers, base_url: str, booking: Any) -> Any:
    page = await b.page("client")
    await page.goto(pages.call_url(base_url, booking.session.id, booking.client_token))
    await pages.wait_phase(page, "waiting")
    await page.click("#precheck-start")
    return page


async def _check_devices(page: Any) -> None:
    # The preview decodes the camera: frames keep coming.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    first = await _preview_frames(page)
    while await _preview_frames(page) < first + 10:
        assert loop.time() < deadline, "the camera preview decodes no frames"
        await asyncio.sleep(0.1)
    # Chromium's fake microphone is a periodic beep: the meter rises above silence and moves.
    state = await _wait_precheck(
        page,
        lambda s: s["microphone"] and s["maxLevel"] > 0.02 and s["levelChanges"] >= 5,
        "the microphone level to move",
    )
    assert state["camera"] is True
    value = float(await page.locator("#precheck-level").evaluate("m => m.value"))
    assert 0.0 <= value <= 1.0


async def test_precheck_preview_meter_and_good_verdict_on_a_direct_link(
    serve: ServerFactory, booking_factory: BookingFactory, request: pytest.FixtureRequest
) -> None:
    server = await serve()
    # Too early to join: the page shows the waiting room.
    booking = await booking_factory(starts_in=timedelta(minutes=40))
    async with launch_browsers(server.base_url, request.node.name) as b:
        page = await _open_waiting_room(b, server.base_url, booking)
        await _check_devices(page)
        state = await _wait_precheck(page, lambda s: s["verdict"], "a verdict")
        assert state["verdict"] == "good", state
        assert state["network"]["path"].startswith("direct-"), state
        assert state["network"]["loopback"]["ok"] is True
        assert state["network"]["rttMs"] is not None
        text = await page.locator("#precheck-verdict").inner_text()
        assert text.startswith("Good")
        await b.screenshot(page, "precheck-good")
        # "Check again" runs it once more from scratch.
        await page.click("#precheck-start")
        state = await _wait_precheck(page, lambda s: s["verdict"] and not s["running"], "again")
        assert state["verdict"] == "good"


@pytest.fixture
async def coturn_in_netns(
    browser_netns: netns.Netns, tmp_path: Path
) -> AsyncIterator[tuple[str, int, str]]:
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn's `turnserver` is not installed (./scripts/test installs coturn)")
    host = browser_netns.addresses[1]
    secret = "precheck-secret"
    log = tmp_path / "coturn.log"
    command = [
        binary, "-n", f"--listening-ip={host}", f"--relay-ip={host}",
        f"--listening-port={TURN_PORT}", "--min-port=49300", "--max-port=49340",
        "--use-auth-secret", f"--static-auth-secret={secret}", "--realm=precheck.test",
        "--no-tls", "--no-dtls", "--no-cli", "--fingerprint", "--simple-log",
        f"--log-file={log}", f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--userdb={tmp_path / 'turndb'}",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            assert process.poll() is None, f"turnserver exited: {log.read_text()}"
            with contextlib.suppress(TimeoutError, OSError):
                async with TurnProbe((host, TURN_PORT), "probe", "probe", timeout=0.5) as probe:
                    if (await probe.allocate()).error_code == 401:
                        break
            assert loop.time() < deadline, "turnserver did not answer within 10 s"
            await asyncio.sleep(0.1)
        yield host, TURN_PORT, secret
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_precheck_through_turn(
    serve: ServerFactory,
    booking_factory: BookingFactory,
    coturn_in_netns: tuple[str, int, str],
    request: pytest.FixtureRequest,
) -> None:
    host, port, secret = coturn_in_netns
    server = await serve(turn_server_url=f"turn:{host}:{port}?transport=udp", turn_secret=secret)
    booking = await booking_factory(starts_in=timedelta(minutes=40))
    async with launch_browsers(server.base_url, request.node.name) as b:
        page = await _open_waiting_room(b, server.base_url, booking)
        state = await _wait_precheck(page, lambda s: s["verdict"], "a verdict")
        assert state["network"]["turnConfigured"] is True
        assert state["verdict"] == "good", state
        assert state["network"]["path"] == "turn-udp", state
        assert state["network"]["loopback"]["localType"] == "relay", state


async def test_precheck_blocked_when_turn_is_unreachable(
    serve: ServerFactory,
    booking_factory: BookingFactory,
    browser_netns: netns.Netns,
    request: pytest.FixtureRequest,
) -> None:
    # A TURN URL nobody answers on (a closed port on the namespace's own address).
    host = browser_netns.addresses[1]
    server = await serve(turn_server_url=f"turn:{host}:3999?transport=udp", turn_secret="x" * 16)
    booking = await booking_factory(starts_in=timedelta(minutes=40))
    async with launch_browsers(server.base_url, request.node.name) as b:
        page = await _open_waiting_room(b, server.base_url, booking)
        state = await _wait_precheck(page, lambda s: s["verdict"], "a verdict", within_s=30)
        assert state["verdict"] == "blocked", state
        text = await page.locator("#precheck-verdict").inner_text()
        assert "UDP port 3478" in text and host in text
