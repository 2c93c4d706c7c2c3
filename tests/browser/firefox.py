"""Debian's firefox-esr as a second real browser, driven over WebDriver BiDi by npm's
puppeteer-core through tests/firefox/driver.mjs (one JSON command per line).

Playwright cannot drive a stock Firefox, and Debian ships no geckodriver; see
../shared/notes/test-infrastructure.md ("Firefox ESR"). `./scripts/test` installs firefox-esr,
Node and the driver's pinned packages (`npm ci` in tests/firefox/).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from synth import netns
from tests.browser.conftest import STATS_INIT_SCRIPT

FIREFOX = Path("/usr/bin/firefox-esr")
DRIVER_DIR = Path(__file__).resolve().parents[1] / "firefox"
DRIVER = DRIVER_DIR / "driver.mjs"
COMMAND_TIMEOUT_S = 45.0


def prefs(origin_host: str) -> dict[str, Any]:
    """Fake camera and microphone without a prompt; real host candidates (no .local names, which
    the relay cannot resolve); the test origin over http treated as secure (getUserMedia and
    crypto.subtle need a secure context)."""
    return {
        "media.navigator.streams.fake": True,
        "media.navigator.permission.disabled": True,
        "media.peerconnection.ice.obfuscate_host_addresses": False,
        "media.peerconnection.ice.loopback": False,
        "dom.securecontext.allowlist": origin_host,
        "media.devices.insecure.enabled": True,
        "media.getusermedia.insecure.enabled": True,
        "media.autoplay.default": 0,
        "media.autoplay.blocking_policy": 0,
        "media.navigator.video.default_width": 640,
        "media.navigator.video.default_height": 480,
        "browser.shell.checkDefaultBrowser": False,
        "datareporting.policy.dataSubmissionEnabled": False,
        "toolkit.telemetry.enabled": False,
        "app.update.enabled": False,
        "browser.safebrowsing.malware.enabled": False,
        "browser.safebrowsing.phishing.enabled": False,
        "network.captive-portal-service.enabled": False,
        "network.connectivity-service.enabled": False,
    }


def unavailable_reason() -> str | None:
    if not FIREFOX.exists():
        return f"Debian firefox-esr is not installed at {FIREFOX} (./scripts/test installs it)"
    if shutil.which("node") is None:
        return "Node is not installed (./scripts/test installs the Debian nodejs package)"
    if not (DRIVER_DIR / "node_modules" / "puppeteer-core").is_dir():
        return "puppeteer-core is not installed in tests/firefox (./scripts/test runs npm ci)"
    return None


class FirefoxPage:
    """One Firefox with one page, driven through the Node driver process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.console: list[str] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                self.console.append(line.decode(errors="replace").rstrip())
                continue
            if msg.get("event") == "console":
                self.console.append(msg["text"])
                continue
            future = self._pending.pop(msg.get("id"), None)
            if future is not None and not future.done():
                if msg["ok"]:
                    future.set_result(msg["value"])
                else:
                    future.set_exception(AssertionError(f"firefox: {msg['error']}"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(AssertionError("the Firefox driver exited"))

    async def command(self, op: str, within_s: float = COMMAND_TIMEOUT_S, **args: Any) -> Any:
        assert self.process.stdin is not None
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        self.process.stdin.write((json.dumps({"id": ident, "op": op, **args}) + "\n").encode())
        await self.process.stdin.drain()
        return await asyncio.wait_for(future, within_s)

    async def goto(self, url: str) -> None:
        await self.command("goto", url=url)

    async def evaluate(self, expr: str) -> Any:
        return await self.command("eval", expr=expr)

    async def click(self, selector: str) -> None:
        await self.command("click", selector=selector)

    async def reload(self) -> None:
        await self.command("reload")

    async def wait_for(
        self, expr: str, what: str, within_s: float = 20.0, interval: float = 0.15
    ) -> Any:
        """Poll `expr` in the page until it is truthy (bounded); returns its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        value = await self.evaluate(expr)
        while not value:
            if loop.time() > deadline:
                raise AssertionError(f"Firefox: timed out after {within_s} s waiting for {what}")
            await asyncio.sleep(interval)
            value = await self.evaluate(expr)
        return value

    async def wait_inbound(
        self, condition: Callable[[dict[str, Any]], bool], what: str, within_s: float = 20.0
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        stats = await self.evaluate("window.__testInboundStats()")
        while not condition(stats):
            if loop.time() > deadline:
                raise AssertionError(f"Firefox: timed out waiting for {what}; last {stats}")
            await asyncio.sleep(0.2)
            stats = await self.evaluate("window.__testInboundStats()")
        result: dict[str, Any] = stats
        return result

    def dump_console(self) -> None:
        print("--- console of firefox ---")
        for line in self.console[-80:]:
            print(line)


@contextlib.asynccontextmanager
async def launch_firefox(origin_host: str) -> AsyncIterator[FirefoxPage]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    process = await asyncio.create_subprocess_exec(
        "node",
        str(DRIVER),
        cwd=str(DRIVER_DIR),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
    )
    page = FirefoxPage(process)
    try:
        await page.command(
            "launch", within_s=60, prefs=prefs(origin_host), initScript=STATS_INIT_SCRIPT
        )
        yield page
    except BaseException:
        page.dump_console()
        raise
    finally:
        with contextlib.suppress(Exception):
            await page.command("close", within_s=15)
        if process.returncode is None:
            process.kill()
        await process.wait()
        page._reader.cancel()


@contextlib.contextmanager
def default_route(ns: netns.Netns) -> Any:
    """Firefox gathers no ICE candidates without a default route (the gateway need not exist)."""
    netns.ip("route", "add", "default", "dev", "v0")
    try:
        yield
    finally:
        netns.ip("route", "del", "default")
