"""Audio first with a browser on the weak link (issue 15): the voice a weak Chromium sends, and
the voice it gets, while its link is limited to 100 kbit/s each way; AUDIO_FIRST on and off.

Chromium (its fake camera's moving picture, its fake microphone's beep) runs in a client
namespace of its own (synth/impair.py), the other participant is an aiortc client (pattern
video, an Opus tone at 32 kbit/s) outside it. Once both decode each other, the weak link is
limited for `BENCH_AF_SECONDS` (20). Measured:

* strong ← weak (Chromium's uplink, where a browser's encoder decides what a probe costs): at
  the aiortc client's audio counter, before its jitter buffer: packet loss (sequence gaps) and
  the longest silence between two packets, over the whole window and after `video-paused`;
* weak ← strong (the relay's downlink, its padding probe): Chromium's own inbound audio
  `packetsLost` / `packetsReceived` over the window (getStats);
* with audio first, when the video paused (up), and after the limit is lifted, when
  `video-resumed` `recovered` came (the probes in between are told to the browser alone).

Run by `scripts/bench_audio_first --browser` (BENCH_AF_MODES="on off" by default). Prints one
"BENCH …" line per mode; the figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import AsyncExitStack
from typing import Any

import pytest

from storage.base import Storage
from synth.client import CallClient
from synth.impair import ClientNamespace, Impairment
from synth.threaded import ThreadedClient
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.browser import pages
from tests.browser.conftest import ServerFactory, launch_browsers
from tests.helpers import BookingFactory

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]

MODES = os.environ.get("BENCH_AF_MODES", "on off").split()
SECONDS = float(os.environ.get("BENCH_AF_SECONDS", "20"))
RATE_KBIT = int(os.environ.get("BENCH_AF_RATE", "100"))

INBOUND_AUDIO = """async () => {
  let lost = 0, received = 0;
  for (const pc of window.smilingCall.peerConnections()) {
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        lost += s.packetsLost ?? 0;
        received += s.packetsReceived ?? 0;
      }
    });
  }
  return [lost, received];
}"""


def loss_pct(lost: int, received: int) -> float:
    return 100.0 * lost / (lost + received) if lost + received else 0.0


@pytest.mark.timeout(400)
@pytest.mark.parametrize("mode", MODES)
async def test_weak_chromium_audio(
    mode: str, serve: ServerFactory, booking_factory: BookingFactory, storage: Storage
) -> None:
    server = await serve(audio_first=mode == "on")
    booking = await booking_factory()
    with ClientNamespace(Impairment()) as namespace:
        remote = ThreadedClient(namespace.name, name="weak-chromium")
        remote.start()
        stack = AsyncExitStack()

        async def open_page() -> Any:
            chromium = await stack.enter_async_context(
                launch_browsers(server.base_url, f"bench-audio-first-{mode}")
            )
            page = await chromium.page("weak-browser")
            await page.goto(
                pages.call_url(server.base_url, booking.session.id, booking.client_token)
            )
            await pages.wait_phase(page, "connected")
            return page

        bot: CallClient | None = None
        try:
            page = await remote.run(open_page())
            stored = await storage.get_session(booking.session.id)
            assert stored is not None and stored.meeting_link is not None
            bot = CallClient(server.base_url, booking.psychologist_token)
            await bot.connect()
            joined = await bot.join(stored.meeting_link)
            weak = joined["participants"][0]["socketId"]
            await bot.publish(
                PatternVideoTrack(source_id=7), ToneAudioTrack(source_id=7), voice_bitrate=32_000
            )
            await remote.run(pages.wait_video_decoding(page))
            await bot.wait_until(lambda: bot.counter_from(weak, "audio") is not None, "its voice")
            await bot.wait_until(lambda: bot.video_from(weak) is not None, "its video")
            print(f"\nBENCH {await measure(bot, weak, page, remote, namespace, mode)}")
        finally:
            if bot is not None:
                await bot.close()
            await remote.run(stack.aclose())
            remote.stop()


async def measure(
    bot: CallClient,
    weak: str,
    page: Any,
    remote: ThreadedClient,
    namespace: ClientNamespace,
    mode: str,
) -> str:
    audio = bot.counter_from(weak, "audio")
    assert audio is not None

    def up_events(event: str) -> list[dict[str, Any]]:
        return [
            m["data"]
            for m in list(bot.history)
            if m["event"] == event
            and m["data"].get("socketId") == weak
            and m["data"].get("direction") == "up"
        ]

    down_lost, down_received = await remote.run(page.evaluate(INBOUND_AUDIO))
    voice_bytes, voice_packets = audio.bytes, audio.media_packets
    await asyncio.sleep(3.0)  # a measurement: what the browser's voice costs, unconstrained
    voice_kbit = (audio.bytes - voice_bytes) * 8 / 3000
    voice_pps = (audio.media_packets - voice_packets) / 3
    packets, lost = audio.media_packets, audio.lost
    namespace.reshape(RATE_KBIT)
    start = time.time()
    paused_at: float | None = None
    after: tuple[int, int] = (0, 0)
    while time.time() - start < SECONDS:  # the measurement window, polled for the pause
        await asyncio.sleep(0.1)
        if paused_at is None and up_events("video-paused"):
            paused_at = time.time()
            after = (audio.media_packets, audio.lost)
    end = time.time()
    down = await remote.run(page.evaluate(INBOUND_AUDIO))
    got, missed = audio.media_packets - packets, audio.lost - lost
    figures = [
        f"mode={mode} rate={RATE_KBIT}kbit window={end - start:.1f}s "
        f" voice={voice_kbit:.0f}kbit-payload/{voice_pps:.0f}pps",
        f"up-loss={loss_pct(missed, got):.1f}% up-gap={audio.longest_gap_ms(start, end):.0f}ms",
        f"down-loss={loss_pct(down[0] - down_lost, down[1] - down_received):.1f}%",
    ]
    if paused_at is not None:
        got_after, missed_after = audio.media_packets - after[0], audio.lost - after[1]
        figures += [
            f"paused-up-after={paused_at - start:.1f}s",
            f"after-pause: up-loss={loss_pct(missed_after, got_after):.1f}% "
            f"up-gap={audio.longest_gap_ms(paused_at, end):.0f}ms",
        ]
    lost_by_second = [
        audio.buckets.get(second, [0, 0, 0, 0])[3] for second in range(int(start), int(end))
    ]
    figures.append("lost-per-second=" + ",".join(map(str, lost_by_second)))
    namespace.reshape(None)
    lifted = time.monotonic()
    if mode == "on":
        for _ in range(1200):  # bounded: 120 s
            if any(e.get("reason") == "recovered" for e in up_events("video-resumed")):
                figures.append(f"video-back-up-after={time.monotonic() - lifted:.1f}s")
                break
            await asyncio.sleep(0.1)
        else:
            figures.append("video-back-up-after=none-within-120s")
    return " ".join(figures)
