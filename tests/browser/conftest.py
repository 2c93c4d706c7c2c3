"""Fixtures for the browser suite: the real app on a real port inside a network namespace, and
Debian's Chromium driven by Playwright (one browser context per participant).

Recipe: ../shared/notes/test-infrastructure.md. The whole test process moves into a namespace
with a veth pair (synth/netns.py) so the relay and Chromium gather candidates on 10.77.0.x only;
the app listens on 10.77.0.1 and Chromium treats that origin as secure (getUserMedia needs it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from smiling_relay.app import create_app
from smiling_relay.config import Config
from storage.base import Storage, to_utc_ms
from synth import netns
from tests.helpers import FakeClock

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"

# Wraps RTCPeerConnection before the page runs, so the tests read getStats() from every
# connection the page made without trusting the page's own bookkeeping.
STATS_INIT_SCRIPT = """
(() => {
  const Native = window.RTCPeerConnection;
  const all = [];
  window.__testPeerConnections = all;
  window.RTCPeerConnection = function (...args) {
    const pc = new Native(...args);
    all.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
  Object.setPrototypeOf(window.RTCPeerConnection, Native);
  window.__testInboundStats = async () => {
    const out = {
      video: { framesDecoded: 0, bytesReceived: 0, frameWidth: 0, frameHeight: 0, tracks: 0 },
      audio: { packetsReceived: 0, totalSamplesReceived: 0, bytesReceived: 0, tracks: 0 },
      outbound: { video: 0, audio: 0 },
      open: 0,
    };
    for (const pc of all) {
      if (pc.connectionState === "closed") continue;
      out.open += 1;
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") {
          out.video.framesDecoded += s.framesDecoded || 0;
          out.video.bytesReceived += s.bytesReceived || 0;
          if ((s.framesDecoded || 0) > 0) {
            out.video.tracks += 1;
            out.video.frameWidth = Math.max(out.video.frameWidth, s.frameWidth || 0);
            out.video.frameHeight = Math.max(out.video.frameHeight, s.frameHeight || 0);
          }
        }
        if (s.type === "inbound-rtp" && s.kind === "audio") {
          out.audio.packetsReceived += s.packetsReceived || 0;
          out.audio.totalSamplesReceived += s.totalSamplesReceived || 0;
          out.audio.bytesReceived += s.bytesReceived || 0;
          if ((s.packetsReceived || 0) > 0) out.audio.tracks += 1;
        }
        if (s.type === "inbound-rtp" && s.kind === "audio") {
          const energy = out.audio.totalAudioEnergy || 0;
          out.audio.totalAudioEnergy = energy + (s.totalAudioEnergy || 0);
        }
        if (s.type === "outbound-rtp") out.outbound[s.kind] += s.bytesSent || 0;
      });
    }
    return out;
  };
})();
"""


class RealClock(FakeClock):
    """The shared fixtures' clock, but running: a browser call takes real seconds, and the API
    checks that an end time lies after the start and not in the future."""

    def __call__(self) -> datetime:
        return to_utc_ms(datetime.now(UTC))


@pytest.fixture(scope="session", autouse=True)
def browser_netns() -> netns.Netns:
    """Every browser test runs inside a network namespace of its own."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian chromium is not installed at {CHROMIUM} (./scripts/test installs it)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright for Python is not installed (./scripts/test installs it)")
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    # netns.create switches IPv6 off in the namespace: its address setup would make Chromium
    # abort requests with ERR_NETWORK_CHANGED
    return netns.enter_process_netns()


@pytest.fixture
def clock() -> FakeClock:
    return RealClock()


@dataclass
class Server:
    base_url: str
    app: web.Application
    storage: Storage


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve(
    config: Config, storage: Storage, browser_netns: netns.Netns
) -> AsyncIterator[ServerFactory]:
    """`await serve(**config_overrides)` runs the real app on 10.77.0.1:<free port>."""
    runners: list[web.AppRunner] = []
    host = browser_netns.addresses[0]

    async def factory(**overrides: Any) -> Server:
        # the relay may check Chromium's private namespace addresses (RELAY_ALLOWED_PEER_RANGES),
        # and those of a participant in a namespace of its own (synth.impair's 10.213.N.0/24)
        ranges = ("10.77.0.0/24", "10.213.0.0/16")
        settings: dict[str, Any] = {"relay_allowed_peer_ranges": ranges, **overrides}
        app = create_app(dataclasses.replace(config, host=host, **settings), storage)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = runner.addresses[0][1]
        return Server(base_url=f"http://{host}:{port}", app=app, storage=storage)

    yield factory
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def server(serve: ServerFactory) -> Server:
    return await serve()


# A fake camera per participant: a solid colour the other side can recognise in its decoded
# picture (`pages.remote_colours`). (Y, U, V) in BT.601 studio range.
CAMERA_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (81, 90, 240),
    "blue": (41, 240, 110),
    "green": (145, 54, 34),
}


def write_fake_camera(path: Path, colour: str, width: int = 320, height: int = 240) -> Path:
    """A Y4M clip of one solid colour (Chromium loops it as its fake camera)."""
    y, u, v = CAMERA_COLOURS[colour]
    frame = bytes([y]) * (width * height) + bytes([u]) * (width * height // 4)
    frame += bytes([v]) * (width * height // 4)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(30):
            out.write(b"FRAME\n" + frame)
    return path


@dataclass
class Browsers:
    """A Chromium for one test; `page()` opens a fresh context (one participant) on it, or on a
    Chromium of its own when the participant needs its own camera picture (`camera=`)."""

    playwright: Playwright
    browser: Browser
    base_url: str
    name: str
    contexts: list[BrowserContext] = field(default_factory=list)
    console: dict[str, list[str]] = field(default_factory=dict)
    own_browsers: list[Browser] = field(default_factory=list)

    async def page(
        self,
        label: str,
        *,
        init_script: str | None = None,
        viewport: dict[str, int] | None = None,
        camera: str | None = None,
        netns_name: str | None = None,
        **context_options: Any,
    ) -> Page:
        size = viewport or {"width": 1280, "height": 800}
        # Playwright evaluates string predicates with eval(), which the page's CSP forbids;
        # tests/browser/test_csp.py opens its page with bypass_csp=False to check the policy.
        context_options.setdefault("bypass_csp", True)
        browser = self.browser
        if camera is not None:
            # The fake camera's file is a browser-wide flag: one Chromium per such participant.
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            clip = write_fake_camera(ARTIFACTS / f"{self.name}-{label}-camera.y4m", camera)
            executable = CHROMIUM
            if netns_name is not None:
                # this participant's Chromium runs in a namespace of its own (its link can be
                # cut alone); Playwright drives it over a pipe, which no namespace affects
                executable = ARTIFACTS / f"{self.name}-{label}-chromium.sh"
                executable.write_text(
                    f'#!/bin/sh\nexec ip netns exec {netns_name} {CHROMIUM} "$@"\n'
                )
                executable.chmod(0o755)
            browser = await self.playwright.chromium.launch(
                executable_path=str(executable),
                headless=True,
                args=[*chromium_args(self.base_url), f"--use-file-for-fake-video-capture={clip}"],
            )
            self.own_browsers.append(browser)
        context = await browser.new_context(
            viewport={"width": size["width"], "height": size["height"]}, **context_options
        )
        self.contexts.append(context)
        await context.add_init_script(STATS_INIT_SCRIPT)
        if init_script:
            await context.add_init_script(init_script)
        page = await context.new_page()
        lines = self.console.setdefault(label, [])
        page.on("console", lambda msg: lines.append(f"[{msg.type}] {msg.text}"))
        page.on("pageerror", lambda err: lines.append(f"[pageerror] {err}"))
        page.set_default_timeout(15000)
        return page

    async def screenshot(self, page: Page, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{name}.png"
        await page.screenshot(path=str(path))
        return path


@asynccontextmanager
async def launch_browsers(base_url: str, name: str) -> AsyncIterator[Browsers]:
    """A Chromium allowed to use camera and microphone on `base_url`; closed on exit."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=chromium_args(base_url)
        )
        b = Browsers(playwright=p, browser=browser, base_url=base_url, name=name)
        try:
            yield b
        except BaseException:
            _dump_console(b)
            raise
        finally:
            for context in b.contexts:
                await context.close()
            for own in b.own_browsers:
                await own.close()
            await browser.close()


@pytest.fixture
async def browsers(server: Server, request: pytest.FixtureRequest) -> AsyncIterator[Browsers]:
    async with launch_browsers(server.base_url, request.node.name) as b:
        yield b
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            _dump_console(b)


def chromium_args(origin: str) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--auto-select-desktop-capture-source=Entire screen",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--unsafely-treat-insecure-origin-as-secure={origin}",
    ]


def _dump_console(b: Browsers) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{b.name}-console.json").write_text(json.dumps(b.console, indent=2))
    for label, lines in b.console.items():
        print(f"--- console of {label} ---")
        for line in lines[-60:]:
            print(line)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def copy_for_readme(path: Path) -> None:
    """The README shows one screenshot of a real call (docs/screenshot-call.png). It is written
    when missing or when SMILING_UPDATE_SCREENSHOTS=1, so a test run leaves the tree clean."""
    target = REPO / "docs" / "screenshot-call.png"
    if not target.exists() or os.environ.get("SMILING_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, target)
