"""Shared steps of the signaling tests: a joined socket, a publisher offer, the log's problems."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from relay.participant import Participant
from relay.sfu import Relay
from smiling_relay.app import RELAY_KEY

Client = TestClient[Any, Any]
Socket = aiohttp.ClientWebSocketResponse


async def receive(ws: Socket) -> dict[str, Any]:
    message: dict[str, Any] = await ws.receive_json(timeout=10)
    return message


async def offer_without_candidates() -> str:
    """A real aiortc offer (audio + video) with its candidates removed: the relay gets no
    address to send checks to, so these tests send no traffic anywhere."""
    pc = RTCPeerConnection()
    try:
        pc.addTrack(AudioStreamTrack())
        pc.addTrack(VideoStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        sdp: str = pc.localDescription.sdp
    finally:
        await pc.close()
    kept = [
        line
        for line in sdp.splitlines(keepends=True)
        if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    ]
    return "".join(kept)


async def join(client: Client, token: str, room_id: str) -> Socket:
    """A socket of `token`'s user, authenticated and in the room."""
    ws = await client.ws_connect(f"/ws?token={token}")
    assert (await receive(ws))["event"] == "authenticated"
    await ws.send_json({"event": "join-room", "data": {"roomId": room_id}})
    joined = await receive(ws)
    assert joined["event"] == "room-joined", joined
    return ws


async def publish(ws: Socket, sdp: str) -> dict[str, Any]:
    """Send a publisher offer; the relay's answer."""
    await ws.send_json({"event": "offer", "data": {"offer": {"type": "offer", "sdp": sdp}}})
    answer = await receive(ws)
    assert answer["event"] == "answer", answer
    return answer


async def ping(ws: Socket) -> None:
    """The connection is usable and nothing else is waiting in it."""
    await ws.send_json({"event": "ping"})
    answer = await receive(ws)
    assert answer["event"] == "pong", answer


def participants(client: Client) -> list[Participant]:
    relay: Relay = client.app[RELAY_KEY]
    return [p for room in relay.rooms.values() for p in room.participants.values()]


def only_participant(client: Client) -> Participant:
    seated = participants(client)
    assert len(seated) == 1, seated
    return seated[0]


def remote_addresses(participant: Participant, target: str = "publisher") -> set[str]:
    """Every address the relay's ICE agent for `target` would send checks to."""
    pc = participant._publisher_pc if target == "publisher" else participant._subscriber_pc
    assert pc is not None
    # Every transceiver's: an offer that breaks BUNDLE gives each m-line its own ICE agent.
    transports = {t.receiver.transport.transport for t in pc.getTransceivers()}
    return {c.ip for transport in transports for c in transport.getRemoteCandidates()}


def logged_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records with a traceback or at ERROR and above."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.exc_info or r.levelno >= logging.ERROR
    ]


def candidate_message(
    line: str, target: str = "publisher", mid: str | None = "0"
) -> dict[str, Any]:
    return {
        "event": "ice-candidate",
        "data": {"target": target, "candidate": {"candidate": line, "sdpMid": mid}},
    }
