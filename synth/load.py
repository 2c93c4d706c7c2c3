"""The `smiling-relay synth` runner: M synthetic calls of K participants against a relay (or Janus).

One run, in order:

1. **provision** (main process): for the relay, users, Confirmed + Paid sessions and rooms through
   the real REST API (admin token minted from ``--jwt-secret`` or given with ``--admin-token``;
   participant tokens minted with the secret), or sessions and tokens given on the command line;
   for Janus, one VideoRoom room per call;
2. **plan**: every participant gets a join time (``--ramp`` joins per second, calls interleaved),
   and the whole run a common measurement window ``[t0, t1)`` that starts ``--warmup`` seconds
   after the last scheduled join and lasts ``--duration`` seconds;
3. **run**: the calls are split over ``--procs`` worker processes (``python -m synth.load
   _worker``; with ``--procs 1`` and no impairment they run in this process). Each participant
   connects over the real WebSocket, joins, publishes and subscribes to everyone else. *Full*
   participants publish a live pattern video (encoder) and a tone with timing marks and decode
   what they receive (glass-to-glass latency, intact pictures); *cheap* ones publish a
   pre-encoded clip (:mod:`synth.clip`, no encoder) and pre-encoded Opus, and count what they
   receive without decoding (``--cheap``; ``--full-calls`` and ``--decode-fraction`` keep a
   sample decoding);
4. **collect** at ``t1``: per received stream, time from join to first frame, fps, freezes,
   latency (p50/p95/max), loss (before and after retransmission), bitrate, intact pictures — over
   the window — and per call the received bitrate per second. :mod:`synth.report` turns this into
   the table, the JSON report and the plots.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fractions
import json
import logging
import os
import pickle
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from relay._aiortc import IdleTrack, take_keyframe_request
from synth.clip import start_positions
from synth.lean import LeanClip, LeanPublisher, LeanReceiver
from synth.measure import StreamCounter, loadavg, proc_cpu_seconds, summarize
from synth.pacing import Pacer
from synth.probe import AudioProbe, VideoProbe

logger = logging.getLogger(__name__)

Target = Literal["relay", "janus"]
ProgressFn = Callable[[dict[str, Any]], None]
WindowHook = Callable[[float, float], None]

ROOT = Path(__file__).resolve().parent.parent
AUDIO_PTIME_S = 0.02
MAX_SOURCE_ID = 250


class LoadError(RuntimeError):
    """A run could not be set up (bad options, provisioning failed, workers died)."""


# -- options and plan ----------------------------------------------------------------------------


@dataclass
class MediaSettings:
    codec: str = "vp8"
    width: int = 640
    height: int = 480
    fps: int = 15
    bitrate: int = 500_000  # bit/s, the cheap clip's target

    def __post_init__(self) -> None:
        self.codec = self.codec.lower()
        if self.codec not in ("vp8", "h264"):
            raise ValueError("codec must be vp8 or h264")
        if self.width % 2 or self.height % 2 or self.width < 64 or self.height < 48:
            raise ValueError("resolution must be even and at least 64x48")
        if not 1 <= self.fps <= 60:
            raise ValueError("fps must be within 1-60")


@dataclass
class LoadOptions:
    """Everything a run needs (the CLI fills it; the benchmark builds it directly)."""

    url: str = ""  # relay base URL (http://…) or Janus WebSocket URL (ws://…)
    target: Target = "relay"
    calls: int = 1
    participants: int = 2
    duration: float = 10.0
    ramp: float = 5.0  # joins per second
    warmup: float = 2.0
    media: MediaSettings = field(default_factory=MediaSettings)
    cheap: bool = False
    full_calls: int = 1  # with --cheap: the first calls stay fully measured
    decode_fraction: float = 0.0  # with --cheap: share of the other subscribers that decode
    procs: int = 1
    setup_timeout: float = 20.0
    jwt_secret: str | None = None
    admin_token: str | None = None
    sessions: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    worker_prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NS]
    worker_url: str | None = None  # the URL as seen from the workers (impairment namespace)
    seed: int | None = None
    # Encrypt end to end as the browser client does (synth/e2ee.py): VP8 + Opus only.
    e2ee: bool = False
    # With cheap: the cheap participants are lean (synth/lean.py): many per process.
    lean: bool = False
    # With cheap: the full calls' live video size (None: media's), so that the calls that
    # measure latency do not take most of a small machine (an encoder and a decoder each)
    sample_size: tuple[int, int] | None = None

    def validate(self) -> None:
        if not self.url:
            raise LoadError("a relay URL (or --janus URL) is required")
        if self.calls < 1 or self.participants < 2:
            raise LoadError("need at least one call of at least two participants")
        if self.e2ee and (self.target != "relay" or self.media.codec != "vp8"):
            raise LoadError("--e2ee needs the relay and VP8 (the frame format's codecs)")
        if self.lean and (not self.cheap or self.e2ee):
            raise LoadError("--lean needs --cheap, and does not encrypt end to end")
        if self.participants > 8:
            raise LoadError("at most 8 participants per call")
        if self.duration <= 0 or self.ramp <= 0 or self.warmup < 0:
            raise LoadError("--duration and --ramp must be positive, --warmup not negative")
        if self.procs < 1:
            raise LoadError("--procs must be at least 1")
        if not 0 <= self.decode_fraction <= 1:
            raise LoadError("--decode-fraction must be within 0-1")
        if self.target == "relay" and not self.sessions and not self.jwt_secret:
            raise LoadError(
                "the relay needs --jwt-secret (to create users, sessions and tokens through the "
                "admin API) or --session/--token for existing sessions"
            )
        if self.sessions:
            if len(self.sessions) < self.calls:
                raise LoadError(
                    f"{self.calls} calls need {self.calls} --session (given {len(self.sessions)})"
                )
            if len(self.tokens) < self.calls * self.participants:
                raise LoadError(
                    f"{self.calls} calls of {self.participants} need "
                    f"{self.calls * self.participants} --token (K per session, in order)"
                )


@dataclass
class ParticipantSpec:
    index: int
    source_id: int
    label: str
    join_at: float  # wall clock
    full: bool  # live encoder + marks (latency measurable at the receivers)
    decode: bool  # decodes what it receives
    token: str | None = None


@dataclass
class CallSpec:
    index: int
    room: str
    session_id: str | None
    participants: list[ParticipantSpec]


@dataclass
class RunPlan:
    target: Target
    url: str
    calls: list[CallSpec]
    t_start: float
    t0: float  # measurement window
    t1: float
    media: MediaSettings
    setup_timeout: float
    media_path: str | None = None
    e2ee: bool = False
    lean: bool = False
    sample_size: tuple[int, int] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunPlan:
        raw = json.loads(text)
        raw["media"] = MediaSettings(**raw["media"])
        if raw.get("sample_size") is not None:
            raw["sample_size"] = tuple(raw["sample_size"])
        raw["calls"] = [
            CallSpec(
                index=c["index"],
                room=c["room"],
                session_id=c["session_id"],
                participants=[ParticipantSpec(**p) for p in c["participants"]],
            )
            for c in raw["calls"]
        ]
        return cls(**raw)


def schedule(options: LoadOptions, now: float) -> tuple[list[tuple[float, bool, bool]], float]:
    """Per participant (call-major order) its join offset and full/decode flags; ramp seconds.

    Joins are interleaved by rank (every call's first participant, then every call's second…)
    so each call fills up as early as possible at the configured rate.
    """
    rng = random.Random(options.seed)
    k, m = options.participants, options.calls
    order = sorted(range(m * k), key=lambda i: (i % k, i // k))
    offsets = [0.0] * (m * k)
    for rank, i in enumerate(order):
        offsets[i] = rank / options.ramp
    flags = []
    for i in range(m * k):
        call = i // k
        full = not options.cheap or call < options.full_calls
        decode = full or rng.random() < options.decode_fraction
        flags.append((offsets[i], full, decode))
    return flags, (m * k - 1) / options.ramp


# -- provisioning ---------------------------------------------------------------------------------


async def _http_json(
    http: Any, method: str, url: str, token: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    async with http.request(method, url, json=body, headers={"x-auth-token": token}) as resp:
        text = await resp.text()
        if resp.status >= 300:
            raise LoadError(f"{method} {url}: HTTP {resp.status}: {text[:300]}")
        data = json.loads(text).get("data", {})
        if not isinstance(data, dict):
            raise LoadError(f"{method} {url}: unexpected answer {text[:200]}")
        return data


async def provision_relay(options: LoadOptions) -> list[tuple[str, str, list[str]]]:
    """(session id, room id, K tokens) per call, through the relay's REST API."""
    import aiohttp

    base = options.url.rstrip("/")
    k = options.participants
    out: list[tuple[str, str, list[str]]] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        if options.sessions:
            for i in range(options.calls):
                tokens = options.tokens[i * k : (i + 1) * k]
                room = await _http_json(
                    http, "POST", f"{base}/api/video-calls/generate-room/{options.sessions[i]}",
                    tokens[0],
                )  # fmt: skip
                out.append((options.sessions[i], str(room["roomId"]), tokens))
            return out
        from calls.identity import mint_token

        assert options.jwt_secret is not None
        secret = options.jwt_secret
        admin = options.admin_token or mint_token(uuid.uuid4().hex[:24], "admin", secret)
        stamp = uuid.uuid4().hex[:10]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        limit = asyncio.Semaphore(8)

        async def one(i: int) -> tuple[str, str, list[str]]:
            async with limit:
                ids = {}
                for role in ("client", "psychologist"):
                    email = f"synth-{stamp}-{i}-{role}@synth.invalid"
                    user = await _http_json(
                        http, "POST", f"{base}/api/admin/users", admin,
                        {"name": f"synth {role} {i}", "email": email, "role": role},
                    )  # fmt: skip
                    ids[role] = str(user.get("id") or user.get("_id"))
                session = await _http_json(
                    http, "POST", f"{base}/api/admin/sessions", admin,
                    {"client": ids["client"], "psychologist": ids["psychologist"],
                     "sessionDate": now, "status": "Confirmed", "paymentStatus": "Paid"},
                )  # fmt: skip
                session_id = str(session.get("id") or session.get("_id"))
                tokens = [
                    mint_token(ids["client"], "client", secret),
                    mint_token(ids["psychologist"], "psychologist", secret),
                ]
                # more than two participants: admins (any id; they may join any session)
                tokens += [mint_token(uuid.uuid4().hex[:24], "admin", secret) for _ in range(k - 2)]
                room = await _http_json(
                    http, "POST", f"{base}/api/video-calls/generate-room/{session_id}", tokens[0]
                )
                return session_id, str(room["roomId"]), tokens

        return list(await asyncio.gather(*(one(i) for i in range(options.calls))))


async def provision_janus(options: LoadOptions) -> list[tuple[str, str, list[str]]]:
    from synth.janus import create_room

    base = random.randrange(10_000_000, 90_000_000)
    out: list[tuple[str, str, list[str]]] = []
    for i in range(options.calls):
        room = base + i
        await create_room(
            options.url,
            room,
            publishers=options.participants,
            videocodec=options.media.codec,
        )
        out.append(("", str(room), []))
    return out


def build_plan(
    options: LoadOptions, provisioned: Sequence[tuple[str, str, list[str]]], now: float
) -> RunPlan:
    flags, ramp_s = schedule(options, now)
    t_start = now + 1.0
    t0 = t_start + ramp_s + options.warmup
    calls = []
    k = options.participants
    for i, (session_id, room, tokens) in enumerate(provisioned):
        participants = []
        for j in range(k):
            offset, full, decode = flags[i * k + j]
            participants.append(
                ParticipantSpec(
                    index=j,
                    source_id=(i * k + j) % MAX_SOURCE_ID + 1,
                    label=f"c{i}p{j}",
                    join_at=t_start + offset,
                    full=full,
                    decode=decode,
                    token=tokens[j] if tokens else None,
                )
            )
        calls.append(CallSpec(i, room, session_id or None, participants))
    return RunPlan(
        target=options.target,
        url=options.worker_url or options.url,
        calls=calls,
        t_start=t_start,
        t0=t0,
        t1=t0 + options.duration,
        media=options.media,
        setup_timeout=options.setup_timeout,
        e2ee=options.e2ee,
        lean=options.lean,
        sample_size=options.sample_size,
    )


# -- cheap media ---------------------------------------------------------------------------------


def prepare_cheap_media(media: MediaSettings, directory: Path) -> Path:
    """Encode the clip publishers' video (4 s loop) and Opus packets (2 s) once; pickle them."""
    from aiortc.codecs.opus import OpusEncoder

    from synth.clip import encode_clip
    from synth.tone import ToneGenerator

    video = encode_clip(
        "h264" if media.codec == "h264" else "vp8",
        media.width,
        media.height,
        media.fps,
        seconds=4.0,
        bitrate=media.bitrate,
        source_id=MAX_SOURCE_ID + 1,
        keyframe_interval_s=2.0,
    )
    generator = ToneGenerator(MAX_SOURCE_ID + 1)
    encoder = OpusEncoder()
    audio: list[bytes] = []
    n = 0
    while len(audio) < 100:
        frame = generator.render_frame(n * 960, 960)
        frame.pts = n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        payloads, _ = encoder.encode(frame)
        audio.extend(payloads)
        n += 1
    path = directory / "cheap-media.pickle"
    with open(path, "wb") as fh:
        pickle.dump({"video": video, "audio": audio}, fh)
    return path


class PacketAudioTrack(MediaStreamTrack):
    """Loops pre-encoded 20 ms Opus packets in real time (no encoder), like synth.clip for video."""

    kind = "audio"

    def __init__(self, packets: Sequence[bytes]) -> None:
        super().__init__()
        if not packets:
            raise ValueError("no packets")
        self._packets = list(packets)
        self._count = 0
        self._pacer = Pacer(AUDIO_PTIME_S, max_lag=0.5)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self._count)
        packet = av.Packet(self._packets[self._count % len(self._packets)])
        packet.pts = self._count * 960
        packet.time_base = fractions.Fraction(1, 48000)
        self._count += 1
        return packet


class ClipVideoTrack(MediaStreamTrack):
    """Loops a pre-encoded clip (:func:`synth.clip.encode_clip`) in real time, like
    :class:`synth.clip.PacketVideoTrack`, and answers keyframe requests: when the sender it is
    attached to (:meth:`attach`) got a PLI/FIR, the loop jumps to the clip's next keyframe — the
    way a live encoder would produce one — so a new subscriber does not wait for the clip's
    keyframe interval."""

    kind = "video"

    def __init__(self, frames: Sequence[Any], fps: int, start: int = 0) -> None:
        super().__init__()
        if not frames:
            raise ValueError("empty clip")
        self._frames = list(frames)
        self._keyframes = [i for i, f in enumerate(self._frames) if f.keyframe] or [0]
        self._fps = fps
        self._pos = start % len(self._frames)
        self._count = 0
        self._pacer = Pacer(1 / fps, max_lag=1.0)
        self._sender: Any = None
        self.keyframes_forced = 0

    def attach(self, sender: Any) -> None:
        self._sender = sender

    def _keyframe_requested(self) -> bool:
        return self._sender is not None and take_keyframe_request(self._sender)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self._count)
        if self._keyframe_requested() and not self._frames[self._pos].keyframe:
            self._pos = next((k for k in self._keyframes if k > self._pos), self._keyframes[0])
            self.keyframes_forced += 1
        frame = self._frames[self._pos]
        packet = av.Packet(frame.data)
        packet.pts = self._count * 90000 // self._fps
        packet.time_base = fractions.Fraction(1, 90000)
        self._pos = (self._pos + 1) % len(self._frames)
        self._count += 1
        return packet


# -- participants --------------------------------------------------------------------------------


class Endpoint(Protocol):
    """What the runner needs from a participant (CallClient for the relay, JanusParticipant)."""

    @property
    def socket_id(self) -> str | None: ...

    def video_from(self, key: str) -> VideoProbe | None: ...

    def audio_from(self, key: str) -> AudioProbe | None: ...

    def counter_from(self, key: str, kind: str) -> StreamCounter | None: ...

    @property
    def lean_receivers(self) -> list[LeanReceiver]: ...

    async def close(self) -> None: ...


@dataclass
class Live:
    spec: ParticipantSpec
    endpoint: Endpoint | None = None
    key: str | None = None
    joined_at: float | None = None  # join requested
    published_at: float | None = None
    error: str | None = None
    tracks: list[MediaStreamTrack] = field(default_factory=list)
    lean: LeanPublisher | None = None


def _tracks(
    plan: RunPlan, spec: ParticipantSpec, cheap: dict[str, Any] | None, lean: LeanClip | None
) -> list[Any]:
    from synth.tracks import PatternVideoTrack, ToneAudioTrack

    if lean is not None:  # the SSRCs and the SDP only: LeanPublisher sends the media
        return [IdleTrack("video"), IdleTrack("audio")]
    m = plan.media
    if spec.full or cheap is None:
        width, height = plan.sample_size or (m.width, m.height)
        return [
            PatternVideoTrack(spec.source_id, width, height, m.fps),
            ToneAudioTrack(spec.source_id),
        ]
    return clip_tracks(cheap, m.fps, spec.source_id)


def clip_tracks(cheap: dict[str, Any], fps: int, source_id: int) -> list[MediaStreamTrack]:
    """A clip publisher's tracks from :func:`prepare_cheap_media`'s media: the clip and the Opus
    packets, each started at a point chosen by ``source_id`` so that the keyframes (and audio) of
    different publishers do not align."""
    frames, audio = cheap["video"], cheap["audio"]
    start, shift = start_positions([f.keyframe for f in frames], len(audio), source_id)
    return [ClipVideoTrack(frames, fps, start), PacketAudioTrack(audio[shift:] + audio[:shift])]


def load_cheap_media(path: str | Path) -> dict[str, Any]:
    """The media :func:`prepare_cheap_media` pickled (``{"video": frames, "audio": packets}``)."""
    with open(path, "rb") as fh:
        media: dict[str, Any] = pickle.load(fh)
    return media


def attach_clip_senders(pc: Any) -> None:
    """Let the clip tracks published on ``pc`` see their sender's keyframe requests."""
    if pc is None:
        return
    for transceiver in pc.getTransceivers():
        track = transceiver.sender.track
        if isinstance(track, ClipVideoTrack):
            track.attach(transceiver.sender)


async def sleep_until(wall: float) -> None:
    """Sleep until the wall-clock time ``wall`` (at once when it has passed)."""
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _setup(
    plan: RunPlan, call: CallSpec, live: Live, cheap: dict[str, Any] | None, clip: LeanClip | None
) -> None:
    spec = live.spec
    lean = clip if not spec.full and not spec.decode else None
    await sleep_until(spec.join_at)
    live.joined_at = time.time()
    try:
        async with asyncio.timeout(plan.setup_timeout):
            if plan.target == "janus":
                from synth.janus import JanusParticipant

                janus = JanusParticipant(
                    plan.url, int(call.room), spec.label, probe_media=spec.decode, lean=lean
                )
                live.endpoint = janus
                await janus.connect()
                await janus.join()
                live.tracks = _tracks(plan, spec, cheap, lean)
                await janus.publish(*live.tracks, video_codec=plan.media.codec)
                publisher = janus.publisher
            else:
                from synth.client import CallClient

                assert spec.token is not None
                client = CallClient(
                    plan.url, spec.token, probe_media=spec.decode, e2ee=plan.e2ee, lean=lean
                )
                live.endpoint = client
                await client.connect()
                await client.join(call.room)
                live.tracks = _tracks(plan, spec, cheap, lean)
                await client.publish(*live.tracks, video_codec=plan.media.codec)
                publisher = client.publisher
            if lean is not None:
                live.lean = LeanPublisher(publisher, lean, spec.source_id)
            else:
                attach_clip_senders(publisher)
            live.key = live.endpoint.socket_id
            live.published_at = time.time()
    except TimeoutError:
        live.error = f"setup not done within {plan.setup_timeout:.0f} s"
    except Exception as exc:
        live.error = f"{type(exc).__name__}: {exc}"


def _window_latencies_video(probe: VideoProbe, t0: float, t1: float) -> list[float]:
    seen: set[int] = set()
    out = []
    for record in probe.records:
        info = record.info
        if info is None or not t0 <= record.arrival < t1 or info.frame_index in seen:
            continue
        seen.add(info.frame_index)
        out.append(record.arrival * 1000.0 - info.capture_ms)
    return out


def _stream_result(
    plan: RunPlan, sub: Live, pub: Live, samples: dict[str, list[float]]
) -> dict[str, Any]:
    t0, t1 = plan.t0, plan.t1
    result: dict[str, Any] = {
        "from": pub.spec.index,
        "to": sub.spec.index,
        "decoded": sub.spec.decode,
        "publisher_full": pub.spec.full,
    }
    endpoint = sub.endpoint
    if endpoint is None or pub.key is None:
        result["error"] = "no such stream (a participant failed to join)"
        return result
    e2ee = getattr(endpoint, "e2ee", None)
    if e2ee is not None:  # what the receiver's frame cipher did (all its streams together)
        result["e2ee"] = {"mode": e2ee.mode, **dataclasses.asdict(e2ee.cipher.stats)}
    vc = endpoint.counter_from(pub.key, "video")
    ac = endpoint.counter_from(pub.key, "audio")
    vp = endpoint.video_from(pub.key) if sub.spec.decode else None
    ap = endpoint.audio_from(pub.key) if sub.spec.decode else None
    first = vp.first_frame_at if vp is not None else (vc.first_keyframe_at if vc else None)
    started = max(sub.joined_at or 0.0, pub.joined_at or 0.0)
    result["join_to_first_frame_ms"] = (first - started) * 1000.0 if first else None
    video: dict[str, Any] = vc.window(t0, t1) if vc else {"error": "no video received"}
    audio: dict[str, Any] = ac.window(t0, t1) if ac else {"error": "no audio received"}
    if vp is not None:
        seconds = max(int(t1) - int(t0), 1)
        records = [r for r in vp.records if t0 <= r.arrival < t1]
        decoded = [r for r in records if r.info is not None]
        indices = [r.info.frame_index for r in decoded if r.info is not None]
        new_frames = sum(1 for a, b in zip([None, *indices], indices, strict=False) if a != b)
        video["fps"] = new_frames / seconds  # clips loop: count changes, not distinct indices
        freezes = [f for f in vp.freezes if t0 <= f.start < t1]
        video["freezes"] = len(freezes)
        video["freeze_ms"] = sum(f.duration_ms for f in freezes)
        video["frames_decoded"] = len(decoded)
        video["intact_pct"] = (
            100.0 * sum(1 for r in decoded if r.info and r.info.intact) / len(decoded)
            if decoded
            else None
        )
        if pub.spec.full:
            lat = _window_latencies_video(vp, t0, t1)
            samples["video"].extend(lat)
            video["latency_ms"] = summarize(lat)
    if ap is not None and pub.spec.full:
        marks = [m.latency_ms for m in ap.marks if t0 <= m.onset_arrival < t1]
        samples["audio"].extend(marks)
        audio["latency_ms"] = summarize(marks)
    result["video"] = video
    result["audio"] = audio
    return result


async def run_call(
    plan: RunPlan,
    call: CallSpec,
    cheap: dict[str, Any] | None,
    lives: list[Live],
    clip: LeanClip | None = None,
) -> dict[str, Any]:
    """One call from its first join to t1; returns its result (stream stats, bitrate series)."""
    lives.extend(Live(spec) for spec in call.participants)
    tasks = [asyncio.create_task(_setup(plan, call, live, cheap, clip)) for live in lives]
    try:
        await sleep_until(plan.t1)
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        samples: dict[str, list[float]] = {"video": [], "audio": []}
        streams = [
            _stream_result(plan, sub, pub, samples)
            for sub in lives
            for pub in lives
            if sub is not pub
        ]
        series: dict[int, int] = {}
        for sub in lives:
            for pub in lives:
                if sub is pub or sub.endpoint is None or pub.key is None:
                    continue
                for kind in ("video", "audio"):
                    counter = sub.endpoint.counter_from(pub.key, kind)
                    if counter is not None:
                        for second, size in counter.bitrate_series().items():
                            series[second] = series.get(second, 0) + size
        base = int(plan.t_start)
        timeline = [[s - base, round(series[s] * 8 / 1000, 1)] for s in sorted(series)]
        return {
            "index": call.index,
            "room": call.room,
            "session_id": call.session_id,
            "participants": [
                {
                    "index": live.spec.index,
                    "label": live.spec.label,
                    "source_id": live.spec.source_id,
                    "key": live.key,
                    "full": live.spec.full,
                    "decode": live.spec.decode,
                    "join_ms": (
                        (live.published_at - live.joined_at) * 1000
                        if live.published_at and live.joined_at
                        else None
                    ),
                    "error": live.error,
                }
                for live in lives
            ],
            "streams": streams,
            "bitrate_kbps": timeline,
            "samples": samples,
            "lean": _lean_totals(lives),
        }
    finally:
        await asyncio.gather(*(_close(live) for live in lives))


def _lean_totals(lives: Sequence[Live]) -> dict[str, int]:
    """What the call's lean participants sent and checked (synth/lean.py)."""
    totals: dict[str, int] = {}
    for live in lives:
        parts = [live.lean.stats() if live.lean else {}]
        if live.endpoint is not None:
            parts += [r.stats() for r in live.endpoint.lean_receivers]
        for part in parts:
            for key, value in part.items():
                totals[key] = totals.get(key, 0) + value
    return totals


async def _close(live: Live) -> None:
    if live.lean is not None:
        live.lean.close()
    for track in live.tracks:
        track.stop()
    if live.endpoint is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(live.endpoint.close(), 10)


def _progress(per_call: Sequence[Sequence[Live]]) -> dict[str, Any]:
    """Participants joined / failed, and streams whose first keyframe arrived."""
    joined = failed = flowing = 0
    for lives in per_call:
        for sub in lives:
            joined += sub.published_at is not None
            failed += sub.error is not None
            if sub.endpoint is None:
                continue
            for pub in lives:
                if pub is sub or pub.key is None:
                    continue
                counter = sub.endpoint.counter_from(pub.key, "video")
                flowing += counter is not None and counter.first_keyframe_at is not None
    return {"joined": joined, "failed": failed, "flowing": flowing}


async def run_plan(
    plan: RunPlan, progress: ProgressFn | None = None, *, interval: float = 0.5
) -> list[dict[str, Any]]:
    """Run every call of ``plan`` in this process; results in call order."""
    cheap = clip = None
    if plan.media_path:
        cheap = await asyncio.to_thread(load_cheap_media, plan.media_path)
        if plan.lean:
            clip = LeanClip.from_cheap(cheap, plan.media.fps, plan.media.codec)
    per_call: list[list[Live]] = [[] for _ in plan.calls]
    tasks = [
        asyncio.create_task(run_call(plan, call, cheap, lives, clip))
        for call, lives in zip(plan.calls, per_call, strict=True)
    ]

    async def report() -> None:
        while True:
            await asyncio.sleep(interval)
            if progress is not None:
                progress(_progress(per_call))

    reporter = asyncio.create_task(report())
    try:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    out = []
    for call, result in zip(plan.calls, results, strict=True):
        if isinstance(result, BaseException):
            error = f"{type(result).__name__}: {result}"
            out.append(
                {"index": call.index, "room": call.room, "error": error, "participants": [],
                 "streams": [], "bitrate_kbps": [], "samples": {"video": [], "audio": []}}
            )  # fmt: skip
        else:
            out.append(result)
    return out


# -- worker processes ----------------------------------------------------------------------------


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def worker_main() -> int:
    """``python -m synth.load _worker``: the plan on stdin (one JSON line), results on stdout."""
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    line = sys.stdin.readline()
    if not line:
        return 2
    plan = RunPlan.from_json(line)
    hard_deadline = plan.t1 + 60

    async def main() -> list[dict[str, Any]]:
        return await asyncio.wait_for(
            run_plan(plan, lambda p: _emit({"event": "progress", **p}), interval=1.0),
            max(hard_deadline - time.time(), 5),
        )

    try:
        results = asyncio.run(main())
    except Exception as exc:
        _emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    _emit({"event": "result", "calls": results})
    return 0


class Worker:
    """A worker process running a share of the calls."""

    def __init__(self, index: int, plan: RunPlan, prefix: Sequence[str], log_dir: Path) -> None:
        self.index = index
        self.plan = plan
        self.log_path = log_dir / f"worker-{index}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in wait())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "synth.load", "_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=str(ROOT),
            env=env,
            start_new_session=True,
        )
        self.progress: dict[str, Any] = {}
        self.result: list[dict[str, Any]] | None = None
        self.error: str | None = None
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        assert self.proc.stdin is not None
        self.proc.stdin.write(plan.to_json() + "\n")
        self.proc.stdin.flush()
        self.proc.stdin.close()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            event = message.pop("event", None)
            if event == "progress":
                self.progress = message
            elif event == "result":
                self.result = message["calls"]
            elif event == "error":
                self.error = message["error"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def done(self) -> bool:
        return self.proc.poll() is not None and not self._reader.is_alive()

    def wait(self, deadline: float) -> None:
        try:
            self.proc.wait(max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
        self._reader.join(5)
        self._log.close()
        if self.result is None and self.error is None:
            self.error = f"worker exited with {self.proc.returncode} (log: {self.log_path})"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def split_plan(plan: RunPlan, procs: int) -> list[RunPlan]:
    """Round-robin calls over ``procs`` plans (calls are never split between processes).

    With cheap (or lean) calls and several processes, the full calls get the first process to
    themselves: their encoders and decoders do not share a core's time with the load, and the
    other processes' CPU is the cheap clients' cost alone."""
    calls = plan.calls
    head: list[list[CallSpec]] = []
    full = [c for c in calls if _has_full(c)]
    if procs > 1 and 0 < len(full) < len(calls):
        head, calls, procs = [full], [c for c in calls if c not in full], procs - 1
    shares = head + [calls[i::procs] for i in range(procs)]
    return [dataclasses.replace(plan, calls=share) for share in shares if share]


def _has_full(call: CallSpec) -> bool:
    return any(p.full for p in call.participants)


# -- the whole run -------------------------------------------------------------------------------


@dataclass
class RunResult:
    options: LoadOptions
    plan: RunPlan
    calls: list[dict[str, Any]]
    started_at: str
    loadavg_before: list[float]
    loadavg_after: list[float]
    client_cpu_pct: float | None
    worker_logs: list[str]
    # over the measurement window [t0, t1), % of a core: every client process, and those that
    # run cheap (or lean) calls only (None when the clients ran in this process)
    client_window_cpu_pct: float | None = None
    load_window_cpu_pct: float | None = None
    load_calls: int = 0


def run_load(
    options: LoadOptions,
    *,
    progress: ProgressFn | None = None,
    window_hook: WindowHook | None = None,
    work_dir: Path | None = None,
) -> RunResult:
    """Provision, run and collect one load run (blocking). ``window_hook(t0, t1)`` is called once
    the measurement window is known, before any participant joins (benchmarks sample the
    server's CPU over it)."""
    options.validate()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    before = loadavg()
    provisioner = provision_janus if options.target == "janus" else provision_relay
    provisioned = asyncio.run(provisioner(options))
    own_dir = work_dir is None
    directory = work_dir or Path(tempfile.mkdtemp(prefix="synth-"))
    try:
        media_path = prepare_cheap_media(options.media, directory) if options.cheap else None
        plan = build_plan(options, provisioned, time.time())
        plan.media_path = str(media_path) if media_path else None
        if window_hook is not None:
            window_hook(plan.t0, plan.t1)
        total = {
            "participants": sum(len(c.participants) for c in plan.calls),
            "streams": sum(len(c.participants) * (len(c.participants) - 1) for c in plan.calls),
            "t_start": plan.t_start,
            "t0": plan.t0,
            "t1": plan.t1,
        }
        cpu_before = time.process_time()
        logs: list[str] = []
        client_cpu: float | None
        window = WindowCpu()
        if options.procs == 1 and not options.worker_prefix:
            calls = asyncio.run(
                run_plan(plan, (lambda p: progress({**total, **p})) if progress else None)
            )
            client_cpu = (time.process_time() - cpu_before) / max(time.time() - plan.t_start, 1)
        else:
            calls, client_cpu, logs = _run_workers(
                plan, options, directory, total, progress, window
            )
        return RunResult(
            options=options,
            plan=plan,
            calls=calls,
            started_at=started_at,
            loadavg_before=before,
            loadavg_after=loadavg(),
            client_cpu_pct=client_cpu * 100 if client_cpu is not None else None,
            worker_logs=logs,
            client_window_cpu_pct=window.all_pct,
            load_window_cpu_pct=window.load_pct,
            load_calls=window.load_calls,
        )
    finally:
        if own_dir:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


@dataclass
class WindowCpu:
    """The client processes' CPU over the measurement window, from the samples of their CPU
    taken every half second (the first and the last sample inside the window)."""

    all_pct: float | None = None
    load_pct: float | None = None  # the processes without a full call
    load_calls: int = 0
    _first: tuple[float, dict[int, float]] | None = None
    _last: tuple[float, dict[int, float]] | None = None

    def sample(self, plan: RunPlan, now: float, cpu: dict[int, float]) -> None:
        if plan.t0 <= now <= plan.t1:
            if self._first is None:
                self._first = (now, dict(cpu))
            self._last = (now, dict(cpu))

    def finish(self, workers: Sequence[Worker]) -> None:
        if self._first is None or self._last is None or self._last[0] - self._first[0] < 1:
            return
        (a, before), (b, after) = self._first, self._last

        def pct(chosen: Sequence[Worker]) -> float:
            return sum(after[w.pid] - before[w.pid] for w in chosen) / (b - a) * 100

        self.all_pct = pct(workers)
        load = [w for w in workers if not any(map(_has_full, w.plan.calls))]
        if load:
            self.load_pct = pct(load)
            self.load_calls = sum(len(w.plan.calls) for w in load)


def _run_workers(
    plan: RunPlan,
    options: LoadOptions,
    directory: Path,
    total: dict[str, Any],
    progress: ProgressFn | None,
    window: WindowCpu,
) -> tuple[list[dict[str, Any]], float | None, list[str]]:
    workers: list[Worker] = []
    try:
        for i, share in enumerate(split_plan(plan, options.procs)):
            workers.append(Worker(i, share, options.worker_prefix, directory))
        cpu0 = {w.pid: proc_cpu_seconds(w.pid) for w in workers}
        cpu_t0 = time.time()
        cpu_last = dict(cpu0)
        deadline = plan.t1 + 90
        while not all(w.done() for w in workers) and time.time() < deadline:
            for w in workers:
                value = proc_cpu_seconds(w.pid)
                if value == value:  # not NaN: still running
                    cpu_last[w.pid] = value
            window.sample(plan, time.time(), cpu_last)
            if progress is not None:
                merged: dict[str, Any] = dict(total)
                for key in ("joined", "failed", "flowing"):
                    merged[key] = sum(int(w.progress.get(key, 0)) for w in workers)
                progress(merged)
            time.sleep(0.5)
        for w in workers:
            w.wait(deadline)
        window.finish(workers)
        elapsed = max(time.time() - cpu_t0, 1e-6)
        client_cpu = sum(cpu_last[p] - cpu0[p] for p in cpu0) / elapsed
        calls: list[dict[str, Any]] = []
        errors = [f"worker {w.index}: {w.error}" for w in workers if w.result is None]
        for w in workers:
            calls.extend(w.result or [])
        if errors and not calls:
            raise LoadError("; ".join(errors))
        for message in errors:
            logger.error("%s", message)
        calls.sort(key=lambda c: int(c["index"]))
        return calls, client_cpu, [str(w.log_path) for w in workers]
    finally:
        for w in workers:
            w.kill()


if __name__ == "__main__":
    if sys.argv[1:] == ["_worker"]:
        sys.exit(worker_main())
    sys.exit("usage: python -m synth.load _worker (used by smiling-relay synth --procs N)")
