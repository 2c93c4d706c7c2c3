"""Helpers for the end-to-end encryption tests: pages in a call, their E2EE state, and a tap on
the relay's view of one published video track (docs/e2ee.md)."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import av
from aiortc.codecs.vpx import VpxPayloadDescriptor
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.producer import Producer
from smiling_relay.app import RELAY_KEY
from tests.browser import pages

if TYPE_CHECKING:
    from playwright.async_api import Page

    from tests.browser.conftest import Server

INFO = b"smiling-relay e2ee v1"
MAGIC = 0xE2
TRAILER = 14


async def e2ee_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate("window.smilingCall.e2ee")
    return state


async def wait_e2ee(page: Page, predicate: str, within_ms: int = 15000) -> dict[str, Any]:
    """Wait until `predicate` (a JS expression over `s`, the page's E2EE state) holds."""
    await page.wait_for_function(
        f"() => {{ const s = window.smilingCall.e2ee; return Boolean(s) && ({predicate}); }}",
        timeout=within_ms,
    )
    return await e2ee_state(page)


async def wait_samples_rising(page: Page, samples: int = 48000, within_s: float = 15.0) -> None:
    """Decoded audio: totalSamplesReceived rises by `samples` (one second at 48 kHz)."""
    start = int((await pages.inbound(page))["audio"]["totalSamplesReceived"])
    await pages.wait_inbound(
        page,
        lambda s: int(s["audio"]["totalSamplesReceived"]) > start + samples,
        f"{samples} more audio samples",
        within_s,
    )


@dataclass
class VideoTap:
    """A `TrackSender` on a producer: the relay's own view of the frames it forwards, VP8
    depacketized (the forwarder's input: SRTP already removed)."""

    frames: list[bytes] = field(default_factory=list)
    keyframes: int = 0
    _current: bytearray | None = None
    remb_bps: int | None = None

    def forward(
        self, seq: int, timestamp: int, marker: int, payload: bytes, keyframe: bool
    ) -> None:
        descriptor, data = VpxPayloadDescriptor.parse(payload)
        # From the first keyframe on (what the relay's keyframe detection found), so a decoder
        # could start there.
        if (
            descriptor.partition_start
            and descriptor.partition_id == 0
            and (keyframe or self.frames)
        ):
            self._current = bytearray()
            self.keyframes += int(keyframe)
        if self._current is not None:
            self._current += data
            if marker:
                self.frames.append(bytes(self._current))
                self._current = None

    def detach(self) -> None:
        pass


def video_producer(server: Server, room_id: str, user_id: str) -> Producer:
    room = server.app[RELAY_KEY].rooms[room_id]
    for participant in room.participants.values():
        if participant.info.user_id == user_id:
            for producer in participant.producers.values():
                if producer.kind == "video":
                    return producer
    raise AssertionError(f"no video producer of {user_id} in {room_id}")


async def tap_frames(producer: Producer, frames: int, within_s: float = 15.0) -> VideoTap:
    """Collect `frames` whole frames (starting at a keyframe) from the relay's view."""
    tap = VideoTap()
    producer.add_forwarder(tap)
    producer.request_keyframe()  # a PLI upstream, as for a new subscriber
    try:
        deadline = asyncio.get_running_loop().time() + within_s
        while len(tap.frames) < frames:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the tap saw only {len(tap.frames)} frames")
            await asyncio.sleep(0.1)
    finally:
        producer.remove_forwarder(tap)
    return tap


def decode_vp8(frames: list[bytes]) -> tuple[int, list[Any]]:
    """(frames libvpx refused, decoded pictures as RGB arrays)."""
    codec = av.CodecContext.create("libvpx", "r")
    errors = 0
    pictures: list[Any] = []
    for data in frames:
        try:
            for picture in codec.decode(av.Packet(data)):
                pictures.append(picture.to_ndarray(format="rgb24"))
        except av.error.FFmpegError:
            errors += 1
    return errors, pictures


def media_key(secret: bytes) -> AESGCM:
    """The AES-GCM key of a sender secret, as e2ee.js derives it (HKDF-SHA256)."""
    key = HKDF(hashes.SHA256(), 16, salt=INFO, info=b"media frame key").derive(secret)
    return AESGCM(key)


def decrypt_frame(frame: bytes, secret: bytes) -> bytes | None:
    """A video frame in the e2ee-worker.js format, decrypted with `secret`; None when it fails."""
    if len(frame) < TRAILER + 17 or frame[-1] != MAGIC:
        return None
    prefix = 10 if frame[0] & 1 == 0 else 3
    iv = frame[-TRAILER:-2]
    try:
        plain = media_key(secret).decrypt(iv, frame[prefix:-TRAILER], frame[:prefix])
    except Exception:
        return None
    return frame[:prefix] + plain


def secrets_of(exported: dict[str, Any]) -> list[bytes]:
    """Every raw secret a page held (window.smilingCall.e2eeTestKeys())."""
    out = [base64.b64decode(k["secret"]) for k in exported["recv"]]
    if exported["send"]["secret"]:
        out.append(base64.b64decode(exported["send"]["secret"]))
    return out
