"""An aiortc participant that speaks the relay's signaling protocol (docs/signaling.md).

Used by the tests and by `smiling-relay synth`: it joins a room over the real WebSocket, publishes
its tracks on the publisher connection, answers the relay's subscriber offers, and attaches a
`VideoProbe`/`AudioProbe` to every track it receives.

Every received track also gets a `StreamCounter` (synth/measure.py) fed from aiortc's receiver:
packets, payload bytes, frames, keyframes, loss before and after retransmission, freezes. With
`probe_media=False` the client decodes nothing (aiortc's decoder thread is kept stopped, NACK /
PLI / REMB / receiver reports still flow) and only counts: the cheap subscriber of load tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)

from relay._aiortc import (
    keep_decoder_stopped,
    patient_video,
    transform_received_frames,
    transform_sent_frames,
)
from relay._aiortc.hooks import preset_voice_bitrate
from synth.e2ee import E2eeSession
from synth.lean import LeanClip, LeanReceiver
from synth.measure import StreamCounter, tap_receiver
from synth.probe import AudioProbe, VideoProbe

logger = logging.getLogger(__name__)

Predicate = Callable[[dict[str, Any]], bool]


class SignalingError(RuntimeError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class CallClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        ice_servers: list[RTCIceServer] | None = None,
        relay_only: bool = False,
        probe_media: bool = True,
        use_query_token: bool = True,
        e2ee: bool = False,
        lean: LeanClip | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.probe_media = probe_media
        self.use_query_token = use_query_token
        self._configuration = RTCConfiguration(iceServers=list(ice_servers or []))
        if relay_only:
            from aiortc.rtcconfiguration import RTCIceTransportPolicy

            self._configuration.iceTransportPolicy = RTCIceTransportPolicy.RELAY
        self.socket_id: str | None = None
        self.history: list[dict[str, Any]] = []
        self.track_map: dict[str, dict[str, Any]] = {}
        self.video_probes: dict[str, VideoProbe] = {}
        self.audio_probes: dict[str, AudioProbe] = {}
        self.stream_counters: dict[str, StreamCounter] = {}
        self.publisher: RTCPeerConnection | None = None
        self.subscriber: RTCPeerConnection | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.closed_code: int | None = None
        # Audio first: the relay asked this client to stop sending video (sender → its track).
        self.video_held: dict[RTCRtpSender, MediaStreamTrack] = {}
        # End-to-end encryption as the browser client does it (synth/e2ee.py), when asked.
        self.want_e2ee = e2ee
        self.e2ee: E2eeSession | None = None
        # A lean subscriber (synth/lean.py): counts at the socket, checks a sample against `lean`.
        self.lean = lean
        self.lean_receivers: list[LeanReceiver] = []

    # -- connection ---------------------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        self._session = aiohttp.ClientSession()
        url = f"{self.base_url}/ws"
        if self.use_query_token:
            url += f"?token={self.token}"
        self._ws = await self._session.ws_connect(url, heartbeat=10)
        self._reader = asyncio.create_task(self._read_loop())
        if not self.use_query_token:
            await self.send("authenticate", {"token": self.token})
        message = await self.wait_for_any(("authenticated", "error"))
        if message["event"] == "error":
            raise SignalingError(message["data"]["code"], message["data"]["message"])
        self.socket_id = message["data"]["socketId"]
        if self.want_e2ee:
            self.e2ee = E2eeSession(self.socket_id or "", lambda d: self.send("e2ee-key", d))
        return dict(message["data"])

    async def join(self, room_id: str, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        mark = len(self.history)
        await self.send("join-room", {"roomId": room_id})
        message = await self.wait_for_any(("room-joined", "error"), after=mark, timeout=timeout)
        if message["event"] == "error":
            raise SignalingError(message["data"]["code"], message["data"]["message"])
        return dict(message["data"])

    async def publish(
        self,
        *tracks: MediaStreamTrack,
        video_codec: str | None = None,
        voice_bitrate: int | None = None,
    ) -> None:
        """Send `tracks` to the relay on the publisher connection (offer → answer).

        `voice_bitrate`: Opus at this rate (a browser's voice is ~32 kbit/s) instead of aiortc's
        96 kbit/s stereo, which alone would not fit a 100 kbit/s link."""
        pc = self.publisher = RTCPeerConnection(self._configuration)
        if self.e2ee is not None:
            video_codec = "VP8"  # the clear prefix of a frame is defined for VP8 and Opus
        for track in tracks:
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if track.kind == "audio" and voice_bitrate:
                preset_voice_bitrate(transceiver.sender, voice_bitrate)
            if self.e2ee is not None:
                transform_sent_frames(transceiver.sender, track.kind, self.e2ee.cipher.encrypt)
            if track.kind == "video" and video_codec:
                caps = RTCRtpSender.getCapabilities("video").codecs
                preferred = [
                    c for c in caps if c.mimeType.lower() == f"video/{video_codec}".lower()
                ]
                rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
                transceiver.setCodecPreferences(preferred + rtx)
        await pc.setLocalDescription(await pc.createOffer())
        mark = len(self.history)
        await self.send(
            "offer",
            {"offer": {"type": "offer", "sdp": pc.localDescription.sdp}, "target": "publisher"},
        )
        message = await self.wait_for_any(("answer", "error"), after=mark)
        if message["event"] == "error":
            raise SignalingError(message["data"]["code"], message["data"]["message"])
        await pc.setRemoteDescription(
            RTCSessionDescription(sdp=message["data"]["answer"]["sdp"], type="answer")
        )

    async def send(self, event: str, data: dict[str, Any] | None = None) -> None:
        assert self._ws is not None
        await self._ws.send_json({"event": event, "data": data or {}})

    async def send_raw(self, text: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(text)

    async def leave(self) -> None:
        mark = len(self.history)
        await self.send("leave-room", {})
        await self.wait_for("room-left", after=mark)
        await self._close_peers()

    async def close(self) -> None:
        if self.e2ee is not None:
            self.e2ee.close()
        await self._close_peers()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._session is not None:
            await self._session.close()

    async def _close_peers(self) -> None:
        for receiver in self.lean_receivers:
            receiver.close()
        self.lean_receivers.clear()
        for probe in [*self.video_probes.values(), *self.audio_probes.values()]:
            await probe.stop()
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                await pc.close()

    # -- incoming -----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._ws is not None
        async for raw in self._ws:
            if raw.type != aiohttp.WSMsgType.TEXT:
                break
            message = raw.json()
            self.history.append(message)
            try:
                await self._react(message)
            except Exception:
                logger.exception("client failed to handle %s", message.get("event"))
            self._notify()
        self.closed_code = self._ws.close_code
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _react(self, message: dict[str, Any]) -> None:
        event, data = message.get("event"), message.get("data", {})
        if event == "offer" and data.get("target") == "subscriber":
            self._update_tracks(data.get("tracks", []))
            await self._answer_subscriber(data["offer"]["sdp"])
        elif event == "tracks":
            self._update_tracks(data["tracks"])
        elif event in ("video-paused", "video-resumed") and _asks_me(data, self.socket_id):
            self._send_video(event == "video-resumed")
        if self.e2ee is not None:
            await self._react_e2ee(self.e2ee, event, data)

    def _send_video(self, on: bool) -> None:
        """Audio first, uplink: stop sending video (the track stays; nothing is encoded) or
        send it again, as the relay asks (docs/signaling.md, `video-paused`)."""
        if self.publisher is None:
            return
        if on:
            for sender, track in self.video_held.items():
                sender.replaceTrack(track)
            self.video_held.clear()
            return
        for sender in self.publisher.getSenders():
            track = sender.track
            if track is not None and track.kind == "video":
                self.video_held[sender] = track
                sender.replaceTrack(None)

    @staticmethod
    async def _react_e2ee(e2ee: E2eeSession, event: Any, data: dict[str, Any]) -> None:
        if event == "room-joined":
            await e2ee.set_peers(data.get("participants", []))
        elif event == "user-joined":
            await e2ee.peer_joined(data)
        elif event == "user-left":
            await e2ee.peer_left(data.get("socketId", ""))
        elif event == "e2ee-key":
            await e2ee.handle(data)

    def _update_tracks(self, tracks: list[dict[str, Any]]) -> None:
        self.track_map = {t["mid"]: t for t in tracks}

    async def _answer_subscriber(self, sdp: str) -> None:
        if self.subscriber is None:
            self.subscriber = RTCPeerConnection(self._configuration)
            self.subscriber.on("track", self._on_track)
        pc = self.subscriber
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send(
            "answer",
            {"answer": {"type": "answer", "sdp": pc.localDescription.sdp}, "target": "subscriber"},
        )
        if self.lean is not None and not self.lean_receivers:
            counters = self.stream_counters
            self.lean_receivers.append(
                LeanReceiver(pc, lambda mid, kind: counters.get(mid), self.lean.fingerprints)
            )

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.subscriber is not None
        transceiver = next(
            (t for t in self.subscriber.getTransceivers() if t.receiver.track is track), None
        )
        mid = transceiver.mid if transceiver is not None else None
        if transceiver is None or mid is None:
            return
        if self.lean is not None:
            if mid not in self.stream_counters:
                self.stream_counters[mid] = StreamCounter(track.kind)
                keep_decoder_stopped(transceiver.receiver)
            return
        if mid not in self.stream_counters:
            if self.e2ee is not None:  # before the receiver starts (its decoder takes frames)
                transform_received_frames(
                    transceiver.receiver, track.kind, self.e2ee.cipher.decrypt
                )
            counter = self.stream_counters[mid] = StreamCounter(track.kind)
            tap_receiver(transceiver.receiver, counter, decode=self.probe_media)
            if self.probe_media and track.kind == "video":
                # a browser gives a lost packet up and waits for a keyframe; aiortc would stall
                # on it for 512 packets (relay/_aiortc/jitter.py)
                patient_video(transceiver.receiver)
        if not self.probe_media:
            return
        probe: VideoProbe | AudioProbe = VideoProbe() if track.kind == "video" else AudioProbe()
        probe.start(track)
        if isinstance(probe, VideoProbe):
            self.video_probes[mid] = probe
        else:
            self.audio_probes[mid] = probe

    # -- waiting ------------------------------------------------------------------------------

    async def wait_for(
        self,
        event: str,
        predicate: Predicate | None = None,
        *,
        after: int = 0,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """The first message of `event` (matching `predicate`) at history index ≥ `after`."""
        return await self.wait_for_any((event,), predicate, after=after, timeout=timeout)

    async def wait_for_any(
        self,
        events: tuple[str, ...],
        predicate: Predicate | None = None,
        *,
        after: int = 0,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        async def scan() -> dict[str, Any]:
            index = after
            while True:
                while index < len(self.history):
                    message = self.history[index]
                    index += 1
                    if message.get("event") in events and (
                        predicate is None or predicate(message.get("data", {}))
                    ):
                        return message
                if self.closed_code is not None and index >= len(self.history):
                    raise ConnectionError(
                        f"socket closed ({self.closed_code}) waiting for {events}"
                    )
                await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            seen = [m.get("event") for m in self.history[after:]]
            raise TimeoutError(f"no {events} within {timeout} s; got {seen}") from None

    async def wait_until(
        self,
        condition: Callable[[], bool],
        what: str,
        timeout: float = 10.0,  # noqa: ASYNC109
        interval: float = 0.05,
    ) -> None:
        """Poll `condition` (state outside this client: probes, the relay) until it holds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(interval)

    # -- what was received --------------------------------------------------------------------

    def mid_of(self, socket_id: str, kind: str) -> str | None:
        for mid, info in self.track_map.items():
            if info.get("socketId") == socket_id and info.get("kind") == kind:
                return mid
        return None

    def video_from(self, socket_id: str) -> VideoProbe | None:
        mid = self.mid_of(socket_id, "video")
        return self.video_probes.get(mid) if mid else None

    def audio_from(self, socket_id: str) -> AudioProbe | None:
        mid = self.mid_of(socket_id, "audio")
        return self.audio_probes.get(mid) if mid else None

    def counter_from(self, socket_id: str, kind: str) -> StreamCounter | None:
        """The packet counter of `socket_id`'s `kind` track (decoding or not)."""
        mid = self.mid_of(socket_id, kind)
        return self.stream_counters.get(mid) if mid else None


def _asks_me(data: dict[str, Any], socket_id: str | None) -> bool:
    """Whether a `video-paused`/`video-resumed` is about this client's own uplink (the others'
    pauses only change what a UI shows)."""
    return data.get("direction") == "up" and data.get("socketId") == socket_id
