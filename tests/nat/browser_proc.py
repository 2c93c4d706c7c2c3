"""Chromium endpoints the NAT tests run inside a client namespace (`ip netns exec NS python -m …`).

Debian's Chromium, driven by Playwright (recipe: ../shared/notes/test-infrastructure.md), behind
the namespace's symmetric NAT. Two modes, each talking to the test over JSON lines (stdout out,
stdin in), like tests/nat/client_proc.py:

* `call`: opens the real call page (`/call/<sessionId>?token=…[&relayOnly=1]`) on the relay's
  public address. Prints `{"event": "connected"}` once the page's publisher connection is up, then
  waits for the other participant and prints `{"event": "verified", …}` once its video decodes
  (getStats `framesDecoded` rising) and its audio arrives (`packetsReceived` rising), with the
  candidate pair each of the page's connections selected (getStats). Stays in the call until
  stdin closes.
* `p2p`: the offering end of a direct peer-to-peer attempt, in a blank page: a data-channel
  offer with every candidate gathered (host and, with `--stun`, server-reflexive), the answer
  read from stdin. Prints `{"event": "result", …}` with the ICE state as soon as ICE connects, or
  when the test asks (any line on stdin) — the test decides how long the attempt had.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.browser import pages
from tests.browser.conftest import CHROMIUM, STATS_INIT_SCRIPT, chromium_args, write_fake_camera

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Playwright

# Generous: a 2-core machine shared with other suites starts Chromium in seconds, not tenths.
CONNECT_TIMEOUT_MS = 45000
PEER_TIMEOUT_MS = 45000
PEER_TIMEOUT_S = 45.0
MEDIA_TIMEOUT_S = 30.0
POLL_S = 0.2
P2P_POLL_S = 0.5

# Every connection of the page: the candidate pair its transport selected, as both candidates.
SELECTED_PAIRS_JS = """
async () => {
  const out = [];
  for (const pc of window.smilingCall.peerConnections()) {
    const report = await pc.getStats();
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    let pair = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        pair = byId.get(s.selectedCandidatePairId) || pair;
      }
    });
    if (!pair) {
      report.forEach((s) => {
        const selected = s.type === "candidate-pair" && s.nominated && s.state === "succeeded";
        if (!pair && selected) pair = s;
      });
    }
    const candidate = (id) => {
      const c = byId.get(id);
      return c ? {
        type: c.candidateType, address: c.address ?? c.ip ?? null, port: c.port,
        protocol: c.protocol, relayProtocol: c.relayProtocol ?? null,
      } : null;
    };
    const localTypes = new Set();
    report.forEach((s) => { if (s.type === "local-candidate") localTypes.add(s.candidateType); });
    const sending = pc.getTransceivers().some(
      (t) => t.currentDirection === "sendonly" || t.direction === "sendonly");
    out.push({
      role: sending ? "publisher" : "subscriber",
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      localCandidateTypes: [...localTypes].sort(),
      pair: pair && {
        state: pair.state, nominated: Boolean(pair.nominated),
        bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
        local: candidate(pair.localCandidateId), remote: candidate(pair.remoteCandidateId),
      },
    });
  }
  return out;
}
"""

P2P_OFFER_JS = """
async (stun) => {
  const pc = new RTCPeerConnection({ iceServers: stun ? [{ urls: stun }] : [] });
  window.__p2p = pc;
  window.__p2pStates = [];
  pc.addEventListener("iceconnectionstatechange", () => {
    window.__p2pStates.push(pc.iceConnectionState);
  });
  pc.createDataChannel("probe");
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const timer = setTimeout(resolve, 10000);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
  return pc.localDescription.sdp;
}
"""

P2P_STATE_JS = """
async () => {
  const pc = window.__p2p;
  const pairs = [];
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type !== "candidate-pair") return;
    pairs.push({ state: s.state, nominated: Boolean(s.nominated) });
  });
  return { state: pc.iceConnectionState, connectionState: pc.connectionState,
           history: window.__p2pStates, pairs };
}
"""


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def read_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


def sdp_candidates(sdp: str) -> list[str]:
    return [
        line[len("a=candidate:") :] for line in sdp.splitlines() if line.startswith("a=candidate:")
    ]


def ipv4_only() -> None:
    """A veth configures IPv6 link-local addresses a moment after it comes up; Chromium takes that
    as a network change and aborts requests in flight (ERR_NETWORK_CHANGED). The NAT topology is
    IPv4: switch IPv6 off in this namespace (its own sysctls only) before Chromium starts."""
    for conf in Path("/proc/sys/net/ipv6/conf").glob("*/disable_ipv6"):
        with contextlib.suppress(OSError):
            conf.write_text("1\n")


async def launch(p: Playwright, origin: str, extra_args: list[str]) -> Browser:
    return await p.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*chromium_args(origin), *extra_args]
    )


async def open_page(browser: Browser, label: str) -> Page:
    context = await browser.new_context()
    await context.add_init_script(STATS_INIT_SCRIPT)
    page = await context.new_page()
    page.on("console", lambda msg: log(f"[{label} console {msg.type}] {msg.text}"))
    page.on("pageerror", lambda err: log(f"[{label} pageerror] {err}"))
    page.set_default_timeout(CONNECT_TIMEOUT_MS)
    return page


async def poll_stats(
    page: Page, what: str, within: float, condition: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The page's summed inbound getStats counters, once `condition` holds (polled from here:
    Playwright's wait_for_function does not await an async predicate, whose Promise is truthy)."""
    deadline = time.monotonic() + within
    while True:
        stats = await pages.inbound(page)
        if condition(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {within} s; inbound stats: {stats}")
        await asyncio.sleep(POLL_S)


async def call(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    started = time.monotonic()
    extra: list[str] = []
    if args.camera:
        # the fake camera shows one colour: the other participant can tell it is this one
        clip = write_fake_camera(Path(tempfile.mkdtemp()) / "camera.y4m", args.camera)
        extra.append(f"--use-file-for-fake-video-capture={clip}")
    async with async_playwright() as p:
        browser = await launch(p, args.origin, extra)
        try:
            page = await open_page(browser, "call")
            await page.goto(args.url)
            await pages.wait_phase(page, "connected", CONNECT_TIMEOUT_MS)
            emit("connected", seconds=round(time.monotonic() - started, 2))
            await pages.wait_remote_count(page, 1, PEER_TIMEOUT_MS)
            first = await poll_stats(
                page,
                "a first remote video frame decoded",
                PEER_TIMEOUT_S,
                lambda s: s["video"]["framesDecoded"] > 0,
            )
            rising = await poll_stats(
                page,
                f"{args.frames} more remote video frames decoded",
                MEDIA_TIMEOUT_S,
                lambda s: (
                    s["video"]["framesDecoded"] >= first["video"]["framesDecoded"] + args.frames
                ),
            )
            stats = await poll_stats(
                page,
                f"{args.packets} more remote audio packets",
                MEDIA_TIMEOUT_S,
                lambda s: (
                    s["audio"]["packetsReceived"]
                    >= rising["audio"]["packetsReceived"] + args.packets
                ),
            )
            shown = None
            if args.expect_pattern is not None:
                # the picture on screen is the other participant's pattern, read off the <video>
                info = await pages.wait_remote_pattern(page, args.expect_pattern, MEDIA_TIMEOUT_S)
                shown = info.source_id
            pairs = await page.evaluate(SELECTED_PAIRS_JS)
            emit(
                "verified",
                pattern_source=shown,
                frames_decoded=[s["video"]["framesDecoded"] for s in (first, rising, stats)],
                frame_size=[stats["video"]["frameWidth"], stats["video"]["frameHeight"]],
                audio_packets=[s["audio"]["packetsReceived"] for s in (first, rising, stats)],
                audio_samples=stats["audio"]["totalSamplesReceived"],
                pairs=pairs,
                user_agent=await page.evaluate("navigator.userAgent"),
                seconds=round(time.monotonic() - started, 2),
            )
            await read_line()  # stay in the call until the test says it is over
        finally:
            await browser.close()


async def p2p(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    started = time.monotonic()
    async with async_playwright() as p:
        # No getUserMedia here, so Chromium would hide host addresses behind mDNS names; the
        # peer gets plain addresses, like the aiortc attempt (host candidates cannot help anyway).
        browser = await launch(
            p, "http://localhost", ["--disable-features=WebRtcHideLocalIpsWithMdns"]
        )
        try:
            page = await open_page(browser, "p2p")
            sdp = str(await page.evaluate(P2P_OFFER_JS, args.stun or ""))
            emit("offer", sdp=sdp)
            answer = json.loads(await read_line())
            await page.evaluate(
                "(sdp) => window.__p2p.setRemoteDescription({ type: 'answer', sdp })", answer["sdp"]
            )
            answered = time.monotonic()
            # Until ICE connects (the test then fails) or the test asks for the outcome; the
            # candidate pairs are sampled all along (Chromium drops them once ICE has failed).
            asked = asyncio.ensure_future(read_line())
            pair_states: set[str] = set()
            most_pairs = 0
            while True:
                state = await page.evaluate(P2P_STATE_JS)
                pair_states.update(pair["state"] for pair in state["pairs"])
                most_pairs = max(most_pairs, len(state["pairs"]))
                if asked.done() or state["state"] in ("connected", "completed"):
                    break
                await asyncio.wait({asked}, timeout=P2P_POLL_S)
            emit(
                "result",
                state=state["state"],
                connectionState=state["connectionState"],
                history=state["history"],
                pair_states=sorted(pair_states),
                most_pairs=most_pairs,
                seconds=round(time.monotonic() - answered, 2),
                local_candidates=sdp_candidates(sdp),
                total_seconds=round(time.monotonic() - started, 2),
            )
            await asked  # until the test closes stdin
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.nat.browser_proc")
    modes = parser.add_subparsers(dest="mode", required=True)
    c = modes.add_parser("call")
    c.add_argument("--url", required=True, help="the call page, token included")
    c.add_argument("--origin", required=True, help="treated as a secure origin (getUserMedia)")
    c.add_argument("--frames", type=int, default=30, help="more frames decoded after the first")
    c.add_argument("--packets", type=int, default=50, help="more audio packets received")
    c.add_argument("--camera", help="the fake camera's colour (tests/browser/conftest.py)")
    c.add_argument("--expect-pattern", type=int, help="the synth source id the page must show")
    p = modes.add_parser("p2p")
    p.add_argument("--stun")
    args = parser.parse_args()
    ipv4_only()
    try:
        asyncio.run(call(args) if args.mode == "call" else p2p(args))
    except Exception as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
