"""Publisher → subscriber pairs measured over one wall-clock window: the benchmarks' workload.

A *pair* is one room with one publisher and one subscriber that only subscribes (one
publisher→subscriber video+audio flow; nobody publishes back). :func:`provision_pairs` makes the
rooms through the relay's admin REST API (:func:`synth.load.provision_relay`). A worker process
(``python -m synth.pairs _worker``, driven by :class:`PairWorker`) runs one *role*:

* ``sample`` — one pair through the relay with live media (PatternVideoTrack + ToneAudioTrack)
  and a decoding subscriber (VideoProbe/AudioProbe): glass-to-glass latency;
* ``direct`` — the same live media publisher → subscriber without any server (two aiortc peer
  connections in one process, :func:`open_direct_pair`): the baseline a server's added latency is
  measured against;
* ``clips`` — many pairs: clip publishers (:func:`synth.load.clip_tracks`, no encoder) and
  :class:`SocketCountingClient` subscribers that count SRTP-decrypted RTP straight from the ICE
  socket (no jitter buffer, no decoder; about one RTCP receiver report a second, no NACK, PLI or
  REMB), so the clients cost as little CPU as possible next to the server being measured.

The protocol, one JSON object a line: the role's config on stdin → ``{"event": "ready"}`` once
media flows → ``{"cmd": "measure", "t0", "t1"}`` → ``{"event": "result", "pairs": [...]}`` over
``[t0, t1)`` → ``{"cmd": "exit"}``. Every worker measures the same window, given as wall-clock
times by the orchestrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import random
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.client import CallClient
from synth.load import (
    ROOT,
    LoadOptions,
    attach_clip_senders,
    clip_tracks,
    load_cheap_media,
    provision_relay,
    sleep_until,
)
from synth.probe import AudioProbe, VideoProbe
from synth.servers import die_with_parent

__all__ = [
    "DirectPair",
    "Pair",
    "PairWorker",
    "RtpCounter",
    "SocketCountingClient",
    "media_rates",
    "open_direct_pair",
    "provision_pairs",
    "stop_all_workers",
]


@dataclass(frozen=True)
class Pair:
    room: str
    pub_token: str
    sub_token: str


def provision_pairs(url: str, n: int, jwt_secret: str) -> list[Pair]:
    """``n`` rooms (one Confirmed, Paid session each): the client publishes, the psychologist
    subscribes."""
    options = LoadOptions(url=url, calls=n, participants=2, jwt_secret=jwt_secret)
    return [
        Pair(room, tokens[0], tokens[1])
        for _, room, tokens in asyncio.run(provision_relay(options))
    ]


def media_rates(media: dict[str, Any], fps: int) -> dict[str, float]:
    """kbit/s of the clip's video and of the Opus packets (20 ms each)."""
    video, audio = media["video"], media["audio"]
    return {
        "video_kbps": sum(len(f.data) for f in video) * 8 / (len(video) / fps) / 1000,
        "audio_kbps": sum(len(p) for p in audio) * 8 / (len(audio) * 0.02) / 1000,
    }


# -- the counting subscriber -----------------------------------------------------------------------


class RtpCounter:
    """Counts RTP packets per SSRC from the socket callback: frames (marker bits), bytes,
    sequence gaps. Deliberately lean: it runs once per received packet in the client workers."""

    def __init__(self) -> None:
        self.kind_of_pt: dict[int, str] = {}
        self.streams: dict[int, dict[str, Any]] = {}

    def learn_sdp(self, sdp: str) -> None:
        for pt, name in re.findall(r"a=rtpmap:(\d+) ([^/\s]+)/", sdp):
            name = name.lower()
            if name == "rtx":
                kind = "rtx"
            else:
                kind = "audio" if name in ("opus", "pcmu", "pcma") else "video"
            self.kind_of_pt[int(pt)] = kind

    def on_rtp(self, data: bytes, arrival: float) -> None:
        if len(data) < 12:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        seq = data[2] << 8 | data[3]
        stream = self.streams.get(ssrc)
        if stream is None:
            kind = self.kind_of_pt.get(data[1] & 0x7F, "unknown")
            stream = self.streams[ssrc] = {
                "kind": kind, "packets": 0, "bytes": 0, "frames": 0, "ext": seq, "first": seq,
            }  # fmt: skip
        stream["packets"] += 1
        stream["bytes"] += len(data)
        if stream["kind"] == "audio" or data[1] & 0x80:
            stream["frames"] += 1
        delta = (seq - stream["ext"]) & 0xFFFF
        if 0 < delta < 0x8000:
            stream["ext"] += delta

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Totals per kind (video, audio, rtx): packets, bytes, frames, highest extended seq."""
        out: dict[str, dict[str, int]] = defaultdict(
            lambda: {"packets": 0, "bytes": 0, "frames": 0, "ext": 0}
        )
        for s in self.streams.values():
            row = out[s["kind"]]
            for key in ("packets", "bytes", "frames", "ext"):
                row[key] += s[key]
        return dict(out)


class SocketCountingClient(CallClient):
    """A subscriber that counts SRTP-decrypted RTP packets at the ICE socket instead of letting
    aiortc receive them (:class:`RtpCounter`), and sends RTCP receiver reports itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("probe_media", False)
        super().__init__(*args, **kwargs)
        self.counter = RtpCounter()
        self._media: Any = None
        self._rtcp_task: asyncio.Task[None] | None = None

    async def _answer_subscriber(self, sdp: str) -> None:
        from relay._aiortc import MediaTransport, dtls_transport_of

        self.counter.learn_sdp(sdp)
        await super()._answer_subscriber(sdp)
        if self._media is None and self.subscriber is not None:
            dtls = dtls_transport_of(self.subscriber)
            if dtls is not None:
                self._media = MediaTransport(dtls)
                self._media.on_rtp = self.counter.on_rtp
                self._rtcp_task = asyncio.ensure_future(self._send_receiver_reports())

    async def _send_receiver_reports(self) -> None:
        """RTCP receiver reports about once a second, like a browser (the relay drops clients
        that send no RTCP; aiortc's receivers see no packets here, so they send none)."""
        from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

        own_ssrc = random.randrange(1, 1 << 32)
        while True:
            await asyncio.sleep(0.5 + random.random())
            reports = [
                RtcpReceiverInfo(
                    ssrc=ssrc,
                    fraction_lost=0,
                    packets_lost=max(s["ext"] - s["first"] + 1 - s["packets"], 0),
                    highest_sequence=s["ext"] & 0xFFFFFFFF,
                    jitter=0,
                    lsr=0,
                    dlsr=0,
                )
                for ssrc, s in self.counter.streams.items()
                if s["kind"] in ("video", "audio")
            ]
            if reports and self._media is not None:
                self._media.send_rtcp(bytes(RtcpRrPacket(ssrc=own_ssrc, reports=reports)))

    async def close(self) -> None:
        if self._rtcp_task is not None:
            self._rtcp_task.cancel()
        await super().close()


# -- live pairs: through the relay, and direct ----------------------------------------------------


def live_tracks(source_id: int, width: int, height: int, fps: int) -> list[Any]:
    """A live publisher's tracks: the pattern video (encoder) and the tone with timing marks."""
    from synth.tracks import PatternVideoTrack, ToneAudioTrack

    return [PatternVideoTrack(source_id, width, height, fps), ToneAudioTrack(source_id)]


@dataclass
class DirectPair:
    """Publisher → subscriber in this process without a server; probes on what arrives."""

    publisher: Any  # RTCPeerConnection
    subscriber: Any
    probes: dict[str, Any]

    async def close(self) -> None:
        for probe in self.probes.values():
            with contextlib.suppress(Exception):
                await probe.stop()
        for pc in (self.publisher, self.subscriber):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)


async def open_direct_pair(tracks: list[Any]) -> DirectPair:
    """Two aiortc peer connections, ``tracks`` sent (VP8) from one to the other; a VideoProbe /
    AudioProbe on each received track (they appear in ``probes`` by kind once negotiated)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

    config = RTCConfiguration(iceServers=[])
    pub, sub = RTCPeerConnection(config), RTCPeerConnection(config)
    pair = DirectPair(pub, sub, {})
    for track in tracks:
        transceiver = pub.addTransceiver(track, direction="sendonly")
        if track.kind == "video":
            caps = RTCRtpSender.getCapabilities("video").codecs
            transceiver.setCodecPreferences(
                [c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")]
            )

    @sub.on("track")
    def on_track(track: Any) -> None:
        probe = VideoProbe() if track.kind == "video" else AudioProbe()
        probe.start(track)
        pair.probes[track.kind] = probe

    try:
        await pub.setLocalDescription(await pub.createOffer())
        await sub.setRemoteDescription(pub.localDescription)
        await sub.setLocalDescription(await sub.createAnswer())
        await pub.setRemoteDescription(sub.localDescription)
    except BaseException:
        await pair.close()
        raise
    return pair


def _probe_marks(video: VideoProbe, audio: AudioProbe) -> dict[str, int]:
    """Positions in a VideoProbe's/AudioProbe's histories, to cut out the measurement window."""
    return {
        "lat": len(video.latencies_ms),
        "new": video.new_frames,
        "intact": video.frames_intact,
        "received": video.frames_received,
        "freezes": len(video.freezes),
        "marks": len(audio.mark_latencies_ms),
        "audio_frames": audio.frames_received,
    }


def _probe_result(
    video: VideoProbe, audio: AudioProbe, a: dict[str, int], b: dict[str, int]
) -> dict[str, Any]:
    freezes = video.freezes[a["freezes"] : b["freezes"]]
    return {
        "video_latency_ms": list(video.latencies_ms)[a["lat"] : b["lat"]],
        "audio_latency_ms": list(audio.mark_latencies_ms)[a["marks"] : b["marks"]],
        "new_frames": b["new"] - a["new"],
        "intact_frames": b["intact"] - a["intact"],
        "frames_received": b["received"] - a["received"],
        "freezes": len(freezes),
        "freeze_ms": sum(f.duration_ms for f in freezes),
        "audio_frames": b["audio_frames"] - a["audio_frames"],
    }


async def _inbound_stats(pc: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    if pc is None:
        return out
    for stats in (await pc.getStats()).values():
        if getattr(stats, "type", "") == "inbound-rtp":
            row = out.setdefault(stats.kind, {"packets": 0, "lost": 0})
            row["packets"] += stats.packetsReceived
            row["lost"] += max(stats.packetsLost, 0)
    return out


def _delta(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {
        kind: {k: v - a.get(kind, {}).get(k, 0) for k, v in row.items()} for kind, row in b.items()
    }


# -- the worker process ---------------------------------------------------------------------------


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _Role:
    """One worker's state: its clients and peer connections (closed at the end), its deadline."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.name = str(cfg["role"])
        self.base_url = str(cfg.get("base_url", ""))
        self.clients: list[CallClient] = []
        self.direct: DirectPair | None = None

    async def wait_until(self, condition: Any, what: str) -> None:
        while not condition():
            if time.time() > self.cfg["setup_deadline"]:
                raise TimeoutError(f"{self.name} worker: timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def client(self, token: str, room: str, cls: type[CallClient] = CallClient) -> CallClient:
        client = cls(self.base_url, token)
        self.clients.append(client)
        await client.connect()
        await client.join(room, timeout=30)
        return client

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)
        if self.direct is not None:
            await self.direct.close()


async def _measure_window(commands: asyncio.Queue[dict[str, Any]]) -> tuple[float, float] | None:
    command = await commands.get()
    if command.get("cmd") != "measure":
        return None
    return float(command["t0"]), float(command["t1"])


async def _run_clips(role: _Role, commands: asyncio.Queue[dict[str, Any]]) -> None:
    cfg = role.cfg
    media = await asyncio.to_thread(load_cheap_media, cfg["media_path"])
    subs: list[SocketCountingClient] = []
    limit = asyncio.Semaphore(3)

    async def setup(pair: dict[str, Any]) -> None:
        async with limit:
            pub = await role.client(pair["pub_token"], pair["room"])
            await pub.publish(*clip_tracks(media, cfg["fps"], pair["source_id"]), video_codec="vp8")
            attach_clip_senders(pub.publisher)
            sub = await role.client(pair["sub_token"], pair["room"], SocketCountingClient)
            assert isinstance(sub, SocketCountingClient)
            subs.append(sub)

    await asyncio.gather(*(setup(p) for p in cfg["pairs"]))

    def flowing() -> bool:
        for sub in subs:
            snap = sub.counter.snapshot()
            if snap.get("video", {}).get("frames", 0) < 10:
                return False
            if snap.get("audio", {}).get("packets", 0) < 10:
                return False
        return True

    await role.wait_until(flowing, "media at every clip subscriber")
    _emit({"event": "ready", "role": role.name, "pairs": len(subs)})
    window = await _measure_window(commands)
    if window is None:
        return
    t0, t1 = window
    await sleep_until(t0)
    before = [sub.counter.snapshot() for sub in subs]
    await sleep_until(t1)
    after = [sub.counter.snapshot() for sub in subs]
    per_pair = []
    for a, b in zip(before, after, strict=True):
        row: dict[str, Any] = {}
        for kind in ("video", "audio", "rtx"):
            x, y = a.get(kind, {}), b.get(kind, {})
            row[kind] = {
                "packets": y.get("packets", 0) - x.get("packets", 0),
                "expected": y.get("ext", 0) - x.get("ext", 0),
                "frames": y.get("frames", 0) - x.get("frames", 0),
                "kbps": (y.get("bytes", 0) - x.get("bytes", 0)) * 8 / (t1 - t0) / 1000,
            }
        per_pair.append(row)
    _emit({"event": "result", "role": role.name, "pairs": per_pair})


async def _run_live(role: _Role, commands: asyncio.Queue[dict[str, Any]]) -> None:
    """The sample pair (through the relay) or the direct pair: probes over the window."""
    cfg = role.cfg
    tracks = live_tracks(cfg["source_id"], cfg["width"], cfg["height"], cfg["fps"])
    video: Any = None
    audio: Any = None
    if role.name == "sample":
        pair = cfg["pairs"][0]
        pub = await role.client(pair["pub_token"], pair["room"])
        await pub.publish(*tracks, video_codec="vp8")
        sub = await role.client(pair["sub_token"], pair["room"])
        key = pub.socket_id or ""
        await role.wait_until(
            lambda: sub.video_from(key) is not None and sub.audio_from(key) is not None,
            "the sample pair's tracks",
        )
        video, audio = sub.video_from(key), sub.audio_from(key)
        receiving = sub.subscriber
    else:
        direct = role.direct = await open_direct_pair(tracks)
        await role.wait_until(lambda: len(direct.probes) == 2, "the direct pair's tracks")
        video, audio = direct.probes["video"], direct.probes["audio"]
        receiving = direct.subscriber
    await role.wait_until(
        lambda: video.frames_intact >= 10 and len(audio.marks) >= 1,
        f"{role.name} pair's video frames and an audio mark",
    )
    _emit({"event": "ready", "role": role.name, "pairs": 1})
    window = await _measure_window(commands)
    if window is None:
        return
    t0, t1 = window
    await sleep_until(t0)
    a, stats_a = _probe_marks(video, audio), await _inbound_stats(receiving)
    await sleep_until(t1)
    b, stats_b = _probe_marks(video, audio), await _inbound_stats(receiving)
    result = _probe_result(video, audio, a, b)
    result["inbound"] = _delta(stats_a, stats_b)
    _emit({"event": "result", "role": role.name, "pairs": [result]})


async def _run_role(cfg: dict[str, Any], commands: asyncio.Queue[dict[str, Any]]) -> None:
    role = _Role(cfg)
    try:
        if role.name == "clips":
            await _run_clips(role, commands)
        elif role.name in ("sample", "direct"):
            await _run_live(role, commands)
        else:
            raise ValueError(f"unknown role {role.name}")
        # keep the media flowing until the orchestrator says so (every worker has reported)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(commands.get(), 30)
    finally:
        await role.close()


def worker_main() -> int:
    """``python -m synth.pairs _worker``: the role's config and then commands on stdin."""
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    first = sys.stdin.readline()
    if not first:
        return 1
    cfg = json.loads(first)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def read_stdin() -> None:
            for line in sys.stdin:
                with contextlib.suppress(ValueError):
                    loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
            loop.call_soon_threadsafe(commands.put_nowait, {"cmd": "exit"})  # parent went away

        threading.Thread(target=read_stdin, daemon=True).start()
        await asyncio.wait_for(_run_role(cfg, commands), max(cfg["hard_deadline"] - time.time(), 1))

    try:
        asyncio.run(main())
    except Exception as exc:  # report, then exit non-zero
        _emit({"event": "error", "role": cfg.get("role"), "error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


# -- the orchestrator's side ----------------------------------------------------------------------


_workers: list[PairWorker] = []


class PairWorker:
    """A worker process running one role, and a thread turning its stdout lines into a queue."""

    def __init__(self, name: str, cfg: dict[str, Any], log_path: Path) -> None:
        self.name = name
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "synth.pairs", "_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
            cwd=str(ROOT),
            env=env,
            start_new_session=True,  # Ctrl-C goes to the orchestrator; it stops the workers
            preexec_fn=die_with_parent,
        )
        _workers.append(self)
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(cfg)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.messages.put(json.loads(line))
        self.messages.put({"event": "exited", "role": self.name, "code": self.proc.wait()})

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()

    def measure(self, t0: float, t1: float) -> None:
        self.send({"cmd": "measure", "t0": t0, "t1": t1})

    def expect(self, event: str, deadline: float) -> dict[str, Any]:
        """The next message of ``event`` (wall-clock ``deadline``); the worker's failure raises."""
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name} worker: no {event!r} in time (see {self.log.name})"
                )
            try:
                message = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if message.get("event") == event:
                return message
            if message.get("event") in ("error", "exited"):
                raise RuntimeError(f"{self.name} worker failed: {message} (see {self.log.name})")

    def stop(self) -> None:
        self.send({"cmd": "exit"})
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
        if self in _workers:
            _workers.remove(self)


def stop_all_workers() -> None:
    """Kill the workers still running (after an error in the orchestrator)."""
    for worker in list(_workers):
        if worker.proc.poll() is None:
            worker.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(5)
        worker.log.close()
    _workers.clear()


if __name__ == "__main__":
    if sys.argv[1:] == ["_worker"]:
        sys.exit(worker_main())
    sys.exit("usage: python -m synth.pairs _worker (used by scripts/bench_relay, bench_vs_janus)")
