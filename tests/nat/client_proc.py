"""aiortc endpoints the NAT tests run inside a client namespace (`ip netns exec NS python -m …`).

Two modes, each talking to the test over JSON lines (stdout out, stdin in):

* `call`: a relay participant. Optionally fetches its ICE servers from
  `GET /api/video-calls/config` with its token and forces relay-only candidates; joins the room,
  publishes a pattern video and a tone with timing marks (`--source-id`), then checks what it
  receives from the other participant: with `--expect-source` the decoded pattern's source id
  and audio timing marks (tests/relay/helpers.py `sees`/`hears`), otherwise (a browser peer) that
  frames decode and audio arrives. Prints `{"event": "verified", …}` with the selected ICE
  candidate pairs and keeps publishing until stdin closes.
* `p2p`: one end of a direct peer-to-peer attempt. The offerer prints its offer (candidates
  included), reads the answer; the answerer reads the offer and prints its answer. Both print
  `{"event": "result", "state": …}` once ICE connects or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, cast

import aiohttp
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from relay._aiortc import selected_pair
from synth.client import CallClient
from tests.browser.pages import colour_name
from tests.relay.helpers import hears, join_and_publish, sees


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


async def read_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


def sdp_candidates(sdp: str) -> list[str]:
    return [
        line[len("a=candidate:") :] for line in sdp.splitlines() if line.startswith("a=candidate:")
    ]


async def fetch_ice_servers(base_url: str, token: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/api/video-calls/config", headers={"x-auth-token": token}) as resp,
    ):
        resp.raise_for_status()
        body = await resp.json()
    return list(body["data"]["iceServers"])


def _transport(url: str) -> str:
    if url.startswith("turns:"):
        return "tls"
    return "tcp" if url.endswith("transport=tcp") else "udp"


def to_rtc(servers: list[dict[str, Any]]) -> list[RTCIceServer]:
    return [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in servers
    ]


class _Peer:
    """What `sees`/`hears` need to know about the other participant: its socket id."""

    def __init__(self, socket_id: str) -> None:
        self.socket_id = socket_id


async def call(args: argparse.Namespace) -> None:
    servers: list[dict[str, Any]] = [{"urls": args.stun}] if args.stun else []
    if args.use_config:
        servers = await fetch_ice_servers(args.base_url, args.token)
    if args.turn_transport:
        # aiortc uses the first TURN URL only: keep the one a client on a UDP-less network
        # ends up on (a browser tries them all)
        servers = [
            {**s, "urls": [u for u in urls if _transport(u) == args.turn_transport]}
            for s in servers
            if (urls := s["urls"] if isinstance(s["urls"], list) else [s["urls"]])
        ]
    if args.ca_file:
        os.environ["SSL_CERT_FILE"] = args.ca_file  # TURN over TLS: trust the test's coturn
    client = CallClient(
        args.base_url, args.token, ice_servers=to_rtc(servers), relay_only=args.relay_only
    )
    started = time.monotonic()
    try:
        await client.connect()
        await join_and_publish(client, args.room, args.source_id)
        emit("published", socketId=client.socket_id, iceServers=servers)
        await client.wait_until(
            lambda: any(
                i.get("socketId") and i.get("kind") == "video" for i in client.track_map.values()
            ),
            "the other participant's video track",
            30,
        )
        other = next(str(i["socketId"]) for i in client.track_map.values() if i.get("socketId"))
        peer = cast(CallClient, _Peer(other))
        result: dict[str, Any] = {"peer": other}
        if args.expect_source is not None:
            await sees(client, peer, args.expect_source, frames=15)
            result["marks_ms"] = await hears(client, peer, args.expect_source, marks=3)
            video = client.video_from(other)
            assert video is not None and video.last_info is not None
            result["source_id"] = video.last_info.source_id
            result["frames_intact"] = video.frames_intact
            audio = client.audio_from(other)
            assert audio is not None
            result["heard_slots"] = sorted(audio.heard_slots)
        else:
            await client.wait_until(lambda: client.video_from(other) is not None, "video", 20)
            await client.wait_until(lambda: client.audio_from(other) is not None, "audio", 20)
            video, audio = client.video_from(other), client.audio_from(other)
            assert video is not None and audio is not None
            await video.wait_for_frames(30, 20)
            await audio.wait_for_frames(50, 20)
            result["frames_received"] = video.frames_received
            result["audio_frames"] = audio.frames_received
            # the browser paints no pattern: its camera's colour says whose picture this is
            assert video.last_frame is not None
            rgb = video.last_frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
            result["colour"] = colour_name([round(float(x)) for x in rgb])
        assert client.publisher is not None and client.subscriber is not None
        pairs = {
            "publisher": selected_pair(client.publisher),
            "subscriber": selected_pair(client.subscriber),
        }
        result["pairs"] = {k: v.as_dict() if v else None for k, v in pairs.items()}
        result["local_candidates"] = sdp_candidates(client.publisher.localDescription.sdp)
        result["relay_candidates"] = {
            "publisher": sdp_candidates(client.publisher.remoteDescription.sdp),
            "subscriber": sdp_candidates(client.subscriber.remoteDescription.sdp),
        }
        result["seconds"] = round(time.monotonic() - started, 2)
        emit("verified", **result)
        await read_line()  # keep publishing until the test says the call is over
    finally:
        await client.close()


async def p2p(args: argparse.Namespace) -> None:
    servers = [RTCIceServer(urls=args.stun)] if args.stun else []
    pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
    pc.createDataChannel("probe")
    done = asyncio.get_running_loop().create_future()

    @pc.on("iceconnectionstatechange")
    def on_state() -> None:
        if pc.iceConnectionState in ("completed", "failed") and not done.done():
            done.set_result(pc.iceConnectionState)

    started = time.monotonic()
    try:
        if args.role == "offer":
            await pc.setLocalDescription(await pc.createOffer())
            emit("offer", sdp=pc.localDescription.sdp)
            answer = json.loads(await read_line())
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        else:
            offer = json.loads(await read_line())
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            emit("answer", sdp=pc.localDescription.sdp)
        try:
            state = await asyncio.wait_for(done, args.timeout)
        except TimeoutError:
            state = f"still {pc.iceConnectionState} after {args.timeout} s"
        emit(
            "result",
            state=state,
            seconds=round(time.monotonic() - started, 2),
            local_candidates=sdp_candidates(pc.localDescription.sdp),
        )
    finally:
        await pc.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.nat.client_proc")
    modes = parser.add_subparsers(dest="mode", required=True)
    c = modes.add_parser("call")
    c.add_argument("--base-url", required=True)
    c.add_argument("--token", required=True)
    c.add_argument("--room", required=True)
    c.add_argument("--source-id", type=int, required=True)
    c.add_argument("--expect-source", type=int)
    c.add_argument("--use-config", action="store_true")
    c.add_argument("--stun")
    c.add_argument("--relay-only", action="store_true")
    c.add_argument("--turn-transport", choices=("udp", "tcp", "tls"))
    c.add_argument("--ca-file")
    p = modes.add_parser("p2p")
    p.add_argument("--role", choices=("offer", "answer"), required=True)
    p.add_argument("--stun")
    p.add_argument("--timeout", type=float, default=45.0)
    args = parser.parse_args()
    try:
        asyncio.run(call(args) if args.mode == "call" else p2p(args))
    except Exception as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
