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


# Draws each remote <video> (or the local preview) onto a small canvas and averages its pixels:
# what the page really shows, decoded, not a frame counter. A MediaStream is same-origin, so
# the canvas is readable.
_COLOURS_JS = """(selector) => [...document.querySelectorAll(selector)].map((v) => {
    if (!v.videoWidth) return null;
    const c = document.createElement('canvas');
    c.width = 32; c.height = 24;
    const g = c.getContext('2d', { willReadFrequently: true });
    g.drawImage(v, 0, 0, c.width, c.height);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    const sum = [0, 0, 0];
    for (let i = 0; i < d.length; i += 4) {
      sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2];
    }
    const n = d.length / 4;
    return sum.map((x) => Math.round(x / n));
})"""


def colour_name(rgb: list[int] | None) -> str | None:
    """The fake-camera colour an averaged picture shows ("red", "blue", "green"), if any."""
    if rgb is None:
        return None
    r, g, b = rgb
    for name, (cr, cg, cb) in {"red": (1, 0, 0), "blue": (0, 0, 1), "green": (0, 1, 0)}.items():
        strong = [x for x, on in zip((r, g, b), (cr, cg, cb), strict=True) if on]
        weak = [x for x, on in zip((r, g, b), (cr, cg, cb), strict=True) if not on]
        if min(strong) > 150 and max(weak) < 90:
            return name
    return None


async def remote_colours(page: Page) -> list[str | None]:
    """The colour each remote tile's decoded picture shows (None: no picture, or unrecognised)."""
    rgbs = await page.evaluate(_COLOURS_JS, ".tile-remote video")
    return [colour_name(rgb) for rgb in rgbs]


async def wait_remote_colours(
    page: Page, expected: list[str], within_s: float = 15.0
) -> list[str | None]:
    """Poll until the remote tiles show exactly `expected` (the other participants' cameras)."""
    deadline = asyncio.get_running_loop().time() + within_s
    seen = await remote_colours(page)
    while seen != expected:
        if asyncio.get_running_loop().time() > deadline:
            rgbs = await page.evaluate(_COLOURS_JS, ".tile-remote video")
            raise AssertionError(f"remote pictures show {seen} ({rgbs}), expected {expected}")
        await page.wait_for_timeout(200)
        seen = await remote_colours(page)
    return seen


async def audio_packets_pass(page: Page, packets: int) -> None:
    """Let `packets` more remote audio packets reach `page`: media time passing, as a condition."""
    await wait_audio_flowing(page, packets)


async def audio_energy_over(page: Page, packets: int) -> float:
    """How much remote audio energy (getStats totalAudioEnergy) `page` received while `packets`
    more audio packets arrived."""
    before = float((await inbound(page))["audio"].get("totalAudioEnergy", 0.0))
    await audio_packets_pass(page, packets)
    return float((await inbound(page))["audio"].get("totalAudioEnergy", 0.0)) - before


# The first remote <video>'s picture at its full size, as luma (BT.601) bytes in base64: the
# synthetic pattern (synth/pattern.py) is then read in Python exactly as an aiortc probe reads it.
_LUMA_JS = """() => {
    const v = document.querySelector('.tile-remote video');
    if (!v || !v.videoWidth) return null;
    const c = document.createElement('canvas');
    c.width = v.videoWidth; c.height = v.videoHeight;
    const g = c.getContext('2d', { willReadFrequently: true });
    g.drawImage(v, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    const y = new Uint8Array(c.width * c.height);
    for (let i = 0, j = 0; j < y.length; i += 4, j += 1) {
      y[j] = Math.round(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]);
    }
    let text = '';
    for (let k = 0; k < y.length; k += 0x8000) {
      text += String.fromCharCode(...y.subarray(k, k + 0x8000));
    }
    return [c.width, c.height, btoa(text)];
}"""


async def remote_pattern(page: Page) -> Any:
    """The synth pattern (`synth.pattern.PatternInfo`) the first remote tile shows, or None."""
    import base64

    import numpy as np

    from synth.pattern import read_pattern_luma

    grabbed = await page.evaluate(_LUMA_JS)
    if grabbed is None:
        return None
    width, height, data = grabbed
    luma = np.frombuffer(base64.b64decode(data), dtype=np.uint8).reshape(height, width)
    return read_pattern_luma(luma)


async def wait_remote_pattern(page: Page, source_id: int, within_s: float = 15.0) -> Any:
    """Poll until the first remote tile shows the pattern painted by `source_id`."""
    deadline = asyncio.get_running_loop().time() + within_s
    info = await remote_pattern(page)
    while info is None or info.source_id != source_id:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the remote picture shows {info}, not source {source_id}")
        await page.wait_for_timeout(200)
        info = await remote_pattern(page)
    return info
