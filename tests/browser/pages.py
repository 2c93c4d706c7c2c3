"""Helpers that drive and read the call page (tests/browser only)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.async_api import Page

JOIN_TIMEOUT_MS = 20000


def call_url(base_url: str, session_id: str, token: str | None = None, **params: str) -> str:
    query = {**({"token": token} if token else {}), **params}
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    return f"{base_url}/call/{session_id}{suffix}"


async def phase(page: Page) -> str:
    return str(await page.evaluate("window.smilingCall.phase"))


async def wait_phase(page: Page, expected: str, within_ms: int = JOIN_TIMEOUT_MS) -> None:
    """Wait until the page's call phase is `expected` (fails fast on an unexpected error)."""
    await page.wait_for_function(
        """(expected) => {
            const s = window.smilingCall;
            if (!s) return false;
            if (s.phase === "error" && expected !== "error") {
              throw new Error("call error: " + JSON.stringify(s.error));
            }
            return s.phase === expected;
        }""",
        arg=expected,
        timeout=within_ms,
    )


async def wait_remote_count(page: Page, n: int, within_ms: int = JOIN_TIMEOUT_MS) -> None:
    await page.wait_for_function(
        "(n) => window.smilingCall.participants.length === n", arg=n, timeout=within_ms
    )


async def inbound(page: Page) -> dict[str, Any]:
    """Summed inbound-rtp counters of every open peer connection the page made (getStats)."""
    result: dict[str, Any] = await page.evaluate("window.__testInboundStats()")
    return result


async def wait_inbound(
    page: Page, condition: Callable[[dict[str, Any]], bool], what: str, within_s: float = 15.0
) -> dict[str, Any]:
    """Poll the page's getStats from here until `condition(stats)` holds.

    (`page.wait_for_function` cannot do this: it does not await an async predicate, and the
    pending Promise it gets back counts as true.)
    """
    deadline = asyncio.get_running_loop().time() + within_s
    stats = await inbound(page)
    while not condition(stats):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}; last {stats}")
        await asyncio.sleep(0.2)
        stats = await inbound(page)
    return stats


async def wait_video_decoding(page: Page, more_than: int = 0, within_ms: int = 15000) -> int:
    """Wait until the page has decoded more than `more_than` remote video frames in total."""
    stats = await wait_inbound(
        page,
        lambda s: int(s["video"]["framesDecoded"]) > more_than,
        f"more than {more_than} decoded video frames",
        within_ms / 1000,
    )
    return int(stats["video"]["framesDecoded"])


async def wait_frames_rising(page: Page, frames: int = 10, within_ms: int = 15000) -> int:
    """framesDecoded keeps rising: `frames` more frames after the current count."""
    start = int((await inbound(page))["video"]["framesDecoded"])
    return await wait_video_decoding(page, start + frames, within_ms)


async def wait_audio_flowing(page: Page, packets: int = 25, within_ms: int = 15000) -> None:
    start = int((await inbound(page))["audio"]["packetsReceived"])
    await wait_inbound(
        page,
        lambda s: int(s["audio"]["packetsReceived"]) > start + packets,
        f"{packets} more audio packets",
        within_ms / 1000,
    )


async def remote_media(page: Page, index: int = 0) -> dict[str, Any]:
    media: dict[str, Any] = await page.evaluate(
        "(i) => window.smilingCall.participants[i].media", index
    )
    return media


async def wait_remote_media(page: Page, key: str, value: bool, within_ms: int = 10000) -> None:
    await page.wait_for_function(
        """([key, value]) => {
            const p = window.smilingCall.participants[0];
            return Boolean(p) && p.media[key] === value;
        }""",
        arg=[key, value],
        timeout=within_ms,
    )


async def remote_frame_size(page: Page) -> tuple[int, int]:
    stats = await inbound(page)
    return int(stats["video"]["frameWidth"]), int(stats["video"]["frameHeight"])


async def wait_remote_frame_size(
    page: Page, condition: Callable[[tuple[int, int]], bool], within_s: float = 15.0
) -> tuple[int, int]:
    """Poll getStats until the decoded remote picture's size satisfies `condition`."""
    deadline = asyncio.get_running_loop().time() + within_s
    size = await remote_frame_size(page)
    while not condition(size):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"remote frame size stayed {size}")
        await page.wait_for_timeout(200)
        size = await remote_frame_size(page)
    return size
