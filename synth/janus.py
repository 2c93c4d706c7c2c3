"""A minimal Janus VideoRoom client (WebSocket API, subprotocol ``janus-protocol``) and launcher.

Used by ``smiling-relay synth --janus URL`` and ``scripts/bench_vs_janus`` to drive the same
synthetic publishers and subscribers through Janus as through the relay:

* :func:`start_janus` writes a throw-away configuration (only the VideoRoom plugin and the
  WebSocket transport are loaded) and starts ``/usr/bin/janus`` on one address;
* :class:`JanusSession` is one Janus session over one WebSocket (transactions, keep-alives,
  per-handle event queues);
* :func:`create_room` makes a VideoRoom room;
* :class:`JanusParticipant` joins a room as a publisher (aiortc), publishes its tracks, and
  subscribes with one handle / peer connection per other publisher — announced at join or later.
  Received tracks get the same probes and :class:`~synth.measure.StreamCounter` as
  :class:`~synth.client.CallClient`'s, keyed by the publisher's feed id (as a string).

Janus 1.x API (Debian 12 ships 1.1.2): ``join`` as ``ptype: publisher`` then ``publish`` with the
offer; subscribers ``join`` with ``streams: [{feed}]``, get Janus' offer and answer with ``start``.
aiortc puts all its candidates into the SDP, so every JSEP carries ``trickle: false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
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

from relay._aiortc import keep_decoder_stopped
from synth.lean import LeanClip, LeanReceiver
from synth.measure import StreamCounter, tap_receiver
from synth.probe import AudioProbe, VideoProbe

__all__ = [
    "JANUS_BINARY",
    "JanusError",
    "JanusParticipant",
    "JanusServer",
    "JanusSession",
    "create_room",
    "janus_available",
    "start_janus",
]

logger = logging.getLogger(__name__)

JANUS_BINARY = "/usr/bin/janus"
JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
KEEPALIVE_S = 20.0
NO_SUCH_FEED = 428


class JanusError(RuntimeError):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"Janus error {code}: {reason}")
        self.code = code


def janus_available() -> str | None:
    """Why Janus cannot be started here, or None when it can."""
    if not Path(JANUS_BINARY).exists():
        return f"{JANUS_BINARY} is missing (Debian package `janus`)"
    for lib in ("plugins/libjanus_videoroom.so", "transports/libjanus_websockets.so"):
        if not (_janus_lib() / lib).exists():
            return f"{_janus_lib() / lib} is missing"
    return None


def _janus_lib() -> Path:
    if JANUS_LIB.exists():
        return JANUS_LIB
    for candidate in Path("/usr/lib").glob("*/janus"):
        return candidate
    return JANUS_LIB


# -- server --------------------------------------------------------------------------------------


@dataclass
class JanusServer:
    process: subprocess.Popen[bytes]
    ws_url: str
    config_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.config_dir, ignore_errors=True)


def write_config(
    directory: Path, ws_ip: str, ws_port: int, *, rtp_ports: str = "20000-40000", debug: int = 3
) -> None:
    """A Janus configuration folder loading only the VideoRoom plugin and WebSockets."""
    lib = _janus_lib()
    for sub, name in (
        ("plugins", "libjanus_videoroom.so"),
        ("transports", "libjanus_websockets.so"),
    ):
        (directory / sub).mkdir(parents=True, exist_ok=True)
        link = directory / sub / name
        if not link.exists():
            link.symlink_to(lib / sub / name)
    for sub in ("events", "loggers"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "janus.jcfg").write_text(
        "general: {\n"
        f'  configs_folder = "{directory}"\n'
        f'  plugins_folder = "{directory / "plugins"}"\n'
        f'  transports_folder = "{directory / "transports"}"\n'
        f'  events_folder = "{directory / "events"}"\n'
        f'  loggers_folder = "{directory / "loggers"}"\n'
        f"  debug_level = {debug}\n"
        "  session_timeout = 60\n"
        "}\n"
        "certificates: {\n}\n"
        f'media: {{\n  rtp_port_range = "{rtp_ports}"\n}}\n'
        'nat: {\n  nice_debug = false\n  ice_ignore_list = "vmnet"\n}\n'
        "plugins: {\n}\ntransports: {\n}\nloggers: {\n}\nevents: {\n}\n"
    )
    (directory / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    (directory / "janus.transport.websockets.jcfg").write_text(
        "general: {\n"
        '  json = "plain"\n'
        "  ws = true\n"
        f"  ws_port = {ws_port}\n"
        f'  ws_ip = "{ws_ip}"\n'
        "  wss = false\n"
        "}\n"
        "admin: {\n  admin_ws = false\n  admin_wss = false\n}\n"
        "cors: {\n}\ncertificates: {\n}\n"
    )


def start_janus(
    ws_ip: str,
    ws_port: int,
    *,
    namespace: str | None = None,
    log_path: Path | None = None,
    timeout: float = 15.0,
    debug: int = 3,
) -> JanusServer:
    """Start Janus (optionally ``ip netns exec NAMESPACE``) and wait until its WebSocket answers."""
    reason = janus_available()
    if reason is not None:
        raise RuntimeError(f"cannot start Janus: {reason}")
    directory = Path(tempfile.mkdtemp(prefix="synth-janus-"))
    write_config(directory, ws_ip, ws_port, debug=debug)
    log_path = log_path or directory / "janus.log"
    command = [JANUS_BINARY, "-F", str(directory), "--log-stdout", "-d", str(debug)]
    if namespace:
        command = ["ip", "netns", "exec", namespace, *command]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = JanusServer(process, f"ws://{ws_ip}:{ws_port}", directory, log_path)
    deadline = time.monotonic() + timeout
    import socket

    while True:
        if process.poll() is not None:
            server.stop()
            raise RuntimeError(f"janus exited with {process.returncode}; see {log_path}")
        with contextlib.suppress(OSError), socket.create_connection((ws_ip, ws_port), 0.5):
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"janus did not listen on {ws_ip}:{ws_port} within {timeout} s")
        time.sleep(0.05)


# -- API session ---------------------------------------------------------------------------------


class JanusSession:
    """One Janus session over one WebSocket."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session_id: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False

    async def open(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(
            self.url, protocols=("janus-protocol",), timeout=aiohttp.ClientWSTimeout(ws_close=5)
        )
        self._tasks.append(asyncio.create_task(self._read_loop()))
        reply = await self._request({"janus": "create"}, timeout=timeout)
        self.session_id = int(reply["data"]["id"])
        self._tasks.append(asyncio.create_task(self._keepalive()))

    async def _read_loop(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                if raw.type != aiohttp.WSMsgType.TEXT:
                    break
                message = raw.json()
                kind = message.get("janus")
                transaction = message.get("transaction")
                if kind == "ack":
                    continue
                future = self._pending.get(transaction) if transaction else None
                if future is not None and kind in ("success", "error", "event"):
                    self._pending.pop(transaction, None)
                    if not future.done():
                        future.set_result(message)
                    continue
                sender = message.get("sender")
                if sender is not None:
                    self.events(int(sender)).put_nowait(message)
        finally:
            self.closed = True
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("Janus WebSocket closed"))

    async def _keepalive(self) -> None:
        while not self.closed:
            await asyncio.sleep(KEEPALIVE_S)
            with contextlib.suppress(Exception):
                await self._send({"janus": "keepalive", "session_id": self.session_id})

    def events(self, handle: int) -> asyncio.Queue[dict[str, Any]]:
        """Unsolicited messages for a handle (plugin events, webrtcup, media, hangup…)."""
        queue = self._events.get(handle)
        if queue is None:
            queue = self._events[handle] = asyncio.Queue()
        return queue

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            raise ConnectionError("Janus WebSocket closed")
        message.setdefault("transaction", secrets.token_hex(8))
        await self._ws.send_json(message)

    async def _request(
        self,
        message: dict[str, Any],
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        transaction = secrets.token_hex(8)
        message["transaction"] = transaction
        if self.session_id is not None and "session_id" not in message:
            message["session_id"] = self.session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        try:
            await self._send(message)
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(transaction, None)
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusError(int(error.get("code", 0)), str(error.get("reason", reply)))
        return reply

    async def attach(self, plugin: str = "janus.plugin.videoroom") -> int:
        reply = await self._request({"janus": "attach", "plugin": plugin})
        return int(reply["data"]["id"])

    async def message(
        self,
        handle: int,
        body: dict[str, Any],
        jsep: dict[str, Any] | None = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A plugin request; returns (plugin data, JSEP or None). Plugin errors raise."""
        request: dict[str, Any] = {"janus": "message", "handle_id": handle, "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        reply = await self._request(request, timeout=timeout)
        data = reply.get("plugindata", {}).get("data", {})
        if "error_code" in data:
            raise JanusError(int(data["error_code"]), str(data.get("error", data)))
        return data, reply.get("jsep")

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed and self.session_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._request({"janus": "destroy"}, timeout=3), 3)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        self.closed = True


async def create_room(
    url: str,
    room: int,
    *,
    publishers: int = 2,
    bitrate: int = 2_000_000,
    videocodec: str = "vp8",
) -> None:
    """Create VideoRoom ``room`` (not permanent) on the Janus at ``url``."""
    session = JanusSession(url)
    try:
        await session.open()
        handle = await session.attach()
        data, _ = await session.message(
            handle,
            {
                "request": "create",
                "room": room,
                "publishers": publishers,
                "bitrate": bitrate,
                "videocodec": videocodec,
                "audiocodec": "opus",
                "fir_freq": 10,
                "permanent": False,
                "notify_joining": False,
            },
        )
        if data.get("videoroom") != "created":
            raise JanusError(0, f"unexpected reply to create: {data}")
    finally:
        await session.close()


# -- participant ---------------------------------------------------------------------------------


class JanusParticipant:
    """A VideoRoom participant: publishes its tracks, subscribes to every other publisher."""

    def __init__(
        self,
        url: str,
        room: int,
        display: str,
        *,
        probe_media: bool = True,
        ice_servers: list[RTCIceServer] | None = None,
        lean: LeanClip | None = None,
    ) -> None:
        self.url = url
        self.room = room
        self.display = display
        self.probe_media = probe_media
        self._configuration = RTCConfiguration(iceServers=list(ice_servers or []))
        self.session = JanusSession(url)
        self.feed_id: int | None = None
        self.publisher: RTCPeerConnection | None = None
        self.subscribers: dict[str, RTCPeerConnection] = {}
        self.video_probes: dict[str, VideoProbe] = {}
        self.audio_probes: dict[str, AudioProbe] = {}
        self.counters: dict[tuple[str, str], StreamCounter] = {}
        self.webrtc_up = asyncio.Event()
        self._handle: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscribing: set[str] = set()
        self.errors: list[str] = []
        self.lean = lean  # lean subscribers (synth/lean.py), as CallClient's
        self.lean_receivers: list[LeanReceiver] = []

    @property
    def socket_id(self) -> str | None:
        """The feed id as a string (the relay client's equivalent of its socket id)."""
        return str(self.feed_id) if self.feed_id is not None else None

    async def connect(self) -> None:
        await self.session.open()
        self._handle = await self.session.attach()
        self._spawn(self._watch_publisher_events(self._handle))

    async def join(self, timeout: float = 10.0) -> list[str]:  # noqa: ASYNC109
        """Join as a publisher; returns the feeds already publishing (and subscribes to them)."""
        assert self._handle is not None
        data, _ = await self.session.message(
            self._handle,
            {"request": "join", "ptype": "publisher", "room": self.room, "display": self.display},
            timeout=timeout,
        )
        self.feed_id = int(data["id"])
        feeds = [str(p["id"]) for p in data.get("publishers", [])]
        for feed in feeds:
            self._subscribe_later(feed)
        return feeds

    async def publish(self, *tracks: MediaStreamTrack, video_codec: str | None = None) -> None:
        assert self._handle is not None
        pc = self.publisher = RTCPeerConnection(self._configuration)
        for track in tracks:
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video" and video_codec:
                caps = RTCRtpSender.getCapabilities("video").codecs
                wanted = f"video/{video_codec}".lower()
                transceiver.setCodecPreferences(
                    [c for c in caps if c.mimeType.lower() in (wanted, "video/rtx")]
                )
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"type": "offer", "sdp": pc.localDescription.sdp, "trickle": False}
        body = {"request": "publish", "audio": True, "video": True}
        _, jsep = await self.session.message(self._handle, body, offer, timeout=15)
        if jsep is None:
            raise JanusError(0, "publish answered without an SDP")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="answer"))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_publisher_events(self, handle: int) -> None:
        queue = self.session.events(handle)
        while True:
            message = await queue.get()
            if message.get("janus") == "webrtcup":
                self.webrtc_up.set()
            data = message.get("plugindata", {}).get("data", {})
            for publisher in data.get("publishers", []) or []:
                self._subscribe_later(str(publisher["id"]))

    def _subscribe_later(self, feed: str) -> None:
        if feed in self._subscribing or feed == self.socket_id:
            return
        self._subscribing.add(feed)
        self._spawn(self._subscribe(feed))

    async def _subscribe(self, feed: str) -> None:
        try:
            handle = await self.session.attach()
            body = {
                "request": "join",
                "ptype": "subscriber",
                "room": self.room,
                "streams": [{"feed": int(feed)}],
            }
            for attempt in range(50):  # 428 until the publisher's PeerConnection is up
                try:
                    _, jsep = await self.session.message(handle, body, timeout=15)
                    break
                except JanusError as exc:
                    if exc.code != NO_SUCH_FEED or attempt == 49:
                        raise
                    await asyncio.sleep(0.2)
            if jsep is None:
                raise JanusError(0, f"subscribing to {feed} gave no offer")
            pc = self.subscribers[feed] = RTCPeerConnection(self._configuration)

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                self._on_track(pc, feed, track)

            await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            if self.lean is not None:
                counters = self.counters
                self.lean_receivers.append(
                    LeanReceiver(
                        pc, lambda mid, kind: counters.get((feed, kind)), self.lean.fingerprints
                    )
                )
            answer = {"type": "answer", "sdp": pc.localDescription.sdp, "trickle": False}
            await self.session.message(handle, {"request": "start"}, answer, timeout=15)
        except Exception as exc:
            self.errors.append(f"subscribing to feed {feed}: {type(exc).__name__}: {exc}")
            logger.warning("janus subscribe to %s failed: %s", feed, exc)

    def _on_track(self, pc: RTCPeerConnection, feed: str, track: MediaStreamTrack) -> None:
        transceiver = next((t for t in pc.getTransceivers() if t.receiver.track is track), None)
        if transceiver is None or (feed, track.kind) in self.counters:
            return
        counter = self.counters[(feed, track.kind)] = StreamCounter(track.kind)
        if self.lean is not None:
            keep_decoder_stopped(transceiver.receiver)
            return
        tap_receiver(transceiver.receiver, counter, decode=self.probe_media)
        if not self.probe_media:
            return
        if track.kind == "video":
            video = self.video_probes[feed] = VideoProbe()
            video.start(track)
        else:
            audio = self.audio_probes[feed] = AudioProbe()
            audio.start(track)

    # -- the same accessors as CallClient ------------------------------------------------------
    def video_from(self, feed: str) -> VideoProbe | None:
        return self.video_probes.get(feed)

    def audio_from(self, feed: str) -> AudioProbe | None:
        return self.audio_probes.get(feed)

    def counter_from(self, feed: str, kind: str) -> StreamCounter | None:
        return self.counters.get((feed, kind))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for probe in [*self.video_probes.values(), *self.audio_probes.values()]:
            await probe.stop()
        for receiver in self.lean_receivers:
            receiver.close()
        for pc in [self.publisher, *self.subscribers.values()]:
            if pc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pc.close(), 5)
        await self.session.close()
