"""The body of scripts/bench_e2ee (not collected with the suite: run it through the script)."""

from __future__ import annotations

import asyncio
import os
import statistics
from typing import Any

from tests.browser import pages
from tests.browser.conftest import ServerFactory, launch_browsers
from tests.helpers import BookingFactory

SECONDS = float(os.environ.get("BENCH_E2EE_SECONDS", "20"))

# The camera: a canvas with the time (ms, mod 2^24) as 24 blocks; the remote <video>'s rendered
# frames are read back and compared with the clock.
CLOCK_CAMERA = """
(() => {
  const N = 24, B = 20;
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const canvas = document.createElement("canvas");
    canvas.width = 640; canvas.height = 480;
    const g = canvas.getContext("2d");
    const draw = () => {
      const t = Math.floor(performance.timeOrigin + performance.now()) % (1 << N);
      g.fillStyle = "#808080"; g.fillRect(0, 0, 640, 480);
      for (let i = 0; i < N; i++) {
        g.fillStyle = (t >> i) & 1 ? "#fff" : "#000";
        g.fillRect((i % 12) * B * 2 + 20, Math.floor(i / 12) * B * 2 + 20, B, B);
      }
      requestAnimationFrame(draw);
    };
    draw();
    const stream = canvas.captureStream(30);
    if (constraints && constraints.audio) {
      const ctx = new AudioContext();
      const osc = ctx.createOscillator();
      const dst = ctx.createMediaStreamDestination();
      osc.connect(dst); osc.start();
      stream.addTrack(dst.stream.getAudioTracks()[0]);
    }
    return stream;
  };
  window.__latency = [];
  const read = document.createElement("canvas");
  read.width = 640; read.height = 480;
  const rg = read.getContext("2d", { willReadFrequently: true });
  const watch = (video) => {
    const onFrame = () => {
      if (video.videoWidth === 640) {
        rg.drawImage(video, 0, 0, 640, 480);
        let t = 0;
        for (let i = 0; i < N; i++) {
          const x = (i % 12) * B * 2 + 30, y = Math.floor(i / 12) * B * 2 + 30;
          const p = rg.getImageData(x, y, 1, 1).data;
          if (p[0] > 128) t |= 1 << i;
        }
        const now = Math.floor(performance.timeOrigin + performance.now()) % (1 << N);
        const d = (now - t + (1 << N)) % (1 << N);
        if (d < 5000) window.__latency.push(d);
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  };
  new MutationObserver(() => {
    for (const v of document.querySelectorAll(".tile-remote video")) {
      if (!v.__watched) { v.__watched = true; watch(v); }
    }
  }).observe(document, { subtree: true, childList: true });
})();
"""


async def _cpu_seconds(cdp: Any) -> float:
    info = await cdp.send("SystemInfo.getProcessInfo")
    return float(sum(p["cpuTime"] for p in info["processInfo"]))


async def _run(
    serve: ServerFactory, booking_factory: BookingFactory, policy: str
) -> dict[str, Any]:
    server = await serve(e2ee=policy)
    booking = await booking_factory()
    async with launch_browsers(server.base_url, f"bench-e2ee-{policy}") as browsers:
        cdp = await browsers.browser.new_browser_cdp_session()
        ps = []
        for label, token in (("p", booking.psychologist_token), ("c", booking.client_token)):
            page = await browsers.page(label, init_script=CLOCK_CAMERA)
            await page.goto(pages.call_url(server.base_url, booking.session.id, token))
            await pages.wait_phase(page, "connected")
            ps.append(page)
        for page in ps:
            await pages.wait_frames_rising(page, 30)
        for page in ps:
            await page.evaluate("window.__latency.length = 0")
        cpu0 = await _cpu_seconds(cdp)
        await asyncio.sleep(SECONDS)  # the measurement window itself, not a wait for a condition
        cpu = (await _cpu_seconds(cdp) - cpu0) / SECONDS
        samples: list[float] = []
        for page in ps:
            samples += await page.evaluate("window.__latency.slice()")
        mode = (await ps[0].evaluate("window.smilingCall.e2ee"))["mode"]
    samples.sort()
    return {
        "policy": policy,
        "mode": mode,
        "cpu_cores": cpu,
        "frames": len(samples),
        "p50_ms": statistics.median(samples) if samples else None,
        "p95_ms": samples[int(len(samples) * 0.95)] if samples else None,
    }


async def test_bench_e2ee(serve: ServerFactory, booking_factory: BookingFactory) -> None:
    off = await _run(serve, booking_factory, "off")
    on = await _run(serve, booking_factory, "required")
    for r in (off, on):
        print(
            f"E2EE {r['policy']:>8} (mode {r['mode']}): browser CPU {r['cpu_cores']:.2f} cores, "
            f"latency p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms over {r['frames']} frames"
        )
    assert on["mode"] == "e2ee" and off["mode"] == "off"
    assert on["frames"] > 0 and off["frames"] > 0
    print(
        f"E2EE adds {on['p95_ms'] - off['p95_ms']:+.0f} ms p95 latency (budget 5 ms) and "
        f"{(on['cpu_cores'] / off['cpu_cores'] - 1) * 100:+.1f} % browser CPU (budget 10 %)"
    )
